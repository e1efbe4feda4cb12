"""The EM loop: ReST-EM (and the original ReST) with the SFT-on-human baseline, resumable stage by stage.

Every stage leaves one artifact in the workdir, written atomically; a rerun skips the stages whose artifact exists
and recomputes nothing else, with seeds derived from (seed, method, iteration, stage), so an interrupted run ends
with the same results as an uninterrupted one.

  WORKDIR/config.json                                the config of the run (a rerun must match it)
  WORKDIR/samples/<method>/iteration_<k>.jsonl.gz    E-step samples: prompt, completion, reward, kept
  WORKDIR/checkpoints/<method>/iteration_<k>/        M-step result (Orbax), with metadata; merged with LoRA
  WORKDIR/checkpoints/<method>/adapters_<k>/         LoRA only: the adapters of that result (train.lora_rank > 0)
  WORKDIR/metrics.jsonl, stages.jsonl, tensorboard/  evaluations and stage timings
  WORKDIR/report.md, plots/                          the report

With several processes (`--distributed`, see rest_jax/distributed.py) every process runs this loop on the same
samples and rewards, and process 0 alone writes the (shared) workdir; each stage starts with a barrier, so all
processes decide what to skip on a resume from the same files.
"""

import dataclasses
import gzip
import json
import logging
import os
import pathlib
import tempfile
import time
import zlib
from typing import Any

import jax
import ml_collections
import numpy as np

from rest_jax import checkpoints
from rest_jax import config_check
from rest_jax import distributed
from rest_jax import errors
from rest_jax import generation
from rest_jax import reporting
from rest_jax import selection
from rest_jax import tasks as tasks_lib
from rest_jax import tokenizers
from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig
from rest_jax.sampling import Sampler, SamplerConfig, strategies
from rest_jax.training import TrainConfig, make_examples, train

# Shipped base checkpoints under rest_jax/assets/, by task.
DEFAULT_BASE = {"arithmetic": "arithmetic_base", "list_programs": "list_programs_base"}


def _seed(config: ml_collections.ConfigDict, *parts: Any) -> int:
  """A stable seed per stage (Python's hash() is salted per process)."""
  return zlib.crc32(json.dumps([config.seed, *parts]).encode()) & 0x7FFFFFFF


def _asset(name: str) -> str:
  return str(pathlib.Path(__file__).parent / "assets" / name)


# Fields that cannot change a result: a rerun may change them in a workdir (config.json keeps the first values). A
# name ending in "." stands for the whole block (where the report goes), which a workdir from before it also lacks.
_RESULT_NEUTRAL_FIELDS = ("title", "sampler.reward_workers", "report.")


# Fields added since, with the value every run before them had: a workdir from before them resumes at that value.
_ADDED_FIELDS = {"train.lora_rank": 0, "train.lora_alpha": 16.0,
                 "train.lora_modules": ["q", "k", "v", "o", "gate", "up", "down"], "train.lora_base_quant": "none"}


def _result_neutral(field: str) -> bool:
  return any(field == name or name.endswith(".") and field.startswith(name) for name in _RESULT_NEUTRAL_FIELDS)


def _check_workdir_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """A rerun resumes only the same experiment: a different config in the same workdir would mix results."""
  path = workdir / "config.json"
  if path.exists():
    try:
      saved = _flat(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
      raise errors.UserError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}); it records the config of "
                             "the run in this workdir: restore it, or use a new --workdir") from None
    current = _flat(json.loads(config.to_json()))
    saved = {**{k: v for k, v in _ADDED_FIELDS.items() if k in current}, **saved}
    diff = sorted(k for k in set(saved) | set(current)
                  if saved.get(k) != current.get(k) and not _result_neutral(k))
    if diff:
      shown = ", ".join(f"{k} ({saved.get(k, '(none)')!r} there, {current.get(k, '(none)')!r} now)" for k in diff[:3])
      more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
      raise errors.UserError(f"{path}: the workdir holds a run with a different config (fields {shown}{more}); rerun "
                             "with its config to resume it, or give a new --workdir for this one")


def _check_writable(workdir: pathlib.Path) -> None:
  """Fails now, not after the first stage, when the workdir cannot be written."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".rest_jax_write_check_"):
      pass
  except OSError as error:
    raise errors.UserError(f"workdir {workdir} is not writable ({error.strerror}); fix its permissions or give "
                           "another --workdir") from None


def _write_workdir_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  path = workdir / "config.json"
  if path.exists():
    return
  current = json.loads(config.to_json())
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
  os.replace(tmp, path)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  if not isinstance(d, dict):
    return {prefix: d}
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
  return out


def base_path(config: ml_collections.ConfigDict) -> str:
  """Where the base model of `config` is read from: `base.checkpoint`, a shipped base named bare resolved under
  rest_jax/assets ("arithmetic_base_small"), or the task's shipped base when it is empty."""
  path = config.base.checkpoint or DEFAULT_BASE.get(config.task.name, "")
  if path and "/" not in path and os.path.isdir(_asset(path)):
    path = _asset(path)
  return path


