"""Tests for rest_jax/reporting.py."""

import json
import logging
import math
import pathlib
import struct
import sys

from matplotlib.axes import Axes
import ml_collections
import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from rest_jax import evaluation
from rest_jax import reporting

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _eval(method, iteration, split, **metrics):
  return {"method": method, "iteration": iteration, "split": split, **metrics}


def _stage(method, iteration, stage, wall_s, **counters):
  return {"method": method, "iteration": iteration, "stage": stage,
          "wall_s": wall_s, **counters}


def _fixture():
  """rest_em: 3 iterations, best at 2; sft_human: one SFT iteration."""
  test_pass1 = [0.20, 0.35, 0.45, 0.43]
  evals = []
  for it, pass1 in enumerate(test_pass1):
    evals.append(_eval("rest_em", it, "test", **{
        "pass@1": pass1, "pass@4": pass1 + 0.2, "pass@16": pass1 + 0.3,
        "maj@4": pass1 + 0.05, "maj@16": pass1 + 0.1,
        "sample_accuracy": pass1 - 0.05, "num_problems": 200}))
    evals.append(_eval("rest_em", it, "transfer", **{"pass@1": pass1 / 2}))
    evals.append(_eval("rest_em", it, "train", **{"pass@1": pass1 + 0.1}))
  evals.append(_eval("sft_human", 0, "test", **{"pass@1": 0.20}))
  evals.append(_eval("sft_human", 1, "test", **{"pass@1": 0.30, "pass@4": 0.5}))
  stages = []
  for it in (1, 2, 3):
    stages.append(_stage("rest_em", it, "estep", 30.0 + it, generated=8000,
                         rewarded=3000 + 100 * it, kept=1500 + 50 * it,
                         solve_rate=0.6 + 0.05 * it))
    stages.append(_stage("rest_em", it, "mstep", 120.25, train_steps=500,
                         best_step=400, tokens=1_000_000))
    stages.append(_stage("rest_em", it, "eval", 12.5))
  stages.append(_stage("sft_human", 1, "mstep", 99.0, train_steps=300))
  return evals, stages


def _ci(successes, trials):
  lo, hi = evaluation.clopper_pearson(successes, trials)
  return f"[{lo:.3f}, {hi:.3f}]"


