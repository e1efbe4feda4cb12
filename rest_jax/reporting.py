"""Metrics log, TensorBoard scalars, markdown report and progress bars.

The EM loop hands this module two kinds of flat records:

- eval records: `method`, `iteration` (0 = base model), `split`, then numeric
  metrics (`pass@1`, `pass@K`, `maj@K`, `sample_accuracy`, `num_problems`, ...).
- stage records: `method`, `iteration`, `stage` (`estep`, `mstep`, `eval`, ...),
  `wall_s`, then numeric counters (`generated`, `rewarded`, `kept`,
  `solve_rate`, `train_steps`, ...).

Eval records may carry 95% interval bounds `<metric>_lo` / `<metric>_hi` and,
for tasks with difficulty levels, `level_<L>/pass@1` (+ bounds) and
`level_<L>/num_problems`; records written before these existed still render
(greedy pass@1 then gets its exact interval from `num_problems`).

`MetricsLog` appends them to WORKDIR/metrics.jsonl and WORKDIR/stages.jsonl
(one fsynced JSON line each), to TensorBoard and, if asked, to Weights & Biases
(`WandbWriter`, the same scalar names and values). A run that crashes and
resumes (or is killed with -9 between a record and its artifact) may log the
same (method, iteration, split|stage) twice; readers keep the last, so nothing
counts twice. Non-finite numbers are stored as JSON null and read back as None
("missing"). `write_report` turns the records into WORKDIR/report.md (results
first, config last) plus PNG plots with interval bands.
"""

from collections.abc import Iterable, Mapping, Sequence
import json
import math
import os
import pathlib
import re
import socket
import sys
import time
from typing import Any

from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np
import tensorboardX
from tensorboardX.proto import event_pb2
from tensorboardX.proto import summary_pb2
import tqdm

from rest_jax import evaluation

Record = dict[str, Any]

_KEY_FIELDS = {
    "eval": ("method", "iteration", "split"),
    "stage": ("method", "iteration", "stage"),
}
_FILENAMES = {"eval": "metrics.jsonl", "stage": "stages.jsonl"}
_MISSING = "–"
_MAIN_STAGES = ("estep", "mstep", "eval")
_ESTEP_COUNTERS = ("generated", "rewarded", "kept")
_SPLIT_ORDER = ("test", "transfer", "train", "val")
_AT_K = re.compile(r"^(pass|maj)@(\d+)$")
_LEVEL = re.compile(r"^level_(\d+)/pass@1$")


def _number(kind: str, name: str, value: Any) -> int | float | None:
  """Python int/float from a Python, NumPy or JAX scalar; None if missing."""
  if value is None:
    return None
  array = np.asarray(value)
  if array.ndim != 0 or array.dtype.kind not in "iuf":
    raise ValueError(
        f"{kind} record field {name!r} must be a number, got {value!r}")
  if array.dtype.kind in "iu":
    return int(array)
  number = float(array)
  return number if math.isfinite(number) else None


def _normalize(record: Mapping[str, Any], kind: str) -> Record:
  """Validated copy of `record`: key fields first, numbers as int/float/None."""
  if not isinstance(record, Mapping):
    raise ValueError(
        f"{kind} record must be a dict, got {type(record).__name__}")
  key_fields = _KEY_FIELDS[kind]
  out: Record = {}
  for field in key_fields:
    if field not in record:
      raise ValueError(f"{kind} record is missing {field!r}: {dict(record)}")
    value = record[field]
    if field == "iteration":
      if (isinstance(value, (bool, np.bool_))
          or not isinstance(value, (int, np.integer)) or value < 0):
        raise ValueError(
            f"{kind} record field 'iteration' must be an int >= 0, "
            f"got {value!r}")
      out[field] = int(value)
    elif not isinstance(value, str) or not value:
      raise ValueError(
          f"{kind} record field {field!r} must be a non-empty str, "
          f"got {value!r}")
    else:
      out[field] = value
  # The method names a TensorBoard run directory.
  method = out["method"]
  if "/" in method or "\\" in method or method in (".", ".."):
    raise ValueError(
        f"{kind} record field 'method' must be usable as a directory name, "
        f"got {method!r}")
  if record.get("kind", kind) != kind:
    raise ValueError(
        f"{kind} record field 'kind' must be {kind!r}, got {record['kind']!r}")
  for name, value in record.items():
    if name not in key_fields and name != "kind":
      out[name] = _number(kind, name, value)
  if kind == "stage":
    wall_s = out.get("wall_s")
    if wall_s is None or wall_s < 0:
      raise ValueError(
          f"stage record field 'wall_s' must be a number >= 0, "
          f"got {record.get('wall_s')!r}")
  return out


