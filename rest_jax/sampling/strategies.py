"""Sampling strategies: tiny frozen dataclasses with one method, `next_tokens(logits_BxV, rng) -> tokens_B`.

They are static arguments of the jitted decode loop, so each must be hashable.
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Greedy:
  """The most likely token."""

  def next_tokens(self, logits_BxV: jax.Array, rng: jax.Array) -> jax.Array:
    del rng
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Ancestral sampling at `temperature`, optionally restricted to the top-k tokens and/or the top-p nucleus."""

  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None

  def __post_init__(self):
    if self.temperature <= 0:
      raise ValueError(f"Sampling.temperature must be > 0 (use Greedy for 0), got {self.temperature}")
    if self.top_k is not None and self.top_k < 1:
      raise ValueError(f"Sampling.top_k must be >= 1, got {self.top_k}")
    if self.top_p is not None and not 0 < self.top_p <= 1:
      raise ValueError(f"Sampling.top_p must be in (0, 1], got {self.top_p}")

  def next_tokens(self, logits_BxV: jax.Array, rng: jax.Array) -> jax.Array:
    logits_BxV = logits_BxV.astype(jnp.float32) / self.temperature
    neg_inf = jnp.finfo(jnp.float32).min
    if self.top_k is not None and self.top_k < logits_BxV.shape[-1]:
      kth_B1 = jax.lax.top_k(logits_BxV, self.top_k)[0][:, -1:]
      logits_BxV = jnp.where(logits_BxV < kth_B1, neg_inf, logits_BxV)
    if self.top_p is not None and self.top_p < 1:
      sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
      probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
      # Keep a token if the mass strictly before it is below top_p (the most likely token is always kept).
      mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
      cutoff_B1 = jnp.min(jnp.where(mass_before_BxV < self.top_p, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
      logits_BxV = jnp.where(logits_BxV < cutoff_B1, neg_inf, logits_BxV)
    return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


Strategy = Greedy | Sampling


def make(temperature: float, top_k: int | None = None, top_p: float | None = None) -> Strategy:
  """Greedy at temperature 0, else Sampling; top_k <= 0 and top_p >= 1 mean "off" (as configs write them)."""
  if temperature == 0:
    return Greedy()
  return Sampling(temperature=temperature, top_k=top_k if top_k and top_k > 0 else None,
                  top_p=top_p if top_p is not None and top_p < 1 else None)
