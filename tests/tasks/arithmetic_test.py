"""Tests for the arithmetic task generator."""

import itertools
import re

import pytest

from rest_jax import rewards
from rest_jax import tasks
from rest_jax.rewards import arithmetic as arithmetic_rewards
from rest_jax.tasks import arithmetic

_SMALL = dict(
    num_human=40, num_train=200, num_val=30, num_test=50, num_transfer=30
)


@pytest.fixture(scope="module")
def default_task():
  return tasks.get("arithmetic")


def _terms(prompt):
  """Operands and signs of a prompt, parsed independently of the package."""
  match = re.fullmatch(r"Compute ([0-9+-]+)\.\n", prompt)
  assert match, prompt
  terms = re.findall(r"([+-]?)([0-9]+)", match.group(1))
  assert "".join(sign + digits for sign, digits in terms) == match.group(1)
  return [(sign or "+", int(digits)) for sign, digits in terms]


def _running_totals(prompt):
  totals = []
  total = 0
  for sign, operand in _terms(prompt):
    total = total + operand if sign == "+" else total - operand
    totals.append(total)
  return totals


def test_default_task_is_registered_with_all_splits(default_task):
  assert "arithmetic" in tasks.names()
  assert default_task.name == "arithmetic"
  assert default_task.reward == "arithmetic"
  assert list(default_task.splits) == [
      "human", "train", "val", "test", "transfer"
  ]
  sizes = {name: len(split) for name, split in default_task.splits.items()}
  assert sizes == {
      "human": 1000, "train": 8000, "val": 500, "test": 1000, "transfer": 500
  }


def test_no_prompt_appears_twice(default_task):
  prompts = [
      p.prompt for problems in default_task.splits.values() for p in problems
  ]
  assert len(set(prompts)) == len(prompts)


def test_ids_name_split_and_index(default_task):
  for split, problems in default_task.splits.items():
    assert [p.id for p in problems] == [
        f"{split}/{i:06d}" for i in range(len(problems))
    ]


def test_operands_and_running_totals_stay_in_bounds(default_task):
  for split, problems in default_task.splits.items():
    low, high = (5, 6) if split == "transfer" else (2, 4)
    for problem in problems:
      terms = _terms(problem.prompt)
      assert low <= len(terms) <= high
      assert terms[0][0] == "+" and not problem.prompt.startswith("Compute +")
      assert all(1 <= operand <= 99 for _, operand in terms)
      totals = _running_totals(problem.prompt)
      assert all(0 <= t <= 999 for t in totals), problem
      assert problem.fields == {"answer": str(totals[-1])}


def test_every_operand_count_occurs(default_task):
  for split, counts in (("train", {2, 3, 4}), ("transfer", {5, 6})):
    seen = {len(_terms(p.prompt)) for p in default_task.split(split)}
    assert seen == counts


def test_human_solutions_recompute_from_the_prompt(default_task):
  for problem in default_task.split("human"):
    lines = problem.solution.split("\n")
    terms = _terms(problem.prompt)
    totals = _running_totals(problem.prompt)
    assert len(lines) == len(terms)
    for line, (sign, operand), before, after in zip(
        lines, terms[1:], totals, totals[1:]
    ):
      assert line == f"{before}{sign}{operand}={after}"
    assert lines[-1] == f"Answer: {totals[-1]}"
    assert arithmetic.worked_solution(problem.prompt) == problem.solution


def test_only_the_human_split_has_solutions(default_task):
  assert all(p.solution for p in default_task.split("human"))
  for split in ("train", "val", "test", "transfer"):
    assert all(p.solution is None for p in default_task.split(split))


def test_sample_problem_format():
  assert arithmetic.worked_solution("Compute 37+15-8+21.\n") == (
      "37+15=52\n52-8=44\n44+21=65\nAnswer: 65"
  )


def test_human_solutions_earn_full_reward_under_both_rewards(default_task):
  problems = default_task.split("human")
  prompts = [p.prompt for p in problems]
  completions = [p.solution for p in problems]
  fields = tasks.reward_fields(problems)
  for name in ("arithmetic", "arithmetic_steps"):
    assert rewards.get(name)(prompts, completions, **fields) == [1.0] * len(
        problems
    )
  answers = [default_task.extract_answer(c) for c in completions]
  assert answers == fields["answer"]