def _key(record: Record, kind: str) -> tuple[Any, ...]:
  return tuple(record[field] for field in _KEY_FIELDS[kind])


def _dedupe(records: Iterable[Mapping[str, Any]], kind: str) -> list[Record]:
  """Validated records, one per key; the last wins, at the first's position."""
  latest: dict[tuple[Any, ...], Record] = {}
  for record in records:
    record = _normalize(record, kind)
    latest[_key(record, kind)] = record
  return list(latest.values())


def _read_jsonl(path: pathlib.Path, kind: str) -> list[Record]:
  if not path.exists():
    return []
  lines = path.read_text(encoding="utf-8").split("\n")
  # Text after the last newline is a line torn by a crash mid-write.
  if lines.pop():
    logging.warning("Ignoring a torn final line in %s.", path)
  records = []
  for line_number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      raise ValueError(
          f"{path}:{line_number}: not valid JSON ({error.msg})") from None
  return _dedupe(records, kind)


def _drop_torn_tail(path: pathlib.Path) -> None:
  """Cuts text after the last newline so the next line does not glue onto it."""
  if not path.exists():
    return
  with open(path, "rb+") as f:
    data = f.read()
    if not data or data.endswith(b"\n"):
      return
    f.truncate(data.rfind(b"\n") + 1)
  logging.warning("Dropped a torn final line from %s.", path)


class _EventFile:
  """TensorBoard event file written synchronously.

  tensorboardX's SummaryWriter queues events to a background thread (its
  flush() does not drain the queue, so a crash loses the tail) and rewrites
  tags such as "test/pass@1" to "test/pass_1". Writing Event protos through
  tensorboardX's RecordWriter keeps the tags and puts every scalar on disk
  before `add_scalars` returns.
  """

  def __init__(self, logdir: pathlib.Path):
    logdir.mkdir(parents=True, exist_ok=True)
    stem = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
    suffix = 0
    while (logdir / f"{stem}.{os.getpid()}.{suffix}").exists():
      suffix += 1
    self.path = logdir / f"{stem}.{os.getpid()}.{suffix}"
    self._writer = tensorboardX.RecordWriter(str(self.path))
    self._write(event_pb2.Event(wall_time=time.time(),
                                file_version="brain.Event:2"))

  def _write(self, event: event_pb2.Event) -> None:
    self._writer.write(event.SerializeToString())
    self._writer.flush()

  def add_scalars(self, scalars: Mapping[str, float], step: int) -> None:
    values = [summary_pb2.Summary.Value(tag=tag, simple_value=value)
              for tag, value in scalars.items()]
    self._write(event_pb2.Event(wall_time=time.time(), step=step,
                                summary=summary_pb2.Summary(value=values)))

  def close(self) -> None:
    self._writer.close()


