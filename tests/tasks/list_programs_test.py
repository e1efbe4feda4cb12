"""Tests for the embedded program-synthesis task."""

import pytest

from rest_jax import rewards
from rest_jax import tasks
from rest_jax.tasks import list_programs

_SIZES = dict(num_human=40, num_train=60, num_val=10, num_test=30, num_transfer=10)


def test_splits_sizes_disjoint_and_deterministic():
  task = tasks.get("list_programs", seed=3, **_SIZES)
  assert {name: len(task.split(name)) for name in task.splits} == {
      "human": 40, "train": 60, "val": 10, "test": 30, "transfer": 10}
  prompts = [p.prompt for split in task.splits.values() for p in split]
  assert len(set(prompts)) == len(prompts)
  again = tasks.get("list_programs", seed=3, **_SIZES)
  assert again.splits == task.splits
  other = tasks.get("list_programs", seed=4, **_SIZES)
  assert [p.prompt for p in other.split("test")] != [p.prompt for p in task.split("test")]
  # Evaluation splits do not move when the training sizes change.
  bigger = tasks.get("list_programs", seed=3, **{**_SIZES, "num_train": 90, "num_human": 5})
  assert bigger.split("test") == task.split("test")


def test_problem_shape_and_transfer_length():
  task = tasks.get("list_programs", seed=0, **_SIZES)
  for problem in task.split("human"):
    assert problem.prompt.startswith('def solve(xs):\n    """') and problem.prompt.endswith('"""\n')
    assert problem.solution.splitlines()[-1].startswith("    return ")
    assert problem.fields["prompt"] == problem.prompt and problem.fields["entry_point"] == "solve"
    assert problem.fields["test"].count("assert candidate(") == 6
    assert "assert candidate([]) ==" in problem.fields["test"]
  assert all(p.solution is None for p in task.split("test"))
  for problem in task.split("transfer"):
    assert problem.prompt.count(",") == 4  # four transformations and the reduction
  for problem in task.split("train"):
    assert 1 <= problem.prompt.count(",") <= 3


def test_hidden_tests_follow_the_described_steps():
  steps = [list_programs._transforms(3)[3], list_programs._FIXED_TRANSFORMS[0], list_programs._REDUCTIONS[0]]
  assert list_programs.format_prompt(steps) == (
      'def solve(xs):\n    """keep numbers greater than 3, square each, return the sum"""\n')
  assert list_programs.run_pipeline(steps, [1, 4, 5, 2]) == 16 + 25
  check = list_programs._check_function(steps, [[], [4, 9]])
  assert "assert candidate([]) == 0" in check and "assert candidate([4, 9]) == 97" in check


def test_human_programs_pass_the_sandboxed_reward_and_wrong_ones_fail():
  task = tasks.get("list_programs", seed=1, **_SIZES)
  human = list(task.split("human"))[:12]
  reward = rewards.get(task.reward)
  fields = tasks.reward_fields(human)
  prompts = [p.prompt for p in human]
  assert reward(prompts, [p.solution for p in human], **fields) == [1.0] * len(human)
  # The last line returns the wrong thing, or a step is dropped: the hidden tests catch both.
  wrong_return = [p.solution.rsplit("    return", 1)[0] + "    return 12345\n" for p in human]
  dropped_step = ["".join(p.solution.splitlines(keepends=True)[1:]) for p in human]
  assert reward(prompts, wrong_return, **fields) == [0.0] * len(human)
  # Every step changes some hidden test's result (problems where one does not are redrawn).
  assert reward(prompts, dropped_step, **fields) == [0.0] * len(human)


def test_every_transformation_is_checked_by_the_hidden_tests():
  task = tasks.get("list_programs", seed=2, **_SIZES)
  for problem in task.split("human"):
    assert "sort the list, return the sum" not in problem.prompt
  steps = [list_programs._FIXED_TRANSFORMS[5], list_programs._REDUCTIONS[0]]  # sort, then sum: sorting never matters
  assert not list_programs._every_step_matters(steps, [[3, 1, 2], [5, 4]])
  steps = [list_programs._FIXED_TRANSFORMS[5], list_programs._REDUCTIONS[4]]  # sort, then first: it does
  assert list_programs._every_step_matters(steps, [[3, 1, 2], [5, 4]])


def test_program_key_ignores_blank_lines_and_trailing_spaces():
  assert list_programs.program_key("    xs = xs[::-1]  \n\n    return xs\n") == "    xs = xs[::-1]\n    return xs"
  assert list_programs.program_key("\n  \n") is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_transforms=3, max_transforms=2), "min_transforms"),
    (dict(num_tests=1), "num_tests"),
    (dict(num_test=-1), "num_test"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    tasks.get("list_programs", **kwargs)
