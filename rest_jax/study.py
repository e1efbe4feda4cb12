"""Studies: several methods (arms) x seeds (x base model sizes) on one task, as one resumable command with one
side-by-side report. Every run is one `experiment.run`, in sequence; the logic of a run stays in rest_jax.experiment.

  python -m rest_jax.main --config=configs/study_default.py --workdir=runs/study

A study config holds one block, `study`:

  study.title       the report's title (optional; may change between reruns)
  study.experiment  the experiment config every run starts from (a whole ConfigDict: configs/default.py's or one
                    built on it), with the study's common changes already made
  study.arms        a tuple of arms, each a dict {"name": dir-safe name, "method": the method whose records the arm
                    reads from its runs' metrics (default: the name), "overrides": {dotted experiment field: value}}
  study.seeds       the experiment `seed` of each run: training randomness (E-step sampling, M-step data order,
                    pass@K sampling). task.kwargs.seed is left as it is, so every run sees the same problems.
  study.sizes       size name -> base.checkpoint (optional): the scaling sweep, run for the arms of ...
  study.size_arms   ... these arm names (optional; default: the arms whose method is "rest_em")

Runs with the same experiment config (up to fields that cannot change a result, with base.checkpoint resolved to
the model it loads) are one run: a size whose base is the main runs' base reuses them, and two arms that read two
methods of one run (e.g. "rest_em" and, with `rest.sft_human_baseline`, "sft_human") share it.

  WORKDIR/study_config.json                     the study config (a rerun must match it)
  WORKDIR/study.jsonl                           one record per finished run: a rerun skips it without a model load
  WORKDIR/runs/<arm>/seed_<s>[/size_<name>]/    one experiment workdir per run (named after its first arm)
  WORKDIR/study_report.md, plots/               the side-by-side report (rest_jax/study_report.py), rewritten
                                                after every run from the finished runs' files

The whole study is checked before any run starts: every field, and every run's config with `config_check`.
"""

import dataclasses
import difflib
import json
import logging
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from rest_jax import checkpoints
from rest_jax import config_check
from rest_jax import distributed
from rest_jax import errors
from rest_jax import experiment
from rest_jax import study_report
from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig, param_count

# The fields of the study block: required ones have no default.
_FIELDS = {"title": "Study", "experiment": None, "arms": None, "seeds": None, "sizes": {}, "size_arms": None}
_ARM_FIELDS = ("name", "method", "overrides")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # A directory name.
# Study fields that cannot change a result (experiment's own neutral fields are added under study.experiment).
_NEUTRAL_FIELDS = ("study.title",)
_SET_BY_STUDY = {"seed": "study.seeds"}


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  method: str
  overrides: tuple[tuple[str, Any], ...]


@dataclasses.dataclass
class Run:
  """One experiment run: its workdir (relative to the study's), its config and the slots it serves."""

  path: str
  config: ml_collections.ConfigDict
  base: str  # The base checkpoint it loads, resolved.
  base_field: str  # The study field that chose that base, for error messages.
  slots: list[study_report.Slot]


@dataclasses.dataclass
class Plan:
  """The checked study: arms, the runs in the order they run, and every (arm, seed, size) slot."""

  title: str
  arms: list[Arm]
  seeds: tuple[int, ...]
  sizes: dict[str, str]
  size_arms: tuple[str, ...]
  runs: list[Run]

  @property
  def slots(self) -> list[study_report.Slot]:
    return [slot for run in self.runs for slot in run.slots]


def _fail(field: str, problem: str) -> errors.UsageError:
  return errors.UsageError(f"config {field}: {problem}")


