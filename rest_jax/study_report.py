"""The side-by-side report of a study (rest_jax/study.py): WORKDIR/study_report.md and WORKDIR/plots/*.png.

It reads only the finished runs' files (each run's metrics.jsonl and stages.jsonl, through reporting.MetricsLog) and
aggregates over seeds: every number is a mean with its spread, the sample standard deviation (n - 1) and the min-max
range over seeds. The same files give a byte-identical report: no timestamps, no wall times, no absolute paths beyond
those the study config names.

Sampled tokens: each stage record may carry `sampled_tokens` (new tokens generated for training in that stage: the
E-step, or an online algorithm's own stages); the tokens of an iteration are the sum over every stage record of that
method and iteration, a missing counter counting 0 (SFT samples nothing), and the report shows them cumulatively.
"""

import dataclasses
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

from rest_jax import reporting

_MISSING = "–"
_AT_K = re.compile(r"^(pass|maj)@(\d+)$")
_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
            "tab:olive", "tab:cyan")
_SPREAD_NOTE = ("Each cell is the mean over seeds ± the sample standard deviation (n - 1; – with one seed) "
                "[min, max over seeds]; n is the number of seeds.")


@dataclasses.dataclass(frozen=True)
class Slot:
  """One point of a study: `arm` at `seed` (and base `size`; None: the arm's main runs), whose records are those of
  `method` in the run at `run` (relative to the study's workdir; several slots may share a run)."""

  arm: str
  method: str
  seed: int
  size: str | None
  run: str
  base_params: int | None = None


@dataclasses.dataclass(frozen=True)
class Spread:
  """Values over seeds: their number, mean, sample standard deviation (None for one value), min and max."""

  n: int
  mean: float
  std: float | None
  lo: float
  hi: float


def spread(values: Iterable[float]) -> Spread | None:
  values = [float(v) for v in values]
  if not values:
    return None
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return Spread(n=len(values), mean=float(np.mean(values)), std=std, lo=min(values), hi=max(values))


@dataclasses.dataclass
class RunRecords:
  """One run's records: eval metrics by (method, iteration, split), stage records as logged."""

  evals: dict[tuple[str, int, str], dict[str, Any]]
  stages: list[dict[str, Any]]

  @classmethod
  def read(cls, workdir: str | os.PathLike) -> "RunRecords":
    log = reporting.MetricsLog(workdir, read_only=True)
    return cls(evals={(r["method"], r["iteration"], r["split"]): r for r in log.evals()}, stages=log.stages())

  def iterations(self, method: str) -> list[int]:
    return sorted({it for m, it, _ in self.evals if m == method})

  def metric(self, method: str, iteration: int, split: str, name: str) -> float | None:
    return self.evals.get((method, iteration, split), {}).get(name)

  def cumulative_tokens(self, method: str) -> dict[int, float]:
    """Iteration -> tokens sampled for training up to and including it (missing `sampled_tokens` count 0)."""
    per_iteration: dict[int, float] = {}
    for r in self.stages:
      if r["method"] == method:
        per_iteration[r["iteration"]] = per_iteration.get(r["iteration"], 0) + (r.get("sampled_tokens") or 0)
    total, out = 0.0, {}
    for it in sorted(set(per_iteration) | set(self.iterations(method))):
      total += per_iteration.get(it, 0)
      out[it] = total
    return out


def largest_drop(curve: Mapping[int, float]) -> tuple[float, int, int] | None:
  """The largest fall between consecutive iterations as (drop, from, to); None if the curve never falls."""
  its = sorted(curve)
  drops = [(curve[a] - curve[b], a, b) for a, b in zip(its, its[1:]) if curve[a] > curve[b]]
  return max(drops, key=lambda d: d[0]) if drops else None


