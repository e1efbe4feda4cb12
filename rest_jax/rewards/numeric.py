"""Rewards for answers that are a single number written in prose: "... so she has 24 apples. The answer is 24."""

import re
from collections.abc import Sequence

from rest_jax.rewards import registry

# A number: optional sign, digits with optional thousands commas, optional decimals.
_NUMBER_RE = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])", re.ASCII)


def _canonical(number: str) -> str:
  number = number.replace(",", "")
  if "." in number:
    number = number.rstrip("0").rstrip(".")
  negative = number.startswith("-")
  digits = number.lstrip("-").lstrip("0") or "0"
  if digits.startswith("."):
    digits = "0" + digits
  return ("-" if negative and digits != "0" else "") + digits


def last_number(text: str) -> str | None:
  """The last number in `text`, canonical ("1,200.50" -> "1200.5", "007" -> "7"); None when there is none."""
  numbers = _NUMBER_RE.findall(text)
  return _canonical(numbers[-1]) if numbers else None


@registry.register("final_number")
def final_number_reward(prompts: Sequence[str], completions: Sequence[str], *, answer: Sequence[object],
                        **unused_fields: Sequence[object]) -> list[float]:
  """1.0 where the last number of the completion equals `answer` (both canonicalised), else 0.0."""
  del prompts, unused_fields
  return [float(last_number(c) == _canonical(str(a))) for c, a in zip(completions, answer)]
