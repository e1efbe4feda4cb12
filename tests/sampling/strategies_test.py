"""Behaviour tests for rest_jax.sampling.strategies: each strategy's support and distribution on fixed logits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rest_jax.sampling import strategies
from rest_jax.sampling.strategies import Greedy, Sampling

DRAWS = 20_000  # Rows of identical logits: one call draws this many independent samples.


# Jitted as the decode loop runs them; tiny programs compile faster without LLVM optimisation.
@functools.partial(jax.jit, static_argnums=0, compiler_options={"xla_backend_optimization_level": 0})
def _next_tokens(strategy, logits_BxV, rng):
  return strategy.next_tokens(logits_BxV, rng)


def _draw(strategy, logits_V, seed: int = 0, draws: int = DRAWS) -> np.ndarray:
  logits_BxV = jnp.broadcast_to(jnp.asarray(logits_V, jnp.float32), (draws, len(logits_V)))
  return np.asarray(_next_tokens(strategy, logits_BxV, jax.random.key(seed)))


def _frequencies(tokens_B, vocab: int) -> np.ndarray:
  return np.bincount(tokens_B, minlength=vocab) / len(tokens_B)


def test_greedy_is_the_row_argmax():
  logits_BxV = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
  tokens_B = _next_tokens(Greedy(), jnp.asarray(logits_BxV), jax.random.key(0))
  assert tokens_B.dtype == jnp.int32
  np.testing.assert_array_equal(tokens_B, logits_BxV.argmax(-1))


@pytest.mark.parametrize("seed", [0, 1])
def test_top_k_1_equals_greedy(seed):
  logits_BxV = np.random.default_rng(seed).normal(size=(256, 16)).astype(np.float32)
  tokens_B = _next_tokens(Sampling(temperature=1.5, top_k=1), jnp.asarray(logits_BxV), jax.random.key(seed))
  np.testing.assert_array_equal(tokens_B, logits_BxV.argmax(-1))


def test_top_k_samples_only_the_k_most_likely_tokens_in_proportion():
  logits_V = np.array([0.1, 2.0, -1.0, 1.5, 0.3, 1.8, -0.5, 0.0], np.float32)
  tokens_B = _draw(Sampling(top_k=3), logits_V)
  top3 = {1, 5, 3}
  assert set(np.unique(tokens_B)) == top3  # Never outside the top 3, and all three are reachable.
  expected = np.zeros(8)
  expected[list(top3)] = np.exp(logits_V[list(top3)]) / np.exp(logits_V[list(top3)]).sum()
  np.testing.assert_allclose(_frequencies(tokens_B, 8), expected, atol=0.015)


# Token probabilities in a shuffled order, so the nucleus cannot be read off the token order.
NUCLEUS_PROBS = np.array([0.05, 0.3, 0.15, 0.5])  # Sorted: 3 (0.5), 1 (0.3), 2 (0.15), 0 (0.05).


@pytest.mark.parametrize("top_p, nucleus", [
    (0.3, [3]),  # The mass before token 1 (0.5) is not below 0.3: only the most likely token.
    (0.7, [3, 1]),  # Before token 2 lie 0.8 >= 0.7.
    (0.9, [3, 1, 2]),  # Before token 0 lie 0.95 >= 0.9.
    (0.99, [3, 1, 2, 0]),
])
def test_top_p_keeps_exactly_the_nucleus_renormalised(top_p, nucleus):
  tokens_B = _draw(Sampling(top_p=top_p), np.log(NUCLEUS_PROBS))
  assert set(np.unique(tokens_B)) == set(nucleus)
  expected = np.zeros(4)
  expected[nucleus] = NUCLEUS_PROBS[nucleus] / NUCLEUS_PROBS[nucleus].sum()
  np.testing.assert_allclose(_frequencies(tokens_B, 4), expected, atol=0.015)


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.95, 0.999])
def test_the_nucleus_found_without_sorting_is_the_sorted_nucleus(top_p):
  """The bisection over float bits against the definition on a sorted vocabulary: peaked, flat and mixed rows."""
  rs = np.random.default_rng(0)
  V = 4096
  logits_BxV = np.concatenate([rs.normal(size=(16, V)) * scale for scale in (0.3, 3.0, 10.0)]).astype(np.float32)
  logits_BxV[0] = 0.0  # Uniform: the nucleus is a set of ties, all kept.
  probs_BxV = np.asarray(jax.nn.softmax(jnp.asarray(logits_BxV), axis=-1))
  kept_BxV = np.asarray(jax.jit(strategies._nucleus, static_argnums=1)(jnp.asarray(probs_BxV), top_p))
  for row in range(1, len(probs_BxV)):
    p_V = probs_BxV[row].astype(np.float64)
    order = np.argsort(-p_V, kind="stable")
    mass_before = np.cumsum(p_V[order]) - p_V[order]
    # A token whose preceding mass is within float32 summation error of top_p may fall either way; none other.
    clear = np.abs(mass_before - top_p) > 1e-5
    assert np.array_equal(kept_BxV[row][order][clear], (mass_before < top_p)[clear]), row
  assert kept_BxV[0].all() and 1 < kept_BxV[1:].sum(axis=1).max() < V


def test_top_k_and_top_p_together_keep_the_smaller_set():
  tokens_B = _draw(Sampling(top_k=2, top_p=0.99), np.log(NUCLEUS_PROBS))
  assert set(np.unique(tokens_B)) == {3, 1}


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_frequencies_match_softmax_of_logits_over_temperature(temperature):
  logits_V = np.array([1.0, 0.0, -0.5, 0.5, -1.0], np.float32)
  freq = _frequencies(_draw(Sampling(temperature=temperature), logits_V, seed=3), 5)
  expected = np.exp(logits_V / temperature) / np.exp(logits_V / temperature).sum()
  # Binomial standard error is at most 0.0036 for 20k draws: 0.015 is over 4 sigma.
  np.testing.assert_allclose(freq, expected, atol=0.015)


def test_sampling_respects_each_row_and_the_seed():
  logits_2xV = np.full((2, 6), -10.0, np.float32)
  logits_2xV[0, 1] = logits_2xV[1, 4] = 10.0
  tokens = _next_tokens(Sampling(), jnp.asarray(logits_2xV), jax.random.key(0))
  np.testing.assert_array_equal(tokens, [1, 4])
  uniform_V = np.zeros(50, np.float32)
  a, b, c = (_draw(Sampling(), uniform_V, seed=s, draws=64) for s in (5, 5, 6))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_make_maps_config_values_to_strategies():
  assert strategies.make(0.0) == Greedy()
  assert strategies.make(0, top_k=5, top_p=0.5) == Greedy()
  assert strategies.make(0.7, top_k=0, top_p=1.0) == Sampling(temperature=0.7)
  assert strategies.make(1.0, top_k=-1, top_p=None) == Sampling(temperature=1.0)
  assert strategies.make(1.0, top_k=40, top_p=0.95) == Sampling(temperature=1.0, top_k=40, top_p=0.95)
  # Strategies are static arguments of the jitted decode loop: equal settings must hash alike.
  assert hash(strategies.make(0.5, 3, 0.9)) == hash(Sampling(0.5, 3, 0.9))


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
])
def test_sampling_rejects_bad_settings(kwargs, field):
  with pytest.raises(ValueError, match=field):
    Sampling(**kwargs)