def test_same_seed_same_task_other_seed_other_task():
  first = arithmetic.get_task(seed=3, **_SMALL)
  again = arithmetic.get_task(seed=3, **_SMALL)
  other = arithmetic.get_task(seed=4, **_SMALL)
  assert first.splits == again.splits
  for split in first.splits:
    assert first.split(split) != other.split(split)


def test_training_sizes_do_not_change_evaluation_splits():
  base = arithmetic.get_task(seed=1, **_SMALL)
  bigger = arithmetic.get_task(
      seed=1, **{**_SMALL, "num_train": 500, "num_human": 80}
  )
  for split in ("val", "test", "transfer"):
    assert base.split(split) == bigger.split(split)
  # Growing a split appends to it.
  num_train = len(base.split("train"))
  assert bigger.split("train")[:num_train] == base.split("train")
  assert len(bigger.split("train")) == 500


def test_exhausts_a_small_problem_space_exactly():
  max_operand, max_total, count = 3, 4, 3
  space = set()
  for signs in itertools.product("+-", repeat=count - 1):
    for operands in itertools.product(range(1, max_operand + 1), repeat=count):
      terms = list(zip(("+",) + signs, operands))
      total, valid = 0, True
      for sign, operand in terms:
        total = total + operand if sign == "+" else total - operand
        valid &= 0 <= total <= max_total
      if valid:
        body = "".join(f"{s}{o}" for s, o in terms)[1:]
        space.add(f"Compute {body}.\n")
  settings = dict(
      min_operands=count, max_operands=count, max_operand=max_operand,
      max_total=max_total, num_human=0, num_val=0, num_test=0, num_transfer=0,
  )
  task = arithmetic.get_task(num_train=len(space), **settings)
  assert {p.prompt for p in task.split("train")} == space
  with pytest.raises(ValueError, match=f"only {len(space)} distinct problems"):
    arithmetic.get_task(num_train=len(space) + 1, **settings)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seed=-1), "seed must be >= 0"),
        (dict(num_train=2.5), "num_train must be an integer, got 2.5"),
        (dict(max_operand="99"), "max_operand must be an integer"),
        (dict(num_test=-1), "num_test must be >= 0"),
        (dict(min_operands=1), "min_operands must be >= 2"),
        (
            dict(min_operands=4, max_operands=3),
            r"min_operands \(4\) must be <=",
        ),
        (
            dict(transfer_min_operands=7, transfer_max_operands=6),
            r"transfer_min_operands \(7\) must be <=",
        ),
        (dict(max_operand=0), "max_operand must be >= 1"),
        (dict(max_total=0), "max_total must be >= 1"),
        (dict(reward="exact"), "reward must be one of"),
        (
            dict(max_operand=1, max_total=1, max_operands=2, num_train=2, **{
                k: 0
                for k in ("num_human", "num_val", "num_test", "num_transfer")
            }),
            r"human\+train\+val\+test: 2 problems requested, but only 1 ",
        ),
        (
            dict(max_operand=2, max_total=2, **{
                k: 0 for k in ("num_human", "num_train", "num_val", "num_test")
            }),
            r"transfer: 500 problems requested, but only \d+ distinct problems"
            r" with 5..6 operands",
        ),
    ],
)
def test_bad_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    arithmetic.get_task(**kwargs)


def test_steps_reward_can_be_selected():
  task = arithmetic.get_task(reward="arithmetic_steps", **_SMALL)
  assert task.reward == "arithmetic_steps"


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("37+15=52\nAnswer: 52", "52"),
        ("Answer:52", "52"),
        ("Answer :  52\n", "52"),
        ("Answer: 052", "52"),
        ("Answer: -0", "0"),
        ("Answer: -12", "-12"),
        ("Answer: 65.", "65"),
        ("Answer: 1\nAnswer: 2\nthe end", "2"),
        ("Answer: 1\nAnswer: none", None),
        ("Answer: 65.5", None),
        ("Answer:", None),
        ("52-8=44", None),
        ("answer: 44", None),
        ("", None),
        ("Answer: " + "7" * 5000, "7" * 5000),
    ],
)
def test_extract_answer(default_task, completion, answer):
  assert default_task.extract_answer(completion) == answer


def test_task_and_rewards_share_one_extraction_rule(default_task):
  assert default_task.extract_answer is arithmetic_rewards.extract_final_answer
