"""The task interface: problems in named splits, the reward that grades them.

A task is data plus two pieces of grading knowledge: the name of its reward in
`rest_jax.rewards` and how to read the final answer out of a completion (for
majority voting). Splits conventionally are "human" (problems with
human-written worked solutions, for the SFT baseline), "train" (problems only,
for ReST-EM self-training), "val", "test" and any transfer splits.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem.

  Attributes:
    id: Unique within the task, e.g. "train/000123".
    prompt: The exact text fed to the model.
    fields: Per-problem columns passed to the reward as keyword lists, e.g.
      {"answer": "65"}.
    solution: Human-written worked solution (the completion text, without EOS)
      if the split has one.
  """

  id: str
  prompt: str
  fields: Mapping[str, Any]
  solution: str | None = None


@dataclasses.dataclass(frozen=True)
class Task:
  """A named collection of problem splits and how to grade completions.

  Attributes:
    name: The task's name.
    reward: Name of the reward in the `rest_jax.rewards` registry.
    splits: Split name -> problems.
    extract_answer: Final answer of a completion, for majority voting; None
      if the completion has none.
    stop_strings: Strings that end a completion besides EOS.
    graders: Split name -> the task whose reward, answer extraction and stop
      strings grade that split, for splits taken from another task (transfer
      evaluation, e.g. HumanEval after self-training on APPS); other splits
      are graded by this task.
  """

  name: str
  reward: str
  splits: Mapping[str, Sequence[Problem]]
  extract_answer: Callable[[str], str | None]
  stop_strings: tuple[str, ...] = ()
  graders: Mapping[str, "Task"] = dataclasses.field(default_factory=dict)

  def grading(self, split: str) -> "Task":
    """The task that grades split `split`: this one, or the task a transfer split came from."""
    return self.graders.get(split, self)

  def split(self, name: str) -> Sequence[Problem]:
    """Returns the problems of split `name`."""
    if name not in self.splits:
      raise ValueError(
          f"task {self.name!r} has no split {name!r}; available splits:"
          f" {', '.join(self.splits)}"
      )
    return self.splits[name]


def with_transfer_split(task: Task, split: str, source: Task, source_split: str = "test") -> Task:
  """`task` plus split `split`: the problems of `source`'s split `source_split`, graded by `source`."""
  if split in task.splits:
    raise ValueError(f"task {task.name!r} already has a split {split!r}; name the transfer split differently")
  problems = source.split(source_split)
  grader = dataclasses.replace(source, splits={}, graders={})
  return dataclasses.replace(task, splits={**task.splits, split: problems}, graders={**task.graders, split: grader})


def reward_fields(problems: Sequence[Problem]) -> dict[str, list[Any]]:
  """Turns per-problem fields into the keyword lists a reward takes.

  Args:
    problems: Problems that all have the same field names.

  Returns:
    Field name -> list with one value per problem, in order.
  """
  if not problems:
    return {}
  keys = set(problems[0].fields)
  for problem in problems[1:]:
    if set(problem.fields) != keys:
      raise ValueError(
          f"problem {problem.id!r} has fields {sorted(problem.fields)}, but"
          f" problem {problems[0].id!r} has {sorted(keys)}"
      )
  return {
      key: [problem.fields[key] for problem in problems]
      for key in problems[0].fields
  }
