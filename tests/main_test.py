"""End-to-end tests of `python -m rest_jax.main` on the smoke config, plus in-process tests of its flag parsing.

Two smoke runs share one module fixture and run side by side: one uninterrupted, one SIGKILLed once its first E-step
samples are on disk and then rerun to completion. Every test below reads their workdirs; only the tests that rerun
the CLI (a finished workdir, a different config) start more processes, and those do no heavy work.
"""

import collections
import dataclasses
import importlib.util
import json
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import app
from absl import flags
from tensorboardX.proto import event_pb2

from rest_jax import checkpoints
from rest_jax import experiment
from rest_jax import main
from rest_jax import selection

_REPO = pathlib.Path(__file__).resolve().parents[1]
_SMOKE = "configs/default.py:smoke"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_RUN_TIMEOUT_S = 900  # A smoke run takes ~40 s alone; the machine is shared, so leave a wide margin.
_FIRST_SAMPLES = pathlib.Path("samples/rest_em/iteration_1.jsonl.gz")



def _smoke_config():
  spec = importlib.util.spec_from_file_location("default_config", _REPO / "configs" / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("smoke")


# What the smoke run produces, from its config: the tests follow changes of the smoke sizes.
_C = _smoke_config()
_ITERATIONS = {"sft_human": (0, 1), "rest_em": tuple(range(_C.rest.num_iterations + 1))}
_SPLITS = tuple(_C.eval.splits)
_SPLIT_SIZES = {"test": _C.task.kwargs.num_test, "transfer": _C.task.kwargs.num_transfer,
                "train": min(_C.eval.train_subset, _C.task.kwargs.num_train)}
_NUM_TRAIN, _SAMPLES_PER_PROBLEM = _C.task.kwargs.num_train, _C.rest.samples_per_problem
_CAP, _NUM_HUMAN = _C.rest.cap, _C.task.kwargs.num_human
_TEST_METRICS = ("pass@1", *(f"{family}@{k}" for family in ("pass", "maj") for k in _C.eval.ks))


def _command(workdir: pathlib.Path, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "rest_jax.main", f"--config={_SMOKE}", f"--workdir={workdir}", *overrides]


def _env() -> dict[str, str]:
  # The child inherits XLA_FLAGS from conftest (8 host devices), so every run here shares one mesh and the runs are
  # comparable bit for bit.
  env = dict(os.environ, REST_JAX_PROGRESS="0")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p)
  return env


def _start(workdir: pathlib.Path, log: pathlib.Path, *overrides: str, **kwargs) -> subprocess.Popen:
  with open(log, "wb") as f:
    return subprocess.Popen(_command(workdir, *overrides), cwd=_REPO, env=_env(), stdout=f,
                            stderr=subprocess.STDOUT, **kwargs)


