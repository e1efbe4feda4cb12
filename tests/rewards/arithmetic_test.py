"""Tests for the arithmetic rewards on hand-written completions."""

import pytest

from rest_jax import rewards
from rest_jax.rewards import arithmetic

PROMPT = "Compute 37+15-8+21.\n"
SOLUTION = "37+15=52\n52-8=44\n44+21=65\nAnswer: 65"


def _score(name, completions, answer="65"):
  return rewards.get(name)(
      [PROMPT] * len(completions),
      completions,
      answer=[answer] * len(completions),
  )


def test_parse_prompt_and_solution_steps_invert_the_format():
  operands, operators = arithmetic.parse_prompt(PROMPT)
  assert operands == [37, 15, 8, 21]
  assert operators == ["+", "-", "+"]
  steps = arithmetic.solution_steps(operands, operators)
  assert steps == SOLUTION.split("\n")[:3]


@pytest.mark.parametrize(
    "prompt",
    ["Compute 37.\n", "Compute 37+15.", "compute 37+15.\n", "Compute 3*5.\n",
     "Compute 37 + 15.\n", "Compute -3+5.\n"],
)
def test_parse_prompt_rejects_other_text(prompt):
  with pytest.raises(ValueError, match="not an arithmetic prompt"):
    arithmetic.parse_prompt(prompt)


@pytest.mark.parametrize(
    "completion, reward",
    [
        (SOLUTION, 1.0),
        ("Answer: 65", 1.0),
        ("Answer: 065", 1.0),
        (SOLUTION + "\nThat is all.", 1.0),
        ("Answer: 64\n44+21=65\nAnswer: 65", 1.0),
        ("Answer: 65\nAnswer: 64", 0.0),
        ("37+15=52\n52-8=44\n44+21=66\nAnswer: 66", 0.0),
        ("37+15=52\n52-8=44\n44+21=65", 0.0),
        ("Answer: 6a5", 0.0),
        ("Answer: 65.5", 0.0),
        ("Answer: -65", 0.0),
        ("\u0000garbled\n\n", 0.0),
        ("", 0.0),
    ],
)
def test_binary_reward(completion, reward):
  assert _score("arithmetic", [completion]) == [reward]


def test_binary_reward_accepts_integer_answers_and_scores_a_batch():
  completions = ["Answer: 7", "Answer: 8", "no answer"]
  scores = rewards.get("arithmetic")(
      ["Compute 3+4.\n"] * 3, completions, answer=[7, 7, 7]
  )
  assert scores == [1.0, 0.0, 0.0]


def test_non_integer_answer_field_is_rejected():
  with pytest.raises(ValueError, match="field 'answer' must hold integers"):
    _score("arithmetic", ["Answer: 65"], answer="sixty-five")


@pytest.mark.parametrize(
    "completion, reward",
    [
        (SOLUTION, 1.0),
        # The right answer earns everything, worked or not.
        ("Answer: 65", 1.0),
        # Every step right, wrong or missing final answer: half.
        ("37+15=52\n52-8=44\n44+21=65\nAnswer: 66", 0.5),
        ("37+15=52\n52-8=44\n44+21=65", 0.5),
        # One slip propagates: only the first step matches.
        ("37+15=52\n52-8=45\n45+21=66\nAnswer: 66", 0.5 * 1 / 3),
        # A wrong first line costs only its own step.
        ("37+15=53\n52-8=44\n44+21=65\nAnswer: 64", 0.5 * 2 / 3),
        # Steps count only in order: the longest in-order match is one.
        ("44+21=65\n37+15=52\nAnswer: 1", 0.5 * 1 / 3),
        # Repeats of a step count once; other lines in between are ignored.
        ("37+15=52\n37+15=52\nso\n52-8=44\nAnswer: 0", 0.5 * 2 / 3),
        # Spaces and leading zeros inside a step line are tolerated.
        (" 37 + 15 = 052 \n52 - 8 = 44", 0.5 * 2 / 3),
        # Right arithmetic that is not one of the problem's steps earns 0.
        ("15+37=52\n8+21=29\n52-29=23\nAnswer: 23", 0.0),
        ("37+15=52 then 52-8=44", 0.0),
        ("", 0.0),
    ],
)
def test_steps_reward_partial_credit(completion, reward):
  assert _score("arithmetic_steps", [completion]) == [pytest.approx(reward)]


def test_steps_reward_needs_an_arithmetic_prompt():
  with pytest.raises(ValueError, match="not an arithmetic prompt"):
    rewards.get("arithmetic_steps")(["What is 2+2?"], ["4"], answer=["4"])


def test_steps_reward_is_within_unit_interval_on_a_batch():
  completions = [SOLUTION[:cut] for cut in range(len(SOLUTION) + 1)]
  scores = _score("arithmetic_steps", completions)
  assert all(0.0 <= s <= 1.0 for s in scores)
  assert scores[-1] == 1.0
  # Truncating the worked solution never increases the reward.
  assert scores == sorted(scores)
