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
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from rest_jax import algorithms
from rest_jax import checkpoints
from rest_jax import config_check
from rest_jax import distributed
from rest_jax import errors
from rest_jax import generation
from rest_jax import reporting
from rest_jax import selection
from rest_jax import stages as stages_lib
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
_ADDED_FIELDS = {"rest.estep.rounds": 1, "rest.estep.max_samples_per_problem": 0,
                 "train.lora_rank": 0, "train.lora_alpha": 16.0,
                 "train.lora_modules": ["q", "k", "v", "o", "gate", "up", "down"], "train.lora_base_quant": "none",
                 "sampler.dtype": "", "sampler.schedule": "static", "sampler.slot_group": 0, "sampler.chunk_steps": 16,
                 "sampler.weight_quant": "none", "train.scan_layers": False, "sampler.scan_layers": False}


def _result_neutral(field: str) -> bool:
  return any(field == name or name.endswith(".") and field.startswith(name) for name in _RESULT_NEUTRAL_FIELDS)


def check_saved_config(path: pathlib.Path, config: ml_collections.ConfigDict, *, what: str,
                       neutral: Callable[[str], bool], added: Mapping[str, Any]) -> None:
  """A rerun resumes only the same `what` ("run", "study"): a different config in the workdir whose config is saved
  at `path` would mix results. Fields `neutral` accepts may differ; `added` gives fields added since, at the value
  every earlier config had."""
  if not path.exists():
    return
  try:
    saved = _flat(json.loads(path.read_text()))
  except json.JSONDecodeError as error:
    raise errors.UserError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}); it records the config of "
                           f"the {what} in this workdir: restore it, or use a new --workdir") from None
  current = _flat(json.loads(config.to_json()))
  saved = {**{k: v for k, v in added.items() if k in current}, **saved}
  diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k) and not neutral(k))
  if diff:
    shown = ", ".join(f"{k} ({saved.get(k, '(none)')!r} there, {current.get(k, '(none)')!r} now)" for k in diff[:3])
    more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
    raise errors.UserError(f"{path}: the workdir holds a {what} with a different config (fields {shown}{more}); "
                           "rerun with its config to resume it, or give a new --workdir for this one")


def _check_workdir_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  check_saved_config(workdir / "config.json", config, what="run", neutral=_result_neutral, added=_ADDED_FIELDS)


def _check_writable(workdir: pathlib.Path) -> None:
  """Fails now, not after the first stage, when the workdir cannot be written."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".rest_jax_write_check_"):
      pass
  except OSError as error:
    raise errors.UserError(f"workdir {workdir} is not writable ({error.strerror}); fix its permissions or give "
                           "another --workdir") from None


def write_config_once(path: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Saves `config` as JSON at `path` atomically, unless a config is saved there already."""
  if path.exists():
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True))
  os.replace(tmp, path)


def config_summary(config: ml_collections.ConfigDict) -> str:
  """Every field of `config`, one `name = value` line each, sorted: the report's record of its config."""
  return "\n".join(f"{k} = {v}" for k, v in sorted(_flat(json.loads(config.to_json())).items()))


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  if not isinstance(d, dict):
    return {prefix: d}
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
  return out


def shipped_or_path(path: str) -> str:
  """`path`, or the shipped base under rest_jax/assets that a bare name ("arithmetic_base_small") names."""
  if path and "/" not in path and os.path.isdir(_asset(path)):
    return _asset(path)
  return path


def base_path(config: ml_collections.ConfigDict) -> str:
  """Where the base model of `config` is read from: `base.checkpoint`, or the task's shipped base when it is empty."""
  return shipped_or_path(config.base.checkpoint or DEFAULT_BASE.get(config.task.name, ""))