def _suggestion(name: str, known: Sequence[str]) -> str:
  close = difflib.get_close_matches(name, list(known), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _name(field: str, value: Any) -> str:
  if not isinstance(value, str) or not _NAME.match(value) or value in (".", ".."):
    raise _fail(field, f"{value!r} must be a non-empty name of letters, digits, '_', '-' or '.' (it names a "
                f"directory)")
  return value


def _block(config: Any) -> dict[str, Any]:
  """The study block's fields, with the defaults of the optional ones; unknown fields are refused."""
  if not hasattr(config, "keys") or "study" not in config:
    raise errors.UsageError("config: a study config needs a `study` block (see configs/study_default.py)")
  for key in config.keys():
    if key != "study":
      raise _fail(key, "no such field: a study config holds only the `study` block (experiment fields go in "
                  "study.experiment)")
  block = config.study
  for key in block.keys():
    if key not in _FIELDS:
      raise _fail(f"study.{key}", "no such field" + _suggestion(key, list(_FIELDS)))
  fields = {}
  for key, default in _FIELDS.items():
    if key in block:
      fields[key] = block[key]
    elif default is None and key != "size_arms":
      raise _fail(f"study.{key}", "missing (every study needs it; see configs/study_default.py)")
    else:
      fields[key] = default
  return fields


def _arms(value: Any) -> list[Arm]:
  if not isinstance(value, (tuple, list)) or not value:
    raise _fail("study.arms", "must be a non-empty tuple of arms, each {'name', 'method', 'overrides'}")
  arms = []
  for i, arm in enumerate(value):
    where = f"study.arms[{i}]"
    if not isinstance(arm, Mapping):
      raise _fail(where, f"must be a dict {{'name', 'method', 'overrides'}}, not {type(arm).__name__}")
    for key in arm:
      if key not in _ARM_FIELDS:
        raise _fail(f"{where}.{key}", "no such field" + _suggestion(str(key), _ARM_FIELDS))
    if "name" not in arm:
      raise _fail(f"{where}.name", "missing")
    name = _name(f"{where}.name", arm["name"])
    where = f"study.arms[{name}]"
    if name in [a.name for a in arms]:
      raise _fail(where, "two arms have this name")
    method = arm.get("method", name)
    if not isinstance(method, str) or not method:
      raise _fail(f"{where}.method", f"{method!r} must be a non-empty str (the method it reads from metrics)")
    overrides = arm.get("overrides", {})
    if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
      raise _fail(f"{where}.overrides", "must be a dict of dotted experiment fields to values")
    for field in overrides:
      if field in _SET_BY_STUDY:
        raise _fail(f"{where}.overrides", f"{field!r} is set by {_SET_BY_STUDY[field]}, not by an arm")
    arms.append(Arm(name=name, method=method, overrides=tuple(overrides.items())))
  return arms


def _leaf_fields(node: Any, prefix: str = "") -> list[str]:
  names = []
  for key, value in node.items():
    names.append(f"{prefix}{key}")
    if isinstance(value, ml_collections.ConfigDict):
      names += _leaf_fields(value, f"{prefix}{key}.")
  return names


def _override(config: ml_collections.ConfigDict, field: str, value: Any, where: str) -> None:
  """Sets the dotted `field` of `config`, which must exist (ConfigDict's type checks apply)."""
  *parents, leaf = field.split(".")
  node = config
  for part in parents:
    node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise _fail(where, f"the experiment config has no field {field!r}" + _suggestion(field, _leaf_fields(config)))
  try:
    node[leaf] = value
  except (TypeError, ValueError) as error:
    raise _fail(where, f"{field}={value!r}: {' '.join(str(error).split())}") from None


def _run_config(base: ml_collections.ConfigDict, arm: Arm, seed: int, checkpoint: str | None,
                where: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(base.to_dict())  # A fresh, unlocked copy.
  for field, value in arm.overrides:
    _override(config, field, value, f"study.arms[{arm.name}].overrides")
  config.seed = seed
  if checkpoint is not None:
    config.base.checkpoint = checkpoint
  try:
    config_check.validate(config)
  except errors.UsageError as error:
    raise errors.UsageError(f"{where}: {error}") from None
  return config


def _identity(config: ml_collections.ConfigDict) -> str:
  """What makes two runs the same run: every field that can change a result, the base as the model it loads."""
  flat = {k: v for k, v in experiment._flat(json.loads(config.to_json())).items()  # pylint: disable=protected-access
          if not experiment._result_neutral(k)}  # pylint: disable=protected-access
  flat["base.checkpoint"] = os.path.abspath(experiment.base_path(config))
  return json.dumps(flat, sort_keys=True)


def plan(config: ml_collections.ConfigDict) -> Plan:
  """Checks the whole study config and lays out its runs; raises `errors.UsageError` (one line) at the first problem.

  Nothing is read from disk but the config: whether each base checkpoint exists is checked by `run`.
  """
  fields = _block(config)
  title = fields["title"]
  if not isinstance(title, str):
    raise _fail("study.title", f"{title!r} must be a str")
  base = fields["experiment"]
  if not isinstance(base, ml_collections.ConfigDict) or "study" in base:
    raise _fail("study.experiment", "must be an experiment ConfigDict (e.g. config_files.sibling(__file__, "
                "'default', 'smoke'))")
  arms = _arms(fields["arms"])
  seeds = fields["seeds"]
  if (not isinstance(seeds, (tuple, list)) or not seeds
      or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
    raise _fail("study.seeds", f"{seeds!r} must be a non-empty tuple of ints")
  if len(set(seeds)) != len(seeds):
    raise _fail("study.seeds", f"{tuple(seeds)!r} repeats a seed")
  sizes = dict(fields["sizes"].items()) if hasattr(fields["sizes"], "items") else fields["sizes"]
  if not isinstance(sizes, dict):
    raise _fail("study.sizes", "must map size names to base checkpoints")
  for name, checkpoint in sizes.items():
    _name(f"study.sizes.{name}", name)
    if not isinstance(checkpoint, str) or not checkpoint:
      raise _fail(f"study.sizes.{name}", f"{checkpoint!r} must be a base.checkpoint (a path or a shipped base)")
  names = [a.name for a in arms]
  size_arms = fields["size_arms"]
  if size_arms is None:
    size_arms = tuple(a.name for a in arms if a.method == "rest_em")
  if not isinstance(size_arms, (tuple, list)):
    raise _fail("study.size_arms", f"{size_arms!r} must be a tuple of arm names")
  for name in size_arms:
    if name not in names:
      raise _fail("study.size_arms", f"{name!r} is no arm; arms: {', '.join(names)}" + _suggestion(str(name), names))
    overrides = dict(arms[names.index(name)].overrides)
    if sizes and "base.checkpoint" in overrides:
      raise _fail(f"study.arms[{name}].overrides", "'base.checkpoint' is set by study.sizes for the size arms")

  runs: dict[str, Run] = {}

  def add(arm: Arm, seed: int, size: str | None) -> None:
    where = f"study.arms[{arm.name}] seed {seed}" + (f" size {size}" if size else "")
    run_config = _run_config(base, arm, seed, sizes[size] if size else None, where)
    key = _identity(run_config)
    if key not in runs:
      path = f"runs/{arm.name}/seed_{seed}" + (f"/size_{size}" if size else "")
      base_field = (f"study.sizes.{size}" if size else f"study.arms[{arm.name}].overrides.base.checkpoint"
                    if "base.checkpoint" in dict(arm.overrides) else "study.experiment.base.checkpoint")
      runs[key] = Run(path=path, config=run_config, base=experiment.base_path(run_config), base_field=base_field,
                      slots=[])
    runs[key].slots.append(study_report.Slot(arm=arm.name, method=arm.method, seed=seed, size=size,
                                             run=runs[key].path))

  for seed in seeds:
    for arm in arms:
      add(arm, seed, None)
  for seed in seeds:
    for size in sizes:
      for arm in arms:
        if arm.name in size_arms:
          add(arm, seed, size)
  return Plan(title=title, arms=arms, seeds=tuple(seeds), sizes=sizes, size_arms=tuple(size_arms),
              runs=list(runs.values()))


def _base_params(path: str, field: str) -> int | None:
  """The parameter count of the base at `path` (rest_jax checkpoints: from its metadata, no weights read); None for
  a Hugging Face directory or a GGUF file. A missing base is refused now, not after the runs before it."""
  if checkpoints.exists(path):
    cfg = ModelConfig.from_dict(checkpoints.load_metadata(path)["model_config"])
    return param_count(sharding.abstract_params(cfg, boxed=False))
  if path.endswith(".gguf") and os.path.isfile(path) or os.path.isfile(os.path.join(path, "config.json")):
    return None
  raise errors.UserError(f"{field}: no base checkpoint at {path or '(none)'}; give a rest_jax checkpoint, a shipped "
                         "base (rest_jax/assets/<name>), a Hugging Face directory or a .gguf file")


def _neutral(field: str) -> bool:
  prefix = "study.experiment."
  inner = field.removeprefix(prefix)
  return field in _NEUTRAL_FIELDS or (field.startswith(prefix)
                                      and experiment._result_neutral(inner))  # pylint: disable=protected-access


def finished_runs(workdir: str | os.PathLike) -> dict[str, dict[str, Any]]:
  """The records of WORKDIR/study.jsonl by run path; a line torn by a kill mid-write is ignored."""
  path = pathlib.Path(workdir) / "study.jsonl"
  if not path.exists():
    return {}
  lines = path.read_text(encoding="utf-8").split("\n")
  lines.pop()  # Text after the last newline is torn (or empty).
  records = [json.loads(line) for line in lines if line.strip()]
  return {r["run"]: r for r in records}


def _record_finished(workdir: pathlib.Path, record: Mapping[str, Any]) -> None:
  path = workdir / "study.jsonl"
  with open(path, "a+", encoding="utf-8") as f:
    f.seek(0)
    text = f.read()
    if text and not text.endswith("\n"):  # A torn line from a kill: end it, so this record stands alone.
      f.write("\n")
    f.write(json.dumps(record, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())


def write_report(workdir: str | os.PathLike, study: Plan, base_params: Mapping[str, int | None],
                 config: ml_collections.ConfigDict) -> str:
  """Rewrites WORKDIR/study_report.md and plots/ from the finished runs' files; returns the report path."""
  slots = [dataclasses.replace(slot, base_params=base_params.get(run.path))
           for run in study.runs for slot in run.slots]
  return study_report.write_report(workdir, slots, arms=[(a.name, a.method) for a in study.arms],
                                   finished=set(finished_runs(workdir)), num_runs=len(study.runs),
                                   title=study.title, config_summary=experiment.config_summary(config))


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> str:
  """Runs (or resumes) the study described by `config`; returns the path of its report.

  The study is checked whole first (every field, every run's config, every base checkpoint), before anything runs
  or is written. Finished runs (WORKDIR/study.jsonl) are skipped without loading anything.
  """
  workdir = pathlib.Path(workdir)
  study = plan(config)
  counts: dict[str, int | None] = {}
  for r in study.runs:
    if r.base not in counts:
      counts[r.base] = _base_params(r.base, r.base_field)
  base_params = {r.path: counts[r.base] for r in study.runs}
  if distributed.is_primary():
    experiment._check_writable(workdir)  # pylint: disable=protected-access
  # A rerun resumes only the same study: a different one in the same workdir would mix results.
  added = {f"study.experiment.{k}": v for k, v in experiment._ADDED_FIELDS.items()}  # pylint: disable=protected-access
  experiment.check_saved_config(workdir / "study_config.json", config, what="study", neutral=_neutral, added=added)
  if distributed.is_primary():
    experiment.write_config_once(workdir / "study_config.json", config)
  logging.info("rest_jax study: %d runs (%s x %d seeds, sizes %s); workdir %s", len(study.runs),
               ", ".join(a.name for a in study.arms), len(study.seeds), ", ".join(study.sizes) or "none", workdir)
  for i, r in enumerate(study.runs, start=1):
    distributed.barrier(f"rest_jax study {r.path}")
    if r.path in finished_runs(workdir):
      continue
    serves = ", ".join(f"{s.arm} seed {s.seed}" + (f" size {s.size}" if s.size else "") for s in r.slots)
    logging.info("rest_jax study: run %d/%d %s (%s)", i, len(study.runs), r.path, serves)
    experiment.run(r.config, workdir / r.path)
    if distributed.is_primary():
      _record_finished(workdir, {"run": r.path, "slots": [dataclasses.asdict(s) for s in r.slots],
                                 "base": r.base, "base_params": base_params[r.path]})
      write_report(workdir, study, base_params, config)  # Kept current: a partial study has a partial report.
  distributed.barrier("rest_jax study report")
  path = str(workdir / "study_report.md")
  if distributed.is_primary():
    path = write_report(workdir, study, base_params, config)
  logging.info("rest_jax study: report at %s", path)
  return path