def _tail(log: pathlib.Path, lines: int = 30) -> str:
  return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _wait(proc: subprocess.Popen, log: pathlib.Path) -> int:
  try:
    return proc.wait(timeout=_RUN_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    pytest.fail(f"smoke run timed out after {_RUN_TIMEOUT_S}s:\n{_tail(log)}")


def _raw_lines(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _evals(workdir: pathlib.Path) -> dict[tuple[str, int, str], dict]:
  """Eval records by (method, iteration, split), as logged (without the "kind" tag)."""
  return {(r["method"], r["iteration"], r["split"]): {k: v for k, v in r.items() if k != "kind"}
          for r in _raw_lines(workdir / "metrics.jsonl")}


def _stage_keys(lines: list[dict]) -> list[tuple[str, int, str]]:
  return [(r["method"], r["iteration"], r["stage"]) for r in lines]


def _identity(path: pathlib.Path) -> tuple[int, int]:
  st = path.stat()
  return st.st_ino, st.st_mtime_ns


def _complete_lines(text: str) -> str:
  """The text up to its last newline: a SIGKILL can tear the final line, which the next run drops."""
  return text[:text.rfind("\n") + 1]


@dataclasses.dataclass
class _AtKill:
  """What the killed run's workdir held when it was killed."""

  samples: dict[pathlib.Path, tuple[tuple[int, int], bytes]]  # Relative path -> (inode, mtime), bytes.
  checkpoints: dict[pathlib.Path, tuple[int, int]]  # Complete checkpoint dirs -> (inode, mtime).
  stages_text: str
  metrics_text: str


def _snapshot_at_kill(workdir: pathlib.Path) -> _AtKill:
  samples = {p.relative_to(workdir): (_identity(p), p.read_bytes())
             for p in workdir.glob("samples/*/iteration_*.jsonl.gz")}
  ckpts = {p.relative_to(workdir): _identity(p)
           for p in workdir.glob("checkpoints/*/iteration_*") if checkpoints.exists(p)}
  read = lambda name: _complete_lines((workdir / name).read_text()) if (workdir / name).exists() else ""
  return _AtKill(samples=samples, checkpoints=ckpts, stages_text=read("stages.jsonl"),
                 metrics_text=read("metrics.jsonl"))


@dataclasses.dataclass
class _Runs:
  full: pathlib.Path  # The uninterrupted run's workdir.
  full_wall_s: float
  resumed: pathlib.Path  # The killed-then-rerun workdir.
  at_kill: _AtKill
  logs: pathlib.Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> _Runs:
  root = tmp_path_factory.mktemp("smoke")
  full, resumed = root / "full", root / "resumed"
  logs = root / "logs"
  logs.mkdir()
  t0 = time.time()
  full_proc = _start(full, logs / "full.log")
  # Its own process group, so the kill takes down any helper processes with it.
  killed_proc = _start(resumed, logs / "killed.log", start_new_session=True)
  procs = [full_proc, killed_proc]
  try:
    deadline = time.time() + _RUN_TIMEOUT_S
    while not (resumed / _FIRST_SAMPLES).exists():
      if killed_proc.poll() is not None:
        pytest.fail(f"the run to kill exited (rc {killed_proc.returncode}) before writing {_FIRST_SAMPLES}:\n"
                    f"{_tail(logs / 'killed.log')}")
      if time.time() > deadline:
        pytest.fail(f"no {_FIRST_SAMPLES} after {_RUN_TIMEOUT_S}s:\n{_tail(logs / 'killed.log')}")
      time.sleep(0.05)
    os.killpg(killed_proc.pid, signal.SIGKILL)
    killed_proc.wait()
    at_kill = _snapshot_at_kill(resumed)
    procs.append(resume_proc := _start(resumed, logs / "resume.log"))
    assert _wait(full_proc, logs / "full.log") == 0, _tail(logs / "full.log")
    full_wall_s = time.time() - t0
    assert _wait(resume_proc, logs / "resume.log") == 0, _tail(logs / "resume.log")
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return _Runs(full=full, full_wall_s=full_wall_s, resumed=resumed, at_kill=at_kill, logs=logs)


def _tree(workdir: pathlib.Path) -> dict[str, tuple]:
  """Every file and directory under `workdir` with what a write would change."""
  out = {}
  for path in sorted(workdir.rglob("*")):
    st = path.lstat()
    out[str(path.relative_to(workdir))] = (path.is_dir(), st.st_size, st.st_mtime_ns, st.st_ino)
  return out


def _read_scalars(path: pathlib.Path) -> dict[tuple[str, int], float]:
  """(tag, step) -> value from a tfevents file (TFRecord framing: u64 length, u32 crc, data, u32 crc)."""
  data, offset, scalars = path.read_bytes(), 0, {}
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
    offset += 12 + length + 4
    for value in event.summary.value:
      scalars[(value.tag, event.step)] = value.simple_value
  return scalars


# --- The uninterrupted run ------------------------------------------------------------------------------------


def test_metrics_cover_every_method_iteration_and_split(runs):
  evals = _evals(runs.full)
  expected = {(m, it, s) for m, its in _ITERATIONS.items() for it in its for s in _SPLITS}
  assert set(evals) == expected
  for (method, it, split), record in evals.items():
    assert record["num_problems"] == _SPLIT_SIZES[split], (method, it, split)
    sampled = split in _C.eval.sampled_splits  # Only these get pass@K and maj@K.
    for name in _TEST_METRICS if sampled else ("pass@1",):
      assert 0.0 <= record[name] <= 1.0, (method, it, split, name, record[name])
    if not sampled:
      assert not set(_TEST_METRICS[1:]) & set(record), record


def test_every_method_starts_from_the_same_base_evaluation(runs):
  evals = _evals(runs.full)
  for split in _SPLITS:
    base = {k: v for k, v in evals[("sft_human", 0, split)].items() if k != "method"}
    assert {k: v for k, v in evals[("rest_em", 0, split)].items() if k != "method"} == base


def test_stages_are_logged_once_each(runs):
  keys = _stage_keys(_raw_lines(runs.full / "stages.jsonl"))
  assert len(keys) == len(set(keys)), collections.Counter(keys).most_common(3)
  expected = ({("sft_human", 0, "eval"), ("sft_human", 1, "mstep"), ("sft_human", 1, "eval"), ("rest_em", 0, "eval")}
              | {("rest_em", it, stage) for it in _ITERATIONS["rest_em"][1:] for stage in ("estep", "mstep", "eval")})
  assert set(keys) == expected


@pytest.mark.parametrize("iteration", _ITERATIONS["rest_em"][1:])
def test_estep_keeps_rewarded_distinct_samples_up_to_the_cap(runs, iteration):
  samples = selection.read_jsonl(runs.full / "samples" / "rest_em" / f"iteration_{iteration}.jsonl.gz")
  assert len(samples) == _NUM_TRAIN * _SAMPLES_PER_PROBLEM
  assert {s.iteration for s in samples} == {iteration}
  by_problem = collections.defaultdict(list)
  for s in samples:
    by_problem[s.problem_id].append(s)
  assert len(by_problem) == _NUM_TRAIN
  assert all(len(group) == _SAMPLES_PER_PROBLEM for group in by_problem.values())
  for problem_id, group in by_problem.items():
    kept = [s for s in group if s.kept]
    assert all(s.reward > 0 for s in kept), problem_id
    distinct_rewarded = {s.completion.rstrip() for s in group if s.reward > 0}
    assert len({s.completion.rstrip() for s in kept}) == len(kept), f"{problem_id}: a duplicate was kept"
    assert len(kept) == min(_CAP, len(distinct_rewarded)), problem_id
  assert any(s.kept for s in samples), "no sample kept: the smoke run trained on nothing"
  stage = next(r for r in _raw_lines(runs.full / "stages.jsonl")
               if (r["method"], r["iteration"], r["stage"]) == ("rest_em", iteration, "estep"))
  assert stage["generated"] == len(samples)
  assert stage["rewarded"] == sum(s.reward > 0 for s in samples)
  assert stage["kept"] == sum(s.kept for s in samples)


def test_mstep_checkpoints_hold_what_each_method_trained_on(runs):
  store = checkpoints.IterationCheckpoints(runs.full / "checkpoints")
  last = _ITERATIONS["rest_em"][-1]
  assert store.latest("rest_em") == last and store.latest("sft_human") == 1
  assert not store.exists("rest_em", last + 1)
  for it in _ITERATIONS["rest_em"][1:]:
    assert checkpoints.exists(runs.full / "checkpoints" / "rest_em" / f"iteration_{it}")
    kept = [s for s in selection.read_jsonl(runs.full / "samples" / "rest_em" / f"iteration_{it}.jsonl.gz")
            if s.kept]
    metadata = store.load_metadata("rest_em", it)
    assert (metadata["method"], metadata["iteration"], metadata["examples"]) == ("rest_em", it, len(kept))
  assert store.load_metadata("sft_human", 1)["examples"] == _NUM_HUMAN


def test_report_has_a_table_per_method_and_its_plots(runs):
  report = (runs.full / "report.md").read_text()
  for method, its in _ITERATIONS.items():
    section = report.split(f"## {method}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| iter")]
    assert [row.split(" | ")[0] for row in rows] == [f"| {it}" for it in its], section
    header = next(line for line in section.splitlines() if line.startswith("| iter"))
    for name in _TEST_METRICS:
      assert f"test {name}" in header
  plots = sorted(p.name for p in (runs.full / "plots").glob("*.png"))
  assert {"pass_at_1.png", "pass_at_k.png", "maj_at_k.png", "kept.png"} <= set(plots)
  for name in plots:
    assert (runs.full / "plots" / name).read_bytes().startswith(_PNG_MAGIC), name
    assert f"(plots/{name})" in report


def test_report_config_summary_names_each_field(runs):
  summary = (runs.full / "report.md").read_text().split("```text\n", 1)[1].split("```", 1)[0].splitlines()
  assert f"rest.cap = {_CAP}" in summary, summary[:3]
  assert f"seed = {_C.seed}" in summary, summary[:3]


def test_tensorboard_scalars_match_the_metrics_log(runs):
  evals = _evals(runs.full)
  for method, its in _ITERATIONS.items():
    files = list((runs.full / "tensorboard" / method).glob("events.out.tfevents.*"))
    assert files, method
    scalars = {}
    for path in files:
      scalars.update(_read_scalars(path))
    for it in its:
      for name in _TEST_METRICS:
        assert scalars[(f"test/{name}", it)] == pytest.approx(evals[(method, it, "test")][name], abs=1e-6)


# --- Kill and resume ------------------------------------------------------------------------------------------


def test_killed_and_resumed_run_ends_with_the_uninterrupted_metrics(runs):
  assert runs.at_kill.samples, "the kill came before the first E-step finished"
  assert _evals(runs.resumed) == _evals(runs.full)


def test_killed_and_resumed_run_samples_and_trains_the_same(runs):
  for path in sorted(runs.full.glob("samples/*/*.jsonl.gz")):
    relative = path.relative_to(runs.full)
    assert (runs.resumed / relative).read_bytes() == path.read_bytes(), relative
  for method, last in (("rest_em", _ITERATIONS["rest_em"][-1]), ("sft_human", 1)):
    relative = pathlib.Path("checkpoints", method, f"iteration_{last}")
    full_params, _ = checkpoints.load(runs.full / relative)
    resumed_params, _ = checkpoints.load(runs.resumed / relative)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), full_params,
                        resumed_params)
    assert all(jax.tree.leaves(same)), relative


