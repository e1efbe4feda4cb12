"""MATH (Hendrycks et al. 2021) and MATH-500 with Minerva's 4-shot prompt (Lewkowycz et al. 2022).

  prompt:     4 exemplars, then "Problem:\nWhat is $1+1$?\n\nSolution:\n"
  completion: "We have $1+1=\\boxed{2}$.\nFinal Answer: The final answer is $2$. I hope it is correct."

Task "math" has splits "human" (training problems whose upstream solution ends with the Minerva final-answer sentence,
the SFT data), "train" (the same problems without solutions, for ReST-EM), "val" (`num_val` training problems held
out of both) and "test" (the 5000 upstream test problems), plus optional evaluation splits:
"math500" (MATH-500, given `math500_path`) and "gsm8k" (the GSM8K test set in the Minerva format, given `gsm8k_path`:
the transfer evaluation of ReST-EM's MATH models, graded by the same "math" reward against the numeric answer).
Task "math500" is MATH-500 alone, split "test", for evaluating a model trained elsewhere.

The reward is "math"; its field `answer` is the reference final answer: the content of the last \\boxed{} of the
upstream solution (MATH-500 ships it as `answer`). `extract_answer` is the completion's final answer normalised
for majority voting. `levels` and `subjects` filter every MATH-derived split alike.
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any

from rest_jax import data
from rest_jax.rewards import math as math_rewards
from rest_jax.tasks import base
from rest_jax.tasks import prompts
from rest_jax.tasks import registry

SUBJECTS = ("Algebra", "Counting & Probability", "Geometry", "Intermediate Algebra", "Number Theory", "Prealgebra",
            "Precalculus")
LEVELS = (1, 2, 3, 4, 5)


def last_boxed(text: str) -> str | None:
  """The content of the last \\boxed{...} (or \\fbox{...}, or "\\boxed 5") in `text`; None if there is none."""
  index = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
  if index < 0:
    return None
  rest = text[index:]
  rest = rest[len("\\boxed"):] if rest.startswith("\\boxed") else rest[len("\\fbox"):]
  if rest.startswith(" "):  # "\boxed 5": the argument runs to the end of the math.
    return rest[1:].split("$")[0].strip() or None
  if not rest.startswith("{"):
    return None
  depth = 0
  for i, char in enumerate(rest):
    depth += {"{": 1, "}": -1}.get(char, 0)
    if depth == 0:
      return rest[1:i]
  return None


def human_solution(solution: str, answer: str) -> str:
  """An upstream solution as a completion in the Minerva format: it ends with the final-answer sentence."""
  return f"{solution.strip()}\n{prompts.minerva_final_answer(answer)}"


def prompt(problem: str, *, num_shots: int = 4, template: str = prompts.MATH_TEMPLATE) -> str:
  """The few-shot prompt for `problem`; `template` formats {problem} for the exemplars and the query alike."""
  return prompts.render(template, {"problem": problem}, prompts.MINERVA_MATH_EXEMPLARS[:num_shots],
                        prompts.MATH_DELIMITER)


def extract_answer(completion: str) -> str | None:
  """The completion's final answer, normalised so that equivalent answers vote together; None if it has none."""
  answer = math_rewards.extract_answer(completion)
  return None if answer is None else math_rewards.normalize_answer(answer)


def _check_filters(levels: Sequence[int] | None, subjects: Sequence[str] | None) -> None:
  for name, values, allowed in (("levels", levels, LEVELS), ("subjects", subjects, SUBJECTS)):
    if values is None:
      continue
    if isinstance(values, str) or not values:
      raise ValueError(f"math: {name} must be None (all) or a non-empty list, got {values!r}")
    for value in values:
      if value not in allowed:
        raise ValueError(f"math: {name} must be among {allowed}, got {value!r}")


def _keep(level: Any, subject: str, levels: Sequence[int] | None, subjects: Sequence[str] | None) -> bool:
  """Whether a problem passes the filters; MATH writes levels "Level 3" (a few "Level ?"), MATH-500 writes 3."""
  if levels is not None and str(level).removeprefix("Level ") not in {str(n) for n in levels}:
    return False
  return subjects is None or subject in subjects


def _level(level: Any) -> int | None:
  """MATH's "Level 3" and MATH-500's 3 as 3; "Level ?" (and no level) as None."""
  text = str(level).removeprefix("Level ")
  return int(text) if text.isdigit() else None


def _problem(split: str, record: dict[str, Any], answer: str, prompt_text: str, with_solution: bool) -> base.Problem:
  # The level goes to the reward as an unused field, and to the evaluation's per-level pass@1.
  return base.Problem(id=f"{split}/{record['id']}", prompt=prompt_text,
                      fields={"answer": answer, "level": _level(record.get("level"))},
                      solution=human_solution(record["solution"], answer) if with_solution else None)


