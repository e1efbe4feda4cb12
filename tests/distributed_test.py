"""Multi-process runs: `python -m rest_jax.main --distributed` as 2 local processes on JAX's distributed runtime.

Each process has 2 host CPU devices, so the 4-device mesh spans both processes and every batch, gradient and sampled
token crosses the process boundary (CPU collectives go through gloo, JAX 0.10's default on CPU). A single process with
4 devices runs the same config side by side as the reference. Sampling is data-parallel with one PRNG key per batch,
so the two runs decode the same tokens; only the M-step's gradient all-reduce sums in another order across processes,
so training losses (and trained parameters) are compared to float32 rounding and everything else exactly.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rest_jax import checkpoints
from rest_jax import distributed
from rest_jax import main
from rest_jax import reporting
from rest_jax import selection

_REPO = pathlib.Path(__file__).resolve().parents[1]
_NUM_PROCESSES, _DEVICES_PER_PROCESS = 2, 2
_ITERATIONS = 2
_SPLITS = ("test", "train")
# The smoke config without the SFT baseline and the transfer split (fewer programs to compile): one method, two EM
# iterations, and every stage (sampling, scoring, training, evaluation, checkpoints) crosses processes.
_OVERRIDES = ("--config=configs/default.py:smoke", f"--config.rest.num_iterations={_ITERATIONS}",
              "--config.rest.sft_human_baseline=False", f"--config.eval.splits={_SPLITS}")
_TIMEOUT_S = 600  # A run takes ~1-2 minutes on a shared 2-core machine; a deadlock would otherwise hang the suite.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  env = dict(os.environ, REST_JAX_PROGRESS="0", JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p)
  return env


def _start(log: pathlib.Path, devices: int, *args: str) -> subprocess.Popen:
  with open(log, "wb") as f:
    return subprocess.Popen([sys.executable, "-m", "rest_jax.main", *args], cwd=_REPO, env=_env(devices), stdout=f,
                            stderr=subprocess.STDOUT)


def _start_processes(logs: list[pathlib.Path], workdirs: list[pathlib.Path], *args: str) -> list[subprocess.Popen]:
  coordinator = f"127.0.0.1:{_free_port()}"
  return [_start(log, _DEVICES_PER_PROCESS, *args, f"--workdir={workdir}", "--distributed",
                 f"--coordinator_address={coordinator}", f"--num_processes={len(logs)}", f"--process_id={i}")
          for i, (log, workdir) in enumerate(zip(logs, workdirs))]


def _wait(procs: list[subprocess.Popen], logs: list[pathlib.Path]) -> list[int]:
  deadline = time.time() + _TIMEOUT_S
  try:
    return [proc.wait(timeout=max(1.0, deadline - time.time())) for proc in procs]
  except subprocess.TimeoutExpired:
    for proc in procs:
      proc.kill()
      proc.wait()
    pytest.fail(f"processes still running after {_TIMEOUT_S}s (a deadlock?):\n" + _tails(logs))


def _tails(logs: list[pathlib.Path], lines: int = 25) -> str:
  return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                   for log in logs)


def _lines(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def _without_wall_time(records: list[dict]) -> list[dict]:
  return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


def _multi_and_single(root: pathlib.Path, overrides: tuple[str, ...]) -> tuple[pathlib.Path, pathlib.Path, list]:
  """Runs `overrides` as 2 processes (workdir root/multi) and as 1 (root/single) at once; (multi, single, logs)."""
  multi, single = root / "multi", root / "single"
  logs = [root / f"process_{i}.log" for i in range(_NUM_PROCESSES)]
  procs = _start_processes(logs, [multi] * _NUM_PROCESSES, *overrides)
  reference_log = root / "single.log"
  reference = _start(reference_log, _NUM_PROCESSES * _DEVICES_PER_PROCESS, *overrides, f"--workdir={single}")
  codes = _wait(procs + [reference], logs + [reference_log])
  assert codes == [0] * (_NUM_PROCESSES + 1), _tails(logs + [reference_log])
  return multi, single, logs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The 2-process run and the 1-process reference, started together; then a rerun of the finished 2-process run."""
  root = tmp_path_factory.mktemp("distributed")
  multi, single, logs = _multi_and_single(root, _OVERRIDES)
  finished = {name: (multi / name).read_bytes() for name in ("metrics.jsonl", "stages.jsonl", "config.json")}
  rerun_logs = [root / f"rerun_{i}.log" for i in range(_NUM_PROCESSES)]
  rerun_codes = _wait(_start_processes(rerun_logs, [multi] * _NUM_PROCESSES, *_OVERRIDES), rerun_logs)
  return dict(multi=multi, single=single, logs=logs, finished=finished, rerun_logs=rerun_logs,
              rerun_codes=rerun_codes)


