'''Program synthesis from English: write `solve(xs)` for a described pipeline over a list of integers.

The embedded code task (configs/code_default.py). A problem describes 1-4 list transformations and a final reduction;
the model writes the body of `solve`, and the sandboxed `humaneval` reward runs it on hidden inputs:

  prompt:    def solve(xs):
                 """keep numbers greater than 3, multiply each by 2, return the sum"""
  solution:      xs = [x for x in xs if x > 3]
                 xs = [x * 2 for x in xs]
                 return sum(xs)

Any program that computes the right values passes (the order of commuting steps, other idioms), since the verdict
comes from running the tests, not from comparing text. The hidden tests are computed by a trusted Python
interpretation of the step list (`run_pipeline`), never by executing text.

Splits: "human" (with the canonical program), "train", "val", "test", and "transfer" (longer pipelines than any
training problem). No description appears twice in the task; each split draws from its own seeded stream, evaluation
splits first, so the test set does not change with the training sizes.
'''

from collections.abc import Callable, Sequence
import dataclasses

import numpy as np

from rest_jax.tasks import base
from rest_jax.tasks import registry

ENTRY_POINT = "solve"
_SPLIT_SEED_INDEX = {"human": 0, "train": 1, "val": 2, "test": 3, "transfer": 4}
_GENERATION_ORDER = ("test", "val", "transfer", "human", "train")
_SPLIT_ORDER = ("human", "train", "val", "test", "transfer")
_DRAWS_PER_PROBLEM = 50


@dataclasses.dataclass(frozen=True)
class Step:
  """One pipeline step: its English phrase, its canonical line of Python, and its meaning (trusted, for the tests)."""

  phrase: str
  code: str
  apply: Callable[[list[int]], list[int]] | Callable[[list[int]], object]


def _transforms(k: int) -> list[Step]:
  """Transformations that take a constant k (1..9), then the constant-free ones."""
  return [
      Step(f"add {k} to each", f"xs = [x + {k} for x in xs]", lambda xs: [x + k for x in xs]),
      Step(f"subtract {k} from each", f"xs = [x - {k} for x in xs]", lambda xs: [x - k for x in xs]),
      Step(f"multiply each by {k}", f"xs = [x * {k} for x in xs]", lambda xs: [x * k for x in xs]),
      Step(f"keep numbers greater than {k}", f"xs = [x for x in xs if x > {k}]", lambda xs: [x for x in xs if x > k]),
      Step(f"keep numbers less than {k}", f"xs = [x for x in xs if x < {k}]", lambda xs: [x for x in xs if x < k]),
      Step(f"remove every {k}", f"xs = [x for x in xs if x != {k}]", lambda xs: [x for x in xs if x != k]),
      Step(f"take the first {k}", f"xs = xs[:{k}]", lambda xs: xs[:k]),
      Step(f"drop the first {k}", f"xs = xs[{k}:]", lambda xs: xs[k:]),
  ]


_FIXED_TRANSFORMS = [
    Step("square each", "xs = [x * x for x in xs]", lambda xs: [x * x for x in xs]),
    Step("negate each", "xs = [-x for x in xs]", lambda xs: [-x for x in xs]),
    Step("keep the even numbers", "xs = [x for x in xs if x % 2 == 0]", lambda xs: [x for x in xs if x % 2 == 0]),
    Step("keep the odd numbers", "xs = [x for x in xs if x % 2 == 1]", lambda xs: [x for x in xs if x % 2 == 1]),
    Step("reverse the list", "xs = xs[::-1]", lambda xs: xs[::-1]),
    Step("sort the list", "xs = sorted(xs)", sorted),
    Step("sort the list in descending order", "xs = sorted(xs, reverse=True)", lambda xs: sorted(xs, reverse=True)),
]

_REDUCTIONS = [
    Step("return the sum", "return sum(xs)", sum),
    Step("return the count", "return len(xs)", len),
    Step("return the largest number or 0 if none", "return max(xs, default=0)", lambda xs: max(xs, default=0)),
    Step("return the smallest number or 0 if none", "return min(xs, default=0)", lambda xs: min(xs, default=0)),
    Step("return the first number or 0 if none", "return xs[0] if xs else 0", lambda xs: xs[0] if xs else 0),
    Step("return the last number or 0 if none", "return xs[-1] if xs else 0", lambda xs: xs[-1] if xs else 0),
    Step("return the list", "return xs", list),
]


def run_pipeline(steps: Sequence[Step], xs: Sequence[int]) -> object:
  """What the described program returns on `xs` (the trusted meaning of the steps)."""
  values: object = list(xs)
  for step in steps:
    values = step.apply(values)
  return values


def format_prompt(steps: Sequence[Step]) -> str:
  """The signature and the description as its docstring: valid Python on its own, as HumanEval prompts are."""
  return f'def {ENTRY_POINT}(xs):\n    """' + ", ".join(step.phrase for step in steps) + '"""\n'


def format_solution(steps: Sequence[Step]) -> str:
  return "".join(f"    {step.code}\n" for step in steps)


