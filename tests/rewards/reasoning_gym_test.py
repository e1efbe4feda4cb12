"""The "reasoning_gym" reward: the data set's own scorer on the regenerated entry and the tagged answer."""

import json

import pytest
import reasoning_gym

from rest_jax import rewards
from rest_jax.rewards import reasoning_gym as rg_rewards


def _fields(name, config, indices, *, seed=5, size=10):
  cfg = rg_rewards.dataset_config(name, config, seed=seed, size=size)
  ds = rg_rewards.build_dataset(name, cfg)
  return {"dataset": [name] * len(indices), "config": [cfg] * len(indices), "index": list(indices),
          "answer": [rg_rewards.answer_text(ds[i]["answer"]) for i in indices]}


def _reward(completions, fields):
  return rewards.get("reasoning_gym")([""] * len(completions), completions, **fields)


def test_scores_the_answer_in_the_last_tags():
  fields = _fields("chain_sum", {}, [3])
  gold = fields["answer"][0]
  completions = [f"<answer>{gold}</answer>", f"So... <answer> {gold} </answer>",
                 f"<answer>1</answer> no, <answer>{gold}</answer>", f"<answer>{gold}</answer> no, <answer>1</answer>",
                 f"The answer is {gold}.", "<answer></answer>", f"<answer>{int(gold) + 1}</answer>"]
  assert _reward(completions, {k: v * len(completions) for k, v in fields.items()}) == [1, 1, 1, 0, 0, 0, 0]


def test_the_entry_is_regenerated_not_read_back_from_json():
  # ARC entries hold tuples that JSON turns into lists; the data set's scorer then rejects the gold answer.
  fields = _fields("arc_agi", {}, [0, 1])
  cfg = json.loads(fields["config"][0])
  ds = reasoning_gym.create_dataset("arc_agi", **cfg)
  assert ds.score_answer(ds[0]["answer"], json.loads(json.dumps(ds[0]))) < 1.0
  assert _reward([f"<answer>{a}</answer>" for a in fields["answer"]], fields) == [1.0, 1.0]


def test_answer_field_must_match_the_regenerated_entry():
  fields = _fields("leg_counting", {}, [0])
  fields["answer"] = ["not the gold answer"]
  with pytest.raises(ValueError, match="not deterministic"):
    _reward(["<answer>1</answer>"], fields)
  del fields["answer"]
  assert _reward(["<answer>1</answer>"], fields) == [0.0]  # Without the field there is nothing to check.


def test_a_scorer_that_raises_scores_zero(monkeypatch):
  fields = _fields("chain_sum", {}, [0])
  ds = rg_rewards.build_dataset("chain_sum", fields["config"][0])

  def broken(answer, entry):
    raise RuntimeError("scorer bug")

  monkeypatch.setattr(ds, "score_answer", broken)
  assert _reward([f"<answer>{fields['answer'][0]}</answer>"], fields) == [0.0]


def test_unknown_data_sets_and_configs_are_rejected():
  with pytest.raises(ValueError, match="unknown reasoning-gym data set"):
    rg_rewards.dataset_config("no_such_set", {}, seed=0, size=1)
  with pytest.raises(ValueError, match="unknown reasoning-gym data set"):
    _reward(["x"], {"dataset": ["no_such_set"], "config": ["{}"], "index": [0]})
  with pytest.raises(ValueError, match="JSON"):
    rg_rewards.dataset_config("chain_sum", {"min_terms": object()}, seed=0, size=1)
  assert "chain_sum" in rg_rewards.names() and "composite" not in rg_rewards.names()