def _read_events(path):
  """Parses a tfevents file, checking the TFRecord framing and CRCs."""
  data = pathlib.Path(path).read_bytes()
  events, offset = [], 0
  while offset < len(data):
    header = data[offset:offset + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
    assert header_crc == masked_crc32c(header)
    payload = data[offset + 12:offset + 12 + length]
    (payload_crc,) = struct.unpack(
        "<I", data[offset + 12 + length:offset + 16 + length])
    assert payload_crc == masked_crc32c(payload)
    event = event_pb2.Event()
    event.ParseFromString(payload)
    events.append(event)
    offset += 16 + length
  return events


def _scalars(logdir):
  """{tag: {step: value}} over every event file in logdir."""
  scalars = {}
  files = sorted(pathlib.Path(logdir).glob("events.out.tfevents.*"))
  assert files
  for path in files:
    events = _read_events(path)
    assert events[0].file_version == "brain.Event:2"
    for event in events[1:]:
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def test_round_trip_keeps_records_and_kind_lines(tmp_path):
  evals, stages = _fixture()
  with reporting.MetricsLog(tmp_path) as log:
    for record in evals:
      log.append_eval(record)
    for record in stages:
      log.append_stage(record)
    assert log.evals() == evals
    assert log.stages() == stages
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == len(evals)
  assert json.loads(lines[0]) == {**evals[0], "kind": "eval"}
  stage_lines = (tmp_path / "stages.jsonl").read_text().splitlines()
  first_stage = json.loads(stage_lines[0])
  assert first_stage == {**stages[0], "kind": "stage"}


def test_duplicate_key_counts_once_and_last_wins_across_resume(tmp_path):
  with reporting.MetricsLog(tmp_path) as log:
    log.append_eval(_eval("rest_em", 1, "test", **{"pass@1": 0.1}))
    log.append_eval(_eval("rest_em", 1, "train", **{"pass@1": 0.5}))
    log.append_stage(_stage("rest_em", 1, "estep", 10.0, kept=5))
  # A resumed run reopens the log and redoes iteration 1.
  with reporting.MetricsLog(tmp_path) as log:
    log.append_eval(_eval("rest_em", 1, "test", **{"pass@1": 0.3}))
    log.append_stage(_stage("rest_em", 1, "estep", 11.0, kept=7))
    evals, stages = log.evals(), log.stages()
  assert evals == [_eval("rest_em", 1, "test", **{"pass@1": 0.3}),
                   _eval("rest_em", 1, "train", **{"pass@1": 0.5})]
  assert stages == [_stage("rest_em", 1, "estep", 11.0, kept=7)]
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_torn_final_line_is_ignored_then_cut_before_next_append(tmp_path):
  with reporting.MetricsLog(tmp_path) as log:
    log.append_eval(_eval("rest_em", 0, "test", **{"pass@1": 0.2}))
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"method": "rest_em", "iter')
  with reporting.MetricsLog(tmp_path) as log:
    assert len(log.evals()) == 1
    log.append_eval(_eval("rest_em", 1, "test", **{"pass@1": 0.3}))
    assert [r["iteration"] for r in log.evals()] == [0, 1]
  for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
    json.loads(line)


def test_numpy_scalars_and_nan_are_normalized(tmp_path):
  with reporting.MetricsLog(tmp_path) as log:
    log.append_eval(_eval("rest_em", np.int64(2), "test", **{
        "pass@1": np.float32(0.5), "maj@4": float("nan"),
        "num_problems": np.int32(7)}))
    (record,) = log.evals()
  assert record == _eval("rest_em", 2, "test", **{
      "pass@1": 0.5, "maj@4": None, "num_problems": 7})
  assert type(record["num_problems"]) is int
  scalars = _scalars(tmp_path / "tensorboard" / "rest_em")
  assert "test/maj@4" not in scalars
  assert scalars["test/pass@1"] == {2: 0.5}


@pytest.mark.parametrize("kind,record,field", [
    ("eval", {"iteration": 0, "split": "test"}, "method"),
    ("eval", _eval("rest_em", -1, "test"), "iteration"),
    ("eval", _eval("rest_em", True, "test"), "iteration"),
    ("eval", _eval("rest_em", 0, ""), "split"),
    ("eval", _eval("rest/em", 0, "test"), "method"),
    ("eval", _eval("rest_em", 0, "test", **{"pass@1": "high"}), "pass@1"),
    ("eval", {**_eval("rest_em", 0, "test"), "kind": "stage"}, "kind"),
    ("stage", {"method": "rest_em", "iteration": 0, "stage": "estep"},
     "wall_s"),
    ("stage", _stage("rest_em", 0, "estep", -1.0), "wall_s"),
    ("stage", _stage("rest_em", 0, "estep", 1.0, kept=[1, 2]), "kept"),
])
def test_bad_record_raises_naming_the_field(tmp_path, kind, record, field):
  with reporting.MetricsLog(tmp_path) as log:
    append = log.append_eval if kind == "eval" else log.append_stage
    with pytest.raises(ValueError, match=f"'{field}'"):
      append(record)
  assert not (tmp_path / reporting._FILENAMES[kind]).exists()


def test_append_after_close_raises(tmp_path):
  log = reporting.MetricsLog(tmp_path)
  log.close()
  with pytest.raises(ValueError, match="closed"):
    log.append_eval(_eval("rest_em", 0, "test"))


def test_tensorboard_scalars_are_on_disk_after_each_append(tmp_path):
  evals, stages = _fixture()
  log = reporting.MetricsLog(tmp_path)
  log.append_eval(evals[0])
  # Readable before close(): a crash right after an append loses nothing.
  assert _scalars(tmp_path / "tensorboard" / "rest_em") == {
      "test/pass@1": {0: pytest.approx(0.2)},
      "test/pass@4": {0: pytest.approx(0.4)},
      "test/pass@16": {0: pytest.approx(0.5)},
      "test/maj@4": {0: pytest.approx(0.25)},
      "test/maj@16": {0: pytest.approx(0.3)},
      "test/sample_accuracy": {0: pytest.approx(0.15)},
      "test/num_problems": {0: 200.0},
  }
  for record in evals[1:]:
    log.append_eval(record)
  for record in stages:
    log.append_stage(record)
  log.close()
  rest_em = _scalars(tmp_path / "tensorboard" / "rest_em")
  assert rest_em["test/pass@1"] == pytest.approx({0: 0.2, 1: 0.35, 2: 0.45,
                                                  3: 0.43})
  assert rest_em["transfer/pass@1"][2] == pytest.approx(0.225)
  assert rest_em["stage/estep/kept"] == {1: 1550.0, 2: 1600.0, 3: 1650.0}
  assert rest_em["stage/mstep/wall_s"][3] == pytest.approx(120.25)
  sft = _scalars(tmp_path / "tensorboard" / "sft_human")
  assert sft["test/pass@1"] == pytest.approx({0: 0.2, 1: 0.3})
  assert sft["stage/mstep/train_steps"] == {1: 300.0}


def test_reading_only_writes_no_event_files(tmp_path):
  with reporting.MetricsLog(tmp_path) as log:
    assert log.evals() == [] and log.stages() == []
  assert not (tmp_path / "tensorboard").exists()


def _table_row(report, method, iteration):
  section = report.split(f"## {method}\n", 1)[1].split("\n## ", 1)[0]
  for line in section.splitlines():
    if line.startswith(f"| {iteration} |"):
      return [cell.strip() for cell in line.strip("|").split("|")]
  raise AssertionError(f"no row for {method} iteration {iteration}")


def _header(report, method):
  section = report.split(f"## {method}\n", 1)[1]
  header = next(l for l in section.splitlines() if l.startswith("| iter"))
  return [cell.strip() for cell in header.strip("|").split("|")]


def test_report_has_the_numbers_and_valid_plots(tmp_path):
  evals, stages = _fixture()
  path = reporting.write_report(tmp_path, evals, stages, title="ReST-EM smoke",
                                config_summary="model: tiny\nnum_samples: 32")
  assert path == str(tmp_path / "report.md")
  report = pathlib.Path(path).read_text()
  assert report.startswith("# ReST-EM smoke\n")
  assert "num_samples: 32" in report

  header = _header(report, "rest_em")
  assert header == [
      "iter", "test pass@1", "test pass@4", "test pass@16", "test maj@4",
      "test maj@16", "transfer pass@1", "train pass@1", "E-step solve rate",
      "generated", "rewarded", "kept", "generated / kept", "problems kept", "estep s", "mstep s", "eval s"]
  row = dict(zip(header, _table_row(report, "rest_em", 2)))
  # Records without interval fields (old workdirs): greedy pass@1 gets its exact interval from num_problems.
  assert row == {
      "iter": "2", "test pass@1": f"0.450 {_ci(90, 200)}", "test pass@4": "0.650",
      "test pass@16": "0.750", "test maj@4": "0.500", "test maj@16": "0.550",
      "transfer pass@1": "0.225", "train pass@1": "0.550",
      "E-step solve rate": "0.700", "generated": "8000", "rewarded": "3200",
      "kept": "1600", "generated / kept": "5.00", "problems kept": "–", "estep s": "32.0", "mstep s": "120.2",
      "eval s": "12.5"}
  base_row = dict(zip(header, _table_row(report, "rest_em", 0)))
  assert base_row["test pass@1"] == f"0.200 {_ci(40, 200)}"
  assert base_row["kept"] == "–" and base_row["estep s"] == "–"
  sft_row = dict(zip(header, _table_row(report, "sft_human", 1)))
  assert sft_row["test pass@16"] == "–" and sft_row["mstep s"] == "99.0"

  comparison = report.split("## Test pass@1 vs base", 1)[1]
  assert (f"| rest_em | 0.200 {_ci(40, 200)} | 2 | 0.450 {_ci(90, 200)} | +25.0 [+15.9, +34.1] | 3 | "
          f"0.430 {_ci(86, 200)} | +23.0 [+13.9, +32.1] | test |" in comparison)
  assert ("| sft_human | 0.200 | 1 | 0.300 | +10.0 | 1 | 0.300 | +10.0 | test |"
          in comparison)

  for name in ("pass_at_1.png", "pass_at_k.png", "maj_at_k.png", "kept.png"):
    assert f"](plots/{name})" in report
    data = (tmp_path / "plots" / name).read_bytes()
    assert data.startswith(_PNG_MAGIC) and len(data) > 1000


def test_best_is_picked_on_val_when_present(tmp_path):
  evals = [_eval("rest_em", it, split, **{"pass@1": value})
           for it, split, value in [(0, "test", 0.2), (1, "test", 0.5),
                                    (2, "test", 0.4), (0, "val", 0.2),
                                    (1, "val", 0.3), (2, "val", 0.35)]]
  report = pathlib.Path(reporting.write_report(
      tmp_path, evals, [], title="t")).read_text()
  assert ("| rest_em | 0.200 | 2 | 0.400 | +20.0 | 2 | 0.400 | +20.0 | val |"
          in report)


def test_partial_run_with_only_the_base_model(tmp_path):
  evals = [_eval("rest_em", 0, "test", **{"pass@1": 0.2, "maj@4": 0.25})]
  stages = [_stage("rest_em", 0, "eval", 3.0)]
  report = pathlib.Path(reporting.write_report(
      tmp_path, evals, stages, title="partial")).read_text()
  row = dict(zip(_header(report, "rest_em"), _table_row(report, "rest_em", 0)))
  assert row["test pass@1"] == "0.200" and row["test maj@4"] == "0.250"
  assert row["E-step solve rate"] == "–" and row["eval s"] == "3.0"
  assert ("| rest_em | 0.200 | 0 | 0.200 | +0.0 | 0 | 0.200 | +0.0 | test |"
          in report)
  png = (tmp_path / "plots" / "pass_at_1.png").read_bytes()
  assert png.startswith(_PNG_MAGIC)
  assert "kept.png" not in report and "pass_at_k.png" not in report
  assert not (tmp_path / "plots" / "kept.png").exists()


def test_report_from_nothing_and_from_a_stage_only_method(tmp_path):
  report = pathlib.Path(reporting.write_report(
      tmp_path, [], [], title="empty")).read_text()
  assert "No evaluations or stages logged yet." in report
  report = pathlib.Path(reporting.write_report(
      tmp_path, [], [_stage("rest_em", 1, "estep", 5.0, kept=3)],
      title="estep only")).read_text()
  assert "| rest_em | – | – | – | – | – | – | – | – |" in report
  assert "](plots/kept.png)" in report


def test_report_rejects_bad_records(tmp_path):
  with pytest.raises(ValueError, match="'iteration'"):
    reporting.write_report(tmp_path, [_eval("rest_em", "1", "test")], [],
                           title="t")


def test_progress_is_off_when_stderr_is_not_a_tty(monkeypatch, capsys):
  monkeypatch.delenv("REST_JAX_PROGRESS", raising=False)
  assert list(reporting.progress(range(3), desc="sampling")) == [0, 1, 2]
  assert "sampling" not in capsys.readouterr().err


def test_progress_forced_on_by_env(monkeypatch, capsys):
  monkeypatch.setenv("REST_JAX_PROGRESS", "1")
  with reporting.progress(total=5, desc="sampling", unit="seq") as bar:
    bar.update(2)
    bar.update(3)
  err = capsys.readouterr().err
  assert "sampling" in err and "5/5" in err and "seq" in err


def test_progress_rejects_a_bad_env_value(monkeypatch):
  monkeypatch.setenv("REST_JAX_PROGRESS", "yes")
  with pytest.raises(ValueError, match="REST_JAX_PROGRESS"):
    reporting.progress(range(3), desc="x")


def test_log_stage_writes_one_compact_info_line(caplog):
  with caplog.at_level(logging.INFO):
    reporting.log_stage("rest_em", 2, "estep", 35.06, generated=8000,
                        rewarded=3100, kept=np.int64(1650), solve_rate=0.71)
  assert [r.getMessage() for r in caplog.records] == [
      "rest_em it 2 | estep 35.1s | generated=8000 rewarded=3100 kept=1650 "
      "solve_rate=0.71"]
  assert caplog.records[0].levelno == logging.INFO
  assert reporting.format_stage_line("sft_human", 1, "mstep", 2.0,
                                     tokens=1.5e6, loss=math.nan) == (
      "sft_human it 1 | mstep 2.0s | tokens=1500000 loss=–")


def _sections(report):
  return [line.removeprefix("## ") for line in report.splitlines() if line.startswith("## ")]


def test_report_reads_results_first_and_config_last(tmp_path):
  evals, stages = _fixture()
  report = pathlib.Path(reporting.write_report(tmp_path, evals, stages, title="t",
                                               config_summary="seed = 0")).read_text()
  assert _sections(report) == ["Test pass@1 vs base", "rest_em", "sft_human", "Plots", "Config"]
  assert report.rstrip().endswith("seed = 0\n```")


def test_logged_intervals_are_shown_and_pass_at_1_falls_back_to_its_exact_interval(tmp_path):
  evals = [_eval("rest_em", 0, "test", **{"pass@1": 0.25, "pass@1_lo": 0.2, "pass@1_hi": 0.3, "pass@4": 0.5,
                                          "pass@4_lo": 0.41, "pass@4_hi": 0.59, "maj@4": 0.3, "num_problems": 40}),
           # An old record: no bounds at all; pass@1 has num_problems, pass@4 has nothing to go on.
           _eval("rest_em", 1, "test", **{"pass@1": 0.5, "pass@4": 0.7, "num_problems": 40}),
           _eval("rest_em", 2, "test", **{"pass@1": 0.5})]
  report = pathlib.Path(reporting.write_report(tmp_path, evals, [], title="t")).read_text()
  header = _header(report, "rest_em")
  rows = [dict(zip(header, _table_row(report, "rest_em", it))) for it in range(3)]
  assert rows[0]["test pass@1"] == "0.250 [0.200, 0.300]"
  assert rows[0]["test pass@4"] == "0.500 [0.410, 0.590]" and rows[0]["test maj@4"] == "0.300"
  assert rows[1]["test pass@1"] == f"0.500 {_ci(20, 40)}" and rows[1]["test pass@4"] == "0.700"
  assert rows[2]["test pass@1"] == "0.500"
  # Final iteration 2 has no interval, so neither has its difference; the best (1, first of equal values) has both.
  lo, hi = evaluation.clopper_pearson(20, 40)
  se = math.hypot((hi - lo) / 3.92, (0.3 - 0.2) / 3.92)
  assert (f"| rest_em | 0.250 [0.200, 0.300] | 1 | 0.500 {_ci(20, 40)} | +25.0 [{100 * (0.25 - 1.96 * se):+.1f}, "
          f"{100 * (0.25 + 1.96 * se):+.1f}] | 2 | 0.500 | +25.0 | test |") in report


def _level_evals(method, it, **rates):
  record = {"pass@1": 0.5, "num_problems": 30}
  for level, (correct, n) in rates.items():
    record[f"{level}/pass@1"] = correct / n
    record[f"{level}/num_problems"] = n
  return _eval(method, it, "test", **record)


def test_per_level_tables_for_tasks_with_levels(tmp_path):
  evals = [_level_evals("rest_em", 0, level_1=(8, 10), level_5=(1, 20)),
           _level_evals("rest_em", 1, level_1=(9, 10), level_5=(4, 20)),
           _eval("rest_em", 1, "train", **{"pass@1": 0.6})]
  report = pathlib.Path(reporting.write_report(tmp_path, evals, [], title="t")).read_text()
  assert _sections(report) == ["Test pass@1 vs base", "rest_em", "Pass@1 by difficulty level", "Plots"]
  table = report.split("### rest_em, test", 1)[1].strip().splitlines()
  assert table[0] == "| iter | level 1 (n=10) | level 5 (n=20) |"
  assert table[2] == f"| 0 | 0.800 {_ci(8, 10)} | 0.050 {_ci(1, 20)} |"
  assert table[3] == f"| 1 | 0.900 {_ci(9, 10)} | 0.200 {_ci(4, 20)} |"
  assert "### rest_em, train" not in report  # The train split has no levels.
  assert "](plots/pass_at_1_by_level.png)" in report
  assert (tmp_path / "plots" / "pass_at_1_by_level.png").read_bytes().startswith(_PNG_MAGIC)


def test_no_level_section_without_levels(tmp_path):
  evals, stages = _fixture()
  report = pathlib.Path(reporting.write_report(tmp_path, evals, stages, title="t")).read_text()
  assert "difficulty level" not in report and "by_level" not in report
  assert not (tmp_path / "plots" / "pass_at_1_by_level.png").exists()


def test_plot_draws_interval_bands(tmp_path, monkeypatch):
  bands = []
  original = Axes.fill_between

  def recording_fill_between(self, x, lower, upper, **kwargs):
    bands.append((list(x), list(lower), list(upper)))
    return original(self, x, lower, upper, **kwargs)

  monkeypatch.setattr(Axes, "fill_between", recording_fill_between)
  evals = [_eval("rest_em", it, "test", **{"pass@1": value, "num_problems": 20})
           for it, value in enumerate([0.25, 0.5])]
  reporting.write_report(tmp_path, evals, [], title="t")
  assert bands == [([0, 1], [evaluation.clopper_pearson(5, 20)[0], evaluation.clopper_pearson(10, 20)[0]],
                    [evaluation.clopper_pearson(5, 20)[1], evaluation.clopper_pearson(10, 20)[1]])]


def test_a_stage_logged_twice_by_a_killed_run_counts_once(tmp_path):
  # kill -9 between a stage's record and its artifact: the rerun logs the stage again; a kill mid-write tears a line.
  first = _stage("rest_em", 1, "estep", 10.0, generated=96, rewarded=40, kept=20)
  again = _stage("rest_em", 1, "estep", 12.0, generated=96, rewarded=41, kept=21)
  mstep = _stage("rest_em", 1, "mstep", 5.0, train_steps=4)
  lines = [json.dumps({**r, "kind": "stage"}) for r in (first, mstep, first, again)]
  (tmp_path / "stages.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:20])
  evals = [_eval("rest_em", 1, "test", **{"pass@1": 0.5})] * 2
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({**r, "kind": "eval"}) + "\n" for r in evals))
  log = reporting.MetricsLog(tmp_path)
  assert log.stages() == [again, mstep] and log.evals() == evals[:1]
  report = pathlib.Path(reporting.write_report(tmp_path, log.evals(), log.stages(), title="t")).read_text()
  row = dict(zip(_header(report, "rest_em"), _table_row(report, "rest_em", 1)))
  assert (row["kept"], row["rewarded"], row["estep s"]) == ("21", "41", "12.0")
  method_table = report.split("## rest_em\n", 1)[1].split("\n## ", 1)[0]
  assert [line.startswith("| 1 |") for line in method_table.strip().splitlines()] == [False, False, True]
  # write_report also de-duplicates records handed to it directly.
  direct = pathlib.Path(reporting.write_report(tmp_path / "direct", evals, [first, mstep, first, again],
                                               title="t")).read_text()
  assert direct == report


