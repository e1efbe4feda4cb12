"""Bad input and damaged workdirs, in process with the real stages: every case ends in one line naming the file,
field or value, and earlier results stay.

A real small run (the smoke config, one method, the test split only) is stopped after its first iteration's M-step;
each test damages a copy of that workdir in one way, resumes it, and compares the final metrics with an uninterrupted
run's. The damaged file or checkpoint must still exist under a `.damaged-<time>` name.
"""

import errno
import gzip
import importlib.util
import json
import pathlib
import shutil
import tempfile

import pytest

from rest_jax import checkpoints
from rest_jax import errors
from rest_jax import experiment
from rest_jax import selection

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
  spec = importlib.util.spec_from_file_location("default_config", _REPO / "configs" / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke")
  small = {"rest.sft_human_baseline": False, "rest.num_iterations": 2, "eval.splits": ("test",),
           "eval.sampled_splits": ("test",)}
  for path, value in {**small, **overrides}.items():
    node = config
    *parents, leaf = path.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


def _evals(workdir: pathlib.Path) -> dict:
  return {(r["method"], r["iteration"], r["split"]): r for r in
          (json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip())}


class _Stop(Exception):
  pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(uninterrupted workdir, workdir stopped before the second E-step)."""
  root = tmp_path_factory.mktemp("runs")
  full = root / "full"
  experiment.run(_config(), full)
  stopped = root / "stopped"
  real_estep = experiment.Experiment.estep

  def estep(self, params, method, iteration):
    if iteration == 2:
      raise _Stop()
    return real_estep(self, params, method, iteration)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(experiment.Experiment, "estep", estep)
    with pytest.raises(_Stop):
      experiment.run(_config(), stopped)
  assert checkpoints.exists(stopped / "checkpoints" / "rest_em" / "iteration_1")
  return full, stopped


def _checkpoint(workdir):
  return workdir / "checkpoints" / "rest_em" / "iteration_1"


def _truncate(path: pathlib.Path) -> None:
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _largest(directory: pathlib.Path) -> pathlib.Path:
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


_CHECKPOINT_DAMAGE = {
    "truncated_ocdbt_file": lambda c: _truncate(_largest(c / "params" / "ocdbt.process_0" / "d")),
    "deleted_manifest": lambda c: (c / "params" / "manifest.ocdbt").unlink(),
    "emptied_metadata": lambda c: (c / "metadata" / "metadata").write_bytes(b""),
    "deleted_ocdbt_file": lambda c: _largest(c / "params" / "ocdbt.process_0" / "d").unlink(),
    "deleted_commit_marker": lambda c: (c / "commit_success.txt").unlink(),
}


@pytest.mark.parametrize("damage", sorted(_CHECKPOINT_DAMAGE))
def test_a_damaged_checkpoint_is_set_aside_and_recomputed(runs, tmp_path, damage, caplog):
  full, stopped = runs
  workdir = tmp_path / "run"
  shutil.copytree(stopped, workdir)
  checkpoint = _checkpoint(workdir)
  _CHECKPOINT_DAMAGE[damage](checkpoint)
  damaged_bytes = {p.relative_to(checkpoint): p.read_bytes() for p in checkpoint.rglob("*") if p.is_file()}

  experiment.run(_config(), workdir)

  assert _evals(workdir) == _evals(full)
  assert checkpoints.exists(checkpoint)  # Recomputed.
  [aside] = checkpoint.parent.glob("iteration_1.damaged-*")
  assert {p.relative_to(aside): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == damaged_bytes
  warnings = [r.getMessage() for r in caplog.records if "recomputing" in r.getMessage()]
  assert len(warnings) == 1 and str(checkpoint) in warnings[0], warnings


def test_truncated_samples_are_set_aside_and_sampled_again(runs, tmp_path):
  full, stopped = runs
  workdir = tmp_path / "run"
  shutil.copytree(stopped, workdir)
  samples = workdir / "samples" / "rest_em" / "iteration_1.jsonl.gz"
  _truncate(samples)
  damaged = samples.read_bytes()
  shutil.rmtree(_checkpoint(workdir))  # So that the resampled E-step is used, as after a kill during its M-step.

  experiment.run(_config(), workdir)

  assert _evals(workdir) == _evals(full)
  assert samples.read_bytes() == (full / samples.relative_to(workdir)).read_bytes()
  [aside] = samples.parent.glob("iteration_1.jsonl.gz.damaged-*")
  assert aside.read_bytes() == damaged


# --- Config errors: found before anything runs or is written ---------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("rest.cap", -1, r"^config rest\.cap=-1: must be >= 1$"),
    ("rest.samples_per_problem", 0, r"^config rest\.samples_per_problem=0: must be >= 1$"),
    ("eval.num_samples", 0, r"^config eval\.num_samples=0: must be >= 1$"),
])
def test_a_bad_value_fails_before_the_workdir_is_touched_and_the_fixed_command_runs(tmp_path, monkeypatch, field,
                                                                                   value, message):
  workdir = tmp_path / "run"
  monkeypatch.setattr(checkpoints, "load", lambda *a, **k: pytest.fail("the base model was loaded"))
  with pytest.raises(errors.UsageError, match=message):
    experiment.run(_config(**{field: value}), workdir)
  assert not workdir.exists()
  monkeypatch.undo()
  experiment.Experiment.create(_config(), workdir).log.close()  # The corrected command is not refused.


def test_an_eval_split_the_task_lacks_is_named(tmp_path):
  with pytest.raises(errors.UsageError, match=r"task 'arithmetic' has no split 'tset'; its splits: "):
    experiment.run(_config(**{"eval.splits": ("tset",), "eval.sampled_splits": ()}), tmp_path / "run")
  assert not (tmp_path / "run" / "config.json").exists()


def test_a_changed_title_resumes_and_a_changed_result_field_is_refused_in_one_line(tmp_path):
  experiment.Experiment.create(_config(), tmp_path).log.close()
  before = (tmp_path / "config.json").read_bytes()
  experiment.Experiment.create(_config(title="another title", **{"sampler.reward_workers": 1}), tmp_path).log.close()
  with pytest.raises(errors.UserError) as error:
    experiment.Experiment.create(_config(**{"rest.cap": 3}), tmp_path)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"{tmp_path / 'config.json'}: ") and "rest.cap (2 there, 3 now)" in message, message
  assert "new --workdir" in message
  assert (tmp_path / "config.json").read_bytes() == before


def test_a_workdir_from_before_the_report_block_resumes_and_report_fields_may_change(tmp_path):
  experiment.Experiment.create(_config(), tmp_path).log.close()
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["report"]  # As config.json was written before configs had a report block.
  (tmp_path / "config.json").write_text(json.dumps(saved))
  experiment.Experiment.create(_config(**{"report.wandb_project": "elsewhere"}), tmp_path).log.close()
  with pytest.raises(errors.UserError, match=r"fields train\.remat \('none' there, 'full' now\)"):
    experiment.Experiment.create(_config(**{"train.remat": "full"}), tmp_path)


def test_a_workdir_that_cannot_be_written_is_named_at_the_start(tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "run" / ".rest_jax_write_check_x"))

  monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
  monkeypatch.setattr(checkpoints, "load", lambda *a, **k: pytest.fail("the base model was loaded"))
  with pytest.raises(errors.UserError, match=rf"^workdir {tmp_path / 'run'} is not writable \(Permission denied\)"):
    experiment.run(_config(), tmp_path / "run")


def test_a_full_disk_during_a_stage_is_one_line_and_the_rerun_resumes(runs, tmp_path, monkeypatch, capsys):
  full, stopped = runs
  workdir = tmp_path / "run"
  shutil.copytree(stopped, workdir)
  real_write = selection.write_jsonl

  def full_disk(path, samples):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))

  monkeypatch.setattr(selection, "write_jsonl", full_disk)
  code = errors.run_reported(lambda: experiment.run(_config(), workdir), workdir=workdir, verbose=False)
  line = capsys.readouterr().err.strip()
  assert code == errors.FAILURE_EXIT
  samples = workdir / "samples" / "rest_em" / "iteration_2.jsonl.gz"
  assert line.startswith(f"error: no space left on device writing {samples}; free space and rerun the same command "
                         "to resume"), line
  assert "\n" not in line
  assert "OSError" in (workdir / errors.LOG_NAME).read_text()  # The traceback is kept.
  monkeypatch.setattr(selection, "write_jsonl", real_write)
  experiment.run(_config(), workdir)
  assert _evals(workdir) == _evals(full)