class Study:
  """The finished slots' records, aggregated per arm (main runs) and per (arm, size) (the scaling sweep)."""

  def __init__(self, workdir: pathlib.Path, slots: Sequence[Slot], arms: Sequence[tuple[str, str]],
               finished: set[str]):
    self.arms = [name for name, _ in arms]
    self.methods = dict(arms)
    self.slots = [s for s in slots if s.run in finished]
    self.records = {run: RunRecords.read(workdir / run) for run in dict.fromkeys(s.run for s in self.slots)}
    sizes = list(dict.fromkeys(s.size for s in slots if s.size is not None))
    # Smallest base first; sizes whose count is unknown (not a rest_jax checkpoint) last, in the study's order.
    counts = {size: {s.base_params for s in slots if s.size == size} - {None} for size in sizes}
    self.sizes = sorted(sizes, key=lambda size: (not counts[size], min(counts[size], default=0)))

  def seeds(self, arm: str, size: str | None = None) -> list[Slot]:
    return [s for s in self.slots if s.arm == arm and s.size == size]

  def curve(self, slot: Slot, split: str = "test", name: str = "pass@1") -> dict[int, float]:
    records = self.records[slot.run]
    return {it: v for it in records.iterations(slot.method)
            if (v := records.metric(slot.method, it, split, name)) is not None}

  def iterations(self, arm: str, size: str | None = None) -> list[int]:
    return sorted({it for s in self.seeds(arm, size) for it in self.records[s.run].iterations(s.method)})

  def point(self, arm: str, iteration: int, split: str = "test", name: str = "pass@1",
            size: str | None = None) -> Spread | None:
    return spread(v for s in self.seeds(arm, size) if (v := self.curve(s, split, name).get(iteration)) is not None)

  def tokens(self, arm: str, iteration: int) -> Spread | None:
    return spread(t[iteration] for s in self.seeds(arm)
                  if iteration in (t := self.records[s.run].cumulative_tokens(s.method)))

  def metric_names(self, arm: str) -> list[str]:
    """pass@1, then the pass@K and maj@K the arm's test evaluations recorded."""
    found = {(m[1], int(m[2])) for s in self.seeds(arm) for (method, _, split), r in self.records[s.run].evals.items()
             if method == s.method and split == "test" for name, v in r.items()
             if v is not None and (m := _AT_K.match(name))}
    return ["pass@1", *(f"{f}@{k}" for f, k in sorted(found, key=lambda fk: (fk[0] != "pass", fk[1]))
                        if (f, k) != ("pass", 1))]

  def splits(self, arm: str) -> set[str]:
    return {split for s in self.seeds(arm) for (method, _, split) in self.records[s.run].evals if method == s.method}

  def gains(self, arm: str, size: str | None = None) -> tuple[Spread | None, Spread | None, Spread | None]:
    """(base test pass@1, best gain, final gain) over seeds, gains in points over each seed's own iteration 0."""
    bases, best, final = [], [], []
    for slot in self.seeds(arm, size):
      curve = self.curve(slot)
      later = {it: v for it, v in curve.items() if it > 0}
      if 0 not in curve or not later:
        continue
      bases.append(curve[0])
      best.append(100 * (max(later.values()) - curve[0]))
      final.append(100 * (later[max(later)] - curve[0]))
    return spread(bases), spread(best), spread(final)

  def final(self, arm: str) -> Spread | None:
    """Test pass@1 at each seed's last iteration, over seeds."""
    return spread(c[max(c)] for s in self.seeds(arm) if (c := self.curve(s)))

  def base_params(self, size: str) -> int | None:
    counts = {s.base_params for s in self.slots if s.size == size} - {None}
    return counts.pop() if len(counts) == 1 else None


# --- Formatting -----------------------------------------------------------------------------------------------------


def _fmt(s: Spread | None, points: bool = False) -> str:
  if s is None:
    return _MISSING
  f = (lambda v: f"{round(v, 1) + 0.0:+.1f}") if points else (lambda v: f"{v:.3f}")
  std = _MISSING if s.std is None else (f"{s.std:.1f}" if points else f"{s.std:.3f}")
  return f"{f(s.mean)} ± {std} [{f(s.lo)}, {f(s.hi)}]"


