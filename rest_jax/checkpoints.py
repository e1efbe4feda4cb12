"""Checkpoints of model parameters plus a JSON metadata record, written atomically with Orbax.

One checkpoint is one directory, an Orbax composite checkpoint with two items:
  <directory>/params/    the parameter pytree (StandardCheckpointHandler: TensorStore/OCDBT, any sharding),
  <directory>/metadata/  a JSON dict, e.g. {"model_config": cfg.to_dict(), "method": "rest_em", "iteration": 2}.
An experiment keeps one checkpoint per EM iteration: <root>/<method>/iteration_<k>/ (`IterationCheckpoints`).

Atomicity: Orbax writes everything into the sibling `<directory>.orbax-checkpoint-tmp` and renames it to
`<directory>` last, so a directory under the final name is always complete. A save that dies midway leaves only that
sibling, which `exists` and `latest` ignore and the next save of the same directory removes. Replacing a checkpoint
(`overwrite=True`) writes the new one under a staging name first and swaps it in afterwards, so a crash during the
write keeps the old one. Written for POSIX file systems. With several processes (`rest_jax.distributed`) every process
calls `save` and `load` (Orbax writes and reads each process's shards and lines them up with barriers); the directory
must be shared, and only process 0 removes leftovers and renames.
"""

import contextlib
import datetime
import json
import logging
import os
import pathlib
import re
import shutil
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp

from rest_jax import distributed

PathLike = str | os.PathLike

_PARAMS = "params"
_METADATA = "metadata"
# Siblings of `<directory>` that exist only while an overwrite is in flight, or after it crashed.
_STAGING_SUFFIX = ".rest-jax-staging"
_REPLACED_SUFFIX = ".rest-jax-replaced"
_ITERATION_DIR = re.compile(r"iteration_(\d+)")
_ORBAX_DIR = os.path.dirname(ocp.__file__)


def save(directory: PathLike, params: Any, *, metadata: dict[str, Any], overwrite: bool = False) -> None:
  """Writes `params` (a pytree of arrays) and the JSON-serialisable `metadata` as one checkpoint at `directory`.

  Raises ValueError if `directory` already exists, unless `overwrite`; then the old checkpoint is replaced only once
  the new one is completely written.
  """
  directory = pathlib.Path(directory).absolute()  # Orbax's tensorstore paths must be absolute.
  if not isinstance(metadata, dict):
    raise ValueError(f"checkpoint metadata must be a dict, got {type(metadata).__name__}")
  try:
    json.dumps(metadata)
  except (TypeError, ValueError) as e:
    raise ValueError(f"checkpoint metadata is not JSON-serialisable: {e}") from None
  occupied = directory.exists() or directory.is_symlink()
  if occupied and not overwrite:
    state = "" if exists(directory) else " (and is not a complete checkpoint)"
    raise ValueError(f"checkpoint {directory} already exists{state}; pass overwrite=True to replace it")
  staging = directory.with_name(directory.name + _STAGING_SUFFIX)
  replaced = directory.with_name(directory.name + _REPLACED_SUFFIX)
  # The other processes touch nothing before Orbax's first barrier, which follows this removal on process 0.
  if distributed.is_primary():
    _remove_leftovers(staging, replaced)
  if not occupied:
    _write(directory, params, metadata)
    return
  _write(staging, params, metadata)
  if distributed.is_primary():
    # Only between these two renames is there no checkpoint at `directory`; the old one is then at `replaced`.
    directory.rename(replaced)
    staging.rename(directory)
    _remove_leftovers(replaced)
  distributed.barrier(f"rest_jax checkpoint swapped in: {directory}")


def exists(directory: PathLike) -> bool:
  """Whether a complete checkpoint is at `directory`."""
  directory = pathlib.Path(directory)
  return (directory.is_dir()
          and ocp.path.step.is_path_finalized(directory)  # Not an Orbax temporary directory.
          and (directory / ocp.path.atomicity.COMMIT_SUCCESS_FILE).is_file()
          and all((directory / item).is_dir() for item in (_PARAMS, _METADATA)))


def load_metadata(directory: PathLike) -> dict[str, Any]:
  """The metadata dict saved with the checkpoint at `directory` (the parameters are not read)."""
  directory = _complete_checkpoint(directory)
  with _quiet_orbax(), _checkpointer() as checkpointer:
    restored = checkpointer.restore(directory, args=ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()}))
  return restored[_METADATA]


