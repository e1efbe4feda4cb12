"""The word-problem task for chat models: arithmetic of every split, disjointness, determinism, errors."""

import re

import pytest

from rest_jax import rewards, tasks


def _numbers(text):
  return [int(x) for x in re.findall(r"\d+", text)]


@pytest.mark.parametrize("steps,operations", [(1, "+"), (1, "-"), (2, "+-")])
def test_answers_follow_from_the_prompt(steps, operations):
  task = tasks.get("word_problems", steps=steps, operations=operations, num_train=200)
  for split in ("human", "train", "val", "test"):
    for p in task.split(split):
      start, *changes = _numbers(p.prompt)
      assert len(changes) == steps
      change_sentences = re.split(r"(?<=\.) ", p.prompt)[1:1 + steps]
      signs = [1 if s.endswith("more.") else -1 for s in change_sentences]
      if operations == "+":
        assert signs == [1] * steps
      assert int(p.fields["answer"]) == start + sum(s * c for s, c in zip(signs, changes)) >= 0
      assert 1 <= start <= 20


def test_human_solutions_are_graded_correct_and_end_with_the_answer():
  task = tasks.get("word_problems", steps=2, operations="+-")
  human = task.split("human")
  assert all(p.solution for p in human)
  scores = rewards.get("final_number")([p.prompt for p in human], [p.solution for p in human],
                                       answer=[p.fields["answer"] for p in human])
  assert scores == [1.0] * len(human)
  assert all(task.split("test")[i].solution is None for i in range(3))


def test_splits_are_disjoint_deterministic_and_independent_of_train_size():
  a = tasks.get("word_problems", num_train=100)
  b = tasks.get("word_problems", num_train=300)
  prompts = [p.prompt for s in ("human", "train", "val", "test") for p in a.split(s)]
  assert len(prompts) == len(set(prompts))
  assert [p.prompt for p in a.split("test")] == [p.prompt for p in b.split("test")]
  assert [p.prompt for p in tasks.get("word_problems", seed=1).split("test")] != [p.prompt for p in a.split("test")]


def test_phrasings_vary():
  task = tasks.get("word_problems", operations="+-", num_train=300)
  openings = {" ".join(p.prompt.split()[1:3]) for p in task.split("train")}
  assert len(openings) >= 5


@pytest.mark.parametrize("kwargs,field", [
    (dict(steps=3), "steps"), (dict(operations="*"), "operations"), (dict(min_number=5, max_number=2), "min_number"),
    (dict(num_test=-1), "num_test"), (dict(num_train=20000, max_number=1, min_number=1), "num_train")])
def test_bad_arguments_name_the_field(kwargs, field):
  with pytest.raises(ValueError, match=field):
    tasks.get("word_problems", **kwargs)


@pytest.mark.parametrize("completion,answer,reward", [
    ("Tom has 5 + 19 = 24 apples.", "24", 1.0),
    ("The answer is 1,024.", "1024", 1.0),
    ("It is 24.0 apples", "24", 1.0),
    ("-3 is the result", "-3", 1.0),
    ("24 apples, then 3 more: 27", "24", 0.0),
    ("twenty-four", "24", 0.0),
    ("", "24", 0.0),
    ("version2 says 24", "24", 1.0),
    ("24.5", "24", 0.0),
])
def test_final_number_reward(completion, answer, reward):
  assert rewards.get("final_number")(["q"], [completion], answer=[answer]) == [reward]