def _fmt_tokens(value: float | None) -> str:
  return _MISSING if value is None else str(int(round(value)))


def _fmt_params(value: int | None) -> str:
  return _MISSING if value is None else f"{value:,}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * left + "---:|" * (len(header) - left),
          *("| " + " | ".join(row) + " |" for row in rows)]


# --- Sections -------------------------------------------------------------------------------------------------------


def _headline(study: Study) -> str:
  finals = [(arm, s) for arm in study.arms if (s := study.final(arm)) is not None]
  if not finals:
    return "No arm has a finished run yet."
  ranked = sorted(finals, key=lambda pair: -pair[1].mean)  # Stable: ties keep the arms' order.
  top, s = ranked[0]
  if len(ranked) == 1:
    return f"Only **{top}** has finished runs: final mean test pass@1 {s.mean:.3f} over {s.n} seeds."
  second, s2 = ranked[1]
  gap = 100 * (s.mean - s2.mean)
  if round(gap, 1) == 0:
    return (f"**{top}** and **{second}** tie for the highest final mean test pass@1, {s.mean:.3f} ({s.n} and "
            f"{s2.n} seeds).")
  overlap = "overlap" if s.lo <= s2.hi else "do not overlap"
  return (f"**{top}** has the highest final mean test pass@1, {s.mean:.3f} over {s.n} seeds, "
          f"{gap:.1f} points above the next arm, **{second}** ({s2.mean:.3f} over {s2.n} seeds); their seeds' "
          f"min-max ranges [{s.lo:.3f}, {s.hi:.3f}] and [{s2.lo:.3f}, {s2.hi:.3f}] {overlap}.")


def _summary_table(study: Study) -> list[str]:
  rows = []
  for arm in study.arms:
    base, best, final = study.gains(arm)
    its = study.iterations(arm)
    rows.append([arm, study.methods[arm], str(len(study.seeds(arm))), _fmt(base), str(its[-1]) if its else _MISSING,
                 _fmt(study.final(arm)), _fmt(final, points=True), _fmt(best, points=True),
                 _fmt_tokens(t.mean if (t := study.tokens(arm, its[-1]) if its else None) else None)])
  return _table(["arm", "method", "seeds", "base test pass@1", "final it", "final test pass@1", "Δ final (pts)",
                 "Δ best (pts)", "sampled tokens (final, mean)"], rows, left=2)


def _iteration_table(study: Study, arm: str) -> list[str]:
  names = study.metric_names(arm)
  rows = []
  for it in study.iterations(arm):
    points = [study.point(arm, it, "test", name) for name in names]
    n = max((p.n for p in points if p), default=0)
    tokens = study.tokens(arm, it)
    rows.append([str(it), str(n), *map(_fmt, points), _fmt_tokens(tokens.mean if tokens else None)])
  return _table(["iter", "n", *(f"test {name}" for name in names), "sampled tokens (cumulative, mean)"], rows)


def _efficiency_table(study: Study) -> list[str]:
  rows = []
  for arm in study.arms:
    its = study.iterations(arm)
    if not its:
      continue
    tokens = study.tokens(arm, its[-1])
    _, _, final = study.gains(arm)
    per_million = (_MISSING if not tokens or not tokens.mean or final is None
                   else f"{final.mean / (tokens.mean / 1e6):+.2f}")
    rows.append([arm, _fmt_tokens(tokens.mean if tokens else None), _fmt(study.final(arm)),
                 _fmt(final, points=True), per_million])
  return _table(["arm", "sampled tokens (final, mean)", "final test pass@1", "Δ final (pts)",
                 "Δ final pts per 1M tokens"], rows)


