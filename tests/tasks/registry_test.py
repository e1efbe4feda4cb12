"""Tests for the task registry and the task interface."""

import ml_collections
import pytest

from rest_jax import tasks


def _tiny_task(size=2):
  problems = tuple(
      tasks.Problem(id=f"test/{i}", prompt=f"p{i}", fields={"answer": str(i)})
      for i in range(size)
  )
  return tasks.Task(
      name="tiny",
      reward="arithmetic",
      splits={"test": problems},
      extract_answer=lambda text: text,
  )


@tasks.register("_registry_test_tiny")
def _tiny_factory(size=2):
  return _tiny_task(size)


def test_get_passes_arguments_to_the_factory():
  assert "_registry_test_tiny" in tasks.names()
  assert len(tasks.get("_registry_test_tiny", size=5).split("test")) == 5


def test_unknown_task_lists_known_ones():
  with pytest.raises(ValueError, match="unknown task 'nope'.*arithmetic"):
    tasks.get("nope")


def test_registering_another_factory_under_a_taken_name_fails():
  with pytest.raises(ValueError, match="already registered"):
    tasks.register("arithmetic")(_tiny_factory)


def test_reregistering_the_same_factory_is_allowed():
  assert tasks.register("_registry_test_tiny")(_tiny_factory) is _tiny_factory


def test_unknown_split_names_the_available_ones():
  with pytest.raises(ValueError, match="no split 'train'; available.*: test"):
    _tiny_task().split("train")


def test_reward_fields_are_columns_in_problem_order():
  problems = [
      tasks.Problem(id="a", prompt="x", fields={"answer": "1", "level": 2}),
      tasks.Problem(id="b", prompt="y", fields={"answer": "3", "level": 4}),
  ]
  assert tasks.reward_fields(problems) == {
      "answer": ["1", "3"], "level": [2, 4]
  }
  assert tasks.reward_fields([]) == {}


def test_reward_fields_reject_mismatched_keys():
  problems = [
      tasks.Problem(id="a", prompt="x", fields={"answer": "1"}),
      tasks.Problem(id="b", prompt="y", fields={"solution": "3"}),
  ]
  with pytest.raises(ValueError, match="problem 'b' has fields"):
    tasks.reward_fields(problems)


def test_from_config_adds_transfer_splits_graded_by_their_own_task():
  small = dict(num_human=4, num_train=4, num_val=2, num_test=3, num_transfer=2)
  config = ml_collections.ConfigDict(dict(
      name="arithmetic", kwargs=dict(seed=0, **small),
      transfer={"programs": dict(name="list_programs", kwargs=dict(seed=1, **small))}))
  task = tasks.from_config(config)
  programs = tasks.get("list_programs", seed=1, **small)
  assert task.split("programs") == programs.split("test")
  assert task.grading("programs").reward == "humaneval"
  assert task.grading("programs").stop_strings == programs.stop_strings
  assert task.grading("test") is task and task.reward == "arithmetic"
  assert tasks.from_config(ml_collections.ConfigDict(dict(name="arithmetic", kwargs=dict(seed=0, **small)))).graders == {}

  config.transfer = {"test": dict(name="list_programs", kwargs=dict(seed=1, **small))}
  with pytest.raises(ValueError, match="already has a split 'test'"):
    tasks.from_config(config)
  config.transfer = {"programs": dict(kwargs={})}
  with pytest.raises(ValueError, match="task.transfer.programs: needs 'name'"):
    tasks.from_config(config)
