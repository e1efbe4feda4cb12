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

  def log_probs(self, logits_BxV: jax.Array, tokens_B: jax.Array) -> jax.Array:
    """The model's log-probability of each chosen token (temperature 1)."""
    return token_log_probs(logits_BxV, tokens_B, 1.0)


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
    B, V = logits_BxV.shape
    top_k = self.top_k if self.top_k is not None and self.top_k < V else None
    top_p = self.top_p if self.top_p is not None and self.top_p < 1 else None
    if top_k is None and top_p is None:
      return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)
    if top_k is None:  # Nucleus only: found without sorting the vocabulary (a sort of V costs more than a forward).
      keep_BxV = _nucleus(jax.nn.softmax(logits_BxV, axis=-1), top_p)
      return jax.random.categorical(rng, jnp.where(keep_BxV, logits_BxV, -jnp.inf), axis=-1).astype(jnp.int32)
    # Top k (then the nucleus inside it): draw among the K candidates rather than masking V logits.
    candidates_BxK, ids_BxK = jax.lax.top_k(logits_BxV, top_k)
    probs_BxK = jax.nn.softmax(candidates_BxK, axis=-1)
    if top_p is not None:
      # Keep a token if the mass strictly before it is below top_p (the most likely token is always kept).
      probs_BxK = jnp.where(jnp.cumsum(probs_BxK, axis=-1) - probs_BxK < top_p, probs_BxK, 0.0)
    # Inverse-CDF draw with one uniform per row: the first candidate whose cumulative mass exceeds u.
    cdf_BxK = jnp.cumsum(probs_BxK, axis=-1)
    u_Bx1 = jax.random.uniform(rng, (B, 1)) * cdf_BxK[:, -1:]
    choice_B = jnp.minimum(jnp.sum(cdf_BxK <= u_Bx1, axis=-1), jnp.sum(probs_BxK > 0, axis=-1) - 1)
    return jnp.take_along_axis(ids_BxK, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)

  def log_probs(self, logits_BxV: jax.Array, tokens_B: jax.Array) -> jax.Array:
    """log softmax(logits / temperature) of each chosen token: the policy that online RL's importance ratio and the
    M-step's log-likelihood both compute. Top-k / top-p truncation is not renormalised into it."""
    return token_log_probs(logits_BxV, tokens_B, self.temperature)


def token_log_probs(logits_BxV: jax.Array, tokens_B: jax.Array, temperature: float) -> jax.Array:
  """log softmax(logits_BxV / temperature)[b, tokens_B[b]], float32."""
  scaled_BxV = logits_BxV.astype(jnp.float32) / temperature
  chosen_B = jnp.take_along_axis(scaled_BxV, tokens_B[:, None], axis=-1)[:, 0]
  return chosen_B - jax.nn.logsumexp(scaled_BxV, axis=-1)


def _nucleus(probs_BxV: jax.Array, top_p: float) -> jax.Array:
  """Which tokens are in each row's top-p nucleus: those at least as likely as the nucleus's least likely one, the
  largest p_min with sum(p >= p_min) >= top_p, found by bisection over the float32 bit patterns (ordered like the
  values for non-negative floats).

  This is the nucleus of the sorted definition (tokens in decreasing order while the mass before them is below top_p),
  except that tokens tied with the last one are all kept. 31 masked sums over V replace a sort of V.
  """
  bits_BxV = jax.lax.bitcast_convert_type(probs_BxV, jnp.int32)

  def halve(_, bounds):
    lo_B, hi_B = bounds  # The mass from lo up is >= top_p; from hi up it is not.
    mid_B = lo_B + (hi_B - lo_B) // 2
    enough_B = jnp.sum(jnp.where(bits_BxV >= mid_B[:, None], probs_BxV, 0.0), axis=-1) >= top_p
    return jnp.where(enough_B, mid_B, lo_B), jnp.where(enough_B, hi_B, mid_B)

  lo_B = jnp.zeros(probs_BxV.shape[:1], jnp.int32)
  hi_B = jnp.max(bits_BxV, axis=-1) + 1
  floor_B = jax.lax.fori_loop(0, 31, halve, (lo_B, hi_B))[0]
  return bits_BxV >= floor_B[:, None]


Strategy = Greedy | Sampling


def make(temperature: float, top_k: int | None = None, top_p: float | None = None) -> Strategy:
  """Greedy at temperature 0, else Sampling; top_k <= 0 and top_p >= 1 mean "off" (as configs write them)."""
  if temperature == 0:
    return Greedy()
  return Sampling(temperature=temperature, top_k=top_k if top_k and top_k > 0 else None,
                  top_p=top_p if top_p is not None and top_p < 1 else None)
