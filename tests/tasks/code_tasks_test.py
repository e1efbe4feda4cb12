"""HumanEval, MBPP and APPS tasks: splits from the upstream files, fields the rewards read, solutions that pass."""

import json

import pytest

from rest_jax import data
from rest_jax import rewards
from rest_jax import tasks
from rest_jax.data import fixtures
from rest_jax.tasks import code_tasks


def _scores(task, problems, completions):
  return rewards.get(task.reward)([p.prompt for p in problems], completions, **tasks.reward_fields(problems))


def test_humaneval_has_164_problems_that_continue_their_prompt():
  task = tasks.get("humaneval")
  test = task.split("test")
  assert list(task.splits) == ["test"] and len(test) == 164
  assert test[0].id == "test/HumanEval/0" and test[-1].id == "test/HumanEval/163"
  assert all(p.prompt == p.fields["prompt"] and set(p.fields) == {"prompt", "test", "entry_point"} for p in test)
  assert task.stop_strings == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
  assert task.extract_answer("    return 1  \n\n") == "    return 1"


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
  task = tasks.get("humaneval", num_test=3, seed=1)
  test = task.split("test")
  assert len(test) == 3 and [p.id for p in test] == [p.id for p in tasks.get("humaneval", num_test=3, seed=1)
                                                      .split("test")]
  assert _scores(task, test, [p.solution for p in test]) == [1.0] * 3
  assert _scores(task, test, ["    return None\n"] * 3) == [0.0] * 3


@pytest.fixture(scope="module")
def mbpp_path(tmp_path_factory):
  return fixtures.write("mbpp", tmp_path_factory.mktemp("mbpp"))


def test_mbpp_splits_prompts_and_fields(mbpp_path, tmp_path):
  task = tasks.get("mbpp", path=mbpp_path, data_dir=str(tmp_path))
  upstream = data.load("mbpp", mbpp_path, data_dir=str(tmp_path))
  sizes = {split: len(problems) for split, problems in task.splits.items()}
  assert sizes == {"human": len(upstream["train"]), "train": len(upstream["train"]),
                   "val": len(upstream["validation"]), "test": len(upstream["test"])}
  assert min(sizes.values()) >= 2
  assert [p.id for p in task.split("test")][:2] == ["test/test/011", "test/test/012"]
  assert task.stop_strings == ("[DONE]",) and task.reward == "mbpp"
  for p in task.split("test"):
    assert p.prompt.endswith("[BEGIN]\n") and p.prompt.count("[DONE]") == 3 and p.solution is None
    assert set(p.fields) == {"test_list", "test_setup_code"}
    assert "\n".join(p.fields["test_list"]) + "\n[BEGIN]\n" in p.prompt
  human = task.split("human")
  assert all(p.solution and "\r" not in p.solution and p.solution.endswith("\n") for p in human)
  assert _scores(task, human, [p.solution for p in human]) == [1.0] * len(human)
  assert _scores(task, human, ["def nothing():\n  pass\n"] * len(human)) == [0.0] * len(human)


def test_mbpp_shots_caps_and_the_sanitized_release(mbpp_path, tmp_path):
  zero = tasks.get("mbpp", path=mbpp_path, data_dir=str(tmp_path), num_shots=0, num_test=2, seed=3)
  test = zero.split("test")
  assert len(test) == 2 and all(p.prompt.startswith("You are an expert") and "[DONE]" not in p.prompt for p in test)
  sanitized = tasks.get("mbpp", path=fixtures.write("mbpp_sanitized", tmp_path / "s"), data_dir=str(tmp_path))
  human = sanitized.split("human")
  assert human and _scores(sanitized, human, [p.solution for p in human]) == [1.0] * len(human)
  with pytest.raises(ValueError, match="num_shots"):
    tasks.get("mbpp", path=mbpp_path, data_dir=str(tmp_path), num_shots=4)
  with pytest.raises(ValueError, match="mbpp.jsonl"):
    tasks.get("mbpp", path=str(tmp_path / "nowhere"), data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="humaneval"):
    tasks.get("humaneval", path=str(tmp_path / "nowhere.jsonl"))


@pytest.mark.parametrize("layout", ["tree", "jsonl"])
def test_apps_splits_fields_and_solutions(tmp_path, layout):
  path = fixtures.write("apps", tmp_path, layout=layout)
  task = tasks.get("apps", path=path, data_dir=str(tmp_path / "cache"), difficulties=None, num_val=0)
  upstream = fixtures.apps_problems()
  graded = [p for p in upstream["train"] if p["input_output"] is not None]
  assert len(task.split("train")) == len(graded) < len(upstream["train"])  # Untestable problems are left out.
  assert len(task.split("test")) == len(upstream["test"]) and task.split("val") == ()
  assert task.stop_strings == ("\nQUESTION:",)
  for p in task.split("test"):
    io = json.loads(p.fields["input_output"])
    assert p.prompt.startswith("\nQUESTION:\n") and p.prompt.endswith("\nANSWER:\n")
    assert ("Use Call-Based format" if io.get("fn_name") else "Use Standard Input format") in p.prompt
  call_based = next(p for p in task.split("test") if "fn_name" in p.fields["input_output"])
  starter = next(u["starter_code"] for u in upstream["test"] if u["input_output"].get("fn_name"))
  assert f"\n{starter}\nUse Call-Based format\nANSWER:\n" in call_based.prompt
  human = task.split("human")
  assert human and _scores(task, human, [p.solution for p in human]) == [1.0] * len(human)
  test = task.split("test")
  assert _scores(task, test, ["print('no')\n"] * len(test)) == [0.0] * len(test)


def test_apps_difficulty_filter_few_shot_and_errors(tmp_path):
  path = fixtures.write("apps", tmp_path)
  data_dir = str(tmp_path / "cache")
  intro = tasks.get("apps", path=path, data_dir=data_dir, num_val=0)
  upstream = fixtures.apps_problems()
  assert len(intro.split("test")) == sum(p["difficulty"] == "introductory" for p in upstream["test"])
  shot = tasks.get("apps", path=path, data_dir=data_dir, difficulties=None, num_val=0, num_shots=1)
  exemplar = next(p for p in tasks.get("apps", path=path, data_dir=data_dir, difficulties=None, num_val=0)
                  .split("human") if p.solution in shot.split("test")[0].prompt)
  assert shot.split("test")[0].prompt.startswith(exemplar.prompt + exemplar.solution + "\n\nQUESTION:")
  assert exemplar.id not in {p.id for p in shot.split("train")}
  with pytest.raises(ValueError, match="difficulties"):
    tasks.get("apps", path=path, data_dir=data_dir, difficulties=("easy",))
  with pytest.raises(ValueError, match="apps"):
    tasks.get("apps", path=str(tmp_path / "nowhere"), data_dir=data_dir)


def test_identical_programs_vote_together():
  assert code_tasks.program_answer("```python\ndef f():  \n\n  return 1\n```\n") == "def f():\n  return 1"
  assert code_tasks.program_answer("def f():\n  return 1\n") == "def f():\n  return 1"
  assert code_tasks.program_answer("```python\n```") is None and code_tasks.program_answer("  \n") is None
