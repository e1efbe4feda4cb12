"""Tests for rest_jax/experiment.py, in process.

Config errors run the real code. The EM loops run with the shipped base model but with sampling, evaluation and
training replaced by fakes, so each test takes seconds and can see exactly what every stage was given: the fake
M-step returns its initial parameters plus one, so a parameter offset from the base counts the M-steps behind them.
The real stages run end to end in tests/main_test.py.
"""

import collections
import importlib.util
import pathlib
import re

import jax
import numpy as np
import pytest

from rest_jax import algorithms
from rest_jax import checkpoints
from rest_jax import experiment
from rest_jax import generation
from rest_jax import reporting
from rest_jax import selection
from rest_jax.sampling import Completion, strategies
from rest_jax.training import FinetuneResult, make_examples

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _smoke_config(**overrides):
  spec = importlib.util.spec_from_file_location("default_config", _REPO / "configs" / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke")
  for path, value in overrides.items():
    node = config
    *parents, leaf = path.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


# --- Config errors ----------------------------------------------------------------------------------------------


_BAD_CONFIGS = {
    "algorithm": ({"rest.algorithm": "nope"}, "^config rest\\.algorithm='nope': must be one of " + re.escape(", ".join(map(repr, algorithms.names()))) + "$"),
    "task": ({"task.name": "nope"}, r"^config task\.name='nope': must be one of .*'arithmetic'"),
    "base": ({"base.checkpoint": "/nonexistent/base"}, r"base\.checkpoint: no checkpoint at /nonexistent/base"),
}


@pytest.mark.parametrize("name", sorted(_BAD_CONFIGS))
def test_bad_config_fails_fast_with_a_one_line_error_naming_the_culprit(name, tmp_path, monkeypatch):
  overrides, message = _BAD_CONFIGS[name]

  def load(*args, **kwargs):
    raise AssertionError("the base model was loaded before the config was checked")

  monkeypatch.setattr(checkpoints, "load", load)
  with pytest.raises(ValueError, match=message) as error:
    experiment.run(_smoke_config(**overrides), tmp_path / "run")
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", sorted(_BAD_CONFIGS))
def test_rejected_config_does_not_claim_the_workdir(name, tmp_path):
  """The usual next step after a config error is the corrected command with the same --workdir."""
  overrides, _ = _BAD_CONFIGS[name]
  workdir = tmp_path / "run"
  with pytest.raises(ValueError):
    experiment.run(_smoke_config(**overrides), workdir)
  experiment.Experiment.create(_smoke_config(), workdir).log.close()  # Not "a different config".


def test_a_workdir_is_bound_to_its_config(tmp_path):
  experiment.Experiment.create(_smoke_config(), tmp_path).log.close()
  experiment.Experiment.create(_smoke_config(), tmp_path).log.close()  # The same config resumes.
  before = (tmp_path / "config.json").read_bytes()
  message = rf"^{re.escape(str(tmp_path / 'config.json'))}: .*\(fields rest\.cap \(2 there, 3 now\), train\.max_steps \(4 there, 9 now\)\); .*new --workdir"
  with pytest.raises(ValueError, match=message):
    experiment.Experiment.create(_smoke_config(**{"rest.cap": 3, "train.max_steps": 9}), tmp_path)
  assert (tmp_path / "config.json").read_bytes() == before


# --- The EM loops, with fake stages --------------------------------------------------------------------------------


def _offset(params, base) -> int:
  """How many fake M-steps lie behind `params`."""
  leaf, base_leaf = jax.tree.leaves(params)[0], jax.tree.leaves(base)[0]
  return int(round(float(np.mean(np.asarray(leaf) - np.asarray(base_leaf)))))


class _Fakes:
  """Records every stage call; deterministic outputs."""

  def __init__(self, monkeypatch, base_params, *, fail_train_at: tuple[str, int] | None = None,
               rewarded: bool = True):
    self.base = base_params
    self.fail_train_at = fail_train_at
    self.rewarded = rewarded
    self.samplings: list[dict] = []  # E-steps and fake evaluations.
    self.trainings: list[dict] = []
    self.evaluations: list[dict] = []
    monkeypatch.setattr(generation, "generate_and_score", self.generate_and_score)
    monkeypatch.setattr(generation, "evaluate", self.evaluate)
    monkeypatch.setattr(experiment, "train", self.train)

  def generate_and_score(self, sampler, params, problems, *, reward, num_samples, strategy, max_new_tokens, seed,
                         stop_strings=(), workers=4, desc="", with_logprobs=False):
    del sampler, reward, max_new_tokens, stop_strings, workers
    self.samplings.append({"offset": _offset(params, self.base), "strategy": strategy, "seed": seed, "desc": desc,
                           "num_problems": len(problems)})
    # Completions repeat (the E-step drops duplicates); rewards cycle 0, 0.3, 0.6, 1.0 (scalar and binary filters).
    completions = [[f" {i % 5} + {j % 3} = {(i % 5) + (j % 3)}" for j in range(num_samples)]
                   for i in range(len(problems))]
    rewards = np.array([[((i + j) % 4) / 3 for j in range(num_samples)] for i in range(len(problems))], np.float32)
    rewards = np.round(rewards, 1) if self.rewarded else np.zeros_like(rewards)
    sampled = [[Completion(ids=tuple(range(len(c))), logprobs=(-0.5,) * len(c) if with_logprobs else None,
                           ended=True, text=c) for c in row] for row in completions]
    return generation.Scored(completions=completions, rewards=rewards, sampled=sampled)

  def evaluate(self, sampler, params, task, problems, **kwargs):
    del sampler, task
    offset = _offset(params, self.base)
    self.evaluations.append({"offset": offset, "desc": kwargs["desc"], "num_problems": len(problems)})
    return {"pass@1": offset / 10, "num_problems": len(problems)}

  def train(self, init_params, examples, *, cfg, config, mesh, val_fn=None, desc=""):
    del cfg, mesh, val_fn
    if self.fail_train_at and desc.startswith(f"{self.fail_train_at[0]} it{self.fail_train_at[1]} "):
      raise KeyboardInterrupt(f"simulated preemption in {desc}")
    self.trainings.append({"offset": _offset(init_params, self.base), "examples": list(examples), "desc": desc,
                           "seed": config.seed})
    params = jax.tree.map(lambda p: p + 1, init_params)
    return FinetuneResult(params=params, best_step=1, best_val=None, steps=1, tokens=len(examples), history=[])


@pytest.fixture(scope="module")
def base_params(tmp_path_factory):
  exp = experiment.Experiment.create(_smoke_config(), tmp_path_factory.mktemp("base"))
  exp.log.close()
  return exp.base_params


def _kept(workdir, method, iteration):
  return [s for s in selection.read_jsonl(workdir / "samples" / method / f"iteration_{iteration}.jsonl.gz")
          if s.kept]


def _examples(exp, prompts, completions, weights):
  return make_examples(exp.sampler.tokenizer, prompts, completions, weights)


@pytest.mark.parametrize("restart_from_base", [True, False])
def test_rest_em_samples_with_the_policy_and_trains_on_kept_samples(monkeypatch, tmp_path, base_params,
                                                                    restart_from_base):
  fakes = _Fakes(monkeypatch, base_params)
  config = _smoke_config(**{"rest.restart_from_base": restart_from_base, "rest.sft_human_baseline": False,
                            "rest.num_iterations": 2})
  experiment.run(config, tmp_path)
  exp = experiment.Experiment.create(config, tmp_path)
  exp.log.close()

  estep = [s for s in fakes.samplings if "E-step" in s["desc"]]
  assert [s["offset"] for s in estep] == [0, 1]  # Iteration k samples with the model of iteration k - 1.
  assert all(s["strategy"] == strategies.make(config.rest.temperature, config.rest.top_k, config.rest.top_p)
             for s in estep)
  assert isinstance(estep[0]["strategy"], strategies.Sampling)
  assert all(s["num_problems"] == config.task.kwargs.num_train for s in estep)
  assert len({s["seed"] for s in estep}) == 2  # A fresh seed per iteration.
  # ReST-EM fine-tunes the base every time; the variant continues from the last iterate.
  assert [t["offset"] for t in fakes.trainings] == ([0, 0] if restart_from_base else [0, 1])
  for it, training in zip((1, 2), fakes.trainings):
    kept = _kept(tmp_path, "rest_em", it)
    assert kept and all(s.reward > 0 for s in kept)
    assert training["examples"] == _examples(exp, [s.prompt for s in kept], [s.completion for s in kept],
                                             [s.reward for s in kept])
  evals = {(r["iteration"], r["split"]): r["pass@1"] for r in exp.log.evals()}
  final = 0.1 if restart_from_base else 0.2
  assert evals == {(it, s): v for it, v in ((0, 0.0), (1, 0.1), (2, final)) for s in ("test", "transfer", "train")}
  for it in (1, 2):
    assert exp.store.exists("rest_em", it)


def test_rest_improve_steps_raise_the_threshold_and_mix_in_human_solutions(monkeypatch, tmp_path, base_params):
  fakes = _Fakes(monkeypatch, base_params)
  config = _smoke_config(**{"rest.algorithm": "rest", "rest.sft_human_baseline": False, "rest.num_iterations": 2,
                            "rest.improve_thresholds": (0.0, 0.5, 0.9), "rest.mix_human": True})
  experiment.run(config, tmp_path)
  exp = experiment.Experiment.create(config, tmp_path)
  exp.log.close()

  human = list(exp.task.split("human"))
  # Every Improve step continues from the previous one, across Grow steps too.
  assert [t["offset"] for t in fakes.trainings] == list(range(6))
  assert [s["offset"] for s in fakes.samplings if "E-step" in s["desc"]] == [0, 3]
  for i, training in enumerate(fakes.trainings):
    it, threshold = 1 + i // 3, (0.0, 0.5, 0.9)[i % 3]
    chosen = [s for s in _kept(tmp_path, "rest", it) if s.reward > threshold]
    assert chosen, (it, threshold)
    expected = _examples(exp, [s.prompt for s in chosen] + [p.prompt for p in human],
                         [s.completion for s in chosen] + [p.solution for p in human],
                         [s.reward for s in chosen] + [1.0] * len(human))
    assert training["examples"] == expected, (it, threshold)
  for it, offset in ((1, 3), (2, 6)):
    assert _offset(exp.store.load("rest", it)[0], base_params) == offset
  assert {(r["iteration"], r["pass@1"]) for r in exp.log.evals()} == {(0, 0.0), (1, 0.3), (2, 0.6)}


def test_a_preempted_run_resumes_without_redoing_finished_stages(monkeypatch, tmp_path, base_params):
  config = _smoke_config(**{"rest.num_iterations": 2, "rest.sft_human_baseline": True})
  crashed = _Fakes(monkeypatch, base_params, fail_train_at=("rest_em", 2))
  with pytest.raises(KeyboardInterrupt):
    experiment.run(config, tmp_path)
  assert [t["desc"].split(" M-step")[0] for t in crashed.trainings] == ["sft_human it1", "rest_em it1"]
  samples_it2 = (tmp_path / "samples" / "rest_em" / "iteration_2.jsonl.gz").read_bytes()

  resumed = _Fakes(monkeypatch, base_params)
  evals = experiment.run(config, tmp_path)
  assert [t["desc"].split(" M-step")[0] for t in resumed.trainings] == ["rest_em it2"]
  assert resumed.samplings == []  # Every E-step was on disk.
  assert [e["desc"] for e in resumed.evaluations] == [f"rest_em it2 {s}" for s in ("test", "transfer", "train")]
  assert resumed.trainings[0]["offset"] == 0  # Restarted from the base, as in an uninterrupted run.
  assert (tmp_path / "samples" / "rest_em" / "iteration_2.jsonl.gz").read_bytes() == samples_it2

  _Fakes(monkeypatch, base_params)
  assert evals == experiment.run(config, tmp_path / "uninterrupted")
  stage_keys = [(r["method"], r["iteration"], r["stage"]) for r in
                reporting.MetricsLog(tmp_path).stages()]
  assert collections.Counter(stage_keys) == collections.Counter(
      (r["method"], r["iteration"], r["stage"])
      for r in reporting.MetricsLog(tmp_path / "uninterrupted").stages())


def test_an_estep_with_nothing_rewarded_keeps_the_policy_and_the_loop_goes_on(monkeypatch, tmp_path, base_params):
  fakes = _Fakes(monkeypatch, base_params, rewarded=False)
  config = _smoke_config(**{"rest.sft_human_baseline": False, "rest.num_iterations": 2,
                            "rest.restart_from_base": False})
  experiment.run(config, tmp_path)
  assert fakes.trainings == []
  assert [s["offset"] for s in fakes.samplings if "E-step" in s["desc"]] == [0, 0]
  store = checkpoints.IterationCheckpoints(tmp_path / "checkpoints")
  for it in (1, 2):
    assert _offset(store.load("rest_em", it)[0], base_params) == 0
    assert store.load_metadata("rest_em", it)["examples"] == 0
  stages = {(r["method"], r["iteration"], r["stage"]): r for r in reporting.MetricsLog(tmp_path).stages()}
  assert stages[("rest_em", 2, "mstep")]["examples"] == 0
  assert {r["iteration"] for r in reporting.MetricsLog(tmp_path).evals()} == {0, 1, 2}


@pytest.mark.parametrize("stage", ["estep", "mstep"])
def test_stage_record_survives_a_kill_between_artifact_and_log(monkeypatch, tmp_path, base_params, stage):
  """A kill can land after a stage's artifact is on disk and before its record is logged."""
  config = _smoke_config(**{"rest.sft_human_baseline": False, "rest.num_iterations": 1})
  _Fakes(monkeypatch, base_params)
  real_append = reporting.MetricsLog.append_stage

  def killed_append(log, record):
    if (record["method"], record["iteration"], record["stage"]) == ("rest_em", 1, stage):
      raise KeyboardInterrupt("simulated kill")
    real_append(log, record)

  monkeypatch.setattr(reporting.MetricsLog, "append_stage", killed_append)
  with pytest.raises(KeyboardInterrupt):
    experiment.run(config, tmp_path)
  monkeypatch.setattr(reporting.MetricsLog, "append_stage", real_append)
  experiment.run(config, tmp_path)

  stages = {(r["method"], r["iteration"], r["stage"]): r for r in reporting.MetricsLog(tmp_path).stages()}
  assert ("rest_em", 1, stage) in stages, sorted(stages)
  if stage == "estep":
    samples = selection.read_jsonl(tmp_path / "samples" / "rest_em" / "iteration_1.jsonl.gz")
    stats = selection.selection_stats(samples)
    assert {k: stages[("rest_em", 1, "estep")][k] for k in ("generated", "rewarded", "kept")} == {
        k: stats[k] for k in ("generated", "rewarded", "kept")}
