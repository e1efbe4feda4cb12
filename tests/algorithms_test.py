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


# --- The plug-in seam -------------------------------------------------------------------------------------------


def test_a_new_algorithm_is_one_registration_with_its_own_config_block(tmp_path, monkeypatch):
  """Registered from outside the package: its block's fields are checked, needed only when it is selected, and the
  loop runs it over the stage API."""
  from rest_jax import algorithms, config_check, errors  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  calls = []
  monkeypatch.setattr(algorithms, "_REGISTRY", dict(algorithms._REGISTRY))

  @algorithms.register("evaluate_only", block="evaluate_only",
                       rules={"evaluate_only.iterations": config_check.Rule((int,), low=1)})
  def run(exp):
    for it in range(exp.config.evaluate_only.iterations + 1):
      exp.evaluate(exp.base_params, "evaluate_only", it)
      calls.append(it)

  c = _config()
  config_check.validate(c)  # Not selected: its block is not needed.
  c.rest.algorithm = "evaluate_only"
  with pytest.raises(errors.UsageError, match=r"^config evaluate_only\.iterations: missing \(algorithm "
                                              r"'evaluate_only' needs it"):
    config_check.validate(c)
  c.evaluate_only = ml_collections.ConfigDict({"iterations": 0})
  with pytest.raises(errors.UsageError, match=r"^config evaluate_only\.iterations=0: must be >= 1$"):
    config_check.validate(c)
  c.evaluate_only.iterations = 2
  records = experiment.run(c, tmp_path)
  assert calls == [0, 1, 2]
  assert sorted({(r["method"], r["iteration"]) for r in records}) == [("evaluate_only", i) for i in range(3)]
  experiment.run(c, tmp_path)  # A rerun finds every stage recorded.
  assert calls == [0, 1, 2, 0, 1, 2]


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
  c = _config("grpo_smoke")
  workdir = tmp_path_factory.mktemp("grpo")
  records = experiment.run(c, workdir)
  return c, workdir, records


def test_grpo_trains_online_and_records_its_sampling_budget(grpo_run):
  from rest_jax import reporting  # pylint: disable=g-import-not-at-top

  c, workdir, records = grpo_run
  assert {(r["method"], r["iteration"]) for r in records} == {("grpo", 0), ("grpo", 1)}
  stage = next(r for r in reporting.MetricsLog(workdir).stages() if r["stage"] == "online")
  samples = selection.read_jsonl(workdir / "samples/grpo/iteration_1_online.jsonl.gz")
  g = c.grpo
  assert len(samples) == g.prompts_per_batch * g.batches_per_iteration * g.samples_per_prompt == stage["generated"]
  assert stage["sampled_tokens"] == sum(len(s.completion_ids) for s in samples) > 0
  assert all(len(s.logprobs) == len(s.completion_ids) and max(s.logprobs) <= 0 for s in samples)
  # Groups with unequal rewards were trained on: every pass over every batch is an update.
  assert stage["updates"] >= g.updates_per_batch * g.batches_per_iteration and stage["update_tokens"] > 0
  store = checkpoints.IterationCheckpoints(workdir / "checkpoints")
  trained, _ = store.load("grpo", 1)
  base, _ = checkpoints.load(experiment._asset("arithmetic_base"))
  assert trained["embed"]["embedding"].shape == base["embed"]["embedding"].shape
  assert not (trained["embed"]["embedding"] == base["embed"]["embedding"]).all()
  assert experiment.run(c, workdir) == records  # Resumed: nothing is redone, the same records.
  assert len([r for r in reporting.MetricsLog(workdir).stages() if r["stage"] == "online"]) == 1