class WandbWriter:
  """Weights & Biases mirror of the TensorBoard scalars: the same names, the same values.

  One W&B run per method (TensorBoard has one run directory per method), named
  after the method and grouped by the workdir's name; each logged dict is the
  TensorBoard scalars of one record plus "iteration", the x-axis of every
  scalar (`define_metric`), so records logged out of order (a resumed run)
  are all kept. Mode "offline" writes WORKDIR/wandb/offline-run-*/ and needs
  no network (upload later with `wandb sync`); "online" streams; "disabled"
  writes nothing. `wandb` is imported only here, when a writer is made.
  """

  def __init__(self, workdir: str | os.PathLike[str], *, project: str,
               mode: str = "offline", entity: str | None = None,
               run_config: Mapping[str, Any] | None = None):
    if mode not in ("offline", "online", "disabled"):
      raise ValueError(
          f"report.wandb_mode must be 'offline', 'online' or 'disabled', "
          f"got {mode!r}")
    try:
      import wandb  # pylint: disable=g-import-not-at-top  (an optional extra)
    except ImportError:
      raise ImportError(
          "report.wandb is on but the wandb package is not installed: "
          "pip install 'rest_jax[wandb]'") from None
    self._wandb = wandb
    self.workdir = pathlib.Path(workdir)
    self._init_kwargs = dict(project=project, entity=entity or None,
                             mode=mode, dir=str(self.workdir),
                             group=self.workdir.resolve().name,
                             config=dict(run_config or {}))
    self._runs: dict[str, Any] = {}

  @classmethod
  def from_config(cls, report_config: Any, workdir: str | os.PathLike[str],
                  run_config: Mapping[str, Any] | None = None
                  ) -> "WandbWriter | None":
    """The writer a config's `report` block asks for; None when it is off (or absent)."""
    if report_config is None or not report_config.get("wandb", False):
      return None
    return cls(workdir, project=report_config.get("wandb_project", "rest_jax"),
               mode=report_config.get("wandb_mode", "offline"),
               entity=report_config.get("wandb_entity", ""),
               run_config=run_config)

  def _run(self, method: str) -> Any:
    if method not in self._runs:
      self.workdir.mkdir(parents=True, exist_ok=True)
      run = self._wandb.init(name=method, reinit="create_new",
                             **self._init_kwargs)
      run.define_metric("iteration")
      run.define_metric("*", step_metric="iteration")
      self._runs[method] = run
    return self._runs[method]

  def add_scalars(self, method: str, scalars: Mapping[str, float],
                  step: int) -> None:
    self._run(method).log({**scalars, "iteration": step})

  def close(self) -> None:
    for run in self._runs.values():
      run.finish()
    self._runs.clear()


