"""Tests for the reward registry and its input/output checks."""

import math

import numpy as np
import pytest

from rest_jax import rewards


@rewards.register("_registry_test_length")
def _length_reward(prompts, completions, *, scale, **unused_fields):
  del prompts, unused_fields
  return [len(c) * s for c, s in zip(completions, scale)]


@rewards.register("_registry_test_strict")
def _strict_reward(prompts, completions):
  del prompts
  return [1] * len(completions)


@rewards.register("_registry_test_short")
def _short_reward(prompts, completions):
  del prompts, completions
  return [1.0]


@rewards.register("_registry_test_nan")
def _nan_reward(prompts, completions):
  del prompts
  return [math.nan] * len(completions)


def test_names_include_the_arithmetic_rewards():
  assert {"arithmetic", "arithmetic_steps"} <= set(rewards.names())
  assert rewards.names() == sorted(rewards.names())


def test_get_returns_floats_and_passes_fields_through():
  scores = rewards.get("_registry_test_length")(
      ("p", "p"), ["ab", "abc"], scale=np.array([1, 2]), extra=["x", "y"]
  )
  assert scores == [2.0, 6.0]
  assert all(type(s) is float for s in scores)
  assert rewards.get("_registry_test_strict")(["p"], ["c"]) == [1.0]


def test_unknown_reward_lists_known_ones():
  with pytest.raises(ValueError, match="unknown reward 'exact'.*arithmetic"):
    rewards.get("exact")


def test_field_length_mismatch_names_the_field():
  with pytest.raises(ValueError, match="field 'answer' has 1 values for 2"):
    rewards.get("arithmetic")(["p", "p"], ["a", "b"], answer=["1"])


def test_prompt_length_mismatch():
  with pytest.raises(ValueError, match="got 1 prompts for 2 completions"):
    rewards.get("arithmetic")(["p"], ["a", "b"], answer=["1", "2"])


def test_missing_field_is_named():
  with pytest.raises(ValueError, match="'arithmetic' needs field 'answer'"):
    rewards.get("arithmetic")(["p"], ["a"])


def test_unexpected_field_is_named_when_the_reward_takes_no_others():
  with pytest.raises(ValueError, match="takes no field 'answer'"):
    rewards.get("_registry_test_strict")(["p"], ["a"], answer=["1"])


def test_a_string_is_not_a_column():
  with pytest.raises(ValueError, match="field 'answer' must be a list"):
    rewards.get("arithmetic")(["p"], ["a"], answer="1")
  with pytest.raises(ValueError, match="completions must be a list"):
    rewards.get("arithmetic")(["p"], "a", answer=["1"])


def test_bad_reward_output_is_caught():
  with pytest.raises(ValueError, match="returned 1 values for 2 completions"):
    rewards.get("_registry_test_short")(["p", "p"], ["a", "b"])
  with pytest.raises(ValueError, match="non-finite"):
    rewards.get("_registry_test_nan")(["p"], ["a"])


def test_registering_another_function_under_a_taken_name_fails():
  with pytest.raises(ValueError, match="already registered"):
    rewards.register("arithmetic")(_strict_reward)
  reregistered = rewards.register("_registry_test_strict")(_strict_reward)
  assert reregistered is _strict_reward


def test_empty_batch():
  assert rewards.get("arithmetic")([], [], answer=[]) == []