def test_resume_keeps_the_stages_finished_before_the_kill(runs):
  at_kill = runs.at_kill
  # The first E-step's samples imply the SFT baseline finished: its checkpoint must be reused, not rewritten.
  assert pathlib.Path("checkpoints/sft_human/iteration_1") in at_kill.checkpoints
  for relative, (identity, data) in at_kill.samples.items():
    path = runs.resumed / relative
    assert (_identity(path), path.read_bytes()) == (identity, data), f"{relative} was rewritten"
  for relative, identity in at_kill.checkpoints.items():
    assert _identity(runs.resumed / relative) == identity, f"{relative} was rewritten"

  # Logs only grow: what was on disk at the kill is a prefix, and nothing is logged twice.
  stages_text = (runs.resumed / "stages.jsonl").read_text()
  metrics_text = (runs.resumed / "metrics.jsonl").read_text()
  assert stages_text.startswith(at_kill.stages_text)
  assert metrics_text.startswith(at_kill.metrics_text)
  stage_keys = _stage_keys(_raw_lines(runs.resumed / "stages.jsonl"))
  assert len(stage_keys) == len(set(stage_keys)), collections.Counter(stage_keys).most_common(3)
  eval_keys = [(r["method"], r["iteration"], r["split"]) for r in _raw_lines(runs.resumed / "metrics.jsonl")]
  assert len(eval_keys) == len(set(eval_keys)), collections.Counter(eval_keys).most_common(3)
  new_stages = [json.loads(line) for line in stages_text[len(at_kill.stages_text):].splitlines()]
  done_at_kill = ({(p.parts[1], int(p.name.split("_")[1].split(".")[0]), "estep") for p in at_kill.samples}
                  | {(p.parts[1], int(p.name.split("_")[1]), "mstep") for p in at_kill.checkpoints})
  assert not done_at_kill & set(_stage_keys(new_stages)), "a stage finished before the kill ran again"