class MetricsLog:
  """Append-only eval/stage log in WORKDIR, mirrored to TensorBoard.

  Files: WORKDIR/metrics.jsonl, WORKDIR/stages.jsonl and one TensorBoard run
  per method under WORKDIR/tensorboard/<method> (created on first append, so a
  log opened only to read writes nothing). A `read_only` log checks the records
  it is given but writes none: the log of every process but the first in a
  multi-process run, where process 0 alone writes the shared workdir.
  `wandb`, if given, receives every TensorBoard scalar too (and is closed
  with the log).
  """

  def __init__(self, workdir: str | os.PathLike[str], *,
               read_only: bool = False, wandb: WandbWriter | None = None):
    self.workdir = pathlib.Path(workdir)
    self.read_only = read_only
    self._wandb = None if read_only else wandb
    if not read_only:
      self.workdir.mkdir(parents=True, exist_ok=True)
    self._event_files: dict[str, _EventFile] = {}
    self._checked_tails: set[str] = set()
    self._closed = False

  def _path(self, kind: str) -> pathlib.Path:
    return self.workdir / _FILENAMES[kind]

  def _append(self, record: Mapping[str, Any], kind: str) -> Record:
    if self._closed:
      raise ValueError(f"MetricsLog for {self.workdir} is closed")
    record = _normalize(record, kind)
    if self.read_only:
      return record
    path = self._path(kind)
    if kind not in self._checked_tails:
      _drop_torn_tail(path)
      self._checked_tails.add(kind)
    line = json.dumps({**record, "kind": kind}, allow_nan=False)
    with open(path, "a", encoding="utf-8") as f:
      f.write(line + "\n")
      f.flush()
      os.fsync(f.fileno())
    return record

  def _event_file(self, method: str) -> _EventFile:
    if method not in self._event_files:
      self._event_files[method] = _EventFile(
          self.workdir / "tensorboard" / method)
    return self._event_files[method]

  def _add_scalars(self, method: str, scalars: Mapping[str, float],
                   step: int) -> None:
    self._event_file(method).add_scalars(scalars, step=step)
    if self._wandb is not None:
      self._wandb.add_scalars(method, scalars, step=step)

  def append_eval(self, record: Mapping[str, Any]) -> None:
    """Logs one evaluation; TensorBoard tags are f"{split}/{metric}"."""
    record = self._append(record, "eval")
    if self.read_only:
      return
    self._add_scalars(record["method"], {
        f"{record['split']}/{name}": value
        for name, value in record.items()
        if name not in _KEY_FIELDS["eval"] and value is not None
    }, step=record["iteration"])

  def append_stage(self, record: Mapping[str, Any]) -> None:
    """Logs one stage; TensorBoard tags are f"stage/{stage}/{counter}"."""
    record = self._append(record, "stage")
    if self.read_only:
      return
    self._add_scalars(record["method"], {
        f"stage/{record['stage']}/{name}": value
        for name, value in record.items()
        if name not in _KEY_FIELDS["stage"] and value is not None
    }, step=record["iteration"])

  def evals(self) -> list[Record]:
    """Eval records, one per (method, iteration, split), the last one wins."""
    return _read_jsonl(self._path("eval"), "eval")

  def stages(self) -> list[Record]:
    """Stage records, one per (method, iteration, stage), the last one wins."""
    return _read_jsonl(self._path("stage"), "stage")

  def close(self) -> None:
    for event_file in self._event_files.values():
      event_file.close()
    self._event_files.clear()
    if self._wandb is not None:
      self._wandb.close()
    self._closed = True

  def __enter__(self) -> "MetricsLog":
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()


Interval = tuple[float, float]


def _fmt_rate(value: float | None) -> str:
  return _MISSING if value is None else f"{value:.3f}"


def _fmt_rate_ci(value: float | None, interval: Interval | None) -> str:
  """E.g. "0.312 [0.271, 0.356]"; the bare rate when there is no interval."""
  if value is None or interval is None:
    return _fmt_rate(value)
  return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _fmt_count(value: float | None) -> str:
  return _MISSING if value is None else str(int(round(value)))


def _fmt_seconds(value: float | None) -> str:
  return _MISSING if value is None else f"{value:.1f}"


def _fmt_points(value: float | None) -> str:
  # Adding 0.0 turns a rounded -0.0 into 0.0, so no difference reads "+0.0".
  return _MISSING if value is None else f"{round(value, 1) + 0.0:+.1f}"


def _fmt_points_ci(value: float | None, interval: Interval | None) -> str:
  if value is None or interval is None:
    return _fmt_points(value)
  return (f"{_fmt_points(value)} [{_fmt_points(interval[0])}, "
          f"{_fmt_points(interval[1])}]")


