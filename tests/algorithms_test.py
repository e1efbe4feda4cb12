"""The other algorithms of the loop on the smoke config: original ReST, distillation, no-kept-samples."""

import importlib.util
import pathlib

import pytest

from rest_jax import checkpoints, experiment, selection

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(mode="smoke"):
  spec = importlib.util.spec_from_file_location("default_config", ROOT / "configs" / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(mode)
  c.rest.num_iterations = 1
  c.rest.sft_human_baseline = False
  c.eval.splits = ("test",)
  return c


def test_original_rest_runs_improve_steps_with_rising_thresholds(tmp_path):
  c = _config()
  c.rest.algorithm = "rest"
  c.task.kwargs.reward = "arithmetic_steps"
  c.rest.improve_thresholds = (0.0, 0.4)
  records = experiment.run(c, tmp_path)
  assert {(r["method"], r["iteration"]) for r in records} == {("rest", 0), ("rest", 1)}
  samples = selection.read_jsonl(tmp_path / "samples/rest/iteration_1.jsonl.gz")
  # Scalar rewards: partial credit is in the samples, so the thresholds select different subsets.
  assert any(0 < s.reward < 1 for s in samples)
  store = checkpoints.IterationCheckpoints(tmp_path / "checkpoints")
  steps = [store.load_metadata(f"rest_improve{i}", 1) for i in range(2)]
  num_human = c.task.kwargs.num_human
  kept = [s for s in samples if s.kept]
  # Each Improve step trains on the human solutions plus the kept samples above its threshold.
  assert steps[0]["examples"] == num_human + sum(s.reward > 0.0 for s in kept)
  assert steps[1]["examples"] == num_human + sum(s.reward > 0.4 for s in kept)
  assert store.exists("rest", 1)


def test_distillation_samples_with_the_teacher(tmp_path):
  c = _config()
  teacher = tmp_path / "teacher"
  base = experiment._asset("arithmetic_base")
  params, meta = checkpoints.load(base)
  checkpoints.save(teacher, params, metadata={**meta, "made_by": "test teacher"})
  c.rest.sampler_checkpoint = str(teacher)
  experiment.run(c, tmp_path / "run")
  samples = selection.read_jsonl(tmp_path / "run/samples/rest_em/iteration_1.jsonl.gz")
  assert len(samples) == c.task.kwargs.num_train * c.rest.samples_per_problem


def test_an_estep_that_keeps_nothing_leaves_the_model_unchanged(tmp_path):
  c = _config()
  c.rest.reward_threshold = 1.0  # Binary rewards are never > 1: nothing is kept.
  records = experiment.run(c, tmp_path)
  by_iteration = {r["iteration"]: r for r in records if r["split"] == "test"}
  assert by_iteration[1]["pass@1"] == by_iteration[0]["pass@1"]
  assert checkpoints.IterationCheckpoints(tmp_path / "checkpoints").load_metadata("rest_em", 1)["examples"] == 0


def test_unknown_algorithm_is_refused_before_any_work(tmp_path):
  c = _config()
  c.rest.algorithm = "ppo"
  with pytest.raises(ValueError, match="rest.algorithm"):
    experiment.run(c, tmp_path)
  assert not (tmp_path / "config.json").exists()