def load(directory: PathLike, *, shardings: Any = None) -> tuple[Any, dict[str, Any]]:
  """Restores (params, metadata) from `directory`.

  Args:
    directory: a checkpoint written by `save`.
    shardings: a pytree of `jax.sharding.Sharding` matching the saved params (e.g.
      `sharding.param_shardings(cfg, mesh)`); each array is read straight into its shards. None: every array goes
      whole onto the (process's) first device, whatever sharding it was saved with.
  """
  directory = _complete_checkpoint(directory)
  with _quiet_orbax(), _checkpointer() as checkpointer:
    saved_tree = checkpointer.metadata(directory).item_metadata[_PARAMS].tree
    targets = _restore_targets(saved_tree, shardings, directory)
    restored = checkpointer.restore(directory, args=ocp.args.Composite(**{
        _PARAMS: ocp.args.StandardRestore(targets), _METADATA: ocp.args.JsonRestore()}))
  return restored[_PARAMS], restored[_METADATA]


class IterationCheckpoints:
  """The checkpoints of one experiment, one per (method, EM iteration), at <root>/<method>/iteration_<k>.

  `save` records "method" and "iteration" in the metadata, so a checkpoint describes itself when read alone.
  """

  def __init__(self, root: PathLike):
    self.root = pathlib.Path(root)

  def path(self, method: str, iteration: int) -> pathlib.Path:
    if not isinstance(method, str) or not method or method in (".", "..") or "/" in method or os.sep in method:
      raise ValueError(f"checkpoint method must be a plain directory name, got {method!r}")
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
      raise ValueError(f"checkpoint iteration must be a non-negative int, got {iteration!r}")
    return self.root / method / f"iteration_{iteration}"

  def save(self, method: str, iteration: int, params: Any, metadata: dict[str, Any], *,
           overwrite: bool = False) -> None:
    path = self.path(method, iteration)
    if not isinstance(metadata, dict):
      raise ValueError(f"checkpoint metadata must be a dict, got {type(metadata).__name__}")
    for key, value in (("method", method), ("iteration", iteration)):
      if key in metadata and metadata[key] != value:
        raise ValueError(f"checkpoint metadata[{key!r}]={metadata[key]!r} contradicts {key}={value!r}")
    save(path, params, metadata={**metadata, "method": method, "iteration": iteration}, overwrite=overwrite)

  def adapters_path(self, method: str, iteration: int) -> pathlib.Path:
    return self.path(method, iteration).parent / f"adapters_{iteration}"

  def save_adapters(self, method: str, iteration: int, adapters: Any, metadata: dict[str, Any]) -> None:
    """LoRA: the adapters of (method, iteration)'s model, whose merged parameters `save` writes (after this: a run
    stopped in between redoes the M-step). `rest_jax.training.lora.merge` applies them to the M-step's initial model
    (the base under ReST-EM's restart from the base)."""
    save(self.adapters_path(method, iteration), adapters,
         metadata={**metadata, "method": method, "iteration": iteration}, overwrite=True)

  def exists(self, method: str, iteration: int) -> bool:
    return exists(self.path(method, iteration))

  def load(self, method: str, iteration: int, shardings: Any = None) -> tuple[Any, dict[str, Any]]:
    return load(self.path(method, iteration), shardings=shardings)

  def load_metadata(self, method: str, iteration: int) -> dict[str, Any]:
    return load_metadata(self.path(method, iteration))

  def restore(self, method: str, iteration: int, shardings: Any = None) -> tuple[Any, dict[str, Any]] | None:
    """`load`, or None when there is nothing to load: no checkpoint, or a damaged one, which is set aside.

    A checkpoint under its final name that is incomplete (its commit marker gone) or does not read back (a
    truncated, emptied or missing file) is renamed by `set_aside`, never deleted, so the caller recomputes it and
    the damaged copy stays for a post-mortem.
    """
    path = self.path(method, iteration)
    if not (path.exists() or path.is_symlink()):
      return None
    problem = None if exists(path) else "is incomplete (no commit marker or a missing item)"
    if problem is None:
      try:
        return load(path, shardings=shardings)
      except (KeyboardInterrupt, MemoryError):
        raise
      except Exception as error:  # pylint: disable=broad-except  (whatever Orbax or TensorStore raise for bad bytes)
        problem = f"does not read back ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
    distributed.barrier(f"rest_jax damaged checkpoint: {path}")
    if distributed.is_primary():
      moved = set_aside(path)
      logging.warning("checkpoint %s %s; moved it to %s and recomputing it", path, problem, moved.name)
    distributed.barrier(f"rest_jax damaged checkpoint set aside: {path}")
    return None

  def latest(self, method: str) -> int | None:
    """The highest iteration of `method` with a complete checkpoint; None when there is none."""
    method_dir = self.path(method, 0).parent
    if not method_dir.is_dir():
      return None
    iterations = [int(match.group(1)) for child in method_dir.iterdir()
                  if (match := _ITERATION_DIR.fullmatch(child.name)) and exists(child)]
    return max(iterations, default=None)


