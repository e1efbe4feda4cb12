"""Rewards for the arithmetic task, and the text format they read.

A prompt reads "Compute 37+15-8+21.\n" and a worked solution reads

  37+15=52
  52-8=44
  44+21=65
  Answer: 65

This module owns reading that format (`parse_prompt`, `extract_final_answer`)
and writing the step lines (`solution_steps`), so that the task that writes
solutions and the rewards that grade them cannot drift apart.
"""

from collections.abc import Sequence
import re

from rest_jax.rewards import registry

_PROMPT_RE = re.compile(r"Compute (\d+(?:[+-]\d+)+)\.\n", re.ASCII)
_TERM_RE = re.compile(r"([+-]?)(\d+)", re.ASCII)
_ANSWER_MARKER_RE = re.compile(r"Answer[ \t]*:")
# Possessive `\d++` so that "65.5" is rejected as a whole rather than read as
# "6" after backtracking; a sentence-ending "65." is still accepted.
_ANSWER_VALUE_RE = re.compile(r"[ \t]*(-?\d++)(?!\.\d)", re.ASCII)
_STEP_RE = re.compile(
    r"\s*(\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)\s*", re.ASCII
)

# Share of the reward that correct intermediate steps can earn without the
# right final answer; a right answer always earns the full 1.0.
STEP_CREDIT = 0.5


def parse_prompt(prompt: str) -> tuple[list[int], list[str]]:
  """Returns the operands a1..an and n-1 operators ("+" or "-") of a prompt."""
  match = _PROMPT_RE.fullmatch(prompt)
  if match is None:
    raise ValueError(f"not an arithmetic prompt: {prompt!r}")
  terms = _TERM_RE.findall(match.group(1))
  operands = [int(digits) for _, digits in terms]
  operators = [sign for sign, _ in terms[1:]]
  return operands, operators


def solution_steps(
    operands: Sequence[int], operators: Sequence[str]
) -> list[str]:
  """Returns the worked-solution lines "total op operand=new_total"."""
  if len(operators) != len(operands) - 1:
    raise ValueError(
        f"need one operator fewer than operands, got {len(operators)} operators"
        f" for {len(operands)} operands"
    )
  lines = []
  total = operands[0]
  for operator, operand in zip(operators, operands[1:]):
    if operator == "+":
      new_total = total + operand
    elif operator == "-":
      new_total = total - operand
    else:
      raise ValueError(f"operator must be '+' or '-', got {operator!r}")
    lines.append(f"{total}{operator}{operand}={new_total}")
    total = new_total
  return lines


def extract_final_answer(text: str) -> str | None:
  """Returns the integer after the last "Answer:" in `text`, canonicalised.

  Leading zeros are dropped ("065" -> "65", "-0" -> "0"). Returns None when
  there is no "Answer:" or the last one is not followed by an integer.
  """
  markers = list(_ANSWER_MARKER_RE.finditer(text))
  if not markers:
    return None
  match = _ANSWER_VALUE_RE.match(text, markers[-1].end())
  if match is None:
    return None
  return _canonical_integer(match.group(1))


def _canonical_integer(text: str) -> str | None:
  """Canonical decimal form of an integer string, or None if it is not one.

  Works on the digits rather than through int(), whose default limit on digit
  count would raise on a runaway completion.
  """
  text = text.strip()
  negative = text.startswith("-")
  digits = text[1:] if negative else text
  if not digits.isdigit() or not digits.isascii():
    return None
  digits = digits.lstrip("0") or "0"
  return "-" + digits if negative and digits != "0" else digits


def _expected_answers(answer: Sequence[object]) -> list[str]:
  expected = []
  for value in answer:
    canonical = _canonical_integer(str(value))
    if canonical is None:
      raise ValueError(f"field 'answer' must hold integers, got {value!r}")
    expected.append(canonical)
  return expected


def _completion_steps(completion: str) -> list[str]:
  """The lines of `completion` that read "x op y=z", in canonical form."""
  steps = []
  for line in completion.split("\n"):
    match = _STEP_RE.fullmatch(line)
    if match is not None:
      left, operator, right, result = match.groups()
      steps.append(
          f"{_canonical_integer(left)}{operator}{_canonical_integer(right)}"
          f"={_canonical_integer(result)}"
      )
  return steps


def _longest_common_subsequence(a: Sequence[str], b: Sequence[str]) -> int:
  previous = [0] * (len(b) + 1)
  for item in a:
    current = [0]
    for j, other in enumerate(b):
      current.append(
          previous[j] + 1 if item == other else max(previous[j + 1], current[j])
      )
    previous = current
  return previous[-1]


def _derivation_is_verified(prompt: str, completion: str, expected: str) -> bool:
  """The final answer is right AND the step lines are exactly the problem's worked steps, in order."""
  reference = solution_steps(*parse_prompt(prompt))  # Parsed first: a malformed prompt always raises.
  return extract_final_answer(completion) == expected and _completion_steps(completion) == reference


@registry.register("arithmetic")
def verified_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    answer: Sequence[object],
    **unused_fields: Sequence[object],
) -> list[float]:
  """1.0 where the final answer is `answer` and every step line checks out, else 0.0.

  The answers of this task are small integers, so a wrong derivation often lands on the right answer by chance;
  rewarding those (see "arithmetic_answer") trains the model on its own lucky guesses. The verifier therefore
  checks the derivation: the "x op y=z" lines must be exactly the running totals of the problem, in order.
  """
  del unused_fields
  return [float(_derivation_is_verified(p, c, e))
          for p, c, e in zip(prompts, completions, _expected_answers(answer))]


@registry.register("arithmetic_answer")
def correct_answer_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    answer: Sequence[object],
    **unused_fields: Sequence[object],
) -> list[float]:
  """1.0 where `extract_final_answer` of a completion is `answer`, else 0.0 (final answer only, as for MATH)."""
  del prompts, unused_fields
  return [
      float(extract_final_answer(completion) == expected)
      for completion, expected in zip(completions, _expected_answers(answer))
  ]


@registry.register("arithmetic_steps")
def step_credit_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    answer: Sequence[object],
    **unused_fields: Sequence[object],
) -> list[float]:
  """Scalar reward in [0, 1] that gives partial credit for correct steps.

  1.0 for a verified derivation (see "arithmetic"). Otherwise STEP_CREDIT (0.5)
  times the fraction of the problem's reference steps (the running totals of the
  prompt, left to right, as written by `solution_steps`) that appear in the
  completion as "x op y=z" lines in the same order; the count is the longest
  in-order match, so one wrong line costs only its own step. Spaces and
  leading zeros inside a step line are ignored; steps that regroup the terms
  differently from left to right earn nothing.
  """
  del unused_fields
  rewards = []
  for prompt, completion, expected in zip(
      prompts, completions, _expected_answers(answer)
  ):
    if _derivation_is_verified(prompt, completion, expected):
      rewards.append(1.0)
      continue
    reference = solution_steps(*parse_prompt(prompt))
    matched = _longest_common_subsequence(
        reference, _completion_steps(completion)
    )
    rewards.append(STEP_CREDIT * matched / len(reference))
  return rewards
