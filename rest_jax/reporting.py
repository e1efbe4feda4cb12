"""Metrics log, TensorBoard scalars, markdown report and progress bars.

The EM loop hands this module two kinds of flat records:

- eval records: `method`, `iteration` (0 = base model), `split`, then numeric
  metrics (`pass@1`, `pass@K`, `maj@K`, `sample_accuracy`, `num_problems`, ...).
- stage records: `method`, `iteration`, `stage` (`estep`, `mstep`, `eval`, ...),
  `wall_s`, then numeric counters (`generated`, `rewarded`, `kept`,
  `solve_rate`, `train_steps`, ...).

`MetricsLog` appends them to WORKDIR/metrics.jsonl and WORKDIR/stages.jsonl
(one fsynced JSON line each) and to TensorBoard. A run that crashes and resumes
may log the same (method, iteration, split|stage) twice; readers keep the last.
Non-finite numbers are stored as JSON null and read back as None ("missing").
`write_report` turns the records into WORKDIR/report.md plus PNG plots.
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


class MetricsLog:
  """Append-only eval/stage log in WORKDIR, mirrored to TensorBoard.

  Files: WORKDIR/metrics.jsonl, WORKDIR/stages.jsonl and one TensorBoard run
  per method under WORKDIR/tensorboard/<method> (created on first append, so a
  log opened only to read writes nothing). A `read_only` log checks the records
  it is given but writes none: the log of every process but the first in a
  multi-process run, where process 0 alone writes the shared workdir.
  """

  def __init__(self, workdir: str | os.PathLike[str], *,
               read_only: bool = False):
    self.workdir = pathlib.Path(workdir)
    self.read_only = read_only
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

  def append_eval(self, record: Mapping[str, Any]) -> None:
    """Logs one evaluation; TensorBoard tags are f"{split}/{metric}"."""
    record = self._append(record, "eval")
    if self.read_only:
      return
    self._event_file(record["method"]).add_scalars(
        {f"{record['split']}/{name}": value
         for name, value in record.items()
         if name not in _KEY_FIELDS["eval"] and value is not None},
        step=record["iteration"])

  def append_stage(self, record: Mapping[str, Any]) -> None:
    """Logs one stage; TensorBoard tags are f"stage/{stage}/{counter}"."""
    record = self._append(record, "stage")
    if self.read_only:
      return
    self._event_file(record["method"]).add_scalars(
        {f"stage/{record['stage']}/{name}": value
         for name, value in record.items()
         if name not in _KEY_FIELDS["stage"] and value is not None},
        step=record["iteration"])

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
    self._closed = True

  def __enter__(self) -> "MetricsLog":
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()


def _fmt_rate(value: float | None) -> str:
  return _MISSING if value is None else f"{value:.3f}"


def _fmt_count(value: float | None) -> str:
  return _MISSING if value is None else str(int(round(value)))


def _fmt_seconds(value: float | None) -> str:
  return _MISSING if value is None else f"{value:.1f}"


def _fmt_points(value: float | None) -> str:
  # Adding 0.0 turns a rounded -0.0 into 0.0, so no difference reads "+0.0".
  return _MISSING if value is None else f"{round(value, 1) + 0.0:+.1f}"


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

  def iterations(self, method: str) -> list[int]:
    return sorted({it for m, it, _ in [*self.evals, *self.stages]
                   if m == method})

  def metric(self, method: str, iteration: int, split: str,
             name: str) -> float | None:
    return self.evals.get((method, iteration, split), {}).get(name)

  def counter(self, method: str, iteration: int, stage: str,
              name: str) -> float | None:
    return self.stages.get((method, iteration, stage), {}).get(name)

  def series(self, method: str, split: str,
             name: str) -> list[tuple[int, float]]:
    return [(it, value) for it in self.iterations(method)
            if (value := self.metric(method, it, split, name)) is not None]


def _method_table(index: _Index, method: str) -> list[str]:
  columns = [("iter", lambda it: str(it)),
             ("test pass@1",
              lambda it: _fmt_rate(index.metric(method, it, "test", "pass@1")))]
  for family in ("pass", "maj"):
    for k in index.ks(family):
      if family == "pass" and k == 1:
        continue
      columns.append((f"test {family}@{k}",
                      lambda it, name=f"{family}@{k}": _fmt_rate(
                          index.metric(method, it, "test", name))))
  for split in index.splits:
    if split != "test":
      columns.append((f"{split} pass@1",
                      lambda it, split=split: _fmt_rate(
                          index.metric(method, it, split, "pass@1"))))
  columns.append(("E-step solve rate", lambda it: _fmt_rate(
      index.counter(method, it, "estep", "solve_rate"))))
  for name in _ESTEP_COUNTERS:
    columns.append((name, lambda it, name=name: _fmt_count(
        index.counter(method, it, "estep", name))))
  for stage in index.stage_names:
    columns.append((f"{stage} s", lambda it, stage=stage: _fmt_seconds(
        index.counter(method, it, stage, "wall_s"))))
  lines = ["| " + " | ".join(header for header, _ in columns) + " |",
           "|" + "---:|" * len(columns)]
  for it in index.iterations(method):
    lines.append("| " + " | ".join(cell(it) for _, cell in columns) + " |")
  return lines


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


def _comparison_table(index: _Index) -> list[str]:
  lines = ["| method | base (it 0) | best it | best | Δ best (pts) | "
           "final it | final | Δ final (pts) | best chosen on |",
           "|---|" + "---:|" * 7 + "---|"]
  bases = [index.metric(m, 0, "test", "pass@1") for m in index.methods]
  shared_base = next((base for base in bases if base is not None), None)
  for method in index.methods:
    test = dict(index.series(method, "test", "pass@1"))
    # One-shot baselines are often logged without their own iteration 0; the
    # base model is the same for every method.
    base = test.get(0, shared_base)
    best = _best(index, method)
    final_it = max(test) if test else None
    cells = [method, _fmt_rate(base)]
    for it in (best[0] if best else None, final_it):
      value = test.get(it)
      diff = None if value is None or base is None else 100 * (value - base)
      cells += [_MISSING if it is None else str(it), _fmt_rate(value),
                _fmt_points(diff)]
    cells.append(best[1] if best else _MISSING)
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _plot(path: pathlib.Path, panels: Sequence[tuple[str, dict[str, list]]],
          ylabel: str, colors: Mapping[str, str]) -> bool:
  """One panel per (title, {method: [(iteration, value)]}); False if no data.

  A method trained once (iterations 0 and 1, e.g. SFT on human solutions)
  next to iterated methods is drawn as a dashed horizontal line at its final
  value, which reads as a baseline against every iteration.
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
    last_iteration = max(it for pts in series.values() for it, _ in pts)
    for method, points in series.items():
      iterations, values = zip(*points)
      if max(iterations) == 1 and last_iteration > 1:
        ax.axhline(values[-1], color=colors[method], linestyle="--",
                   label=f"{method} (it 1)")
      else:
        ax.plot(iterations, values, marker="o", color=colors[method],
                label=method)
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

  def metric_panels(split, names):
    return [(f"{split} {name}",
             {m: index.series(m, split, name) for m in index.methods})
            for name in names]

  kept = {m: [(it, v) for it in index.iterations(m)
              if (v := index.counter(m, it, "estep", "kept")) is not None]
          for m in index.methods}
  figures = [
      ("pass@1 per split vs iteration", "pass_at_1.png", "pass@1",
       [panel for split in index.splits
        for panel in metric_panels(split, ["pass@1"])]),
      ("test pass@K vs iteration", "pass_at_k.png", "pass@K",
       metric_panels("test",
                     [f"pass@{k}" for k in index.ks("pass") if k != 1])),
      ("test maj@K vs iteration", "maj_at_k.png", "maj@K",
       metric_panels("test", [f"maj@{k}" for k in index.ks("maj")])),
      ("E-step kept samples vs iteration", "kept.png", "kept samples",
       [("E-step kept samples", kept)]),
  ]
  return [(caption, name) for caption, name, ylabel, panels in figures
          if _plot(plot_dir / name, panels, ylabel, colors)]