def load_model(path: str, config: ml_collections.ConfigDict, mesh: Any, *, field: str = "base.checkpoint"
               ) -> tuple[ModelConfig, Any, tokenizers.Tokenizer, tuple[int, ...]]:
  """A model (a rest_jax (Orbax) checkpoint, a Hugging Face checkpoint directory, or a GGUF file; a bare name is a
  shipped base under rest_jax/assets), its tokenizer and the ids that end a completion (instruct models have several:
  end of text and end of turn). Errors name `field`, the config field that gave `path`."""
  path = shipped_or_path(path)
  if path.endswith(".gguf") or os.path.isfile(os.path.join(path, "config.json")):
    from rest_jax import models  # pylint: disable=g-import-not-at-top  (pretrained-model readers load lazily)

    lm = models.load_pretrained(path, mesh=mesh, dtype=config.base.get("dtype", "float32"))
    if lm.tokenizer is None:
      raise errors.UserError(f"{field}: {path} has no tokenizer files (tokenizer.json, tokenizer_config.json), "
                             f"which an experiment needs to write prompts and read samples")
    return lm.config, lm.params, lm.tokenizer, lm.require_eos_ids("an experiment")
  if not checkpoints.exists(path):
    shown = path or f"(none shipped for task {config.task.name})"
    raise ValueError(f"{field}: no checkpoint at {shown}; give a rest_jax checkpoint (make one with "
                     f"`python -m rest_jax.tools.pretrain_base`), a Hugging Face directory or a .gguf file")
  cfg = ModelConfig.from_dict(checkpoints.load_metadata(path)["model_config"])
  params, _ = checkpoints.load(path, shardings=sharding.param_shardings(cfg, mesh))
  tokenizer = tokenizers.load(config.base.tokenizer or tokenizers.default_tokenizer_path(config.task.name))
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(f"base.tokenizer: {tokenizer.vocab_size} tokens do not fit the vocab_size {cfg.vocab_size} "
                     f"of {field}={path}")
  return cfg, params, tokenizer, (tokenizer.eos_id,)


def _load_base(config: ml_collections.ConfigDict, mesh: Any
               ) -> tuple[ModelConfig, Any, tokenizers.Tokenizer, tuple[int, ...]]:
  """The base model of `config` (`base.checkpoint`, or the task's shipped base): see `load_model`."""
  return load_model(base_path(config), config, mesh)