def test_the_mesh_spans_both_processes(runs):
  log = runs["logs"][0].read_text()
  assert f"{_NUM_PROCESSES * _DEVICES_PER_PROCESS} devices in {_NUM_PROCESSES} processes" in log
  # Mesh data x fsdp x tensor = 4 x 1 x 1: the first two rows on process 0, the last two on process 1.
  assert "process of each device on the dataxfsdpxtensor mesh: [[[0]], [[0]], [[1]], [[1]]]" in log
  assert "rest_jax: process 1 of 2, 2 local of 4 devices" in runs["logs"][1].read_text()


def test_files_are_written_once(runs):
  multi = runs["multi"]
  evals, stages = _lines(multi / "metrics.jsonl"), _lines(multi / "stages.jsonl")
  eval_keys = [(r["method"], r["iteration"], r["split"]) for r in evals]
  assert sorted(eval_keys) == sorted(("rest_em", it, split) for it in range(_ITERATIONS + 1) for split in _SPLITS)
  stage_keys = [(r["method"], r["iteration"], r["stage"]) for r in stages]
  assert sorted(stage_keys) == sorted([("rest_em", it, "eval") for it in range(_ITERATIONS + 1)]
                                      + [("rest_em", it, s) for it in range(1, _ITERATIONS + 1)
                                         for s in ("estep", "mstep")])
  # One TensorBoard event file: a second process writing would have added its own.
  assert len(list((multi / "tensorboard" / "rest_em").iterdir())) == 1
  assert (multi / "report.md").read_text().count("## rest_em") == 1
  assert not [p.name for p in multi.iterdir() if p.name.startswith(".")]  # The shared-directory check cleans up.


def test_every_iteration_has_a_complete_checkpoint(runs):
  store = checkpoints.IterationCheckpoints(runs["multi"] / "checkpoints")
  assert store.latest("rest_em") == _ITERATIONS
  for it in range(1, _ITERATIONS + 1):
    assert store.exists("rest_em", it)
    assert store.load_metadata("rest_em", it)["iteration"] == it
  assert not list((runs["multi"] / "checkpoints" / "rest_em").glob("*tmp*"))


def test_metrics_and_samples_equal_the_single_process_run(runs):
  multi, single = runs["multi"], runs["single"]
  assert _lines(multi / "metrics.jsonl") == _lines(single / "metrics.jsonl")
  assert _without_wall_time(_lines(multi / "stages.jsonl")) == _without_wall_time(_lines(single / "stages.jsonl"))
  for it in range(1, _ITERATIONS + 1):
    path = pathlib.Path("samples", "rest_em", f"iteration_{it}.jsonl.gz")
    assert selection.read_jsonl(multi / path) == selection.read_jsonl(single / path)


def test_training_matches_the_single_process_run_to_rounding(runs):
  for it in range(1, _ITERATIONS + 1):
    multi_params, multi_meta = checkpoints.load(runs["multi"] / "checkpoints" / "rest_em" / f"iteration_{it}")
    single_params, single_meta = checkpoints.load(runs["single"] / "checkpoints" / "rest_em" / f"iteration_{it}")
    multi_history, single_history = multi_meta.pop("history"), single_meta.pop("history")
    assert multi_meta == single_meta
    np.testing.assert_allclose([h["loss"] for h in multi_history], [h["loss"] for h in single_history], rtol=1e-5)
    assert [h["val"] for h in multi_history] == [h["val"] for h in single_history]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), multi_params, single_params)


def test_rerun_of_the_finished_run_recomputes_and_rewrites_nothing(runs):
  assert runs["rerun_codes"] == [0] * _NUM_PROCESSES, _tails(runs["rerun_logs"])
  for name, content in runs["finished"].items():
    assert (runs["multi"] / name).read_bytes() == content, name
  for log in runs["rerun_logs"]:
    text = log.read_text()
    assert "report at" in text, text[-2000:]
    assert not any(f"| {stage} " in text for stage in ("estep", "mstep")), text[-2000:]


