"""Registry of task factories, looked up by name from configs."""

from collections.abc import Callable
from typing import Any

from rest_jax.tasks import base

TaskFactory = Callable[..., base.Task]

_REGISTRY: dict[str, TaskFactory] = {}


def register(name: str) -> Callable[[TaskFactory], TaskFactory]:
  """Returns a decorator that registers a task factory under `name`."""

  def decorator(factory: TaskFactory) -> TaskFactory:
    existing = _REGISTRY.get(name)
    # Re-importing a module re-registers the same factory; a different one
    # under the same name is a clash that would silently change the data.
    if existing is not None and _qualified_name(existing) != _qualified_name(
        factory
    ):
      raise ValueError(
          f"task {name!r} is already registered to {_qualified_name(existing)},"
          f" cannot register {_qualified_name(factory)}"
      )
    _REGISTRY[name] = factory
    return factory

  return decorator


def get(name: str, **kwargs: Any) -> base.Task:
  """Builds the task registered as `name`, passing `kwargs` to its factory."""
  if name not in _REGISTRY:
    raise ValueError(
        f"unknown task {name!r}; known tasks: {', '.join(names())}"
    )
  return _REGISTRY[name](**kwargs)


def from_config(task_config: Any) -> base.Task:
  """The task a config's `task` block describes.

  Args:
    task_config: Has `name` and `kwargs` (the factory's arguments) and optionally `transfer`: split name ->
      {"name", "kwargs", "split" (default "test")}, splits of other tasks evaluated with their own reward, e.g.
      {"humaneval": {"name": "humaneval", "kwargs": {}}} after self-training on APPS.

  Returns:
    The task, with a split per transfer entry.
  """
  def to_dict(value: Any) -> dict[str, Any]:
    return dict(value.to_dict() if hasattr(value, "to_dict") else value or {})

  task = get(task_config["name"], **to_dict(task_config.get("kwargs")))
  for split, spec in to_dict(task_config.get("transfer")).items():
    spec = to_dict(spec)
    unknown = set(spec) - {"name", "kwargs", "split"}
    if unknown or "name" not in spec:
      raise ValueError(f"task.transfer.{split}: needs 'name' and takes only 'kwargs' and 'split', got "
                       f"{sorted(spec)}")
    source = get(spec["name"], **to_dict(spec.get("kwargs")))
    task = base.with_transfer_split(task, split, source, spec.get("split", "test"))
  return task


def names() -> list[str]:
  """Returns the registered task names, sorted."""
  return sorted(_REGISTRY)


def _qualified_name(fn: Callable[..., Any]) -> str:
  return f"{fn.__module__}.{fn.__qualname__}"