class _Index:
  """Records looked up by key; methods, splits and K values in display order."""

  def __init__(self, evals: Sequence[Mapping[str, Any]],
               stages: Sequence[Mapping[str, Any]]):
    self.evals = {_key(r, "eval"): r for r in _dedupe(evals, "eval")}
    self.stages = {_key(r, "stage"): r for r in _dedupe(stages, "stage")}
    methods = [key[0] for key in [*self.evals, *self.stages]]
    self.methods = list(dict.fromkeys(methods))
    splits = {split for (_, _, split), r in self.evals.items()
              if r.get("pass@1") is not None}
    self.splits = ([s for s in _SPLIT_ORDER if s in splits]
                   + sorted(splits - set(_SPLIT_ORDER)))
    stage_names = {stage for _, _, stage in self.stages}
    self.stage_names = [*_MAIN_STAGES, *sorted(stage_names - set(_MAIN_STAGES))]

  def ks(self, family: str, split: str = "test") -> list[int]:
    ks = set()
    for (_, _, record_split), record in self.evals.items():
      for name, value in record.items():
        match = _AT_K.match(name)
        if (record_split == split and match and match[1] == family
            and value is not None):
          ks.add(int(match[2]))
    return sorted(ks)

  def levels(self, split: str) -> list[int]:
    """Difficulty levels with a pass@1 on `split` (none for tasks without levels)."""
    return sorted({int(match[1]) for (_, _, record_split), record
                   in self.evals.items() if record_split == split
                   for name, value in record.items()
                   if value is not None and (match := _LEVEL.match(name))})

  def iterations(self, method: str) -> list[int]:
    return sorted({it for m, it, _ in [*self.evals, *self.stages]
                   if m == method})

  def metric(self, method: str, iteration: int, split: str,
             name: str) -> float | None:
    return self.evals.get((method, iteration, split), {}).get(name)

  def interval(self, method: str, iteration: int, split: str,
               name: str) -> Interval | None:
    """The 95% interval logged with the metric; for greedy pass@1 (overall or
    per level) logged without one, the exact interval from its problem count."""
    record = self.evals.get((method, iteration, split), {})
    lo, hi = record.get(f"{name}_lo"), record.get(f"{name}_hi")
    if lo is not None and hi is not None:
      return lo, hi
    value = record.get(name)
    count_name = (name.removesuffix("pass@1") + "num_problems"
                  if name == "pass@1" or _LEVEL.match(name) else None)
    count = record.get(count_name) if count_name else None
    if value is None or not count:
      return None
    return evaluation.clopper_pearson(min(count, round(value * count)), count)

  def cell(self, method: str, iteration: int, split: str, name: str) -> str:
    return _fmt_rate_ci(self.metric(method, iteration, split, name),
                        self.interval(method, iteration, split, name))

  def counter(self, method: str, iteration: int, stage: str,
              name: str) -> float | None:
    return self.stages.get((method, iteration, stage), {}).get(name)

  def series(self, method: str, split: str,
             name: str) -> list[tuple[int, float]]:
    return [(it, value) for it in self.iterations(method)
            if (value := self.metric(method, it, split, name)) is not None]

  def band(self, method: str, split: str,
           name: str) -> list[tuple[int, float, Interval | None]]:
    return [(it, value, self.interval(method, it, split, name))
            for it, value in self.series(method, split, name)]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]],
           align: str = "---:") -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + f"{align}|" * len(header),
          *("| " + " | ".join(row) + " |" for row in rows)]


def _fmt_ratio(numerator: Any, denominator: Any) -> str:
  if numerator is None or not denominator:
    return _MISSING
  return f"{numerator / denominator:.2f}"


def _method_table(index: _Index, method: str) -> list[str]:
  columns = [("iter", lambda it: str(it)),
             ("test pass@1",
              lambda it: index.cell(method, it, "test", "pass@1"))]
  for family in ("pass", "maj"):
    for k in index.ks(family):
      if family == "pass" and k == 1:
        continue
      columns.append((f"test {family}@{k}",
                      lambda it, name=f"{family}@{k}": index.cell(
                          method, it, "test", name)))
  for split in index.splits:
    if split != "test":
      columns.append((f"{split} pass@1",
                      lambda it, split=split: index.cell(
                          method, it, split, "pass@1")))
  columns.append(("E-step solve rate", lambda it: _fmt_rate(
      index.counter(method, it, "estep", "solve_rate"))))
  for name in _ESTEP_COUNTERS:
    columns.append((name, lambda it, name=name: _fmt_count(
        index.counter(method, it, "estep", name))))
  # What the E-step's budget bought: samples drawn per kept sample, and problems with at least one kept solution
  # (the adaptive E-step's two aims; `rest.estep.rounds`).
  columns.append(("generated / kept", lambda it: _fmt_ratio(
      index.counter(method, it, "estep", "generated"),
      index.counter(method, it, "estep", "kept"))))
  columns.append(("problems kept", lambda it: _fmt_count(
      index.counter(method, it, "estep", "problems_with_kept"))))
  for stage in index.stage_names:
    columns.append((f"{stage} s", lambda it, stage=stage: _fmt_seconds(
        index.counter(method, it, stage, "wall_s"))))
  return _table([header for header, _ in columns],
                ([cell(it) for _, cell in columns]
                 for it in index.iterations(method)))