def test_the_sampled_log_probabilities_are_the_trainers_on_the_same_tokens(grpo_run):
  """What makes the first GRPO update on-policy: the sampler's recorded log-probabilities of the first batch
  (sampled by the base) equal the trainer's log-probabilities of the same packed tokens under the base."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rest_jax import tokenizers  # pylint: disable=g-import-not-at-top
  from rest_jax.training import grpo as grpo_lib  # pylint: disable=g-import-not-at-top

  c, workdir, _ = grpo_run
  samples = selection.read_jsonl(workdir / "samples/grpo/iteration_1_online.jsonl.gz")
  first = samples[:c.grpo.prompts_per_batch * c.grpo.samples_per_prompt]
  exp = experiment.Experiment.create(c, workdir)
  exp.log.close()
  tok = exp.sampler.tokenizer
  rollouts = [grpo_lib.Rollout(tuple(tokenizers.prefix_ids(tok)) + tuple(tok.encode(s.prompt)), s.completion_ids,
                               s.logprobs, 1.0) for s in first[:16]]
  batch = grpo_lib.pack_rollouts(rollouts, seq_len=c.train.seq_len, batch_rows=16, micro_batches=1)
  logp = grpo_lib.ref_logprobs(exp.base_params, batch, cfg=exp.cfg, mesh=exp.mesh, temperature=c.grpo.temperature)
  mask = batch["loss_mask"].astype(bool)
  assert mask.sum() == sum(len(r.completion_ids) for r in rollouts)
  np.testing.assert_allclose(logp[mask], batch["old_logprobs"][mask], atol=2e-5)  # Samples file: 6 decimals.


def test_star_rationalises_with_the_hint_and_never_trains_on_it(tmp_path, monkeypatch):
  """Problems no sample solved are sampled again with the answer in the prompt; the rewarded rationalisations are
  trained on under the original prompt, and the hint reaches neither the reward nor the training text."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rest_jax import generation  # pylint: disable=g-import-not-at-top
  from rest_jax.sampling import Completion  # pylint: disable=g-import-not-at-top
  from rest_jax.training import FinetuneResult  # pylint: disable=g-import-not-at-top

  c = _config("star_smoke")
  c.eval.sampled_splits = ()
  hint = c.star.hint.split("{")[0]  # " The answer is "
  calls, trained = [], []

  def generate_and_score(sampler, params, problems, *, num_samples, sample_prompts=None, **kw):
    calls.append({"desc": kw["desc"], "prompts": [p.prompt for p in problems], "sample_prompts": sample_prompts})
    # Without the hint only the even problems are solved; with it, every one.
    rewards = np.array([[float(sample_prompts is not None or int(p.id.split("/")[-1]) % 2 == 0)] * num_samples
                        for p in problems], np.float32)
    texts = [[f"{p.id} try {j}" for j in range(num_samples)] for p in problems]
    return generation.Scored(completions=texts, rewards=rewards, sampled=[
        [Completion(ids=(5, 6), logprobs=(-1.0, -2.0), ended=True, text=t) for t in row] for row in texts])

  def train(init_params, examples, **kw):
    trained.extend(examples)
    return FinetuneResult(params=init_params, best_step=0, best_val=None, steps=1, tokens=1, history=[])

  monkeypatch.setattr(generation, "generate_and_score", generate_and_score)
  monkeypatch.setattr(generation, "evaluate", lambda *a, **k: {"pass@1": 0.0, "num_problems": 1})
  monkeypatch.setattr(experiment, "train", train)
  experiment.run(c, tmp_path)

  estep, rationalize = [x for x in calls if "E-step" in x["desc"]], [x for x in calls if "rationalize" in x["desc"]]
  assert len(estep) == len(rationalize) == 1
  train_split = [p for p in experiment.Experiment.create(c, tmp_path).task.split("train")]
  odd = [p for p in train_split if int(p.id.split("/")[-1]) % 2]
  assert odd and rationalize[0]["prompts"] == [p.prompt for p in odd]  # Only the unsolved, scored unhinted.
  assert all(hint in sp and sp.rstrip().startswith(p.prompt.rstrip())
             for sp, p in zip(rationalize[0]["sample_prompts"], odd))
  samples = selection.read_jsonl(tmp_path / "samples/star/iteration_1_rationalize.jsonl.gz")
  assert samples and all(hint not in s.prompt for s in samples)
  tok = experiment.Experiment.create(c, tmp_path).sampler.tokenizer
  assert len(trained) == min(c.rest.cap, c.rest.samples_per_problem) * len(train_split)
  assert all(hint not in tok.decode(list(e.prompt_ids)) for e in trained)
  assert {tok.decode(list(e.prompt_ids)).strip() for e in trained} == {p.prompt.strip() for p in train_split}


