"""End-to-end tests of a study (rest_jax/study.py) on configs/study_default.py:smoke, and its checks.

One module fixture runs the smoke study once, uninterrupted; the resume test runs it again, interrupted in its
third run, and expects the same report bytes.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from rest_jax import checkpoints
from rest_jax import config_files
from rest_jax import errors
from rest_jax import experiment
from rest_jax import main
from rest_jax import study
from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig, param_count

_REPO = pathlib.Path(__file__).resolve().parents[1]
_SMOKE = "configs/study_default.py:smoke"


def _smoke(small_base: str | None = None) -> ml_collections.ConfigDict:
  config = config_files.load(_REPO / "configs" / "study_default.py", "smoke")
  if small_base is not None:
    config.study.sizes.small = small_base
  return config


def _param_count(base: str) -> int:
  cfg = ModelConfig.from_dict(checkpoints.load_metadata(experiment.shipped_or_path(base))["model_config"])
  return param_count(sharding.abstract_params(cfg, boxed=False))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("study") / "full"
  assert study.run(_smoke(), workdir) == str(workdir / "study_report.md")
  return workdir


def _evals(run: pathlib.Path) -> dict[tuple[str, int, str], dict]:
  lines = (run / "metrics.jsonl").read_text().splitlines()
  return {(r["method"], r["iteration"], r["split"]): r for r in map(json.loads, lines)}


def _section(report: str, title: str, after: str = "") -> str:
  """The text under the first heading `title` (after the heading `after`), up to the next heading."""
  text = report.split(f"\n{after}\n", 1)[1] if after else report
  return re.split(r"\n#{2,3} ", text.split(f"\n{title}\n", 1)[1], maxsplit=1)[0]


def _row(section: str, first_cells: str) -> list[str]:
  [line] = [line for line in section.splitlines() if line.startswith(f"| {first_cells} |")]
  return [cell.strip() for cell in line.strip("|").split("|")]


# --- The finished smoke study -----------------------------------------------------------------------------------


def test_each_run_once_in_its_own_workdir_the_medium_size_reusing_the_main_runs(finished):
  seeds = _smoke().study.seeds
  expected = ([f"runs/{arm}/seed_{s}" for s in seeds for arm in ("rest_em", "sft_human")]
              + [f"runs/rest_em/seed_{s}/size_small" for s in seeds])
  assert sorted(study.finished_runs(finished)) == sorted(expected)
  for run in expected:
    config = json.loads((finished / run / "config.json").read_text())
    assert config["seed"] == int(run.split("seed_")[1].split("/")[0])
    assert config["task"]["kwargs"]["seed"] == _smoke().study.experiment.task.kwargs.seed  # The same problems.
  assert not list(finished.glob("runs/*/*/size_medium")), "the medium size ran again"
  saved = json.loads((finished / "study_config.json").read_text())
  assert saved["study"]["seeds"] == list(seeds)


def test_report_has_every_section_with_numbers_from_the_runs(finished):
  report = (finished / "study_report.md").read_text()
  for title in ("## Summary", "## Test accuracy per iteration", "## Sample efficiency", "## Stability", "## Scaling",
                "## Overfitting", "## Runs", "## Study config"):
    assert f"\n{title}\n" in report, title
  assert "6 of 6 runs finished;" in report
  seeds = _smoke().study.seeds
  runs = [finished / f"runs/rest_em/seed_{s}" for s in seeds]
  evals = [_evals(run) for run in runs]
  sft = [_evals(finished / f"runs/sft_human/seed_{s}") for s in seeds]

  # ReST-EM's iteration 1, by hand: the mean, sample std and range of the seeds' test pass@1, and the tokens.
  values = [e[("rest_em", 1, "test")]["pass@1"] for e in evals]
  tokens = []
  for run in runs:
    stages = [json.loads(line) for line in (run / "stages.jsonl").read_text().splitlines()]
    tokens.append(sum(r.get("sampled_tokens") or 0 for r in stages if r["method"] == "rest_em"
                      and r["iteration"] <= 1))
  row = _row(_section(report, "### rest_em"), "1")
  assert row[1] == str(len(seeds))
  assert row[2] == (f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} [{min(values):.3f}, "
                    f"{max(values):.3f}]")
  assert row[-1] == str(int(round(np.mean(tokens))))
  assert "test pass@4" in _section(report, "### rest_em") and "test maj@4" in _section(report, "### rest_em")

  # The headline names the arm with the highest final mean and the gap, from the same records.
  last = max(it for (m, it, _) in evals[0] if m == "rest_em")
  finals = {"rest_em": np.mean([e[("rest_em", last, "test")]["pass@1"] for e in evals]),
            "sft_human": np.mean([e[("sft_human", 1, "test")]["pass@1"] for e in sft])}
  top, other = sorted(finals, key=lambda arm: -finals[arm])
  headline = _section(report, "## Summary").strip().splitlines()[0]
  if round(100 * (finals[top] - finals[other]), 1) == 0:
    assert "tie" in headline, headline
  else:
    assert headline.startswith(f"**{top}** has the highest final mean test pass@1, {finals[top]:.3f} over "
                               f"{len(seeds)} seeds, {100 * (finals[top] - finals[other]):.1f} points above the "
                               f"next arm, **{other}**"), headline

  # Scaling: each base's parameter count, and ReST-EM's final gain over its own base at the small size.
  small = [_evals(finished / f"runs/rest_em/seed_{s}/size_small") for s in seeds]
  gains = [100 * (e[("rest_em", last, "test")]["pass@1"] - e[("rest_em", 0, "test")]["pass@1"]) for e in small]
  row = _row(_section(report, "## Scaling"), "rest_em | small")
  assert row[2] == f"{_param_count(_smoke().study.sizes.small):,}"
  assert row[-1].startswith(f"{round(np.mean(gains), 1) + 0.0:+.1f} ± ")
  row = _row(_section(report, "## Scaling"), "rest_em | medium")
  assert row[2] == f"{_param_count(_smoke().study.sizes.medium):,}"
  assert _param_count(_smoke().study.sizes.small) < _param_count(_smoke().study.sizes.medium)

  # Overfitting: train vs test at the base, for SFT.
  train = [e[("sft_human", 0, "train")]["pass@1"] for e in sft]
  row = _row(_section(report, "### sft_human", after="## Overfitting"), "0")
  assert row[1].startswith(f"{np.mean(train):.3f} ± ")
  for name in ("test_pass_at_1.png", "sample_efficiency.png", "scaling.png", "overfitting.png"):
    assert f"(plots/{name})" in report
    assert (finished / "plots" / name).read_bytes().startswith(b"\x89PNG"), name


def test_rerun_of_a_finished_study_runs_nothing_and_rewrites_the_same_report(finished, monkeypatch):
  before = (finished / "study_report.md").read_bytes()
  monkeypatch.setattr(experiment, "run", lambda *a: pytest.fail("a finished run was run again"))
  study.run(_smoke(), finished)
  assert (finished / "study_report.md").read_bytes() == before


class _Killed(Exception):
  """Stands for a kill of the process mid-run."""


def test_interrupted_study_resumes_to_the_same_report(finished, tmp_path, monkeypatch):
  real_run, real_mstep = experiment.run, experiment.Experiment.mstep
  calls = []

  def killed_mstep(self, init, prompts, completions, weights, method, iteration):
    if method == "rest_em":  # The 3rd run (ReST-EM, seed 1) dies in its first M-step, after an E-step.
      raise _Killed()
    return real_mstep(self, init, prompts, completions, weights, method, iteration)

  def run(config, workdir):
    calls.append(pathlib.Path(workdir).relative_to(tmp_path).as_posix())
    if kill_third and len(calls) == 3:
      monkeypatch.setattr(experiment.Experiment, "mstep", killed_mstep)
    return real_run(config, workdir)

  monkeypatch.setattr(experiment, "run", run)
  kill_third = True
  with pytest.raises(_Killed):
    study.run(_smoke(), tmp_path)
  kill_third = False
  assert calls == ["runs/rest_em/seed_0", "runs/sft_human/seed_0", "runs/rest_em/seed_1"]
  assert list(study.finished_runs(tmp_path)) == ["runs/rest_em/seed_0", "runs/sft_human/seed_0"]
  partial = (tmp_path / "study_report.md").read_text()
  assert "2 of 6 runs finished (a partial study" in partial

  monkeypatch.setattr(experiment.Experiment, "mstep", real_mstep)
  calls.clear()
  study.run(_smoke(), tmp_path)
  assert calls == ["runs/rest_em/seed_1", "runs/sft_human/seed_1", "runs/rest_em/seed_0/size_small",
                   "runs/rest_em/seed_1/size_small"]
  assert (tmp_path / "study_report.md").read_bytes() == (finished / "study_report.md").read_bytes()


def _tree(workdir: pathlib.Path) -> dict[str, tuple]:
  return {str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(workdir.rglob("*"))}


def test_a_changed_study_config_is_refused_in_one_line(finished):
  before = _tree(finished)
  result = subprocess.run(
      [sys.executable, "-m", "rest_jax.main", f"--config={_SMOKE}", f"--workdir={finished}",
       "--config.study.seeds=(0, 5)"],
      cwd=_REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, "PYTHONPATH": str(_REPO)})
  assert result.returncode == 1, result.stderr[-2000:]
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: {finished / 'study_config.json'}: the workdir holds a study with a different "
                         "config (fields study.seeds ([0, 1] there, [0, 5] now)"), line
  assert _tree(finished) == before


# --- Checks before any run --------------------------------------------------------------------------------------


def _arm(config, name, **changes):
  config.study.arms = tuple({**arm, **changes} if arm["name"] == name else arm for arm in config.study.arms)
  return config


def _with(**changes):
  def change(config):
    for field, value in changes.items():
      config.study[field] = value
    return config
  return change


def _unknown_field(config):
  config.study.sedes = (0,)
  return config


@pytest.mark.parametrize("change, line", [
    (_unknown_field, "config study.sedes: no such field (did you mean 'seeds'?)"),
    (lambda c: _arm(c, "rest_em", overrides={"rest.algoritm": "rest_em"}),
     "config study.arms[rest_em].overrides: the experiment config has no field 'rest.algoritm' (did you mean "
     "'rest.algorithm'?)"),
    (lambda c: _arm(c, "rest_em", overrides={"rest.cap": -1}),
     "study.arms[rest_em] seed 0: config rest.cap=-1: must be >= 1"),
    (lambda c: _arm(c, "sft_human", overrides={"rest.algorithm": "grpoo"}),
     "study.arms[sft_human] seed 0: config rest.algorithm='grpoo': must be one of 'grpo', 'rest', 'rest_em', "),
    (lambda c: _arm(c, "rest_em", overrides={"rest.cap": "two"}),
     "config study.arms[rest_em].overrides: rest.cap='two': "),
    (lambda c: _arm(c, "rest_em", overides={}), "config study.arms[0].overides: no such field (did you mean "
                                                "'overrides'?)"),
    (lambda c: _arm(c, "rest_em", overrides={"seed": 3}),
     "config study.arms[rest_em].overrides: 'seed' is set by study.seeds, not by an arm"),
    (_with(size_arms=("rest_emm",)), "config study.size_arms: 'rest_emm' is no arm; arms: rest_em, sft_human"),
    (_with(seeds=(0, 0)), "config study.seeds: (0, 0) repeats a seed"),
    (_with(seeds=()), "config study.seeds: () must be a non-empty tuple of ints"),
])
def test_a_bad_study_config_is_refused_in_one_line_before_any_run(change, line, tmp_path, monkeypatch):
  monkeypatch.setattr(experiment, "run", lambda *a: pytest.fail("a run started"))
  with pytest.raises(errors.UsageError) as error:
    study.run(change(_smoke()), tmp_path / "study")
  assert str(error.value).startswith(line) and "\n" not in str(error.value), str(error.value)
  assert not (tmp_path / "study").exists()


def test_a_missing_base_is_refused_before_any_run(tmp_path, monkeypatch):
  monkeypatch.setattr(experiment, "run", lambda *a: pytest.fail("a run started"))
  with pytest.raises(errors.UserError, match=r"^study.sizes.small: no base checkpoint at /nonexistent/base; "):
    study.run(_smoke("/nonexistent/base"), tmp_path / "study")
  assert not (tmp_path / "study").exists()


def test_main_runs_a_study_config_as_a_study(parse_flags, monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(study, "run", lambda config, workdir: calls.append((config, workdir)))
  monkeypatch.setattr(experiment, "run", lambda *a: pytest.fail("ran as one experiment"))
  parse_flags(f"--config={_SMOKE}", f"--workdir={tmp_path}", "--config.study.seeds=(3,)")
  main.main(["rest_jax.main"])
  [(config, workdir)] = calls
  assert (tuple(config.study.seeds), workdir) == ((3,), str(tmp_path))
