"""Registry of reward functions, looked up by name from configs and tasks.

A reward scores a batch of completions:

  fn(prompts: list[str], completions: list[str], **fields) -> list[float]

Each field is a per-problem column (e.g. `answer=[...]`) aligned with
`completions`. Rewards are plain Python; they know nothing of JAX.

`get` returns the registered function wrapped so that every call checks its
inputs (one prompt and one value of each field per completion, every field the
reward needs present) and its output (one finite float per completion).
"""

from collections.abc import Callable, Sequence
import functools
import inspect
import math
from typing import Any

RewardFn = Callable[..., list[float]]

_REGISTRY: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
  """Returns a decorator that registers a reward under `name`."""

  def decorator(fn: RewardFn) -> RewardFn:
    existing = _REGISTRY.get(name)
    # Re-importing a module re-registers the same function; a different one
    # under the same name is a clash that would silently change results.
    if existing is not None and (
        _qualified_name(existing) != _qualified_name(fn)
    ):
      raise ValueError(
          f"reward {name!r} is already registered to"
          f" {_qualified_name(existing)}, cannot register {_qualified_name(fn)}"
      )
    _REGISTRY[name] = fn
    return fn

  return decorator


def get(name: str) -> RewardFn:
  """Returns the reward registered as `name`, wrapped in input/output checks."""
  if name not in _REGISTRY:
    raise ValueError(
        f"unknown reward {name!r}; known rewards: {', '.join(names())}"
    )
  return _checked(name, _REGISTRY[name])


def names() -> list[str]:
  """Returns the registered reward names, sorted."""
  return sorted(_REGISTRY)


def _qualified_name(fn: Callable[..., Any]) -> str:
  return f"{fn.__module__}.{fn.__qualname__}"


def _as_column(reward: str, what: str, values: Any) -> list[Any]:
  # A string has a length too, and would be misread as a column of characters.
  if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
    raise ValueError(
        f"reward {reward!r}: {what} must be a list with one entry per"
        f" completion, got {type(values).__name__}"
    )
  return list(values)


def _checked(name: str, fn: RewardFn) -> RewardFn:
  """Wraps `fn` so that bad inputs and outputs raise a ValueError."""
  parameters = list(inspect.signature(fn).parameters.values())[2:]
  required_fields = [
      p.name
      for p in parameters
      if p.default is inspect.Parameter.empty
      and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
  ]
  known_fields = {
      p.name
      for p in parameters
      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
  }
  takes_any_field = any(p.kind is p.VAR_KEYWORD for p in parameters)

  @functools.wraps(fn)
  def checked_fn(
      prompts: Sequence[str], completions: Sequence[str], **fields: Any
  ) -> list[float]:
    completions = _as_column(name, "completions", completions)
    prompts = _as_column(name, "prompts", prompts)
    if len(prompts) != len(completions):
      raise ValueError(
          f"reward {name!r}: got {len(prompts)} prompts for"
          f" {len(completions)} completions"
      )
    for field in required_fields:
      if field not in fields:
        raise ValueError(f"reward {name!r} needs field {field!r}")
    if not takes_any_field:
      for field in fields:
        if field not in known_fields:
          raise ValueError(f"reward {name!r} takes no field {field!r}")
    columns = {}
    for field, values in fields.items():
      columns[field] = _as_column(name, f"field {field!r}", values)
      if len(columns[field]) != len(completions):
        raise ValueError(
            f"reward {name!r}: field {field!r} has {len(columns[field])}"
            f" values for {len(completions)} completions"
        )
    rewards = [float(r) for r in fn(prompts, completions, **columns)]
    if len(rewards) != len(completions):
      raise ValueError(
          f"reward {name!r} returned {len(rewards)} values for"
          f" {len(completions)} completions"
      )
    for r in rewards:
      if not math.isfinite(r):
        raise ValueError(f"reward {name!r} returned a non-finite value {r}")
    return rewards

  return checked_fn
