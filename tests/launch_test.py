"""The launch/ scripts, run against stand-ins for gcloud, nvidia-smi and python that record how they are called."""

import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
_TPU_POD, _GPU_HOST = _REPO / "launch" / "tpu_pod.sh", _REPO / "launch" / "gpu_host.sh"

# Records its arguments (and the launch-relevant environment) as one JSON line, prints `STUB_OUTPUT`.
_RECORDER = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as f:
  f.write(json.dumps({{"argv": [os.path.basename(sys.argv[0])] + sys.argv[1:],
                      "mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")}}) + "\\n")
print(os.environ.get("STUB_OUTPUT", ""))
"""


@pytest.fixture
def stubs(tmp_path):
  """A PATH whose gcloud, nvidia-smi and python3 are recorders; returns (run, calls)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("gcloud", "nvidia-smi", "python3"):
    (bin_dir / name).write_text(_RECORDER)
    (bin_dir / name).chmod(0o755)
  log = tmp_path / "calls.jsonl"

  def run(script: pathlib.Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp_path),
                "STUB_LOG": str(log), **env}
    return subprocess.run(["bash", str(script), *args], cwd=tmp_path, env=full_env, capture_output=True, text=True,
                          timeout=60)

  def calls() -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

  return run, calls


def _option(argv: list[str], name: str) -> str:
  return next(a.split("=", 1)[1] for a in argv if a.startswith(f"{name}="))


@pytest.mark.parametrize("script", [_TPU_POD, _GPU_HOST])
def test_scripts_are_executable_and_parse(script):
  assert os.access(script, os.X_OK)
  subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("args", [
    (), ("create",), ("create", "pod", "us-central2-b", "v4-16"), ("create", "pod", "", "v4-16", "base"),
    ("install", "pod", "zone"), ("install", "pod", "zone", "https://x/rest_jax.git", "main", "gs://bucket"),
    ("run", "pod", "zone", "configs/default.py"), ("fetch", "pod", "zone", "/gcs/b/run"), ("delete", "pod"),
    ("launch", "pod", "zone")])
def test_tpu_pod_refuses_missing_arguments_without_calling_gcloud(stubs, args):
  run, calls = stubs
  result = run(_TPU_POD, *args)
  assert result.returncode == 2
  assert "usage: launch/tpu_pod.sh create  NAME ZONE ACCELERATOR_TYPE RUNTIME_VERSION" in result.stderr
  assert calls() == []


def test_tpu_pod_create_and_delete(stubs):
  run, calls = stubs
  assert run(_TPU_POD, "create", "pod", "us-central2-b", "v4-16", "tpu-ubuntu2204-base", "--spot").returncode == 0
  assert run(_TPU_POD, "delete", "pod", "us-central2-b").returncode == 0
  create, delete = (c["argv"] for c in calls())
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod", "--zone=us-central2-b",
                    "--accelerator-type=v4-16", "--version=tpu-ubuntu2204-base", "--spot"]
  assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod", "--zone=us-central2-b", "--quiet"]


def test_tpu_pod_install_runs_one_valid_script_on_every_worker(stubs):
  run, calls = stubs
  result = run(_TPU_POD, "install", "pod", "zone", "https://example.com/rest_jax.git", "main", "my-runs",
               TPU_SSH_FLAGS="--tunnel-through-iap")
  assert result.returncode == 0, result.stderr
  (call,) = calls()
  argv = call["argv"]
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
  assert "--worker=all" in argv and "--tunnel-through-iap" in argv
  script = _option(argv, "--command")
  subprocess.run(["bash", "-n", "-c", script], check=True)
  for expected in ("git clone https://example.com/rest_jax.git ~/rest_jax", "origin/main",
                   "uv pip install --python ~/rest_jax_venv/bin/python -e . jax\\[tpu\\]\\>=0.10.2\\,\\<0.11",
                   "gcsfuse --implicit-dirs --rename-dir-limit=1000000 my-runs /gcs/my-runs"):
    assert expected in script


def test_tpu_pod_run_starts_the_same_distributed_command_on_every_worker(stubs):
  run, calls = stubs
  result = run(_TPU_POD, "run", "pod", "zone", "configs/default.py:smoke", "/gcs/my-runs/demo",
               "--config.title=two words")
  assert result.returncode == 0, result.stderr
  argv = calls()[0]["argv"]
  assert "--worker=all" in argv
  script = _option(argv, "--command")
  subprocess.run(["bash", "-n", "-c", script], check=True)
  command = shlex.split(script.splitlines()[-1])
  assert command[1:] == ["~/rest_jax_venv/bin/python", "-m", "rest_jax.main", "--config=configs/default.py:smoke",
                         "--workdir=/gcs/my-runs/demo", "--distributed", "--config.title=two words"]


@pytest.mark.parametrize("workdir,expected", [
    ("/gcs/my-runs/demo/", ["gcloud", "storage", "rsync", "--recursive", "gs://my-runs/demo", "out"]),
    ("/mnt/nfs/demo", ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", "--zone=zone", "--worker=0",
                       "pod:/mnt/nfs/demo", "out"])])
def test_tpu_pod_fetch_copies_the_workdir_out(stubs, tmp_path, workdir, expected):
  run, calls = stubs
  assert run(_TPU_POD, "fetch", "pod", "zone", workdir, "out").returncode == 0
  assert calls()[0]["argv"] == expected
  assert (tmp_path / "out").is_dir()


@pytest.mark.parametrize("args", [(), ("--install",), ("configs/default.py",), ("--install", "configs/default.py"),
                                  ("configs/default.py", "--config.seed=1")])
def test_gpu_host_refuses_missing_arguments(stubs, args):
  run, calls = stubs
  result = run(_GPU_HOST, *args)
  assert result.returncode == 2
  assert "usage: launch/gpu_host.sh [--install] CONFIG WORKDIR" in result.stderr
  assert calls() == []


def test_gpu_host_installs_and_runs_one_process_over_all_gpus(stubs):
  run, calls = stubs
  result = run(_GPU_HOST, "--install", "configs/default.py", "runs/gpu", "--config.mesh.fsdp=2", STUB_OUTPUT="8")
  assert result.returncode == 0, result.stderr
  assert "8 GPUs, XLA_PYTHON_CLIENT_MEM_FRACTION=0.90" in result.stderr
  smi, install, probe, main = calls()
  assert smi["argv"] == ["nvidia-smi", "-L"]
  assert install["argv"] == ["python3", "-m", "pip", "install", "-e", ".", "jax[cuda12]>=0.10.2,<0.11"]
  assert probe["argv"][:2] == ["python3", "-c"]
  assert main["argv"] == ["python3", "-m", "rest_jax.main", "--config=configs/default.py", "--workdir=runs/gpu",
                          "--config.mesh.fsdp=2"]
  assert main["mem_fraction"] == "0.90"


def test_gpu_host_keeps_a_given_memory_fraction_and_fails_without_a_driver(stubs, tmp_path):
  run, calls = stubs
  assert run(_GPU_HOST, "configs/default.py", "runs/gpu", XLA_PYTHON_CLIENT_MEM_FRACTION="0.5").returncode == 0
  assert calls()[-1]["mem_fraction"] == "0.5"
  (tmp_path / "bin" / "nvidia-smi").unlink()
  result = run(_GPU_HOST, "configs/default.py", "runs/gpu")
  assert result.returncode == 1 and "no NVIDIA driver" in result.stderr
