"""Algorithms as plug-ins: each a module here, registered by name, run by `rest.algorithm`.

An algorithm is a function `run(exp)` over the stage API of `rest_jax.experiment.Experiment`:

  exp.evaluate(params, method, iteration)              every configured split, recorded once
  exp.estep(params, method, iteration, sampler=...)    sample, score and filter the training problems (a samples
                                                       file with the sampled ids and log-probabilities)
  exp.mstep(init_params, prompts, completions, weights, method, iteration)
                                                       fine-tune on examples (a checkpoint)
  exp.online_stage(method, iteration, compute)         an online update stage: `compute` returns the new params
                                                       and the stage's samples (a checkpoint and a samples file)
  exp.load_policy(path)                                another model (Orbax, Hugging Face or GGUF) and its sampler

Every one of them is resumable: it is skipped when its artifact exists (`rest_jax.stages`). Adding an algorithm is
one module that calls `register` (and, if it has settings, declares their config block and rules) plus an import
below and a config mode that selects it.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

Run = Callable[[Any], None]


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """A registered algorithm: its `run(exp)`, and the config block it reads with `config_check` rules per field
  (required when the algorithm is selected; checked whenever present)."""

  name: str
  run: Run
  block: str | None = None
  rules: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  doc: str = ""


_REGISTRY: dict[str, Algorithm] = {}


def register(name: str, *, block: str | None = None, rules: Mapping[str, Any] | None = None
             ) -> Callable[[Run], Run]:
  """Decorator: registers `run` as the algorithm `name` (rules are keyed by full field name, "block.field")."""

  def decorator(run: Run) -> Run:
    rule_map = dict(rules or {})
    outside = [f for f in rule_map if block is None or not f.startswith(f"{block}.")]
    if outside:
      raise ValueError(f"algorithm {name!r}: rule {outside[0]!r} is not in its block {block!r}")
    existing = _REGISTRY.get(name)
    if existing is not None and existing.run.__qualname__ != run.__qualname__:
      raise ValueError(f"algorithm {name!r} is already registered to {existing.run.__module__}")
    _REGISTRY[name] = Algorithm(name=name, run=run, block=block, rules=rule_map,
                                doc=(run.__doc__ or "").strip().split("\n")[0])
    return run

  return decorator


def get(name: str) -> Algorithm:
  if name not in _REGISTRY:
    raise ValueError(f"unknown algorithm {name!r} (rest.algorithm); known: {', '.join(names())}")
  return _REGISTRY[name]


def names() -> list[str]:
  return sorted(_REGISTRY)


def blocks() -> dict[str, Algorithm]:
  """Config block -> the algorithm that reads it."""
  return {a.block: a for a in _REGISTRY.values() if a.block}


# The built-in algorithms register themselves on import.
from rest_jax.algorithms import rest_em  # noqa: E402,F401  pylint: disable=g-import-not-at-top,wrong-import-position
from rest_jax.algorithms import rest  # noqa: E402,F401  pylint: disable=g-import-not-at-top,wrong-import-position
from rest_jax.algorithms import sft_human  # noqa: E402,F401  pylint: disable=g-import-not-at-top,wrong-import-position
from rest_jax.algorithms import grpo  # noqa: E402,F401  pylint: disable=g-import-not-at-top,wrong-import-position
from rest_jax.algorithms import star  # noqa: E402,F401  pylint: disable=g-import-not-at-top,wrong-import-position
