"""End-to-end runs of the real-task configs on this CPU: sandboxed code rewards, math rewards, transfer splits.

`configs/code_default.py:smoke` (program synthesis graded in the sandbox), `configs/paper_math.py:fixture` (MATH and
the GSM8K transfer split from the project's upstream-format fixtures, graded by `math`) and
`configs/paper_apps.py:fixture` (APPS, with HumanEval as a transfer split graded by `humaneval`) run the whole EM
loop with the shipped small models.
"""

import gzip
import importlib.util
import json
import pathlib

import pytest

from rest_jax import experiment

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(spec: str):
  file, _, mode = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(f"config_{pathlib.Path(file).stem}", _REPO / file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(mode)


@pytest.mark.parametrize("spec, splits", [
    ("configs/code_default.py:smoke", {"test", "transfer", "train"}),
    ("configs/paper_math.py:fixture", {"test", "gsm8k", "train"}),
    ("configs/paper_apps.py:fixture", {"test", "humaneval", "train"}),
])
def test_real_task_config_runs_end_to_end(spec, splits, tmp_path, monkeypatch):
  monkeypatch.setenv("REST_JAX_DATA_DIR", str(tmp_path / "data"))
  config = _config(spec)
  records = experiment.run(config, tmp_path / "run")
  by_key = {(r["method"], r["iteration"], r["split"]): r for r in records}
  last = config.rest.num_iterations
  assert {s for (_, _, s) in by_key} == splits
  for split in splits:
    for key in (("rest_em", 0, split), ("rest_em", last, split)):
      assert 0.0 <= by_key[key]["pass@1"] <= 1.0, key
  test = by_key[("rest_em", last, "test")]
  assert f"maj@{config.eval.ks[-1]}" in test and f"pass@{config.eval.ks[-1]}" in test
  # Every E-step sample was scored by the task's reward (binary here) and written with its verdict.
  with gzip.open(tmp_path / "run" / "samples" / "rest_em" / "iteration_1.jsonl.gz", "rt") as f:
    samples = [json.loads(line) for line in f]
  assert len(samples) == config.rest.samples_per_problem * len({s["problem_id"] for s in samples})
  assert {s["reward"] for s in samples} <= {0.0, 1.0}
  assert (tmp_path / "run" / "report.md").read_text().count("pass@1") >= 1
