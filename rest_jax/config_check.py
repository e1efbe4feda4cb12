"""Checks a whole experiment config before anything runs or is written: one table of field rules.

Each rule gives a field's type, range and choices; choices come from the registries' own lists (tasks, rewards,
losses, algorithms, learning-rate schedules), so a new registration is accepted with no edit here. A field that no
rule names is refused with the nearest known name, as is a task argument its factory does not take. The first
problem found raises `errors.UsageError` with one line: the field, its value, what it must be.
"""

import dataclasses
import difflib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from rest_jax import errors
from rest_jax import rewards
from rest_jax import tasks
from rest_jax.model import transformer
from rest_jax.sampling import quantization, sampler
from rest_jax.tasks import registry as task_registry
from rest_jax.training import finetune
from rest_jax.training import lora
from rest_jax.training import loss as loss_lib

_NUMBER = (int, float)


@dataclasses.dataclass(frozen=True)
class Rule:
  """What one field may hold. `low`/`high` are inclusive unless `open_low`/`open_high`; `each`: a tuple or list
  whose every element obeys the rule; `choices`: a callable returning the allowed values (read when checking)."""

  types: tuple[type, ...]
  low: float | None = None
  high: float | None = None
  open_low: bool = False
  open_high: bool = False
  choices: Callable[[], Sequence[Any]] | None = None
  each: bool = False
  nonempty: bool = False
  also: Callable[[Any], str | None] | None = None  # Returns what is wrong, or None.

  def problem(self, value: Any) -> str | None:
    if self.each:
      if not isinstance(value, (tuple, list)):
        return "must be a tuple or list"
      if self.nonempty and not value:
        return "must not be empty"
      for item in value:
        if (wrong := self._scalar_problem(item)) is not None:
          return f"element {item!r} {wrong}"
      return self.also(value) if self.also else None
    return self._scalar_problem(value)

  def _scalar_problem(self, value: Any) -> str | None:
    # bool is an int to Python, never to a config: True for a count is a mistake.
    if isinstance(value, bool) and bool not in self.types or not isinstance(value, self.types):
      return f"must be {' or '.join(t.__name__ for t in self.types)}, not {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
      return "must be finite"
    below = self.low is not None and (value <= self.low if self.open_low else value < self.low)
    above = self.high is not None and (value >= self.high if self.open_high else value > self.high)
    if below or above:
      return f"must be {self._range()}"
    if self.choices is not None:
      allowed = list(self.choices())
      if value not in allowed:
        return f"must be one of {', '.join(map(repr, allowed))}" + _suggestion(value, allowed)
    return self.also(value) if self.also else None

  def _range(self) -> str:
    if self.high is None:
      return f"{'>' if self.open_low else '>='} {self.low}"
    if self.low is None:
      return f"{'<' if self.open_high else '<='} {self.high}"
    return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"


def _count(low: int = 1) -> Rule:
  return Rule((int,), low=low)


def _mesh_axis(value: int) -> str | None:
  return "must be >= 1, or -1 for the remaining devices" if value == 0 or value < -1 else None


def _algorithms() -> list[str]:
  from rest_jax import algorithms  # pylint: disable=g-import-not-at-top  (algorithms' rules import this module)

  return algorithms.names()


def _algorithm_blocks() -> dict[str, Any]:
  from rest_jax import algorithms  # pylint: disable=g-import-not-at-top

  return algorithms.blocks()


_STR, _BOOL, _INT = Rule((str,)), Rule((bool,)), Rule((int,))
_PROBABILITY = Rule(_NUMBER, low=0, high=1, open_low=True)
_FRACTION = Rule(_NUMBER, low=0, high=1)