# --- Reruns of the CLI ----------------------------------------------------------------------------------------


def test_rerun_of_a_finished_workdir_recomputes_nothing(runs):
  logged = {name: (runs.full / name).read_bytes() for name in ("stages.jsonl", "metrics.jsonl")}
  ckpts = {p: _identity(p) for p in runs.full.glob("checkpoints/*/iteration_*")}
  samples = {p: _identity(p) for p in runs.full.glob("samples/*/*.jsonl.gz")}
  events = sorted(runs.full.glob("tensorboard/*/*"))
  t0 = time.time()
  rerun = subprocess.run(_command(runs.full), cwd=_REPO, env=_env(), capture_output=True, text=True,
                         timeout=_RUN_TIMEOUT_S)
  wall_s = time.time() - t0
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  for name, data in logged.items():
    assert (runs.full / name).read_bytes() == data, f"{name} changed"
  assert {p: _identity(p) for p in runs.full.glob("checkpoints/*/iteration_*")} == ckpts
  assert {p: _identity(p) for p in runs.full.glob("samples/*/*.jsonl.gz")} == samples
  assert sorted(runs.full.glob("tensorboard/*/*")) == events
  # Loading checkpoints is all that is left to do; compiling and training made up most of the first run.
  assert wall_s < runs.full_wall_s / 2, (wall_s, runs.full_wall_s)


