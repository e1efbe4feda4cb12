"""Any reasoning-gym data set (Stojanovski et al. 2025) as a task: procedurally generated problems, exact scorers.

  prompt:     reasoning-gym's "default" instruction (think step by step, then give the answer as
              <answer>answer here</answer>), then the data set's question.
  completion: "... <answer>42</answer>"

Each split is drawn from its own instance of the data set, `reasoning_gym.create_dataset(name, seed=s, size=n,
**config)` with s derived from (seed, split), and skips questions that an earlier split already holds, so the splits
are disjoint; "test" and "val" are drawn first, so they do not change with the training sizes. (Reasoning-gym
generates item i from seed s + i; the per-split seeds are 32-bit hashes, so their ranges do not overlap in
practice, and the question check catches it if they do.)

Splits "human", "train", "val", "test". Reasoning-gym has no worked solutions: the "human" split's solution is the
gold answer as a minimal completion, "<answer>42</answer>", so SFT on it teaches the answer format and the answers,
not reasoning. Data sets without gold answers (e.g. "rush_hour", "boxnet") cannot fill it: use num_human=0.

The reward is "reasoning_gym" (see `rest_jax.rewards.reasoning_gym`): the data set's own `score_answer`. Fields:
`dataset`, `config` (JSON), `index`, and `answer` (the gold answer, "" if none, which the reward checks against the
regenerated entry). `extract_answer` is the text in the last <answer> tags, for majority voting.
"""

from collections.abc import Mapping
import json
from typing import Any
import zlib

from rest_jax.rewards import reasoning_gym as rg_rewards
from rest_jax.tasks import base
from rest_jax.tasks import prompts
from rest_jax.tasks import registry

TEMPLATE = "{instruction}\n{question}\n"
# Evaluation splits first, so that they never depend on training set sizes.
_GENERATION_ORDER = ("test", "val", "human", "train")
_SPLIT_ORDER = ("human", "train", "val", "test")
# Items generated per requested problem before a split gives up on finding distinct questions.
_ITEMS_PER_PROBLEM = 4
_EXTRA_ITEMS = 100


def split_seed(seed: int, split: str) -> int:
  """The data-set seed of one split: a 32-bit hash of (seed, split)."""
  return zlib.crc32(json.dumps([seed, split]).encode())


def human_solution(answer: str) -> str:
  """The minimal completion that gives `answer`."""
  return f"<answer>{answer}</answer>"


@registry.register("reasoning_gym")
def get_task(*, dataset: str, config: Mapping[str, Any] | None = None, seed: int = 0, num_human: int = 100,
             num_train: int = 1000, num_val: int = 100, num_test: int = 200, system_prompt: str = "default",
             template: str = TEMPLATE, stop_strings: tuple[str, ...] = ()) -> base.Task:
  """Builds the task of one reasoning-gym data set.

  Args:
    dataset: The data set's name in reasoning-gym, e.g. "chain_sum" (`rest_jax.rewards.reasoning_gym.names()`).
    config: The data set's config (its dataclass fields, e.g. {"min_terms": 2}), without seed and size.
    seed: Seed from which each split's data-set seed is derived.
    num_human: Problems with the gold answer as solution.
    num_train: Problems for self-training.
    num_val: Problems for early stopping.
    num_test: Problems for evaluation.
    system_prompt: The instruction: a key of `reasoning_gym.utils.SYSTEM_PROMPTS` ("default", "simple", ...).
    template: Formats "{instruction}" and "{question}" into the prompt.
    stop_strings: Strings that end a completion besides EOS.

  Returns:
    The task with splits "human", "train", "val" and "test".
  """
  sizes = {"human": num_human, "train": num_train, "val": num_val, "test": num_test}
  for split, size in sizes.items():
    if size is None:
      raise ValueError(f"reasoning_gym: num_{split} must be a non-negative integer, got None")
  prompts.check_sizes("reasoning_gym", **{f"num_{split}": size for split, size in sizes.items()})
  from reasoning_gym import utils  # pylint: disable=g-import-not-at-top  (importing reasoning-gym takes ~1.6 s)

  if system_prompt not in utils.SYSTEM_PROMPTS:
    raise ValueError(f"reasoning_gym: system_prompt must be one of {sorted(utils.SYSTEM_PROMPTS)}, got "
                     f"{system_prompt!r}")
  prompts.check_template("reasoning_gym", template, ["instruction", "question"])
  instruction = utils.SYSTEM_PROMPTS[system_prompt].strip()
  taken: set[str] = set()
  splits = {}
  for split in _GENERATION_ORDER:
    splits[split] = _generate(dataset, config, split, sizes[split], seed=seed, taken=taken, template=template,
                              instruction=instruction)
  return base.Task(name=f"reasoning_gym/{dataset}", reward="reasoning_gym",
                   splits={split: splits[split] for split in _SPLIT_ORDER}, extract_answer=rg_rewards.extract_answer,
                   stop_strings=tuple(stop_strings))


def _generate(name: str, config: Mapping[str, Any] | None, split: str, size: int, *, seed: int, taken: set[str],
              template: str, instruction: str) -> tuple[base.Problem, ...]:
  """`size` problems with distinct questions not in `taken` (which gains them) from the split's data set."""
  if size == 0:
    return ()
  config_json = rg_rewards.dataset_config(name, config, seed=split_seed(seed, split),
                                          size=size * _ITEMS_PER_PROBLEM + _EXTRA_ITEMS)
  ds = rg_rewards.build_dataset(name, config_json)
  problems = []
  for index in range(len(ds)):
    item = ds[index]  # Not through the reward's cache: most of the items generated here are never graded.
    question, answer = item["question"], item["answer"]
    if question in taken or (split == "human" and answer is None):
      continue
    taken.add(question)
    problems.append(base.Problem(
        id=f"{split}/{len(problems):06d}", prompt=template.format(instruction=instruction, question=question),
        fields={"dataset": name, "config": config_json, "index": index, "answer": rg_rewards.answer_text(answer)},
        solution=human_solution(answer) if split == "human" else None))
    if len(problems) == size:
      return tuple(problems)
  missing = "with a gold answer " if split == "human" else ""
  raise ValueError(f"reasoning_gym: {name} gave only {len(problems)} distinct {split} problems {missing}in "
                   f"{len(ds)} items; lower num_{split}" + (" (this data set has no gold answers: num_human=0)"
                                                           if split == "human" and not problems else ""))
