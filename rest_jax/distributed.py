"""Multi-process runs on JAX's distributed runtime: one process per host, all running the same program.

A TPU pod (or several GPU hosts) runs `python -m rest_jax.main ... --distributed` on every host; the mesh then spans
the devices of all processes, and each process drives only its own (addressable) devices. The EM loop stays one
program because of four rules, all implemented here:

  inputs:  every process holds the same full host batch; `host_to_global` builds the global array from the slices
           each process addresses (no transfer between hosts).
  outputs: `global_to_host` gathers device results (sampled tokens, losses) to every process, so every process
           scores, selects and trains on the same samples.
  files:   only the primary process (process 0) writes to the workdir; everyone reads it. The workdir must be one
           shared directory (NFS, Filestore, a gcsfuse mount), which `check_shared_directory` verifies up front.
  order:   `barrier` lines the processes up before they decide from the workdir what to skip on a resume.

With one process every function here is the plain single-host call (`jax.device_put`, `jax.device_get`) or a no-op.
"""

import pathlib
import secrets
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Starts JAX's distributed runtime; must run before anything touches a JAX device.

  On TPU pods (and under SLURM or Open MPI) JAX finds the arguments itself; elsewhere give all three. On CPU the
  processes exchange collectives through gloo (JAX's default `jax_cpu_collectives_implementation`).
  """
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  logging.info("rest_jax: process %d of %d, %d local of %d devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def is_primary() -> bool:
  """Whether this process writes the workdir's files (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (the same name on all); a no-op with one process."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def host_to_global(tree: Any, shardings: Any) -> Any:
  """Host arrays -> global jax.Arrays with `shardings` (one Sharding for all leaves, or a matching pytree).

  Every process must pass the same full arrays: each reads from them the slices its devices hold. (`jax.device_put`
  accepts this too on several processes, but first all-gathers every array to check it is equal on all of them.)
  """
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

  return jax.tree.map(put, tree, shardings)


def global_to_host(tree: Any) -> Any:
  """Device arrays -> numpy arrays with their global values, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def owns(index: int) -> bool:
  """Whether this process does host work item `index` (round-robin over the processes), e.g. scoring a problem."""
  return index % jax.process_count() == jax.process_index()


def gather_owned(values: np.ndarray) -> np.ndarray:
  """Every process's rows of `values` where it `owns` the row (the others left 0), assembled on every process."""
  if jax.process_count() == 1:
    return values
  gathered = np.asarray(multihost_utils.process_allgather(values, tiled=False))  # [processes, *values.shape]
  rows = np.arange(values.shape[0]) % jax.process_count()
  return np.take_along_axis(gathered, rows.reshape(1, -1, *([1] * (values.ndim - 1))), axis=0)[0]


def broadcast_from_primary(tree: Any) -> Any:
  """Process 0's value of a pytree of host arrays, on every process (e.g. rewards from a timed sandbox, which may
  differ from host to host)."""
  if jax.process_count() == 1:
    return tree
  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def check_shared_directory(directory: str | pathlib.Path) -> None:
  """Raises ValueError unless every process sees `directory` as the same directory (a no-op with one process).

  Only process 0 writes the workdir, so a per-host directory would leave the other processes without the samples,
  checkpoints and metrics they read to resume: each would then decide differently what to skip, and hang.
  """
  if jax.process_count() == 1:
    return
  directory = pathlib.Path(directory)
  token = int(broadcast_from_primary(np.asarray(secrets.randbits(31), np.int32)))
  marker = directory / f".rest_jax_shared_check_{token}"
  if is_primary():
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(token))
  barrier("rest_jax shared directory: written")
  # One flag per process; the gather also keeps the marker in place until every process has looked.
  seen_by = multihost_utils.process_allgather(np.asarray([marker.is_file()], np.int32), tiled=True)
  if is_primary():
    marker.unlink()
  blind = [i for i, seen in enumerate(seen_by) if not seen]
  if blind:
    raise ValueError(f"workdir {directory} is not shared: processes {blind} of {jax.process_count()} do not see "
                     "what process 0 writes there. Give all processes one shared directory (NFS, Filestore, a "
                     "gcsfuse mount of a bucket) at the same path.")
