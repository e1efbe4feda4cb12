"""The resume protocol of every stage, written once.

A stage is named by (method, iteration, stage). Running it: all processes meet at a barrier named after it (so they
decide what to skip from the same files); if its artifact loads, that is the result; otherwise it is computed, its
record (wall time and counters) goes to `stages.jsonl` first, then the artifact is saved (atomically: the writers
in `checkpoints` and `selection` write to a temporary name and rename). `save` runs on every process, since Orbax
checkpoints are written by all of them together; a saver of plain files writes on process 0 only
(`distributed.is_primary`). A kill between the record and the
artifact only makes the rerun redo the stage; `reporting.MetricsLog` counts a stage logged twice once.
"""

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from rest_jax import distributed
from rest_jax import reporting

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Stages:
  """Runs stages against one workdir's log."""

  log: reporting.MetricsLog

  def run(self, method: str, iteration: int, stage: str, *, load: Callable[[], T | None],
          compute: Callable[[], tuple[T, Mapping[str, Any]]], save: Callable[[T], None] | None = None,
          shown: Callable[[T], Mapping[str, Any]] | None = None) -> T:
    """The stage's result: `load()` when it returns one, else `compute()` -> (result, counters), recorded and saved.

    `shown` adds values to the console line only (not to the record), e.g. an evaluation's test pass@1.
    """
    distributed.barrier(f"rest_jax {stage} {method} it{iteration}")
    if (found := load()) is not None:
      return found
    t0 = time.time()
    result, counters = compute()
    wall = time.time() - t0
    self.log.append_stage({"method": method, "iteration": iteration, "stage": stage, "wall_s": wall, **counters})
    if save is not None:
      save(result)
    reporting.log_stage(method, iteration, stage, wall, **counters, **(shown(result) if shown else {}))
    return result

  def done(self, method: str, iteration: int, stage: str) -> bool:
    """Whether the stage's record is in the log."""
    return any((r["method"], r["iteration"], r["stage"]) == (method, iteration, stage) for r in self.log.stages())
