"""MATH and MATH-500 tasks from upstream-format files: splits, filters, Minerva prompts, solutions that score 1."""

import pytest

from rest_jax import data
from rest_jax import rewards
from rest_jax import tasks
from rest_jax.data import fixtures
from rest_jax.rewards import math as math_rewards
from rest_jax.tasks import hendrycks_math
from rest_jax.tasks import prompts


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  return {name: fixtures.write(name, root / name) for name in ("math", "math500", "gsm8k")}


@pytest.fixture
def data_dir(tmp_path):
  return str(tmp_path / "cache")


def _scores(task, problems, completions):
  return rewards.get(task.reward)([p.prompt for p in problems], completions, **tasks.reward_fields(problems))


@pytest.mark.parametrize("text,boxed", [
    (r"so $x = \boxed{2}$.", "2"),
    (r"$\boxed{1}$ and then $\boxed{\frac{14}{3}}$", r"\frac{14}{3}"),
    (r"$\boxed{\left( 3, \frac{\pi}{2} \right)}$", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"the answer is $\fbox{7}$", "7"),
    (r"so it is $\boxed 5$.", "5"),
    (r"no box here", None),
    (r"$\boxed{1 + {2}$", None),
])
def test_last_boxed(text, boxed):
  assert hendrycks_math.last_boxed(text) == boxed


def test_splits_fields_and_human_solutions(paths, data_dir):
  upstream = data.load("math", paths["math"], data_dir=data_dir)
  task = tasks.get("math", path=paths["math"], data_dir=data_dir, num_val=1)
  num_train = len(upstream["train"])
  assert {s: len(ps) for s, ps in task.splits.items()} == {"human": num_train - 1, "train": num_train - 1, "val": 1,
                                                           "test": len(upstream["test"])}
  by_problem = {r["problem"]: r for split in upstream.values() for r in split}
  for split, problems in task.splits.items():
    for p in problems:
      record = by_problem[p.prompt.rsplit("Problem:\n", 1)[1].removesuffix("\n\nSolution:\n")]
      level = record["level"].removeprefix("Level ")  # "Level 3" is 3; MATH's few "Level ?" have no level.
      assert dict(p.fields) == {"answer": hendrycks_math.last_boxed(record["solution"]),
                                "level": int(level) if level.isdigit() else None}
      assert p.prompt.count("I hope it is correct.") == 4
      assert (p.solution is not None) == (split == "human")
  human = task.split("human")
  for p in human:
    assert p.solution.endswith("\n" + prompts.minerva_final_answer(p.fields["answer"]))
  assert _scores(task, human, [p.solution for p in human]) == [1.0] * len(human)
  assert _scores(task, human, [prompts.minerva_final_answer("-987654")] * len(human)) == [0.0] * len(human)
  assert task.stop_strings == ("\n\nProblem:",) and task.reward == "math"


def test_extract_answer_normalises_for_voting(paths, data_dir):
  task = tasks.get("math", path=paths["math"], data_dir=data_dir, num_val=0)
  for p in task.split("human"):
    assert task.extract_answer(p.solution) == math_rewards.normalize_answer(p.fields["answer"])
  assert task.extract_answer("I give up.") is None


def test_level_and_subject_filters(paths, data_dir):
  upstream = data.load("math", paths["math"], data_dir=data_dir)
  level3 = tasks.get("math", path=paths["math"], data_dir=data_dir, num_val=0, levels=[3])
  expected = sum(r["level"] == "Level 3" for r in upstream["train"])
  assert 0 < len(level3.split("train")) == expected < len(upstream["train"])
  algebra = tasks.get("math", path=paths["math"], data_dir=data_dir, num_val=0, subjects=["Algebra"])
  assert 0 < len(algebra.split("test")) == sum(r["type"] == "Algebra" for r in upstream["test"])
  for kwargs, match in ((dict(levels=[6]), "levels"), (dict(subjects=["Art"]), "subjects"),
                        (dict(subjects="Algebra"), "subjects"), (dict(num_shots=5), "num_shots")):
    with pytest.raises(ValueError, match=match):
      tasks.get("math", path=paths["math"], data_dir=data_dir, **kwargs)


def test_math500_and_gsm8k_evaluation_splits(paths, data_dir):
  task = tasks.get("math", path=paths["math"], data_dir=data_dir, num_val=0, math500_path=paths["math500"],
                   gsm8k_path=paths["gsm8k"], num_gsm8k=3)
  math500 = data.load("math500", paths["math500"], data_dir=data_dir)["test"]
  assert [p.fields["answer"] for p in task.split("math500")] == [r["answer"] for r in math500]
  assert len(task.split("gsm8k")) == 3
  for split in ("math500", "gsm8k"):
    problems = task.split(split)
    assert all(p.prompt.endswith("\n\nSolution:\n") and p.prompt.count("Problem:\n") == 5 for p in problems)
    right = [f"Done.\n{prompts.minerva_final_answer(p.fields['answer'])}" for p in problems]
    assert _scores(task, problems, right) == [1.0] * len(problems)
  assert all(p.fields["answer"].lstrip("-").isdigit() for p in task.split("gsm8k"))
  alone = tasks.get("math500", path=paths["math500"], data_dir=data_dir, num_shots=0)
  assert list(alone.splits) == ["test"] and len(alone.split("test")) == len(math500)
  assert alone.split("test")[0].prompt == f"Problem:\n{math500[0]['problem']}\n\nSolution:\n"
  plain = tasks.get("math", path=paths["math"], data_dir=data_dir, num_val=0)
  assert list(plain.splits) == ["human", "train", "val", "test"]


def test_bad_paths_raise(tmp_path, data_dir):
  with pytest.raises(ValueError, match="math"):
    tasks.get("math", path=str(tmp_path / "nowhere"), data_dir=data_dir)
  with pytest.raises(ValueError, match="test.jsonl"):
    tasks.get("math500", path=str(tmp_path / "nowhere"), data_dir=data_dir)