def _level_table(index: _Index, method: str, split: str) -> list[str]:
  """Greedy pass@1 per difficulty level and iteration; [] without levels."""
  levels = index.levels(split)
  iterations = [it for it in index.iterations(method)
                if any(index.metric(method, it, split, f"level_{level}/pass@1")
                       is not None for level in levels)]
  if not iterations:
    return []
  header = ["iter"]
  for level in levels:
    counts = {index.metric(method, it, split, f"level_{level}/num_problems")
              for it in iterations} - {None}
    header.append(f"level {level}" + (f" (n={_fmt_count(counts.pop())})"
                                      if len(counts) == 1 else ""))
  return _table(header, ([str(it)] + [
      index.cell(method, it, split, f"level_{level}/pass@1")
      for level in levels] for it in iterations))


def _best(index: _Index, method: str) -> tuple[int, str] | None:
  """(iteration, split it was picked on): val pass@1 if logged, else test."""
  test = dict(index.series(method, "test", "pass@1"))
  val = [(it, value) for it, value in index.series(method, "val", "pass@1")
         if it in test]
  candidates, chosen_on = (val, "val") if val else (list(test.items()), "test")
  if not candidates:
    return None
  # max() keeps the first of equal values: ties go to the earlier iteration.
  return max(candidates, key=lambda pair: pair[1])[0], chosen_on


def _difference_interval(value: float, interval: Interval, base: float,
                         base_interval: Interval) -> Interval:
  """95% interval of value - base, in points, from the two rates' intervals.

  Each rate's standard error is read off its own interval (half-width / 1.96)
  and the two are combined as if independent. Both rates are on the same
  problems, whose positive correlation makes the true interval narrower, so
  this one errs wide.
  """
  se = math.hypot((interval[1] - interval[0]) / (2 * 1.96),
                  (base_interval[1] - base_interval[0]) / (2 * 1.96))
  diff = value - base
  return 100 * (diff - 1.96 * se), 100 * (diff + 1.96 * se)


def _comparison_table(index: _Index) -> list[str]:
  bases = [(m, 0) for m in index.methods
           if index.metric(m, 0, "test", "pass@1") is not None]
  shared_base = bases[0] if bases else None
  rows = []
  for method in index.methods:
    test = dict(index.series(method, "test", "pass@1"))
    # One-shot baselines are often logged without their own iteration 0; the
    # base model is the same for every method.
    base_key = (method, 0) if 0 in test else shared_base
    base = index.metric(*base_key, "test", "pass@1") if base_key else None
    base_interval = (index.interval(*base_key, "test", "pass@1")
                     if base_key else None)
    best = _best(index, method)
    final_it = max(test) if test else None
    cells = [method, _fmt_rate_ci(base, base_interval)]
    for it in (best[0] if best else None, final_it):
      value = test.get(it)
      interval = index.interval(method, it, "test", "pass@1")
      diff = None if value is None or base is None else 100 * (value - base)
      diff_interval = (
          _difference_interval(value, interval, base, base_interval)
          if diff is not None and interval and base_interval and it != 0
          else None)
      cells += [_MISSING if it is None else str(it),
                _fmt_rate_ci(value, interval),
                _fmt_points_ci(diff, diff_interval)]
    cells.append(best[1] if best else _MISSING)
    rows.append(cells)
  lines = _table(["method", "base (it 0)", "best it", "best", "Δ best (pts)",
                  "final it", "final", "Δ final (pts)", "best chosen on"], rows)
  lines[1] = "|---|" + "---:|" * 7 + "---|"
  return lines


