"""Tests for the arithmetic rewards on hand-written completions."""

import pytest

from rest_jax import rewards
from rest_jax.rewards import arithmetic

PROMPT = "Compute 37+15-8+21.\n"
STEPS = "37+15=52\n52-8=44\n44+21=65"
SOLUTION = STEPS + "\nAnswer: 65"
REWARD_NAMES = ("arithmetic", "arithmetic_answer", "arithmetic_steps")


def _score(name, completions, answer="65", prompt=PROMPT):
  return rewards.get(name)(
      [prompt] * len(completions),
      completions,
      answer=[answer] * len(completions),
  )


def test_parse_prompt_and_solution_steps_invert_the_format():
  operands, operators = arithmetic.parse_prompt(PROMPT)
  assert operands == [37, 15, 8, 21]
  assert operators == ["+", "-", "+"]
  steps = arithmetic.solution_steps(operands, operators)
  assert steps == STEPS.split("\n")


@pytest.mark.parametrize(
    "prompt",
    ["Compute 37.\n", "Compute 37+15.", "compute 37+15.\n", "Compute 3*5.\n",
     "Compute 37 + 15.\n", "Compute -3+5.\n"],
)
def test_parse_prompt_rejects_other_text(prompt):
  with pytest.raises(ValueError, match="not an arithmetic prompt"):
    arithmetic.parse_prompt(prompt)


def test_names_of_the_three_arithmetic_rewards():
  assert set(REWARD_NAMES) <= set(rewards.names())