# Every field an experiment config may have. `pretrain` records how the shipped base was made (read by
# rest_jax.tools.pretrain_base, not by a run); task.kwargs and task.transfer are checked against the task factories.
RULES: dict[str, Rule] = {
    "seed": _INT,
    "title": _STR,
    "task.name": Rule((str,), choices=tasks.names),
    "base.checkpoint": _STR,
    "base.tokenizer": _STR,
    "base.chat": _BOOL,
    "base.dtype": Rule((str,), choices=lambda: ("float32", "bfloat16", "float16")),
    "mesh.data": Rule((int,), also=_mesh_axis),
    "mesh.fsdp": Rule((int,), also=_mesh_axis),
    "mesh.tensor": Rule((int,), also=_mesh_axis),
    "sampler.batch_rows": _count(),
    "sampler.prompt_buckets": Rule((int,), low=1, each=True, nonempty=True),
    "sampler.max_new_tokens": _count(),
    "sampler.reward_workers": _count(),
    "sampler.dtype": Rule((str,), choices=lambda: ("", *sampler.DTYPES)),  # "": the model's own dtype.
    "sampler.weight_quant": Rule((str,), choices=lambda: quantization.WEIGHT_QUANT),
    "sampler.schedule": Rule((str,), choices=lambda: sampler.SCHEDULES),
    "sampler.slot_group": Rule((int,), low=0),
    "sampler.chunk_steps": _count(),
    "sampler.scan_layers": _BOOL,
    "rest.algorithm": Rule((str,), choices=_algorithms),
    "rest.num_iterations": _count(),
    "rest.samples_per_problem": _count(),
    "rest.temperature": Rule(_NUMBER, low=0),  # 0: greedy.
    "rest.top_k": _count(0),  # 0: off.
    "rest.top_p": _PROBABILITY,
    "rest.cap": _count(),
    "rest.reward_threshold": Rule(_NUMBER),
    "rest.restart_from_base": _BOOL,
    "rest.sampler_checkpoint": _STR,
    "rest.improve_thresholds": Rule(_NUMBER, each=True, nonempty=True),
    "rest.mix_human": _BOOL,
    "rest.sft_human_baseline": _BOOL,
    "rest.estep.rounds": _count(),  # 1: fixed N per problem (the paper); > 1: the adaptive E-step.
    "rest.estep.max_samples_per_problem": _count(0),  # Adaptive only; 0: no maximum but the budget.
    "train.learning_rate": Rule(_NUMBER, low=0, open_low=True),
    "train.lr_schedule": Rule((str,), choices=lambda: finetune.LR_SCHEDULES),
    "train.warmup_steps": _count(0),
    "train.end_lr_factor": _FRACTION,
    "train.weight_decay": Rule(_NUMBER, low=0),
    "train.b1": Rule(_NUMBER, low=0, high=1, open_high=True),
    "train.b2": Rule(_NUMBER, low=0, high=1, open_high=True),
    "train.grad_clip": Rule(_NUMBER, low=0, open_low=True),
    "train.seq_len": _count(),
    "train.batch_rows": _count(),
    "train.micro_batches": _count(),
    "train.num_epochs": Rule(_NUMBER, low=0, open_low=True),
    "train.max_steps": _count(0),  # 0: no cap.
    "train.eval_every": _count(),
    "train.patience": _count(0),  # 0: never stop early.
    "train.loss": Rule((str,), choices=lambda: sorted(loss_lib.LOSSES)),
    "train.seed": _INT,
    "train.loss_chunk_size": _count(0),  # 0: the plain loss.
    "train.remat": Rule((str,), choices=lambda: ["none", *sorted(transformer.REMAT_POLICIES)]),
    "train.lora_rank": _count(0),  # 0: full fine-tuning.
    "train.lora_alpha": Rule(_NUMBER, low=0, open_low=True),
    "train.lora_modules": Rule((str,), each=True, nonempty=True, choices=lambda: lora.MODULES),
    "train.lora_base_quant": Rule((str,), choices=lambda: lora.BASE_QUANT),
    "train.scan_layers": _BOOL,
    "eval.splits": Rule((str,), each=True, nonempty=True),
    "eval.train_subset": _count(),
    "eval.sampled_splits": Rule((str,), each=True),
    "eval.num_samples": _count(),
    "eval.ks": Rule((int,), low=1, each=True, nonempty=True),
    "eval.temperature": Rule(_NUMBER, low=0, open_low=True),
    "eval.top_p": _PROBABILITY,
    "eval.val_size": _count(),
    "report.wandb": _BOOL,
    "report.wandb_project": _STR,
    "report.wandb_entity": _STR,
    "report.wandb_mode": Rule((str,), choices=lambda: ("offline", "online", "disabled")),
}
_FREE_PREFIXES = ("pretrain.",)  # Not read by a run.
_TASK_KWARGS, _TASK_TRANSFER = "task.kwargs.", "task.transfer."