def _math500_split(split: str, path: str, data_dir: str | None, num: int | None, seed: int,
                   levels: Sequence[int] | None, subjects: Sequence[str] | None,
                   render: Callable[[str], str]) -> tuple[base.Problem, ...]:
  records = [r for r in data.load("math500", path, data_dir=data_dir)["test"]
             if _keep(r["level"], r["subject"], levels, subjects)]
  records = prompts.take(records, num, seed=seed, salt="math/math500")
  return tuple(_problem(split, r, r["answer"], render(r["problem"]), False) for r in records)


@registry.register("math")
def get_task(*, path: str, data_dir: str | None = None, num_shots: int = 4, template: str = prompts.MATH_TEMPLATE,
             levels: Sequence[int] | None = None, subjects: Sequence[str] | None = None,
             num_human: int | None = None, num_train: int | None = None, num_val: int = 500,
             num_test: int | None = None, seed: int = 0, math500_path: str | None = None,
             num_math500: int | None = None, gsm8k_path: str | None = None,
             num_gsm8k: int | None = None) -> base.Task:
  """Builds the MATH task.

  Args:
    path: The Hendrycks MATH tree (MATH/ or its parent; see `rest_jax.data`).
    data_dir: Cache of the data builds (see `rest_jax.data.load`).
    num_shots: Minerva exemplars in each prompt, 0 to 4.
    template: Formats "{problem}" into the query and the exemplars; a custom one changes both.
    levels: Keep only these difficulty levels (1 to 5); None keeps all, including MATH's few "Level ?".
    subjects: Keep only these subjects (see `SUBJECTS`); None keeps all.
    num_human: Training problems with solutions (None: all that are not held out for "val").
    num_train: Training problems for self-training (None: all that are not held out).
    num_val: Training problems held out for early stopping.
    num_test: Test problems (None: all).
    seed: Seed of the held-out choice and of the subsets that the caps take.
    math500_path: MATH-500's test.jsonl (or its directory): adds split "math500".
    num_math500: Cap on the "math500" split.
    gsm8k_path: GSM8K's directory: adds split "gsm8k", its test set in this task's prompt format.
    num_gsm8k: Cap on the "gsm8k" split.

  Returns:
    The task with splits "human", "train", "val", "test" and the optional "math500" and "gsm8k".
  """
  prompts.check_num_shots("math", num_shots, len(prompts.MINERVA_MATH_EXEMPLARS))
  prompts.check_template("math", template, ["problem"])
  prompts.check_sizes("math", num_human=num_human, num_train=num_train, num_val=num_val, num_test=num_test,
                      num_math500=num_math500, num_gsm8k=num_gsm8k)
  _check_filters(levels, subjects)
  render = functools.partial(prompt, num_shots=num_shots, template=template)
  records = data.load("math", path, data_dir=data_dir)
  # A solution without a \boxed{} answer cannot be graded; upstream MATH has none such, a modified copy might.
  kept = {split: [(r, a) for r in records[split] if _keep(r["level"], r["type"], levels, subjects)
                  and (a := last_boxed(r["solution"])) is not None] for split in ("train", "test")}
  chosen = prompts.choose_splits("math", kept["train"], kept["test"], num_human=num_human, num_train=num_train,
                                 num_val=num_val, num_test=num_test, seed=seed)
  splits = {split: tuple(_problem(split, r, a, render(r["problem"]), split == "human") for r, a in pairs)
            for split, pairs in chosen.items()}
  if math500_path is not None:
    splits["math500"] = _math500_split("math500", math500_path, data_dir, num_math500, seed, levels, subjects, render)
  if gsm8k_path is not None:
    test = prompts.take(data.load("gsm8k", gsm8k_path, data_dir=data_dir)["test"], num_gsm8k, seed=seed,
                        salt="math/gsm8k")
    splits["gsm8k"] = tuple(base.Problem(id=f"gsm8k/{r['id']}", prompt=render(r["question"]),
                                         fields={"answer": math_rewards.gsm8k_reference(r["answer"])},
                                         solution=None) for r in test)
  return base.Task(name="math", reward="math", splits=splits, extract_answer=extract_answer,
                   stop_strings=(prompts.stop_after(prompts.MATH_DELIMITER, template),))


@registry.register("math500")
def get_math500_task(*, path: str, data_dir: str | None = None, num_shots: int = 4,
                     template: str = prompts.MATH_TEMPLATE, levels: Sequence[int] | None = None,
                     subjects: Sequence[str] | None = None, num_test: int | None = None,
                     seed: int = 0) -> base.Task:
  """Builds MATH-500 as an evaluation-only task with the single split "test"; arguments as for "math"."""
  prompts.check_num_shots("math500", num_shots, len(prompts.MINERVA_MATH_EXEMPLARS))
  prompts.check_template("math500", template, ["problem"])
  prompts.check_sizes("math500", num_test=num_test)
  _check_filters(levels, subjects)
  render = functools.partial(prompt, num_shots=num_shots, template=template)
  test = _math500_split("test", path, data_dir, num_test, seed, levels, subjects, render)
  return base.Task(name="math500", reward="math", splits={"test": test}, extract_answer=extract_answer,
                   stop_strings=(prompts.stop_after(prompts.MATH_DELIMITER, template),))