def _check_function(steps: Sequence[Step], inputs: Sequence[Sequence[int]]) -> str:
  """HumanEval-style `check(candidate)` source with one assert per hidden input."""
  lines = ["def check(candidate):"]
  for xs in inputs:
    lines.append(f"    assert candidate({list(xs)!r}) == {run_pipeline(steps, xs)!r}")
  return "\n".join(lines) + "\n"


def _draw_steps(rng: np.random.Generator, num_transforms: int) -> list[Step]:
  steps = []
  for _ in range(num_transforms):
    k = int(rng.integers(1, 10))
    pool = _transforms(k) + _FIXED_TRANSFORMS
    steps.append(pool[int(rng.integers(len(pool)))])
  steps.append(_REDUCTIONS[int(rng.integers(len(_REDUCTIONS)))])
  return steps


def _every_step_matters(steps: Sequence[Step], inputs: Sequence[Sequence[int]]) -> bool:
  """Whether leaving out any one transformation changes some hidden test's result.

  Otherwise a program could skip that step and pass ("sort the list, return the sum"): such problems are redrawn.
  """
  expected = [run_pipeline(steps, xs) for xs in inputs]
  for i in range(len(steps) - 1):
    shorter = [*steps[:i], *steps[i + 1:]]
    if [run_pipeline(shorter, xs) for xs in inputs] == expected:
      return False
  return True


def _draw_inputs(rng: np.random.Generator, num_tests: int, max_len: int) -> list[list[int]]:
  """Hidden test inputs: an empty list, then random lists of 1..max_len numbers in 0..9."""
  inputs = [[]]
  while len(inputs) < num_tests:
    inputs.append(rng.integers(0, 10, size=int(rng.integers(1, max_len + 1))).tolist())
  return inputs


@registry.register("list_programs")
def get_task(*, seed: int = 0, num_human: int = 500, num_train: int = 2000, num_val: int = 200, num_test: int = 500,
             num_transfer: int = 300, min_transforms: int = 1, max_transforms: int = 3,
             transfer_transforms: int = 4, num_tests: int = 6, max_list_len: int = 8) -> base.Task:
  """Builds the task.

  Args:
    seed: Seed of every split's stream.
    num_human, num_train, num_val, num_test, num_transfer: Split sizes.
    min_transforms, max_transforms: Transformations before the reduction, drawn uniformly, in every split but
      "transfer".
    transfer_transforms: Transformations in every "transfer" problem (more than max_transforms tests length
      generalisation).
    num_tests: Hidden test inputs per problem (the first is the empty list).
    max_list_len: Longest test input list.

  Returns:
    The task, graded by the sandboxed `humaneval` reward.
  """
  if not 1 <= min_transforms <= max_transforms:
    raise ValueError(f"list_programs: need 1 <= min_transforms <= max_transforms, got {min_transforms}, "
                     f"{max_transforms}")
  if num_tests < 2:
    raise ValueError(f"list_programs: num_tests must be >= 2, got {num_tests}")
  sizes = {"human": num_human, "train": num_train, "val": num_val, "test": num_test, "transfer": num_transfer}
  for name, size in sizes.items():
    if size < 0:
      raise ValueError(f"list_programs: num_{name} must be >= 0, got {size}")
  taken: set[str] = set()
  splits = {}
  for split in _GENERATION_ORDER:
    lengths = (transfer_transforms, transfer_transforms) if split == "transfer" else (min_transforms, max_transforms)
    rng = np.random.default_rng([seed, _SPLIT_SEED_INDEX[split]])
    problems = []
    draws = 0
    while len(problems) < sizes[split]:
      draws += 1
      if draws > _DRAWS_PER_PROBLEM * sizes[split]:
        raise ValueError(f"list_programs: drew only {len(problems)} distinct {split} problems of {sizes[split]}; "
                         "lower num_" + split)
      steps = _draw_steps(rng, int(rng.integers(lengths[0], lengths[1] + 1)))
      prompt = format_prompt(steps)
      if prompt in taken:
        continue
      inputs = _draw_inputs(rng, num_tests, max_list_len)
      if not _every_step_matters(steps, inputs):
        continue
      taken.add(prompt)
      problems.append(base.Problem(
          id=f"{split}/{len(problems):06d}", prompt=prompt,
          fields={"prompt": prompt, "test": _check_function(steps, inputs), "entry_point": ENTRY_POINT},
          solution=format_solution(steps) if split == "human" else None))
    splits[split] = tuple(problems)
  return base.Task(name="list_programs", reward="humaneval", splits={s: splits[s] for s in _SPLIT_ORDER},
                   extract_answer=program_key, stop_strings=("\ndef ", "\n#", "\nif ", "\nprint("))


def program_key(completion: str) -> str | None:
  """The completion's program with blank lines and trailing spaces dropped: the "answer" samples vote on."""
  lines = [line.rstrip() for line in completion.splitlines() if line.strip()]
  return "\n".join(lines) or None