class _FakeRun:

  def __init__(self, kwargs):
    self.kwargs, self.logged, self.metrics, self.finished = kwargs, [], [], False

  def define_metric(self, name, step_metric=None):
    self.metrics.append((name, step_metric))

  def log(self, data):
    assert not self.finished
    self.logged.append(dict(data))

  def finish(self):
    self.finished = True


class _FakeWandb:
  """Stands in for the wandb module: records what the writer asks of it."""

  def __init__(self):
    self.runs = []

  def init(self, **kwargs):
    self.runs.append(_FakeRun(kwargs))
    return self.runs[-1]


def _wandb_scalars(logged):
  """{(tag, iteration): value} from the dicts a W&B run was given."""
  scalars = {}
  for data in logged:
    data = dict(data)
    step = data.pop("iteration")
    for tag, value in data.items():
      scalars[tag, step] = value
  return scalars


def _flat_scalars(logdir):
  """The TensorBoard scalars as {(tag, step): value} (float32, as TensorBoard stores them)."""
  return {(tag, step): value for tag, steps in _scalars(logdir).items() for step, value in steps.items()}


def test_wandb_gets_the_tensorboard_scalars(tmp_path, monkeypatch):
  fake = _FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  evals, stages = _fixture()
  writer = reporting.WandbWriter(tmp_path, project="proj", mode="offline", run_config={"seed": 0})
  with reporting.MetricsLog(tmp_path, wandb=writer) as log:
    for record in evals:
      log.append_eval(record)
    for record in stages:
      log.append_stage(record)
  runs = {run.kwargs["name"]: run for run in fake.runs}
  assert set(runs) == {"rest_em", "sft_human"} and all(run.finished for run in runs.values())
  for method, run in runs.items():
    assert run.kwargs == {"name": method, "reinit": "create_new", "project": "proj", "entity": None,
                          "mode": "offline", "dir": str(tmp_path), "group": tmp_path.name, "config": {"seed": 0}}
    assert run.metrics == [("iteration", None), ("*", "iteration")]
    assert _wandb_scalars(run.logged) == pytest.approx(_flat_scalars(tmp_path / "tensorboard" / method))