@pytest.fixture(scope="module")
def continuous_runs(tmp_path_factory):
  """One EM iteration with continuous batching (`sampler.schedule=continuous`): 2 processes and 1, together."""
  overrides = ("--config=configs/default.py:smoke", "--config.rest.num_iterations=1",
               "--config.rest.sft_human_baseline=False", "--config.eval.splits=('test',)",
               "--config.sampler.schedule=continuous")
  multi, single, _ = _multi_and_single(tmp_path_factory.mktemp("distributed_continuous"), overrides)
  return multi, single


def test_continuous_batching_across_processes_equals_the_single_process_run(continuous_runs):
  """Slots that refill between chunks read which groups are done on every process; the two must agree exactly."""
  multi, single = continuous_runs
  assert _lines(multi / "metrics.jsonl") == _lines(single / "metrics.jsonl")
  assert json.loads((multi / "config.json").read_text())["sampler"]["schedule"] == "continuous"
  path = pathlib.Path("samples", "rest_em", "iteration_1.jsonl.gz")
  samples = selection.read_jsonl(multi / path)
  assert samples and samples == selection.read_jsonl(single / path)


def test_a_workdir_that_is_not_shared_fails_on_every_process(tmp_path):
  logs = [tmp_path / f"process_{i}.log" for i in range(_NUM_PROCESSES)]
  # Each process gets its own directory, as on TPU workers that each write their local disk.
  procs = _start_processes(logs, [tmp_path / f"local_{i}" for i in range(_NUM_PROCESSES)], *_OVERRIDES)
  assert _wait(procs, logs) == [1] * _NUM_PROCESSES, _tails(logs)
  for log in logs:
    assert "is not shared: processes [1] of 2 do not see what process 0 writes" in log.read_text(), _tails([log])
  assert not (tmp_path / "local_0" / "config.json").exists()


def test_cluster_flags_need_distributed(parse_flags, tmp_path):
  parse_flags("--config=configs/default.py:smoke", f"--workdir={tmp_path}", "--num_processes=2")
  with pytest.raises(main.app.UsageError, match="--num_processes needs --distributed"):
    main.main(["rest_jax.main"])
  assert not tmp_path.joinpath("config.json").exists()


def test_a_read_only_metrics_log_checks_records_but_writes_nothing(tmp_path):
  workdir = tmp_path / "workdir"
  log = reporting.MetricsLog(workdir, read_only=True)
  log.append_eval({"method": "rest_em", "iteration": 0, "split": "test", "pass@1": 0.5})
  log.append_stage({"method": "rest_em", "iteration": 1, "stage": "estep", "wall_s": 1.0, "kept": 3})
  with pytest.raises(ValueError, match="must be a number"):
    log.append_eval({"method": "rest_em", "iteration": 0, "split": "test", "pass@1": "high"})
  log.close()
  assert not workdir.exists()


def test_single_process_helpers_are_the_plain_calls():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(-1), ("data",))
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  host = {"tokens": np.arange(16, dtype=np.int32).reshape(8, 2)}
  placed = distributed.host_to_global(host, batch_sharding)
  assert placed["tokens"].sharding == batch_sharding
  np.testing.assert_array_equal(distributed.global_to_host(placed)["tokens"], host["tokens"])
  assert distributed.broadcast_from_primary(host) is host
  assert distributed.is_primary()
  distributed.barrier("a no-op with one process")
  distributed.check_shared_directory(pathlib.Path("/nonexistent"))  # A no-op with one process.


def test_each_process_scores_its_share_and_all_get_every_reward(monkeypatch):
  """Scoring is split round-robin over the processes (`owns`) and gathered (`gather_owned`): simulated here for 3
  processes with a stand-in all-gather; the two-process runs above check it end to end against one process."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  rewards_PxN = np.arange(14, dtype=np.float32).reshape(7, 2) + 1
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  shares = []
  for process in range(3):
    monkeypatch.setattr(jax, "process_index", lambda process=process: process)
    owned = [i for i in range(7) if distributed.owns(i)]
    assert owned == list(range(process, 7, 3))
    share = np.zeros_like(rewards_PxN)
    share[owned] = rewards_PxN[owned]
    shares.append(share)
  monkeypatch.setattr(multihost_utils, "process_allgather", lambda x, tiled: np.stack(shares))
  np.testing.assert_array_equal(distributed.gather_owned(shares[1]), rewards_PxN)
