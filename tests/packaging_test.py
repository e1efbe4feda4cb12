"""The wheel holds everything the package reads at run time, and the embedded experiments run from it."""

import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
_TIMEOUT_S = 1200  # Two smoke experiments on a shared 2-core machine.


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("wheel")
  # No build isolation and no index: the installed setuptools builds it, nothing is downloaded.
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                  "-w", str(out), str(_REPO)], check=True, capture_output=True, timeout=600)
  [path] = out.glob("rest_jax-*.whl")
  return path


def _tracked_package_files() -> set[str]:
  listed = subprocess.run(["git", "ls-files", "rest_jax"], cwd=_REPO, check=True, capture_output=True, text=True)
  return {name for name in listed.stdout.splitlines() if (_REPO / name).is_file()}


def test_the_wheel_holds_every_file_of_the_package(wheel):
  with zipfile.ZipFile(wheel) as archive:
    in_wheel = {name for name in archive.namelist() if name.startswith("rest_jax/")}
  missing = sorted(_tracked_package_files() - in_wheel)
  assert not missing, f"{len(missing)} files of rest_jax/ are not in {wheel.name}, e.g. {missing[:5]}"
  assert any(name.startswith("rest_jax/assets/list_programs_base/") for name in in_wheel)


def test_the_embedded_experiments_run_from_an_installed_wheel(wheel, tmp_path):
  venv = tmp_path / "venv"
  # The dependencies come from this environment; rest_jax itself only from the wheel.
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
  python = str(venv / "bin" / "python")
  subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                 capture_output=True, timeout=300)
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  where = subprocess.run([python, "-c", "import rest_jax; print(rest_jax.__file__)"], cwd=outside, env=env,
                         check=True, capture_output=True, text=True, timeout=300).stdout.strip()
  assert where.startswith(str(venv)), where
  for config in ("default", "code_default"):
    workdir = tmp_path / config
    run = subprocess.run([python, "-m", "rest_jax.main", f"--config={_REPO / 'configs' / config}.py:smoke",
                          f"--workdir={workdir}"], cwd=outside, env=env, capture_output=True, text=True,
                         timeout=_TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (workdir / "report.md").is_file() and (workdir / "metrics.jsonl").stat().st_size > 0