@pytest.mark.parametrize("most", [0, 10])
def test_the_adaptive_estep_moves_the_budget_to_unsolved_problems(tmp_path, monkeypatch, most):
  """Rounds: a problem with `cap` distinct rewarded samples stops; the budget it leaves goes to the others, up to
  `max_samples_per_problem`; the fixed E-step's budget is never exceeded; rounds and running pass rates are in the
  samples file."""
  import collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rest_jax import generation, reporting  # pylint: disable=g-import-not-at-top
  from rest_jax.sampling import Completion  # pylint: disable=g-import-not-at-top

  c = _config()
  c.rest.update(samples_per_problem=6, cap=1)
  c.rest.estep.update(rounds=3, max_samples_per_problem=most)
  calls = []

  def generate_and_score(sampler, params, problems, *, num_samples, seed, **kw):
    if "E-step" in kw["desc"]:
      calls.append((len(problems), num_samples, seed))
    # Problems whose index is divisible by 3 are always solved; the others never.
    solved = [int(p.id.split("/")[-1]) % 3 == 0 for p in problems]
    rewards = np.array([[float(s)] * num_samples for s in solved], np.float32)
    texts = [[f"{p.id} {seed} {j}" for j in range(num_samples)] for p in problems]
    return generation.Scored(completions=texts, rewards=rewards, sampled=[
        [Completion(ids=(1, 2, 3), logprobs=None, ended=True, text=t) for t in row] for row in texts])

  monkeypatch.setattr(generation, "generate_and_score", generate_and_score)
  monkeypatch.setattr(generation, "evaluate", lambda *a, **k: {"pass@1": 0.0, "num_problems": 1})
  experiment.run(c, tmp_path)

  samples = selection.read_jsonl(tmp_path / "samples/rest_em/iteration_1.jsonl.gz")
  num_train, budget = c.task.kwargs.num_train, c.task.kwargs.num_train * 6
  drawn = collections.Counter(s.problem_id for s in samples)
  assert len(drawn) == num_train and len(samples) <= budget
  solved = {s.problem_id for s in samples if s.reward > 0}
  assert solved and all(drawn[p] == 2 for p in solved)  # Round 1 (6 / 3 rounds) solved them; they stopped there.
  unsolved = [p for p in drawn if p not in solved]
  assert all(drawn[p] > 6 for p in unsolved)  # They got the budget the solved problems left.
  if most:
    assert max(drawn.values()) <= most
  assert {s.round for s in samples} == {1, 2, 3} and all(s.round == 1 for s in samples if s.problem_id in solved)
  assert all(s.pass_rate == (1.0 if s.problem_id in solved else 0.0) for s in samples)
  assert sum(1 for s in samples if s.kept) == len(solved)  # cap = 1.
  stage = next(r for r in reporting.MetricsLog(tmp_path).stages() if r["stage"] == "estep")
  assert stage["rounds"] == 3 and stage["generated"] == len(samples) and stage["problems_with_kept"] == len(solved)
  assert stage["sampled_tokens"] == 3 * len(samples)
  assert len(calls) == 3 and len({seed for _, _, seed in calls}) == 3  # Each round draws with its own seed.
  assert calls[0] == (num_train, 2, calls[0][2])  # Round 1: a third of the fixed budget for every problem.