def set_aside(path: PathLike) -> pathlib.Path:
  """Renames the damaged file or directory `path` to `<name>.damaged-<UTC time>` next to it; returns the new path.

  Damaged results are never deleted: the new name takes them out of every lookup while keeping them for a look.
  """
  path = pathlib.Path(path)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
  target, n = path.with_name(f"{path.name}.damaged-{stamp}"), 1
  while target.exists() or target.is_symlink():
    target, n = path.with_name(f"{path.name}.damaged-{stamp}-{n}"), n + 1
  path.rename(target)
  return target


def _write(directory: pathlib.Path, params: Any, metadata: dict[str, Any]) -> None:
  args = ocp.args.Composite(**{_PARAMS: ocp.args.StandardSave(params), _METADATA: ocp.args.JsonSave(metadata)})
  with _quiet_orbax(), _checkpointer() as checkpointer:
    checkpointer.save(directory, args=args)


def _checkpointer() -> ocp.Checkpointer:
  # The registry names each item's handler up front, so `metadata()` can read the params' shapes from a fresh
  # checkpointer. Synchronous: a checkpoint is complete on disk when `save` returns.
  registry = ocp.DefaultCheckpointHandlerRegistry()
  for item, handler, save_args, restore_args in (
      (_PARAMS, ocp.StandardCheckpointHandler(), ocp.args.StandardSave, ocp.args.StandardRestore),
      (_METADATA, ocp.JsonCheckpointHandler(), ocp.args.JsonSave, ocp.args.JsonRestore)):
    registry.add(item, save_args, handler)
    registry.add(item, restore_args, handler)
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler(handler_registry=registry))


def _complete_checkpoint(directory: PathLike) -> pathlib.Path:
  directory = pathlib.Path(directory).absolute()
  if not directory.exists():
    raise FileNotFoundError(f"no checkpoint at {directory}")
  if not exists(directory):
    raise ValueError(f"{directory} is not a complete checkpoint (an interrupted save, or not written by save())")
  return directory


def _restore_targets(saved_tree: Any, shardings: Any, directory: pathlib.Path) -> Any:
  """jax.ShapeDtypeStructs with the saved shapes and dtypes and the requested shardings."""
  if shardings is None:
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: default, saved_tree)
  saved_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(saved_tree)}
  given_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(shardings)}
  if saved_paths != given_paths:
    raise ValueError(f"shardings do not match the params saved in {directory}: missing "
                     f"{sorted(saved_paths - given_paths)[:3]}, unexpected {sorted(given_paths - saved_paths)[:3]}")
  return jax.tree.map(lambda saved, sharding: jax.ShapeDtypeStruct(saved.shape, saved.dtype, sharding=sharding),
                      saved_tree, shardings)


def _remove_leftovers(*paths: pathlib.Path) -> None:
  for path in paths:
    for leftover in (path, path.with_name(path.name + ocp.path.atomicity.TMP_DIR_SUFFIX)):
      if leftover.is_dir() and not leftover.is_symlink():
        shutil.rmtree(leftover)
      elif leftover.exists() or leftover.is_symlink():
        leftover.unlink()


class _DropOrbaxInfo(logging.Filter):
  """Drops Orbax's INFO records (dozens per save: timings, renames, throughput); its warnings still show."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.pathname.startswith(_ORBAX_DIR)


_DROP_ORBAX_INFO = _DropOrbaxInfo()


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  # Orbax logs through absl's logger; filtering only during our calls leaves everyone else's logging alone.
  logger = logging.getLogger("absl")
  logger.addFilter(_DROP_ORBAX_INFO)
  try:
    yield
  finally:
    logger.removeFilter(_DROP_ORBAX_INFO)
