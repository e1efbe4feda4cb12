"""Short arithmetic word problems for real (chat) language models.

  prompt:   "Tom has 5 apples and buys 19 more. How many apples does Tom have now?"
  solution: "Tom starts with 5 apples and gets 19 more, so he has 5 + 19 = 24 apples.\nThe answer is 24."

One step (`steps=1`) or two steps; addition and subtraction with several phrasings per operation, names and objects,
numbers in [min_number, max_number], every intermediate count >= 0. The reward is "final_number": the last number in
the completion must equal the answer, the way such problems are graded for chat models that answer in prose.

Splits "human" (with worked solutions: the SFT baseline's data), "train" (answers only), "val", "test" are disjoint
and each comes from its own random stream, so the test set does not change with the other sizes.
"""

import dataclasses
import zlib

import numpy as np

from rest_jax.tasks import base
from rest_jax.tasks import registry
from rest_jax.rewards import numeric

NAMES = ("Tom", "Anna", "Ben", "Maria", "Sam", "Lucy", "Omar", "Mei", "Leo", "Sara", "Raj", "Emma")
OBJECTS = ("apples", "marbles", "stickers", "books", "cookies", "pencils", "cards", "shells", "coins", "balloons")
# Sentence templates: {n} name, {a} starting count, {b} size of the change, {o} object.
GAINS = ("{n} buys {b} more.", "{n} finds {b} more.", "A friend gives {n} {b} more.", "{n} gets {b} more.")
LOSSES = ("{n} gives away {b} of them.", "{n} loses {b} of them.", "{n} sells {b} of them.", "{n} eats {b} of them.")
SETUPS = ("{n} has {a} {o}.", "{n} starts the day with {a} {o}.", "There are {a} {o} in {n}'s bag.")
QUESTIONS = ("How many {o} does {n} have now?", "How many {o} are left with {n} now?",
             "How many {o} does {n} have in the end?")
_SPLITS = ("human", "train", "val", "test")


@dataclasses.dataclass(frozen=True)
class _Problem:
  name: str
  obj: str
  start: int
  changes: tuple[int, ...]  # Signed: +b for a gain, -b for a loss.
  phrasing: tuple[int, ...]  # Indices of the setup, each change sentence and the question.

  def prompt(self) -> str:
    fill = dict(n=self.name, o=self.obj, a=self.start)
    parts = [SETUPS[self.phrasing[0]].format(**fill)]
    for change, p in zip(self.changes, self.phrasing[1:-1]):
      pool = GAINS if change > 0 else LOSSES
      parts.append(pool[p % len(pool)].format(**fill, b=abs(change)))
    parts.append(QUESTIONS[self.phrasing[-1]].format(**fill))
    return " ".join(parts)

  def answer(self) -> int:
    return self.start + sum(self.changes)

  def solution(self) -> str:
    total, lines = self.start, []
    for change in self.changes:
      new = total + change
      verb = "gets" if change > 0 else "loses"
      sign = "+" if change > 0 else "-"
      lines.append(f"{self.name} has {total} {self.obj} and {verb} {abs(change)}, so {total} {sign} {abs(change)} = "
                   f"{new}.")
      total = new
    return "\n".join(lines + [f"The answer is {total}."])


def _draw(rng: np.random.Generator, *, steps: int, min_number: int, max_number: int, operations: str) -> _Problem:
  start = int(rng.integers(min_number, max_number + 1))
  changes, total = [], start
  for _ in range(steps):
    op = operations[int(rng.integers(len(operations)))]
    if op == "-" and total >= min_number:
      b = int(rng.integers(min_number, total + 1))
      changes.append(-b)
    else:
      b = int(rng.integers(min_number, max_number + 1))
      changes.append(b)
    total += changes[-1]
  phrasing = (int(rng.integers(len(SETUPS))), *(int(rng.integers(4)) for _ in range(steps)),
              int(rng.integers(len(QUESTIONS))))
  return _Problem(NAMES[int(rng.integers(len(NAMES)))], OBJECTS[int(rng.integers(len(OBJECTS)))], start,
                  tuple(changes), phrasing)


@registry.register("word_problems")
def get_task(*, seed: int = 0, num_human: int = 32, num_train: int = 256, num_val: int = 32, num_test: int = 64,
             steps: int = 1, min_number: int = 1, max_number: int = 20, operations: str = "+",
             prompt_suffix: str = "") -> base.Task:
  """Word problems; `operations` is a string of "+" and "-"; `prompt_suffix` is appended to every question."""
  sizes = dict(human=num_human, train=num_train, val=num_val, test=num_test)
  for name, n in sizes.items():
    if not isinstance(n, int) or n < 0:
      raise ValueError(f"word_problems: num_{name} must be a non-negative integer, got {n!r}")
  if steps not in (1, 2):
    raise ValueError(f"word_problems: steps must be 1 or 2, got {steps!r}")
  if not 0 <= min_number <= max_number:
    raise ValueError(f"word_problems: need 0 <= min_number <= max_number, got {min_number}, {max_number}")
  if not operations or set(operations) - {"+", "-"}:
    raise ValueError(f"word_problems: operations must be made of '+' and '-', got {operations!r}")
  taken: set[str] = set()
  splits: dict[str, list[base.Problem]] = {}
  for split in ("test", "val", "human", "train"):  # Evaluation splits first: they never depend on training sizes.
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    problems: list[base.Problem] = []
    for _ in range(sizes[split] * 5 + 1000):  # Generous: duplicates are rare unless the space is nearly used up.
      if len(problems) == sizes[split]:
        break
      p = _draw(rng, steps=steps, min_number=min_number, max_number=max_number, operations=operations)
      prompt = p.prompt() + prompt_suffix
      if prompt in taken:
        continue
      taken.add(prompt)
      problems.append(base.Problem(id=f"{split}/{len(problems):06d}", prompt=prompt,
                                   fields={"answer": str(p.answer())},
                                   solution=p.solution() if split == "human" else None))
    if len(problems) < sizes[split]:
      raise ValueError(f"word_problems: could not draw {sizes[split]} distinct {split} problems; lower num_{split} "
                       "or widen the number range")
    splits[split] = problems
  return base.Task(name="word_problems", reward="final_number", splits={s: splits[s] for s in _SPLITS},
                   extract_answer=numeric.last_number)