def _fail(field: str, value: Any, problem: str) -> errors.UsageError:
  return errors.UsageError(f"config {field}={value!r}: {problem}")


def _suggestion(name: Any, known: Sequence[Any]) -> str:
  close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(node, Mapping):
    out = {}
    for key, value in node.items():
      out.update(_flat(value, f"{prefix}{key}."))
    return out  # An empty block (task.kwargs = {}) holds no field.
  return {prefix[:-1]: node}


def _check_task_kwargs(field_prefix: str, task_name: str, kwargs: Mapping[str, Any]) -> None:
  """Every argument must be one the task's factory takes; a `reward` must be a registered reward."""
  factory = task_registry._REGISTRY[task_name]  # pylint: disable=protected-access  (names() checked it exists)
  parameters = inspect.signature(factory).parameters
  if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
    for name in kwargs:
      if name not in parameters:
        raise errors.UsageError(f"config {field_prefix}{name}: task {task_name!r} takes no argument {name!r}"
                                + _suggestion(name, list(parameters)))
  if "reward" in kwargs:
    reward = kwargs["reward"]
    if reward not in rewards.names():
      raise _fail(f"{field_prefix}reward", reward, f"must be one of {', '.join(map(repr, rewards.names()))}"
                  + _suggestion(reward, rewards.names()))


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `errors.UsageError` naming the first field of `config` that is missing, unknown or out of range."""
  values = _flat(config.to_dict())
  # An algorithm's own block (`algorithms.register(..., block=, rules=)`) is needed when it is selected and checked
  # whenever present.
  blocks = _algorithm_blocks()
  chosen = values.get("rest.algorithm")
  rules = dict(RULES)
  for block, algorithm in blocks.items():
    if algorithm.name == chosen or any(f.startswith(f"{block}.") for f in values):
      rules.update(algorithm.rules)
  for field, value in values.items():
    if field.startswith((*_FREE_PREFIXES, _TASK_KWARGS, _TASK_TRANSFER)):
      continue
    if field not in rules:
      known = list(rules) + [f for a in blocks.values() for f in a.rules]
      raise errors.UsageError(f"config {field}: no such field" + _suggestion(field, known))
  for field, rule in rules.items():
    if field not in values:
      needed = next((f"algorithm {a.name!r} needs it" for b, a in blocks.items() if field.startswith(f"{b}.")),
                    "every config needs it")
      raise errors.UsageError(f"config {field}: missing ({needed}; see configs/default.py)")
    if (problem := rule.problem(values[field])) is not None:
      raise _fail(field, values[field], problem)

  task = config.to_dict()["task"]
  _check_task_kwargs(_TASK_KWARGS, task["name"], task.get("kwargs") or {})
  for split, spec in (task.get("transfer") or {}).items():
    prefix = f"{_TASK_TRANSFER}{split}."
    unknown = set(spec) - {"name", "kwargs", "split"}
    if unknown or "name" not in spec:
      raise errors.UsageError(f"config {prefix[:-1]}: needs 'name' and takes only 'kwargs' and 'split', got "
                              f"{sorted(spec)}")
    if (problem := RULES["task.name"].problem(spec["name"])) is not None:
      raise _fail(f"{prefix}name", spec["name"], problem)
    _check_task_kwargs(f"{prefix}kwargs.", spec["name"], spec.get("kwargs") or {})

  c = config
  if [s for s in (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) if s == -1][1:]:
    raise errors.UsageError("config mesh: at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
  if not set(c.eval.sampled_splits) <= set(c.eval.splits):
    extra = sorted(set(c.eval.sampled_splits) - set(c.eval.splits))
    raise _fail("eval.sampled_splits", tuple(c.eval.sampled_splits), f"names {extra}, not in eval.splits")
  if max(c.eval.ks) > c.eval.num_samples:
    raise _fail("eval.ks", tuple(c.eval.ks), f"pass@k and maj@k need k <= eval.num_samples={c.eval.num_samples}")