def test_wandb_writer_from_config(tmp_path, monkeypatch):
  fake = _FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  report = ml_collections.ConfigDict(dict(wandb=False, wandb_project="p", wandb_entity="", wandb_mode="offline"))
  assert reporting.WandbWriter.from_config(None, tmp_path) is None
  assert reporting.WandbWriter.from_config(report, tmp_path) is None
  report.wandb = True
  report.wandb_entity = "team"
  writer = reporting.WandbWriter.from_config(report, tmp_path)
  writer.add_scalars("rest_em", {"test/pass@1": 0.5}, step=2)
  assert fake.runs[0].kwargs["entity"] == "team" and fake.runs[0].logged == [{"test/pass@1": 0.5, "iteration": 2}]
  report.wandb_mode = "offilne"
  with pytest.raises(ValueError, match="report.wandb_mode must be"):
    reporting.WandbWriter.from_config(report, tmp_path)


def test_wandb_not_installed_says_how_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError.
  with pytest.raises(ImportError, match=r"^report.wandb is on but the wandb package is not installed: "
                                        r"pip install 'rest_jax\[wandb\]'$"):
    reporting.WandbWriter(tmp_path, project="p")
  # Nothing imports wandb unless a writer is asked for.
  with reporting.MetricsLog(tmp_path) as log:
    log.append_eval(_eval("rest_em", 0, "test", **{"pass@1": 0.5}))