@dataclasses.dataclass(frozen=True)
class Policy:
  """A model that samples: its parameters and the sampler built for its config and tokenizer."""

  params: Any
  sampler: Sampler


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
  """Everything one run needs, built once from the config, and the stages algorithms are written over
  (`rest_jax.algorithms`): evaluate, estep, mstep, online_stage."""

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
    sampler = Sampler(cfg, tokenizer, mesh, _sampler_config(config), end_ids=end_ids)
    # Settings first used minutes into a run are checked now.
    TrainConfig(**config.train.to_dict())
    strategies.make(config.rest.temperature, config.rest.top_k, config.rest.top_p)
    strategies.make(config.eval.temperature, top_p=config.eval.top_p)
    if distributed.is_primary():
      write_config_once(workdir / "config.json", config)  # Only once the config proved usable.
    return cls(config=config, workdir=workdir, task=task, mesh=mesh, cfg=cfg, base_params=base_params,
               sampler=sampler, store=checkpoints.IterationCheckpoints(workdir / "checkpoints"),
               log=reporting.MetricsLog(workdir, read_only=not distributed.is_primary(), wandb=(
                   reporting.WandbWriter.from_config(config.get("report"), workdir,
                                                     run_config=_flat(json.loads(config.to_json())))
                   if distributed.is_primary() else None)))

  def seed(self, *parts: Any) -> int:
    """A stable seed for (the config's seed, *parts): the same in every process and on every resume."""
    return _seed(self.config, *parts)

  @property
  def stages(self) -> stages_lib.Stages:
    return stages_lib.Stages(self.log)

  def load_policy(self, path: str, field: str = "rest.sampler_checkpoint") -> Policy:
    """Another model that samples (a teacher), loaded like the base: Orbax, Hugging Face directory or GGUF file."""
    cfg, params, tokenizer, end_ids = load_model(path, self.config, self.mesh, field=field)
    if self.config.base.get("chat", False):
      _, tokenizer = _chat_formatted(dataclasses.replace(self.task, splits={}), tokenizer)
    return Policy(params=params, sampler=Sampler(cfg, tokenizer, self.mesh, _sampler_config(self.config),
                                                 end_ids=end_ids))

  # --- Stages -------------------------------------------------------------------------------------------------

  def evaluate(self, params: Any, method: str, iteration: int) -> None:
    """Evaluates `params` on every configured split, unless that evaluation is already recorded."""
    c = self.config.eval

    def recorded():
      return {r["split"]: r for r in self.log.evals() if (r["method"], r["iteration"]) == (method, iteration)}

    def load():
      done = recorded()
      if any(s not in done for s in c.splits):
        return None
      if not self.stages.done(method, iteration, "eval"):
        # Killed after the last split's record: the evaluation is complete, its wall time is lost.
        self.log.append_stage({"method": method, "iteration": iteration, "stage": "eval", "wall_s": 0.0})
      return True

    def compute():
      records = recorded()
      base_records = {r["split"]: r for r in self.log.evals() if r["iteration"] == 0}
      for split in [s for s in c.splits if s not in records]:
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
      return records, {}

    result = self.stages.run(method, iteration, "eval", load=load, compute=compute, shown=lambda records: (
        {"test_pass@1": records["test"]["pass@1"]} if "test" in records else {}))
    if result is not True:
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

  def samples_path(self, method: str, iteration: int, stage: str = "estep") -> pathlib.Path:
    suffix = "" if stage == "estep" else f"_{stage}"
    return self.workdir / "samples" / method / f"iteration_{iteration}{suffix}.jsonl.gz"

  def estep(self, params: Any, method: str, iteration: int, *, sampler: Sampler | None = None,
            problems: Sequence[tasks_lib.Problem] | None = None, sample_prompt: Callable[[tasks_lib.Problem], str]
            | None = None, stage: str = "estep", num_samples: int | None = None) -> list[selection.Sample]:
    """Samples the training problems (or `problems`) with `sampler` (default: the base's), scores and filters them;
    cached as JSONL with each completion's sampled ids and log-probabilities.

    `sample_prompt(problem)` changes the text the model is prompted with (e.g. STaR's hint); the reward and the
    samples keep the problem's own prompt, which is what the M-step trains on. A stage other than "estep" gets its
    own file. `num_samples` defaults to `rest.samples_per_problem`.
    """
    path = self.samples_path(method, iteration, stage)
    sampler = sampler or self.sampler
    c = self.config.rest

    def draw(todo, n, seed, desc):
      scored = generation.generate_and_score(
          sampler, params, todo, reward=self.task.reward, num_samples=n,
          strategy=strategies.make(c.temperature, c.top_k, c.top_p), max_new_tokens=self.config.sampler.max_new_tokens,
          seed=seed, stop_strings=self.task.stop_strings, workers=self.config.sampler.reward_workers,
          desc=desc, with_logprobs=True,
          sample_prompts=None if sample_prompt is None else [sample_prompt(p) for p in todo])
      samples = [selection.Sample(problem_id=p.id, prompt=p.prompt, completion=comp, reward=float(r),
                                  iteration=iteration, completion_ids=s.ids, logprobs=s.logprobs)
                 for p, comps, rs, row in zip(todo, scored.completions, scored.rewards, scored.sampled)
                 for comp, r, s in zip(comps, rs, row)]
      return samples, scored.sampled_tokens

    def compute():
      todo = list(self.task.split("train")) if problems is None else list(problems)
      seed = _seed(self.config, method, iteration, stage)
      n = num_samples or c.samples_per_problem
      desc = f"{method} it{iteration} {'E-step' if stage == 'estep' else stage}"
      if c.estep.rounds == 1:  # Fixed N per problem, as the paper.
        samples, sampled_tokens = draw(todo, n, seed, desc)
        extra = {}
      else:
        samples, sampled_tokens, extra = self._adaptive_draw(todo, n, seed, desc, draw)
      samples = selection.keep(samples, cap=c.cap, threshold=c.reward_threshold, seed=seed)
      stats = selection.selection_stats(samples, threshold=c.reward_threshold)
      return samples, {**{k: stats[k] for k in ("generated", "rewarded", "kept", "solve_rate", "problems_with_kept")},
                       "sampled_tokens": sampled_tokens, **extra}

    return self.stages.run(method, iteration, stage, load=lambda: self._read_samples(path), compute=compute,
                           save=lambda samples: _write_samples(path, samples))

  def _adaptive_draw(self, todo, n: int, seed: int, desc: str, draw) -> tuple[list[selection.Sample], int, dict]:
    """The adaptive E-step (`rest.estep.rounds` > 1): the fixed E-step's budget (len(todo) x n samples) spent in
    rounds. A problem leaves once it has `rest.cap` distinct rewarded completions or has drawn
    `rest.estep.max_samples_per_problem` (0: no maximum); each round gives every problem still in the same share of
    the budget left, spread over the rounds left, so what solved problems no longer need goes to the unsolved ones.
    Each sample records its round and its problem's running pass rate after that round."""
    c = self.config.rest
    budget, most = len(todo) * n, c.estep.max_samples_per_problem
    drawn = {p.id: 0 for p in todo}
    rewarded = {p.id: 0 for p in todo}
    distinct: dict[str, set[str]] = {p.id: set() for p in todo}
    samples: list[selection.Sample] = []
    sampled_tokens, rounds_run = 0, 0
    for r in range(c.estep.rounds):
      active = [p for p in todo if len(distinct[p.id]) < c.cap and (most == 0 or drawn[p.id] < most)]
      left = budget - len(samples)
      if not active or left <= 0:
        break
      share = max(1, left // (len(active) * (c.estep.rounds - r)))
      quota = {p.id: share if most == 0 else min(share, most - drawn[p.id]) for p in active}
      while sum(quota.values()) > left:  # The last of the budget: the first problems in order get it.
        active = active[:-1]
        quota = {p.id: quota[p.id] for p in active}
      rounds_run, start = rounds_run + 1, len(samples)
      for q in sorted(set(quota.values())):  # One call per sample count (a static shape of the decode loop).
        group = [p for p in active if quota[p.id] == q]
        found, tokens = draw(group, q, _seed(self.config, seed, "round", r, q), f"{desc} round {r + 1}")
        sampled_tokens += tokens
        for sample in found:
          drawn[sample.problem_id] += 1
          if sample.reward > c.reward_threshold:
            rewarded[sample.problem_id] += 1
            distinct[sample.problem_id].add(selection.dedup_key(sample.completion))
        samples.extend(dataclasses.replace(x, round=r + 1) for x in found)
      samples[start:] = [dataclasses.replace(x, pass_rate=rewarded[x.problem_id] / drawn[x.problem_id])
                         for x in samples[start:]]
    order = {p.id: i for i, p in enumerate(todo)}
    samples.sort(key=lambda x: order[x.problem_id])  # Stable: by problem, then round, as a fixed E-step lists them.
    return samples, sampled_tokens, {"rounds": rounds_run, "max_drawn": max(drawn.values(), default=0)}

  def _read_samples(self, path: pathlib.Path) -> list[selection.Sample] | None:
    """The samples at `path`; None when there are none, or when the file is damaged (truncated, bad bytes), which
    is then set aside."""
    if not path.exists():
      return None
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

  def restored(self, method: str, iteration: int) -> Any | None:
    """The parameters of (method, iteration)'s checkpoint; None if there is none or it was damaged (set aside)."""
    restored = self.store.restore(method, iteration, shardings=sharding.param_shardings(self.cfg, self.mesh))
    return None if restored is None else restored[0]

  def mstep(self, init_params: Any, prompts, completions, weights, method: str, iteration: int) -> Any:
    """Fine-tunes `init_params` on the examples; cached as the iteration's checkpoint."""
    train_config = TrainConfig(**{**self.config.train.to_dict(), "seed": _seed(self.config, method, iteration, "m")})
    saved: dict[str, Any] = {}

    def compute():
      examples = make_examples(self.sampler.tokenizer, prompts, completions, weights)
      if not examples:  # Nothing was rewarded: there is nothing to learn from, the model stays as it was.
        logging.warning("%s it%d: no kept samples; the M-step keeps its initial parameters", method, iteration)
        saved["metadata"] = {"model_config": self.cfg.to_dict(), "examples": 0}
        return init_params, {"examples": 0}
      result = train(init_params, examples, cfg=self.cfg, config=train_config, mesh=self.mesh,
                     val_fn=self.val_fn(method, iteration), desc=f"{method} it{iteration} M-step")
      counters = {"train_steps": result.steps, "best_step": result.best_step, "tokens": result.tokens,
                  "examples": len(examples)}
      if result.best_val is not None:
        counters["best_val_pass@1"] = result.best_val
      saved["adapters"] = result.adapters
      saved["metadata"] = {"model_config": self.cfg.to_dict(), "method": method, "iteration": iteration, **counters,
                           "history": result.history}
      return result.params, counters

    def save(params):
      if saved.get("adapters") is not None:  # LoRA: the adapters too, small, beside the merged model the loop reads.
        self.store.save_adapters(method, iteration, saved["adapters"],
                                 {"model_config": self.cfg.to_dict(), "lora": dataclasses.asdict(train_config.lora())})
      self.store.save(method, iteration, params, saved["metadata"])

    return self.stages.run(method, iteration, "mstep", load=lambda: self.restored(method, iteration),
                           compute=compute, save=save)

  def online_stage(self, method: str, iteration: int, compute: Callable[[], tuple[Any, list[selection.Sample],
                                                                               dict[str, Any]]],
                   stage: str = "online") -> Any:
    """An online-RL stage (sampling and updates interleaved): `compute()` -> (params, the stage's samples,
    counters). Its artifacts are the iteration's checkpoint and a samples file; resumed like every stage."""
    path = self.samples_path(method, iteration, stage)
    samples: list[selection.Sample] = []

    def run():
      params, found, counters = compute()
      samples.extend(found)
      return params, counters

    def save(params):
      _write_samples(path, samples)
      self.store.save(method, iteration, params, {"model_config": self.cfg.to_dict(), "method": method,
                                                  "iteration": iteration})

    return self.stages.run(method, iteration, stage, load=lambda: self.restored(method, iteration), compute=run,
                           save=save)

  def human_data(self) -> tuple[list[str], list[str]]:
    human = list(self.task.split("human"))
    return [p.prompt for p in human], [p.solution for p in human]

  def report(self) -> str:
    if not distributed.is_primary():
      return str(self.workdir / "report.md")  # Written by process 0.
    return reporting.write_report(self.workdir, self.log.evals(), self.log.stages(), title=self.config.title,
                                  config_summary=config_summary(self.config))


def _write_samples(path: pathlib.Path, samples: list[selection.Sample]) -> None:
  if distributed.is_primary():
    selection.write_jsonl(path, samples)


def _sampler_config(config: ml_collections.ConfigDict) -> SamplerConfig:
  return SamplerConfig(batch_rows=config.sampler.batch_rows, prompt_buckets=tuple(config.sampler.prompt_buckets),
                       dtype=config.sampler.get("dtype", "") or None, schedule=config.sampler.get("schedule", "static"),
                       slot_group=config.sampler.get("slot_group", 0), chunk_steps=config.sampler.get("chunk_steps", 16),
                       weight_quant=config.sampler.get("weight_quant", "none"),
                       scan_layers=config.sampler.get("scan_layers", False))


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
    if config.rest.sft_human_baseline and config.rest.algorithm != "sft_human":
      algorithms.get("sft_human").run(exp)
    algorithms.get(config.rest.algorithm).run(exp)
    path = exp.report()
    logging.info("rest_jax: report at %s", path)
    return exp.log.evals()
  finally:
    exp.log.close()