def _plot(path: pathlib.Path, panels: Sequence[tuple[str, dict[str, list]]],
          ylabel: str, colors: Mapping[str, str]) -> bool:
  """One panel per (title, {method: [(iteration, value, interval or None)]}).

  Returns False if no panel has data. Intervals are drawn as bands. A method
  trained once (iterations 0 and 1, e.g. SFT on human solutions) next to
  iterated methods is drawn as a dashed horizontal line at its final value,
  with its interval as a horizontal band, which reads as a baseline against
  every iteration.
  """
  panels = [(title, {m: pts for m, pts in series.items() if pts})
            for title, series in panels]
  panels = [(title, series) for title, series in panels if series]
  if not panels:
    return False
  fig = Figure(figsize=(4.5 * len(panels), 3.5), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (title, series) in zip(axes, panels):
    last_iteration = max(point[0] for pts in series.values() for point in pts)
    for method, points in series.items():
      iterations = [point[0] for point in points]
      values = [point[1] for point in points]
      intervals = [point[2] if len(point) > 2 else None for point in points]
      color = colors[method]
      if max(iterations) == 1 and last_iteration > 1:
        ax.axhline(values[-1], color=color, linestyle="--",
                   label=f"{method} (it 1)")
        if intervals[-1] is not None:
          ax.axhspan(*intervals[-1], color=color, alpha=0.12, linewidth=0)
      else:
        ax.plot(iterations, values, marker="o", color=color, label=method)
        banded = [(it, iv) for it, iv in zip(iterations, intervals)
                  if iv is not None]
        if banded:
          ax.fill_between([it for it, _ in banded], [iv[0] for _, iv in banded],
                          [iv[1] for _, iv in banded], color=color, alpha=0.2,
                          linewidth=0)
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  return True


def _plots(index: _Index, plot_dir: pathlib.Path) -> list[tuple[str, str]]:
  """Writes the PNGs; returns (caption, file name) for those with data."""
  palette = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
             "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
  colors = {m: palette[i % len(palette)] for i, m in enumerate(index.methods)}

  def metric_panels(split, names, titles=None):
    return [(title, {m: index.band(m, split, name) for m in index.methods})
            for name, title in zip(names, titles or [f"{split} {name}"
                                                     for name in names])]

  kept = {m: [(it, v) for it in index.iterations(m)
              if (v := index.counter(m, it, "estep", "kept")) is not None]
          for m in index.methods}
  levels = index.levels("test")
  figures = [
      ("pass@1 per split vs iteration (bands: 95% intervals)", "pass_at_1.png",
       "pass@1", [panel for split in index.splits
                  for panel in metric_panels(split, ["pass@1"])]),
      ("test pass@1 per difficulty level vs iteration (bands: 95% intervals)",
       "pass_at_1_by_level.png", "pass@1",
       metric_panels("test", [f"level_{level}/pass@1" for level in levels],
                     [f"test level {level}" for level in levels])),
      ("test pass@K vs iteration (bands: 95% intervals)", "pass_at_k.png",
       "pass@K", metric_panels(
           "test", [f"pass@{k}" for k in index.ks("pass") if k != 1])),
      ("test maj@K vs iteration (bands: 95% intervals)", "maj_at_k.png",
       "maj@K", metric_panels("test", [f"maj@{k}" for k in index.ks("maj")])),
      ("E-step kept samples vs iteration", "kept.png", "kept samples",
       [("E-step kept samples", kept)]),
  ]
  return [(caption, name) for caption, name, ylabel, panels in figures
          if _plot(plot_dir / name, panels, ylabel, colors)]


_INTERVALS_NOTE = (
    "Rates are followed by their 95% interval in brackets: exact "
    "(Clopper-Pearson) for greedy pass@1, a percentile bootstrap over "
    f"problems ({evaluation.BOOTSTRAP_RESAMPLES} resamples, seed "
    f"{evaluation.BOOTSTRAP_SEED}) for pass@K and maj@K.")


def write_report(workdir: str | os.PathLike[str],
                 evals: Sequence[Mapping[str, Any]],
                 stages: Sequence[Mapping[str, Any]], *, title: str,
                 config_summary: str = "") -> str:
  """Writes WORKDIR/report.md and WORKDIR/plots/*.png; returns the report path.

  The report reads results first: the method comparison, the per-iteration
  tables, the per-difficulty tables (tasks with levels), the plots, and the
  config last. Works on partial runs: missing numbers read "–" and are left
  out of plots.
  """
  workdir = pathlib.Path(workdir)
  index = _Index(evals, stages)
  lines = [f"# {title}", ""]
  if not index.methods:
    lines += ["No evaluations or stages logged yet.", ""]
  else:
    lines += [
        "## Test pass@1 vs base", "",
        "Greedy test pass@1 of every method against the base model "
        "(iteration 0). " + _INTERVALS_NOTE + " Differences are in "
        "percentage points; their interval treats the two rates as "
        "independent, which errs wide since both are on the same problems. "
        "The best iteration is picked on val pass@1 when the method has val "
        "evaluations; picked on test it is an optimistic number, and the "
        "final iteration is the one to quote.", "",
        *_comparison_table(index), ""]
  for method in index.methods:
    lines += [f"## {method}", "", *_method_table(index, method), ""]
  level_tables = [(method, split, table) for split in index.splits
                  for method in index.methods
                  if (table := _level_table(index, method, split))]
  if level_tables:
    lines += ["## Pass@1 by difficulty level", "",
              "Greedy pass@1 per difficulty level of the task, with its exact "
              "95% interval; n is the number of problems at the level.", ""]
    for method, split, table in level_tables:
      lines += [f"### {method}, {split}", "", *table, ""]
  plots = _plots(index, workdir / "plots")
  if plots:
    lines += ["## Plots", ""]
    for caption, name in plots:
      lines += [f"![{caption}](plots/{name})", ""]
  if config_summary.strip():
    lines += ["## Config", "", "```text", config_summary.strip(), "```", ""]
  path = workdir / "report.md"
  # Write-then-rename: a reader never sees a half-written report.
  tmp_path = path.with_suffix(".md.tmp")
  tmp_path.write_text("\n".join(lines), encoding="utf-8")
  os.replace(tmp_path, path)
  return str(path)


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None,
             desc: str, unit: str = "it") -> tqdm.tqdm:
  """tqdm bar with ETA on stderr, shown only on a TTY.

  REST_JAX_PROGRESS=1 forces it on (e.g. to watch a job's log), =0 forces it
  off; otherwise non-TTY stderr (CI, log files) gets no bar.
  """
  setting = os.environ.get("REST_JAX_PROGRESS", "")
  if setting not in ("", "0", "1"):
    raise ValueError(
        f"REST_JAX_PROGRESS must be 0 or 1, got {setting!r}")
  if setting:
    enabled = setting == "1"
  else:
    enabled = getattr(sys.stderr, "isatty", lambda: False)()
  return tqdm.tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr,
                   disable=not enabled, dynamic_ncols=True)


def _fmt_counter(name: str, value: Any) -> str:
  number = _number("stage", name, value)
  if number is None:
    return _MISSING
  if isinstance(number, int) or (number.is_integer() and abs(number) >= 1):
    return str(int(number))
  return f"{number:.4g}" if abs(number) < 1e4 else f"{number:.0f}"


def format_stage_line(method: str, iteration: int, stage: str, wall_s: float,
                      **counters: Any) -> str:
  """E.g. "rest_em it 2 | estep 35.1s | generated=8000 kept=1650"."""
  line = f"{method} it {iteration} | {stage} {wall_s:.1f}s"
  if counters:
    line += " | " + " ".join(f"{name}={_fmt_counter(name, value)}"
                             for name, value in counters.items())
  return line


def log_stage(method: str, iteration: int, stage: str, wall_s: float,
              **counters: Any) -> None:
  """Logs one compact INFO line for a finished stage."""
  logging.info("%s", format_stage_line(method, iteration, stage, wall_s,
                                       **counters))