def _wandb_history(path):
  """(logged dicts, every record's type) of an offline run file (run-*.wandb: LevelDB-log framing of Record protos)."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top

  data, history, record_types = path.read_bytes(), [], []
  assert data.startswith(b":W&B")
  offset, block, pending = 7, 32768, b""
  while offset + 7 <= len(data):
    if block - offset % block < 7:  # Block trailer padding.
      offset += block - offset % block
      continue
    _, length, chunk_type = struct.unpack("<IHB", data[offset:offset + 7])
    pending += data[offset + 7:offset + 7 + length]
    offset += 7 + length
    if chunk_type in (1, 4):  # FULL or LAST chunk: a whole record.
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      pending = b""
      record_types.append(record.WhichOneof("record_type"))
      if record_types[-1] == "history":
        history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                        for item in record.history.item if not (item.key or item.nested_key[0]).startswith("_")})
  return history, record_types


def test_wandb_offline_run_is_written_without_network(tmp_path, monkeypatch):
  pytest.importorskip("wandb", reason="the optional wandb extra (pip install 'rest_jax[wandb]') is not installed")
  for name, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
    monkeypatch.setenv(name, str(tmp_path / sub))
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  workdir = tmp_path / "workdir"
  evals, stages = _fixture()
  with reporting.MetricsLog(workdir, wandb=reporting.WandbWriter(workdir, project="rest_jax_test")) as log:
    for record in [*evals[:3], *stages[:3]]:
      log.append_eval(record) if "split" in record else log.append_stage(record)
  import wandb  # pylint: disable=g-import-not-at-top
  wandb.teardown()  # Waits for W&B's service process to write out and exit (under load it can lag `finish`).
  (run_file,) = workdir.glob("wandb/offline-run-*/run-*.wandb")
  history, record_types = _wandb_history(run_file)
  assert _wandb_scalars(history) == pytest.approx(_flat_scalars(workdir / "tensorboard" / "rest_em")), record_types