def _load_base(config: ml_collections.ConfigDict, mesh: Any
               ) -> tuple[ModelConfig, Any, tokenizers.Tokenizer, tuple[int, ...]]:
  """The base model (a rest_jax (Orbax) checkpoint, a Hugging Face checkpoint directory, or a GGUF file), its
  tokenizer and the ids that end a completion (instruct models have several: end of text and end of turn)."""
  path = base_path(config)
  if path.endswith(".gguf") or os.path.isfile(os.path.join(path, "config.json")):
    from rest_jax import models  # pylint: disable=g-import-not-at-top  (pretrained-model readers load lazily)

    lm = models.load_pretrained(path, mesh=mesh, dtype=config.base.get("dtype", "float32"))
    if lm.tokenizer is None:
      raise errors.UserError(f"base.checkpoint: {path} has no tokenizer files (tokenizer.json, "
                             f"tokenizer_config.json), which an experiment needs to write prompts and read samples")
    return lm.config, lm.params, lm.tokenizer, lm.require_eos_ids("an experiment")
  if not checkpoints.exists(path):
    raise ValueError(f"base.checkpoint: no checkpoint at {path or '(none shipped for task ' + config.task.name + ')'}; give a rest_jax checkpoint (make one with "
                     f"`python -m rest_jax.tools.pretrain_base`), a Hugging Face directory or a .gguf file")
  cfg = ModelConfig.from_dict(checkpoints.load_metadata(path)["model_config"])
  params, _ = checkpoints.load(path, shardings=sharding.param_shardings(cfg, mesh))
  tokenizer = tokenizers.load(config.base.tokenizer or tokenizers.default_tokenizer_path(config.task.name))
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(f"base.tokenizer: {tokenizer.vocab_size} tokens do not fit the model's vocab_size "
                     f"{cfg.vocab_size}")
  return cfg, params, tokenizer, (tokenizer.eos_id,)


class _ChatTokenizer:
  """The model's tokenizer for prompts already rendered by its chat template (which writes any BOS itself)."""

  add_bos = False

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer

  def __getattr__(self, name):
    return getattr(self._tokenizer, name)


def _chat_formatted(task: tasks_lib.Task, tokenizer) -> tuple[tasks_lib.Task, Any]:
  """Every prompt becomes a user turn rendered by the model's chat template (`base.chat`)."""
  if not hasattr(tokenizer, "apply_chat_template"):
    raise ValueError(f"base.chat: the base model's tokenizer ({type(tokenizer).__name__}) has no chat template")
  render = lambda p: dataclasses.replace(
      p, prompt=tokenizer.apply_chat_template([{"role": "user", "content": p.prompt}], add_generation_prompt=True))
  splits = {name: [render(p) for p in problems] for name, problems in task.splits.items()}
  return dataclasses.replace(task, splits=splits), _ChatTokenizer(tokenizer)