def write_report(workdir: str | os.PathLike[str],
                 evals: Sequence[Mapping[str, Any]],
                 stages: Sequence[Mapping[str, Any]], *, title: str,
                 config_summary: str = "") -> str:
  """Writes WORKDIR/report.md and WORKDIR/plots/*.png; returns the report path.

  Works on partial runs: missing numbers read "–" and are left out of plots.
  """
  workdir = pathlib.Path(workdir)
  index = _Index(evals, stages)
  lines = [f"# {title}", ""]
  if config_summary.strip():
    lines += ["## Config", "", "```text", config_summary.strip(), "```", ""]
  if not index.methods:
    lines += ["No evaluations or stages logged yet.", ""]
  for method in index.methods:
    lines += [f"## {method}", "", *_method_table(index, method), ""]
  if index.methods:
    lines += [
        "## Test pass@1 vs base", "",
        "Differences are in percentage points against iteration 0. The best "
        "iteration is picked on val pass@1 when the method has val "
        "evaluations; picked on test it is an optimistic number, and the "
        "final iteration is the one to quote.", "",
        *_comparison_table(index), ""]
  plots = _plots(index, workdir / "plots")
  if plots:
    lines += ["## Plots", ""]
    for caption, name in plots:
      lines += [f"![{caption}](plots/{name})", ""]
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