def _stability_tables(study: Study) -> tuple[list[str], list[str]]:
  points, drops = [], []
  for arm in study.arms:
    mean_curve = {}
    for it in study.iterations(arm):
      p = study.point(arm, it)
      if p is None:
        continue
      mean_curve[it] = p.mean
      previous = max((i for i in mean_curve if i < it), default=None)
      change = _MISSING if previous is None else f"{round(100 * (p.mean - mean_curve[previous]), 1) + 0.0:+.1f}"
      points.append([arm, str(it), str(p.n), _MISSING if p.std is None else f"{p.std:.3f}", f"{p.lo:.3f}",
                     f"{p.hi:.3f}", f"{p.hi - p.lo:.3f}", change])
    if not mean_curve:
      continue
    drop = largest_drop(mean_curve)
    seed_drops = [(d, s.seed) for s in study.seeds(arm) if (d := largest_drop(study.curve(s))) is not None]
    worst = max(seed_drops, key=lambda pair: pair[0][0]) if seed_drops else None
    drops.append([arm, "none" if drop is None else f"{100 * drop[0]:.1f} (it {drop[1]} → {drop[2]})",
                  "none" if worst is None else
                  f"{100 * worst[0][0]:.1f} (seed {worst[1]}, it {worst[0][1]} → {worst[0][2]})",
                  f"{sum(1 for _ in seed_drops)} of {len(study.seeds(arm))}"])
  return (_table(["arm", "iter", "n", "std", "min", "max", "range", "Δ mean vs previous (pts)"], points),
          _table(["arm", "largest drop of the mean (pts)", "largest drop of one seed (pts)", "seeds that ever drop"],
                 drops))


def _scaling_rows(study: Study) -> list[tuple[str, str, int | None, tuple]]:
  return [(arm, size, study.base_params(size), study.gains(arm, size)) for arm in study.arms for size in study.sizes
          if study.seeds(arm, size)]


def _scaling_table(rows) -> list[str]:
  return _table(["arm", "size", "base params", "n", "base test pass@1", "Δ best (pts)", "Δ final (pts)"],
                [[arm, size, _fmt_params(params), str(final.n if final else 0), _fmt(base), _fmt(best, points=True),
                  _fmt(final, points=True)] for arm, size, params, (base, best, final) in rows], left=2)


def _overfitting_table(study: Study, arm: str) -> list[str]:
  rows = []
  for it in study.iterations(arm):
    train, test = study.point(arm, it, "train"), study.point(arm, it, "test")
    gaps = spread(100 * (c["train"][it] - c["test"][it]) for s in study.seeds(arm)
                  if it in (c := {"train": study.curve(s, "train"), "test": study.curve(s, "test")})["train"]
                  and it in c["test"])
    rows.append([str(it), _fmt(train), _fmt(test), _fmt(gaps, points=True)])
  return _table(["iter", "train pass@1", "test pass@1", "train − test (pts)"], rows)


# --- Plots ----------------------------------------------------------------------------------------------------------


def _figure(panels: int) -> tuple[Figure, Any]:
  fig = Figure(figsize=(5 * panels, 3.8), layout="constrained")
  FigureCanvasAgg(fig)
  return fig, fig.subplots(1, panels, squeeze=False)[0]


def _save(fig: Figure, path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100, metadata={"Software": None})


def _band(ax, xs, points: Sequence[Spread], color: str, label: str, linestyle: str = "-") -> None:
  ax.plot(xs, [p.mean for p in points], marker="o", color=color, label=label, linestyle=linestyle)
  ax.fill_between(xs, [p.lo for p in points], [p.hi for p in points], color=color, alpha=0.18, linewidth=0)


def _plot_iterations(study: Study, path: pathlib.Path, colors) -> bool:
  fig, (ax,) = _figure(1)
  drawn = False
  for arm in study.arms:
    its = [it for it in study.iterations(arm) if study.point(arm, it)]
    if its:
      _band(ax, its, [study.point(arm, it) for it in its], colors[arm], arm)
      drawn = True
  if not drawn:
    return False
  ax.set(title="test pass@1 (band: min-max over seeds)", xlabel="iteration", ylabel="test pass@1")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  _save(fig, path)
  return True