@dataclasses.dataclass
class Experiment:
  """Everything one run needs, built once from the config."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  task: tasks_lib.Task
  mesh: Any
  cfg: ModelConfig
  base_params: Any
  sampler: Sampler
  store: checkpoints.IterationCheckpoints
  log: reporting.MetricsLog

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> "Experiment":
    workdir = pathlib.Path(workdir)
    config_check.validate(config)
    if distributed.is_primary():
      _check_writable(workdir)
    distributed.check_shared_directory(workdir)
    _check_workdir_config(workdir, config)
    task = tasks_lib.from_config(config.task)
    missing = [s for s in config.eval.splits if s not in task.splits]
    if missing:
      raise errors.UsageError(f"config eval.splits={tuple(config.eval.splits)!r}: task {config.task.name!r} has no "
                              f"split {missing[0]!r}; its splits: {', '.join(sorted(task.splits))}")
    mesh = sharding.make_mesh(**config.mesh.to_dict())
    if config.train.batch_rows % sharding.batch_divisor(mesh):
      raise errors.UsageError(f"config train.batch_rows={config.train.batch_rows}: must be a multiple of the mesh's "
                              f"data x fsdp = {sharding.batch_divisor(mesh)}")
    cfg, base_params, tokenizer, end_ids = _load_base(config, mesh)
    if config.base.get("chat", False):
      task, tokenizer = _chat_formatted(task, tokenizer)
    sampler = Sampler(cfg, tokenizer, mesh, SamplerConfig(batch_rows=config.sampler.batch_rows,
                                                          prompt_buckets=tuple(config.sampler.prompt_buckets)),
                      end_ids=end_ids)
    # Settings first used minutes into a run are checked now.
    TrainConfig(**config.train.to_dict())
    strategies.make(config.rest.temperature, config.rest.top_k, config.rest.top_p)
    strategies.make(config.eval.temperature, top_p=config.eval.top_p)
    if distributed.is_primary():
      _write_workdir_config(workdir, config)  # Only once the config proved usable.
    return cls(config=config, workdir=workdir, task=task, mesh=mesh, cfg=cfg, base_params=base_params,
               sampler=sampler, store=checkpoints.IterationCheckpoints(workdir / "checkpoints"),
               log=reporting.MetricsLog(workdir, read_only=not distributed.is_primary(), wandb=(
                   reporting.WandbWriter.from_config(config.get("report"), workdir,
                                                     run_config=_flat(json.loads(config.to_json())))
                   if distributed.is_primary() else None)))

  # --- Stages -------------------------------------------------------------------------------------------------

  def evaluate(self, params: Any, method: str, iteration: int) -> None:
    """Evaluates `params` on every configured split, unless that evaluation is already recorded."""
    c = self.config.eval
    distributed.barrier(f"rest_jax eval {method} it{iteration}")
    records = {r["split"]: r for r in self.log.evals() if (r["method"], r["iteration"]) == (method, iteration)}
    todo = [s for s in c.splits if s not in records]
    if not todo:
      if not any((r["method"], r["iteration"], r["stage"]) == (method, iteration, "eval") for r in self.log.stages()):
        # Killed after the last split's record: the evaluation is complete, its wall time is lost.
        self.log.append_stage({"method": method, "iteration": iteration, "stage": "eval", "wall_s": 0.0})
      return
    t0 = time.time()
    base_records = {r["split"]: r for r in self.log.evals() if r["iteration"] == 0}
    for split in todo:
      if iteration == 0 and split in base_records:  # The base model is shared by all methods: evaluate it once.
        record = dict(base_records[split], method=method)
      else:
        problems = list(self.task.split(split))
        if split == "train":
          problems = problems[:c.train_subset]
        sampled = split in c.sampled_splits
        metrics = generation.evaluate(
            self.sampler, params, self.task.grading(split), problems, greedy_strategy=strategies.Greedy(),
            sample_strategy=strategies.make(c.temperature, top_p=c.top_p) if sampled else None,
            num_samples=c.num_samples, ks=tuple(c.ks), max_new_tokens=self.config.sampler.max_new_tokens,
            seed=_seed(self.config, method, iteration, "eval", split), desc=f"{method} it{iteration} {split}")
        record = {"method": method, "iteration": iteration, "split": split, **metrics}
      self.log.append_eval(record)
      records[split] = record
    wall = time.time() - t0
    self.log.append_stage({"method": method, "iteration": iteration, "stage": "eval", "wall_s": wall})
    test = records.get("test")
    reporting.log_stage(method, iteration, "eval", wall, **({"test_pass@1": test["pass@1"]} if test else {}))
    self.report()  # Kept current, so an interrupted run has a report of what it finished.

  def val_fn(self, method: str, iteration: int):
    problems = list(self.task.split("val"))[:self.config.eval.val_size]

    def fn(params) -> float:
      scored = generation.generate_and_score(
          self.sampler, params, problems, reward=self.task.reward, num_samples=1, strategy=strategies.Greedy(),
          max_new_tokens=self.config.sampler.max_new_tokens, seed=0, stop_strings=self.task.stop_strings,
          desc=f"{method} it{iteration} val")
      return float((scored.rewards[:, 0] >= 1.0).mean())

    return fn

  def estep(self, params: Any, method: str, iteration: int) -> list[selection.Sample]:
    """Samples the training problems, scores and filters them; cached as JSONL."""
    path = self.workdir / "samples" / method / f"iteration_{iteration}.jsonl.gz"
    distributed.barrier(f"rest_jax estep {method} it{iteration}")
    if path.exists():
      samples = self._read_samples(path)
      if samples is not None:
        return samples
    c = self.config.rest
    t0 = time.time()
    problems = list(self.task.split("train"))
    seed = _seed(self.config, method, iteration, "estep")
    scored = generation.generate_and_score(
        self.sampler, params, problems, reward=self.task.reward, num_samples=c.samples_per_problem,
        strategy=strategies.make(c.temperature, c.top_k, c.top_p), max_new_tokens=self.config.sampler.max_new_tokens,
        seed=seed, stop_strings=self.task.stop_strings, workers=self.config.sampler.reward_workers,
        desc=f"{method} it{iteration} E-step")
    samples = [selection.Sample(problem_id=p.id, prompt=p.prompt, completion=comp, reward=float(r),
                                iteration=iteration)
               for p, comps, rs in zip(problems, scored.completions, scored.rewards) for comp, r in zip(comps, rs)]
    samples = selection.keep(samples, cap=c.cap, threshold=c.reward_threshold, seed=seed)
    stats = selection.selection_stats(samples, threshold=c.reward_threshold)
    wall = time.time() - t0
    # The record goes first: a kill between the two only makes the rerun redo (and re-log) this stage.
    self.log.append_stage({"method": method, "iteration": iteration, "stage": "estep", "wall_s": wall,
                           **{k: stats[k] for k in ("generated", "rewarded", "kept", "solve_rate")}})
    if distributed.is_primary():
      selection.write_jsonl(path, samples)
    reporting.log_stage(method, iteration, "estep", wall, **{k: stats[k] for k in ("generated", "rewarded", "kept",
                                                                                   "solve_rate")})
    return samples

  def _read_samples(self, path: pathlib.Path) -> list[selection.Sample] | None:
    """The samples at `path`; None when the file is damaged (truncated, bad bytes), which is then set aside."""
    try:
      return selection.read_jsonl(path)
    except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError, ValueError) as error:
      problem = " ".join(str(error).split())[:200]
    distributed.barrier(f"rest_jax damaged samples: {path}")
    if distributed.is_primary():
      moved = checkpoints.set_aside(path)
      logging.warning("samples %s do not read back (%s); moved them to %s and sampling again", path, problem,
                      moved.name)
    distributed.barrier(f"rest_jax damaged samples set aside: {path}")
    return None

  def _restored(self, method: str, iteration: int) -> Any | None:
    """The parameters of (method, iteration)'s checkpoint; None if there is none or it was damaged (set aside)."""
    restored = self.store.restore(method, iteration, shardings=sharding.param_shardings(self.cfg, self.mesh))
    return None if restored is None else restored[0]

  def mstep(self, init_params: Any, prompts, completions, weights, method: str, iteration: int) -> Any:
    """Fine-tunes `init_params` on the examples; cached as the iteration's checkpoint."""
    distributed.barrier(f"rest_jax mstep {method} it{iteration}")
    if (restored := self._restored(method, iteration)) is not None:
      return restored
    t0 = time.time()
    train_config = TrainConfig(**{**self.config.train.to_dict(), "seed": _seed(self.config, method, iteration, "m")})
    examples = make_examples(self.sampler.tokenizer, prompts, completions, weights)
    if not examples:  # Nothing was rewarded: there is nothing to learn from, the model stays as it was.
      logging.warning("%s it%d: no kept samples; the M-step keeps its initial parameters", method, iteration)
      self.log.append_stage({"method": method, "iteration": iteration, "stage": "mstep", "wall_s": 0.0,
                             "examples": 0})
      self.store.save(method, iteration, init_params, {"model_config": self.cfg.to_dict(), "examples": 0})
      return init_params
    result = train(init_params, examples, cfg=self.cfg, config=train_config, mesh=self.mesh,
                   val_fn=self.val_fn(method, iteration), desc=f"{method} it{iteration} M-step")
    wall = time.time() - t0
    counters = {"train_steps": result.steps, "best_step": result.best_step, "tokens": result.tokens,
                "examples": len(examples)}
    if result.best_val is not None:
      counters["best_val_pass@1"] = result.best_val
    # The record goes first: a kill between the two only makes the rerun redo (and re-log) this stage.
    self.log.append_stage({"method": method, "iteration": iteration, "stage": "mstep", "wall_s": wall, **counters})
    if result.adapters is not None:  # LoRA: the adapters too, small, beside the merged model that the loop reads.
      self.store.save_adapters(method, iteration, result.adapters,
                               {"model_config": self.cfg.to_dict(), "lora": dataclasses.asdict(train_config.lora())})
    self.store.save(method, iteration, result.params,
                    {"model_config": self.cfg.to_dict(), "method": method, "iteration": iteration, **counters,
                     "history": result.history})
    reporting.log_stage(method, iteration, "mstep", wall, **counters)
    return result.params

  # --- Methods (each registered in ALGORITHMS below, or the SFT baseline) ----------------------------------------

  def human_data(self) -> tuple[list[str], list[str]]:
    human = list(self.task.split("human"))
    return [p.prompt for p in human], [p.solution for p in human]

  def sft_human(self) -> None:
    self.evaluate(self.base_params, "sft_human", 0)
    prompts, solutions = self.human_data()
    params = self.mstep(self.base_params, prompts, solutions, None, "sft_human", 1)
    self.evaluate(params, "sft_human", 1)

  def sampling_params(self, policy: Any) -> tuple[Any, Sampler]:
    """Distillation: a fixed (e.g. larger) model may sample instead of the policy being trained."""
    path = self.config.rest.sampler_checkpoint
    if not path:
      return policy, self.sampler
    cfg = ModelConfig.from_dict(checkpoints.load_metadata(path)["model_config"])
    params, _ = checkpoints.load(path, shardings=sharding.param_shardings(cfg, self.mesh))
    return params, Sampler(cfg, self.sampler.tokenizer, self.mesh, self.sampler.config, end_ids=self.sampler.end_ids,
                           pad_id=self.sampler.pad_id)

  def rest_em(self) -> None:
    method, c = "rest_em", self.config.rest
    self.evaluate(self.base_params, method, 0)
    policy = self.base_params
    for it in range(1, c.num_iterations + 1):
      sampling_params, sampler = self.sampling_params(policy)
      own_sampler, self.sampler = self.sampler, sampler
      try:
        samples = self.estep(sampling_params, method, it)
      finally:
        self.sampler = own_sampler
      kept = [s for s in samples if s.kept]
      init = self.base_params if c.restart_from_base else policy
      policy = self.mstep(init, [s.prompt for s in kept], [s.completion for s in kept], [s.reward for s in kept],
                          method, it)
      self.evaluate(policy, method, it)

  def rest(self) -> None:
    """Original ReST: per Grow step, Improve steps with rising thresholds, each continuing from the previous model,
    with the human-written solutions mixed in; the iteration's checkpoint is the last Improve step's model."""
    method, c = "rest", self.config.rest
    self.evaluate(self.base_params, method, 0)
    policy = self.base_params
    human_prompts, human_solutions = self.human_data() if c.mix_human else ([], [])
    for it in range(1, c.num_iterations + 1):
      samples = self.estep(policy, method, it)
      if (restored := self._restored(method, it)) is not None:
        policy = restored
      else:
        for step, threshold in enumerate(c.improve_thresholds):
          chosen = [s for s in samples if s.kept and s.reward > threshold]
          prompts = [s.prompt for s in chosen] + human_prompts
          completions = [s.completion for s in chosen] + human_solutions
          weights = [s.reward for s in chosen] + [1.0] * len(human_prompts)
          # Each Improve step is cached under a sub-method so that an interrupted Grow step resumes mid-way.
          policy = self.mstep(policy, prompts, completions, weights, f"{method}_improve{step}", it)
        self.store.save(method, it, policy, {"model_config": self.cfg.to_dict(), "method": method, "iteration": it})
      self.evaluate(policy, method, it)

  def report(self) -> str:
    if not distributed.is_primary():
      return str(self.workdir / "report.md")  # Written by process 0.
    summary = "\n".join(f"{k} = {v}" for k, v in sorted(_flat(json.loads(self.config.to_json())).items()))
    return reporting.write_report(self.workdir, self.log.evals(), self.log.stages(), title=self.config.title,
                                  config_summary=summary)


# The EM algorithms `rest.algorithm` names: name -> the Experiment method that runs it.
ALGORITHMS: dict[str, Any] = {"rest_em": Experiment.rest_em, "rest": Experiment.rest}


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Runs (or resumes) the experiment described by `config`; returns its evaluation records.

  The config is checked whole (`config_check`) before anything runs or is written.
  """
  exp = Experiment.create(config, workdir)
  logging.info("rest_jax: %s on %s, mesh %s, %d devices in %d processes; workdir %s", config.rest.algorithm,
               config.task.name, dict(exp.mesh.shape), jax.device_count(), jax.process_count(), workdir)
  if jax.process_count() > 1:
    logging.info("rest_jax: process of each device on the %s mesh: %s", "x".join(exp.mesh.axis_names),
                 np.vectorize(lambda d: d.process_index, otypes=[int])(exp.mesh.devices).tolist())
  try:
    if config.rest.sft_human_baseline:
      exp.sft_human()
    ALGORITHMS[config.rest.algorithm](exp)
    path = exp.report()
    logging.info("rest_jax: report at %s", path)
    return exp.log.evals()
  finally:
    exp.log.close()