def test_different_config_in_an_existing_workdir_fails_and_writes_nothing(runs):
  before = _tree(runs.full)
  result = subprocess.run(_command(runs.full, "--config.rest.cap=3"), cwd=_REPO, env=_env(), capture_output=True,
                          text=True, timeout=_RUN_TIMEOUT_S)
  assert result.returncode != 0
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith(f"error: {runs.full / 'config.json'}: ") and "new --workdir" in error, error
  assert f"rest.cap ({_CAP} there, 3 now)" in error, error
  assert _tree(runs.full) == before


# --- Flags, in process -----------------------------------------------------------------------------------------




def test_cli_overrides_reach_the_experiment(parse_flags, monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(experiment, "run", lambda config, workdir: calls.append((config, workdir)))
  parse_flags(f"--config={_SMOKE}", f"--workdir={tmp_path}", "--config.rest.num_iterations=1",
              "--config.rest.temperature=0.5")
  main.main(["rest_jax.main"])
  [(config, workdir)] = calls
  assert workdir == str(tmp_path)
  assert (config.rest.num_iterations, config.rest.temperature) == (1, 0.5)
  assert config.rest.cap == _CAP  # The rest is the smoke mode's.
  with pytest.raises(AttributeError):  # Locked: a misspelt field cannot be added by accident.
    config.rest.num_iteration = 2


def test_cli_rejects_unknown_fields_bad_values_and_stray_arguments(parse_flags, monkeypatch, tmp_path):
  monkeypatch.setattr(experiment, "run", lambda config, workdir: pytest.fail("experiment.run was called"))
  with pytest.raises(AttributeError, match="num_iteration"):
    parse_flags(f"--config={_SMOKE}", f"--workdir={tmp_path}", "--config.rest.num_iteration=1")
  with pytest.raises(flags.IllegalFlagValueError, match="rest.cap"):
    parse_flags(f"--config={_SMOKE}", f"--workdir={tmp_path}", "--config.rest.cap=many")
  with pytest.raises(flags.IllegalFlagValueError, match="unknown mode 'nope'"):
    parse_flags("--config=configs/default.py:nope", f"--workdir={tmp_path}")
  parse_flags(f"--config={_SMOKE}", f"--workdir={tmp_path}")
  with pytest.raises(app.UsageError, match="extra"):
    main.main(["rest_jax.main", "extra"])


@pytest.mark.parametrize("args, line", [
    (("--config.rest.samples_per_probem=1",),
     "error: --config.rest.samples_per_probem: configs/default.py has no field 'rest.samples_per_probem'; did you mean "
     "--config.rest.samples_per_problem?"),
    (("--config.rest.cap=many",), "error: flag --config.rest.cap=many: invalid literal for int() with base 10: 'many'"),
])
def test_a_bad_override_is_one_line_and_exit_2(parse_flags, monkeypatch, capsys, tmp_path, args, line):
  argv = ["rest_jax.main", f"--config={_SMOKE}", f"--workdir={tmp_path / 'run'}", *args]
  parse_flags(f"--config={_SMOKE}", f"--workdir={tmp_path}")  # From the repo root, with the fixture's clean-up.
  monkeypatch.setattr(sys, "argv", argv)
  flags.FLAGS.unparse_flags()
  with pytest.raises(SystemExit) as exit_:
    main.parse_flags(argv)
  assert exit_.value.code == 2
  assert capsys.readouterr().err == line + "\n"
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("source, config_arg, line", [
    (None, "{dir}/missing.py", "error: --config={dir}/missing.py: config file {dir}/missing.py does not exist"),
    ("def get_config(:\n  pass\n", "{dir}/broken.py", "error: {dir}/broken.py:1: syntax error in the config file: "),
    ("def get_config(arg=None):\n  return dict()['rest']\n", "{dir}/raises.py",
     "error: {dir}/raises.py: get_config('') failed: KeyError: 'rest'"),
    (None, "configs/default.py:nosuchmode", "error: configs/default.py: unknown mode 'nosuchmode'; use one of '' "
                                            "(full), 'smoke', 'rest', 'scalar'"),
])
def test_a_bad_config_file_or_mode_is_one_line_naming_it(parse_flags, monkeypatch, capsys, tmp_path, source,
                                                         config_arg, line):
  config_arg, line = config_arg.format(dir=tmp_path), line.format(dir=tmp_path)
  if source is not None:
    pathlib.Path(config_arg).write_text(source)
  argv = ["rest_jax.main", f"--config={config_arg}", f"--workdir={tmp_path / 'run'}"]
  parse_flags(f"--config={_SMOKE}", f"--workdir={tmp_path}")
  monkeypatch.setattr(sys, "argv", argv)
  flags.FLAGS.unparse_flags()
  with pytest.raises(SystemExit) as exit_:
    main.parse_flags(argv)
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith(line) and err.count("\n") == 1, err


def test_a_bad_config_value_exits_2_in_one_line_before_the_workdir_exists(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(_command(workdir, "--config.rest.cap=-1"), cwd=_REPO, env=_env(), capture_output=True,
                          text=True, timeout=_RUN_TIMEOUT_S)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == "error: config rest.cap=-1: must be >= 1", result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def test_a_smoke_run_with_lora_checkpoints_the_merged_model_and_its_adapters(tmp_path):
  """`--config.train.lora_rank=4`: every M-step trains fresh adapters over the base (restart from the base), and each
  iteration checkpoint is exactly the base merged with the adapters saved beside it."""
  from rest_jax.model import sharding  # pylint: disable=g-import-not-at-top
  from rest_jax.model.transformer import ModelConfig  # pylint: disable=g-import-not-at-top
  from rest_jax.training import lora  # pylint: disable=g-import-not-at-top

  workdir, log = tmp_path / "lora", tmp_path / "lora.log"
  assert _wait(_start(workdir, log, "--config.train.lora_rank=4"), log) == 0, _tail(log)
  store = checkpoints.IterationCheckpoints(workdir / "checkpoints")
  base_path = pathlib.Path(experiment._asset(experiment.DEFAULT_BASE["arithmetic"]))
  cfg = ModelConfig.from_dict(checkpoints.load_metadata(base_path)["model_config"])
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  base, _ = checkpoints.load(base_path, shardings=sharding.param_shardings(cfg, mesh))
  checked = 0
  for method, iterations in (("rest_em", _ITERATIONS["rest_em"][1:]), ("sft_human", [1])):
    for it in iterations:
      if store.load_metadata(method, it)["examples"] == 0:
        continue  # Nothing kept: the M-step kept its initial model and trained no adapters.
      adapters, metadata = checkpoints.load(store.adapters_path(method, it))
      assert metadata["lora"]["rank"] == 4 and metadata["lora"]["base_quant"] == "none"
      c = lora.LoraConfig(**{**metadata["lora"], "modules": tuple(metadata["lora"]["modules"])})
      merged, _ = store.load(method, it, shardings=sharding.param_shardings(cfg, mesh))
      jax.tree.map(np.testing.assert_array_equal, lora.merge(cfg, c, base, adapters, mesh), merged)
      assert lora.count(adapters) < 0.2 * lora.count(merged)
      checked += 1
  assert checked >= 2