def _plot_efficiency(study: Study, path: pathlib.Path, colors) -> bool:
  fig, (ax,) = _figure(1)
  drawn = False
  for arm in study.arms:
    its = [it for it in study.iterations(arm) if study.point(arm, it) and study.tokens(arm, it)]
    if not its:
      continue
    points = [study.point(arm, it) for it in its]
    tokens = [study.tokens(arm, it).mean for it in its]
    drawn = True
    if not any(tokens):  # Samples nothing (SFT): a baseline at every budget.
      ax.axhline(points[-1].mean, color=colors[arm], linestyle="--", label=f"{arm} (samples nothing)")
      ax.axhspan(points[-1].lo, points[-1].hi, color=colors[arm], alpha=0.12, linewidth=0)
    else:
      _band(ax, tokens, points, colors[arm], arm)
  if not drawn:
    return False
  ax.set(title="test pass@1 vs sampled tokens (band: min-max)", xlabel="cumulative sampled tokens "
         "(mean over seeds)", ylabel="test pass@1")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  _save(fig, path)
  return True


def _plot_scaling(rows, path: pathlib.Path, colors) -> bool:
  rows = [(arm, size, params, gains) for arm, size, params, gains in rows if params and gains[2]]
  if not rows:
    return False
  fig, (ax,) = _figure(1)
  for arm in dict.fromkeys(r[0] for r in rows):
    mine = sorted((params, gains) for a, _, params, gains in rows if a == arm)
    xs = [params for params, _ in mine]
    for index, (label, style) in ((2, ("final", "-")), (1, ("best", "--"))):
      points = [gains[index] for _, gains in mine]
      ax.errorbar(xs, [p.mean for p in points], yerr=[[p.mean - p.lo for p in points], [p.hi - p.mean for p in points]],
                  color=colors[arm], linestyle=style, marker="o", capsize=3, label=f"{arm} ({label})",
                  markerfacecolor=colors[arm] if label == "final" else "white")
  ax.set_xscale("log")
  ax.axhline(0, color="black", linewidth=0.8)
  ax.set(title="gain over the base (bars: min-max over seeds)", xlabel="base parameters",
         ylabel="Δ test pass@1 (points)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  _save(fig, path)
  return True


def _plot_overfitting(study: Study, path: pathlib.Path) -> bool:
  arms = [arm for arm in study.arms if any(study.point(arm, it, "train") for it in study.iterations(arm))]
  if not arms:
    return False
  fig, axes = _figure(len(arms))
  for ax, arm in zip(axes, arms):
    for split, color in (("train", "tab:red"), ("test", "tab:blue")):
      its = [it for it in study.iterations(arm) if study.point(arm, it, split)]
      if its:
        _band(ax, its, [study.point(arm, it, split) for it in its], color, split)
    ax.set(title=arm, xlabel="iteration", ylabel="pass@1")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  _save(fig, path)
  return True


# --- The report -----------------------------------------------------------------------------------------------------


def write_report(workdir: str | os.PathLike, slots: Sequence[Slot], *, arms: Sequence[tuple[str, str]],
                 finished: set[str], num_runs: int, title: str, config_summary: str = "") -> str:
  """Writes WORKDIR/study_report.md and WORKDIR/plots/*.png from the finished runs; returns the report path.

  `slots`: every (arm, seed, size) of the study, with the run that serves it; `arms`: (name, method) in display
  order; `finished`: the runs (workdir-relative) whose records count. Results first: the summary with its
  headline, accuracy per iteration, sample efficiency, stability, scaling, overfitting; then the runs and the config.
  """
  workdir = pathlib.Path(workdir)
  study = Study(workdir, slots, arms, finished)
  colors = {arm: _PALETTE[i % len(_PALETTE)] for i, arm in enumerate(study.arms)}
  plots = workdir / "plots"
  runs = list(dict.fromkeys(s.run for s in slots))
  done = [r for r in runs if r in finished]
  seeds = sorted({s.seed for s in slots})
  lines = [f"# {title}", "",
           f"{len(done)} of {num_runs} runs finished" + ("" if len(done) == num_runs else
                                                         " (a partial study: unfinished runs are left out)")
           + f"; arms {', '.join(study.arms)}; seeds {', '.join(map(str, seeds))}"
           + (f"; base sizes {', '.join(study.sizes)}." if study.sizes else "."), ""]

  lines += ["## Summary", "", _headline(study), "",
            "Test pass@1 is greedy; Δ is in points over each seed's own base (iteration 0); the best iteration is "
            "picked on test, an optimistic number: quote the final one. " + _SPREAD_NOTE, "",
            *_summary_table(study), ""]

  lines += ["## Test accuracy per iteration", "", _SPREAD_NOTE + " Sampled tokens: new tokens generated for "
            "training up to that iteration (the `sampled_tokens` of every stage; none recorded counts 0).", ""]
  for arm in study.arms:
    lines += [f"### {arm}", "", *(_iteration_table(study, arm) if study.seeds(arm) else ["No finished run yet."]),
              ""]
  if _plot_iterations(study, plots / "test_pass_at_1.png", colors):
    lines += ["![test pass@1 vs iteration](plots/test_pass_at_1.png)", ""]

  lines += ["## Sample efficiency", "", "Test pass@1 against the tokens each arm sampled for training (mean over "
            "seeds; band: min-max over seeds). An arm that samples nothing is drawn as a dashed baseline.", "",
            *_efficiency_table(study), ""]
  if _plot_efficiency(study, plots / "sample_efficiency.png", colors):
    lines += ["![test pass@1 vs sampled tokens](plots/sample_efficiency.png)", ""]

  points, drops = _stability_tables(study)
  lines += ["## Stability", "", "Spread of test pass@1 over seeds at every point (sample std, min, max, range), "
            "and the change of the mean from the iteration before.", "", *points, "",
            "Largest drop in test pass@1 between consecutive iterations: of the mean curve, and of any one seed.", "",
            *drops, ""]

  rows = _scaling_rows(study)
  lines += ["## Scaling", ""]
  if rows:
    lines += ["Gain in test pass@1 over the base model at each base size, per arm (best and final iteration, in "
              "points; mean ± std [min, max] over seeds). Base parameters are read from each base checkpoint.", "",
              *_scaling_table(rows), ""]
    if _plot_scaling(rows, plots / "scaling.png", colors):
      lines += ["![gain vs base size](plots/scaling.png)", ""]
  else:
    lines += ["No finished run of the size sweep (study.sizes, study.size_arms).", ""]

  lines += ["## Overfitting", ""]
  with_train = [arm for arm in study.arms if "train" in study.splits(arm)]
  if with_train:
    lines += ["Greedy pass@1 on (a subset of) the training problems against test, per iteration; a widening "
              "train − test gap is overfitting. " + _SPREAD_NOTE, ""]
    for arm in with_train:
      lines += [f"### {arm}", "", *_overfitting_table(study, arm), ""]
    if _plot_overfitting(study, plots / "overfitting.png"):
      lines += ["![train vs test pass@1](plots/overfitting.png)", ""]
  else:
    lines += ["No train-split evaluations (add \"train\" to eval.splits).", ""]

  lines += ["## Runs", "", "Every run is an experiment workdir (its own report.md); a run serves every slot "
            "listed beside it.", "",
            *_table(["run", "finished", "serves (arm: method, seed, size)"],
                    ([f"`{run}`", "yes" if run in finished else "no",
                      "; ".join(f"{s.arm}: {s.method}, seed {s.seed}" + (f", size {s.size}" if s.size else "")
                                for s in slots if s.run == run)] for run in runs), left=3), ""]
  if config_summary.strip():
    lines += ["## Study config", "", "```text", config_summary.strip(), "```", ""]
  path = workdir / "study_report.md"
  tmp = path.with_suffix(".md.tmp")
  tmp.write_text("\n".join(lines), encoding="utf-8")
  os.replace(tmp, path)  # A reader never sees a half-written report.
  return str(path)

