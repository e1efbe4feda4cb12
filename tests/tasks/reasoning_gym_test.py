"""Reasoning-gym data sets as tasks: gold answers score 1, splits are disjoint and fixed by the seed."""

import json

import pytest

from rest_jax import rewards
from rest_jax import tasks
from rest_jax.tasks import reasoning_gym as rg_task

_SIZES = dict(num_human=5, num_train=20, num_val=5, num_test=10)
_SPLITS = ("human", "train", "val", "test")


def _scores(task, problems, completions):
  return rewards.get(task.reward)([p.prompt for p in problems], completions, **tasks.reward_fields(problems))


@pytest.mark.parametrize("dataset,config", [("basic_arithmetic", {"max_terms": 3}), ("chain_sum", {}),
                                            ("leg_counting", {"max_animals": 4})])
def test_gold_answers_score_one_and_wrong_ones_zero(dataset, config):
  task = tasks.get("reasoning_gym", dataset=dataset, config=config, **_SIZES)
  assert {s: len(task.split(s)) for s in _SPLITS} == {"human": 5, "train": 20, "val": 5, "test": 10}
  for split in _SPLITS:
    problems = task.split(split)
    gold = [rg_task.human_solution(p.fields["answer"]) for p in problems]
    assert _scores(task, problems, gold) == [1.0] * len(problems)
    assert _scores(task, problems, ["<answer>not it</answer>"] * len(problems)) == [0.0] * len(problems)
    assert _scores(task, problems, [p.fields["answer"] for p in problems]) == [0.0] * len(problems)  # No tags.
    json.dumps([dict(p.fields) for p in problems])  # Fields are plain JSON.
  human = task.split("human")
  assert [p.solution for p in human] == [f"<answer>{p.fields['answer']}</answer>" for p in human]
  assert _scores(task, human, ["Let me think.\n" + p.solution for p in human]) == [1.0] * len(human)
  assert [task.extract_answer(p.solution) for p in human] == [p.fields["answer"] for p in human]
  assert all(p.solution is None for s in ("train", "val", "test") for p in task.split(s))


def test_prompt_asks_for_answer_tags_around_the_question():
  task = tasks.get("reasoning_gym", dataset="chain_sum", **_SIZES)
  p = task.split("test")[0]
  assert p.prompt.startswith("Given a problem, your task is to answer the question by thinking step-by-step")
  assert "<answer>answer here</answer>" in p.prompt
  assert p.prompt.endswith("=\n") and "following arithmetic problem" in p.prompt
  simple = tasks.get("reasoning_gym", dataset="chain_sum", system_prompt="simple", **_SIZES)
  assert simple.split("test")[0].prompt.startswith("You are a helpful assistant")


def test_splits_are_disjoint_deterministic_and_seeded():
  task = tasks.get("reasoning_gym", dataset="leg_counting", **_SIZES)
  prompts = [p.prompt for s in _SPLITS for p in task.split(s)]
  assert len(prompts) == len(set(prompts))
  again = tasks.get("reasoning_gym", dataset="leg_counting", **_SIZES)
  assert [(p.prompt, dict(p.fields)) for p in again.split("train")] == [(p.prompt, dict(p.fields))
                                                                        for p in task.split("train")]
  bigger = tasks.get("reasoning_gym", dataset="leg_counting", **{**_SIZES, "num_train": 50})
  assert [p.prompt for p in bigger.split("test")] == [p.prompt for p in task.split("test")]
  other = tasks.get("reasoning_gym", dataset="leg_counting", seed=1, **_SIZES)
  assert [p.prompt for p in other.split("test")] != [p.prompt for p in task.split("test")]
  seeds = {json.loads(task.split(s)[0].fields["config"])["seed"] for s in _SPLITS}
  assert len(seeds) == 4


def test_duplicate_questions_are_skipped():
  # Two-term sums of one-digit numbers: few distinct questions, so the splits must skip repeats.
  task = tasks.get("reasoning_gym", dataset="chain_sum", config={"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                                  "max_digits": 1},
                   num_human=10, num_train=40, num_val=10, num_test=20)
  questions = [p.prompt for s in _SPLITS for p in task.split(s)]
  assert len(questions) == len(set(questions)) == 80
  with pytest.raises(ValueError, match="distinct train problems"):
    tasks.get("reasoning_gym", dataset="chain_sum", config={"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                             "max_digits": 1}, **{**_SIZES, "num_train": 1000})


@pytest.mark.parametrize("kwargs,match", [
    (dict(dataset="no_such_set"), "unknown reasoning-gym data set 'no_such_set'"),
    (dict(dataset="chain_sum", config={"seed": 3}), "must not set 'seed'"),
    (dict(dataset="chain_sum", config={"no_such_option": 3}), "bad config for 'chain_sum'"),
    (dict(dataset="chain_sum", num_test=-1), "num_test"),
    (dict(dataset="chain_sum", system_prompt="nope"), "system_prompt"),
    (dict(dataset="chain_sum", template="{question}{nope}"), "template"),
    (dict(dataset="rush_hour"), "num_human=0"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    tasks.get("reasoning_gym", **{**_SIZES, **kwargs})


def test_data_sets_without_gold_answers_work_without_human_split():
  task = tasks.get("reasoning_gym", dataset="rush_hour", **{**_SIZES, "num_human": 0})
  assert task.split("human") == () and len(task.split("test")) == 10
  assert all(p.fields["answer"] == "" for p in task.split("test"))
