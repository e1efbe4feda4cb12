"""The GSM8K task from upstream-format files: splits, 8-shot prompts, human solutions that the reward accepts."""

import pytest

from rest_jax import data
from rest_jax import rewards
from rest_jax import tasks
from rest_jax.data import fixtures
from rest_jax.rewards import math as math_rewards
from rest_jax.tasks import gsm8k


@pytest.fixture(scope="module")
def path(tmp_path_factory):
  return fixtures.write("gsm8k", tmp_path_factory.mktemp("gsm8k"))


@pytest.fixture
def data_dir(tmp_path):
  return str(tmp_path / "cache")


def _scores(task, problems, completions):
  return rewards.get(task.reward)([p.prompt for p in problems], completions, **tasks.reward_fields(problems))


def test_splits_hold_out_val_from_train(path, data_dir):
  upstream = data.load("gsm8k", path, data_dir=data_dir)
  task = tasks.get("gsm8k", path=path, data_dir=data_dir, num_val=2)
  sizes = {split: len(problems) for split, problems in task.splits.items()}
  num_train = len(upstream["train"])
  assert sizes == {"human": num_train - 2, "train": num_train - 2, "val": 2, "test": len(upstream["test"])}
  val = {p.prompt for p in task.split("val")}
  assert not val & {p.prompt for p in task.split("train")} and not val & {p.prompt for p in task.split("human")}
  assert [p.prompt for p in task.split("human")] == [p.prompt for p in task.split("train")]
  assert len({p.id for s in task.splits.values() for p in s}) == sum(sizes.values())
  again = tasks.get("gsm8k", path=path, data_dir=data_dir, num_val=2)
  assert [p.id for p in again.split("val")] == [p.id for p in task.split("val")]
  assert len(tasks.get("gsm8k", path=path, data_dir=data_dir, num_val=0, num_train=2, num_test=1).split("test")) == 1


def test_prompts_fields_and_stop_strings(path, data_dir):
  upstream = data.load("gsm8k", path, data_dir=data_dir)
  task = tasks.get("gsm8k", path=path, data_dir=data_dir, num_val=1)
  for p, record in zip(task.split("test"), upstream["test"], strict=True):
    assert p.prompt.endswith(f"\n\nQ: {record['question']}\nA:") and p.prompt.count("\nA: ") == 8
    assert dict(p.fields) == {"answer": record["answer"]} and p.solution is None
  assert task.stop_strings == ("\n\nQ:",) and task.reward == "gsm8k"
  zero = tasks.get("gsm8k", path=path, data_dir=data_dir, num_val=1, num_shots=0)
  assert zero.split("test")[0].prompt == f"Q: {upstream['test'][0]['question']}\nA:"


def test_human_solutions_match_the_exemplars_and_score_one(path, data_dir):
  task = tasks.get("gsm8k", path=path, data_dir=data_dir, num_val=0)
  human = task.split("human")
  assert human[0].solution == (" Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in "
                               "April and May. The answer is 72.")
  for p in human:
    assert "<<" not in p.solution and "####" not in p.solution and "\n" not in p.solution
    assert p.solution.endswith(f" The answer is {math_rewards.gsm8k_reference(p.fields['answer'])}.")
    assert task.extract_answer(p.solution) == math_rewards.gsm8k_reference(p.fields["answer"])
  assert _scores(task, human, [p.solution for p in human]) == [1.0] * len(human)
  assert _scores(task, human, [" I do not know. The answer is 123456789."] * len(human)) == [0.0] * len(human)


def test_human_solution_of_an_upstream_answer():
  assert gsm8k.human_solution("He has 3+4=<<3+4=7>>7 apples\nSo 7*2=<<7*2=14>>14\n#### 14") == (
      " He has 3+4=7 apples So 7*2=14 The answer is 14.")


def test_bad_arguments_raise(path, data_dir, tmp_path):
  with pytest.raises(ValueError, match="num_shots"):
    tasks.get("gsm8k", path=path, data_dir=data_dir, num_shots=9)
  with pytest.raises(ValueError, match="num_val"):
    tasks.get("gsm8k", path=path, data_dir=data_dir, num_val=-1)
  with pytest.raises(ValueError, match="template"):
    tasks.get("gsm8k", path=path, data_dir=data_dir, template="{problem}")
  with pytest.raises(ValueError, match="train.jsonl"):
    tasks.get("gsm8k", path=str(tmp_path / "nowhere"), data_dir=data_dir)