# Each row: completion, then its reward under "arithmetic" (verified
# derivation), "arithmetic_answer" (final answer only) and "arithmetic_steps"
# (1.0 if verified, else 0.5 x the share of reference steps matched in order).
_CASES = [
    # Verified derivations.
    (SOLUTION, 1.0, 1.0, 1.0),
    # Prose lines around the steps are not step lines and are ignored.
    ("Let us add.\n" + SOLUTION + "\nThat is all.", 1.0, 1.0, 1.0),
    # Only the last "Answer:" counts.
    ("Answer: 64\n" + SOLUTION, 1.0, 1.0, 1.0),
    ("Answer: 65.\n" + STEPS + "\nAnswer:65.", 1.0, 1.0, 1.0),
    # Spaces, tabs, a CR and leading zeros inside step and answer lines.
    (" 37 + 15 = 052 \n\t52-08=44\n44 +21= 65\r\nAnswer: 065", 1.0, 1.0, 1.0),
    # Lucky guesses: right answer, derivation missing or wrong.
    ("Answer: 65", 0.0, 1.0, 0.0),
    ("Answer: 065", 0.0, 1.0, 0.0),
    ("37+15=52\n52-8=43\n43+21=65\nAnswer: 65", 0.0, 1.0, 0.5 * 1 / 3),
    ("37+15=53\n52-8=44\n44+21=65\nAnswer: 65", 0.0, 1.0, 0.5 * 2 / 3),
    # A wrong step followed by its own right arithmetic is still wrong.
    ("37+15=52\n52-8=45\n45+21=66\nAnswer: 65", 0.0, 1.0, 0.5 * 1 / 3),
    # A missing step.
    ("37+15=52\n44+21=65\nAnswer: 65", 0.0, 1.0, 0.5 * 2 / 3),
    ("52-8=44\n44+21=65\nAnswer: 65", 0.0, 1.0, 0.5 * 2 / 3),
    # An extra step line, even a true one, or a repeated step.
    (STEPS + "\n65+0=65\nAnswer: 65", 0.0, 1.0, 0.5),
    ("37+15=52\n" + SOLUTION, 0.0, 1.0, 0.5),
    (SOLUTION + "\n1+1=2", 0.0, 1.0, 0.5),
    # Right steps in the wrong order: the longest in-order match counts.
    ("52-8=44\n37+15=52\n44+21=65\nAnswer: 65", 0.0, 1.0, 0.5 * 2 / 3),
    ("44+21=65\n52-8=44\n37+15=52\nAnswer: 65", 0.0, 1.0, 0.5 * 1 / 3),
    # Terms regrouped from left to right are not the problem's steps.
    ("15+37=52\n52-8=44\n44+21=65\nAnswer: 65", 0.0, 1.0, 0.5 * 2 / 3),
    ("15+37=52\n8+21=29\n52-29=23\nAnswer: 65", 0.0, 1.0, 0.0),
    # Steps must stand on lines of their own.
    ("37+15=52 52-8=44 44+21=65\nAnswer: 65", 0.0, 1.0, 0.0),
    ("Step 1: 37+15=52\nStep 2: 52-8=44\nStep 3: 44+21=65\nAnswer: 65",
     0.0, 1.0, 0.0),
    (STEPS.replace("\n", " ") + " Answer: 65", 0.0, 1.0, 0.0),
    # Only ASCII digits are digits.
    ("37+15=52\n52-8=44\n44+21=6\u0665\nAnswer: 65", 0.0, 1.0, 0.5 * 2 / 3),
    # Right steps, wrong or missing answer line.
    (STEPS + "\nAnswer: 66", 0.0, 0.0, 0.5),
    (STEPS, 0.0, 0.0, 0.5),
    (SOLUTION + "\nAnswer: 64", 0.0, 0.0, 0.5),
    (STEPS + "\nAnswer: 65.5", 0.0, 0.0, 0.5),
    (STEPS + "\nAnswer: -65", 0.0, 0.0, 0.5),
    (STEPS + "\nanswer: 65", 0.0, 0.0, 0.5),
    (STEPS + "\nAnswer: 6a5", 0.0, 0.0, 0.5),
    # Partial derivations with a wrong answer.
    ("37+15=52\n52-8=45\n45+21=66\nAnswer: 66", 0.0, 0.0, 0.5 * 1 / 3),
    ("37+15=52\n37+15=52\nso\n52-8=44\nAnswer: 0", 0.0, 0.0, 0.5 * 2 / 3),
    # Garbled text.
    ("\u0000garbled\n\n", 0.0, 0.0, 0.0),
    ("=+-\n37+=52\n+15=52\n37+15=\nAnswer:", 0.0, 0.0, 0.0),
    ("", 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("completion, verified, answer_only, steps", _CASES)
def test_rewards_on_hand_written_completions(
    completion, verified, answer_only, steps
):
  assert _score("arithmetic", [completion]) == [verified]
  assert _score("arithmetic_answer", [completion]) == [answer_only]
  assert _score("arithmetic_steps", [completion]) == [pytest.approx(steps)]


def test_batch_scores_match_the_one_at_a_time_scores():
  completions = [case[0] for case in _CASES]
  for column, name in enumerate(REWARD_NAMES, start=1):
    expected = [pytest.approx(case[column]) for case in _CASES]
    assert _score(name, completions) == expected, name


def test_each_completion_is_checked_against_its_own_prompt():
  prompts = ["Compute 3+4.\n", "Compute 9-2.\n", "Compute 2+5.\n"]
  solutions = ["3+4=7\nAnswer: 7", "9-2=7\nAnswer: 7", "2+5=7\nAnswer: 7"]
  answers = [7, 7, 7]  # Integers are accepted as well as strings.
  verified = rewards.get("arithmetic")
  assert verified(prompts, solutions, answer=answers) == [1.0, 1.0, 1.0]
  # Every derivation is true and ends in 7, but each belongs to another prompt.
  shifted = solutions[1:] + solutions[:1]
  assert verified(prompts, shifted, answer=answers) == [0.0, 0.0, 0.0]
  assert rewards.get("arithmetic_answer")(
      prompts, shifted, answer=answers
  ) == [1.0, 1.0, 1.0]
  assert rewards.get("arithmetic_steps")(
      prompts, shifted, answer=answers
  ) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_non_integer_answer_field_is_rejected(name):
  with pytest.raises(ValueError, match="field 'answer' must hold integers"):
    _score(name, ["Answer: 65"], answer="sixty-five")


@pytest.mark.parametrize("name", ["arithmetic", "arithmetic_steps"])
def test_step_rewards_need_an_arithmetic_prompt(name):
  with pytest.raises(ValueError, match="not an arithmetic prompt"):
    rewards.get(name)(["What is 2+2?"], ["2+2=4\nAnswer: 4"], answer=["4"])


def test_answer_reward_ignores_the_prompt():
  assert rewards.get("arithmetic_answer")(
      ["What is 2+2?"], ["Answer: 4"], answer=["4"]
  ) == [1.0]


def test_rewards_on_truncations_of_the_solution():
  completions = [SOLUTION[:cut] for cut in range(len(SOLUTION) + 1)]
  steps = _score("arithmetic_steps", completions)
  assert all(0.0 <= s <= 1.0 for s in steps)
  # Truncating the worked solution never increases the reward.
  assert steps == sorted(steps)
  # Only the whole solution is verified; "Answer: 6" is the one truncation
  # with every step and a wrong answer.
  assert _score("arithmetic", completions) == [0.0] * len(SOLUTION) + [1.0]
  assert steps[-1] == 1.0 and steps[-2] == 0.5


def test_steps_reward_is_one_exactly_when_the_derivation_is_verified():
  completions = [case[0] for case in _CASES]
  verified = _score("arithmetic", completions)
  answer_only = _score("arithmetic_answer", completions)
  steps = _score("arithmetic_steps", completions)
  assert [s == 1.0 for s in steps] == [v == 1.0 for v in verified]
  assert all(v <= a for v, a in zip(verified, answer_only))
  assert all(s <= arithmetic.STEP_CREDIT for s, v in zip(steps, verified)
             if v == 0.0)
