"""Runs a ReST-EM experiment (or a study of several) from a config file; the logic lives in rest_jax.experiment
(and rest_jax.study).

  python -m rest_jax.main --config=configs/default.py --workdir=runs/demo
  python -m rest_jax.main --config=configs/default.py:smoke --workdir=/tmp/smoke --config.rest.num_iterations=1

A config with a `study` block (configs/study_default.py) runs a study instead: several methods x seeds (x base sizes)
on one task, one experiment after another in WORKDIR/runs/, with one side-by-side WORKDIR/study_report.md
(rest_jax/study.py); the same flags apply, and a rerun resumes it:

  python -m rest_jax.main --config=configs/study_default.py:smoke --workdir=/tmp/study_smoke

On several hosts (a TPU pod: the same command on every worker, see launch/README.md), each process joins JAX's
distributed runtime first; the workdir must be shared by all of them:

  python -m rest_jax.main --config=configs/default.py --workdir=/mnt/shared/run --distributed
  python -m rest_jax.main ... --distributed --coordinator_address=10.0.0.2:8476 --num_processes=2 --process_id=0

Errors end in one line on stderr naming the file, field or value (exit 2 for bad flags or config, 1 otherwise); the
traceback goes to WORKDIR/error.log, and to stderr with --verbose.
"""

import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from rest_jax import config_files
from rest_jax import distributed
from rest_jax import errors
from rest_jax import experiment
from rest_jax import study

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file[:mode].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, samples, metrics and the report go.",
                               required=True)
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join JAX's distributed runtime (jax.distributed.initialize) "
                                 "before anything else: one process per host, the mesh spans all of them.")
_COORDINATOR_ADDRESS = flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of process 0. "
                                           "Not needed on TPU pods, SLURM or Open MPI, where JAX finds it.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --distributed: this process's index, 0 to "
                                   "num_processes - 1.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "On an error, print the whole traceback, not only its one line.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad flag, config file, mode or override reported in one line (exit 2)."""
  try:
    remaining = flags.FLAGS(argv)
    if not isinstance(_CONFIG.value, ml_collections.ConfigDict):  # A config file that failed to load.
      raise errors.UsageError(f"--config: the config file did not load: {_CONFIG.value}")
    return remaining
  except Exception as error:  # pylint: disable=broad-except  (config_flags raises whatever the config file raises)
    try:
      config_files.check_command_line(argv)
      explained = errors.UsageError(" ".join(str(error).split()))
    except errors.UsageError as found:
      explained = found
    explained.__cause__ = error
    sys.exit(errors.report(explained, workdir=None, verbose="--verbose" in argv))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cluster = {"coordinator_address": _COORDINATOR_ADDRESS.value, "num_processes": _NUM_PROCESSES.value,
             "process_id": _PROCESS_ID.value}
  given = [name for name, value in cluster.items() if value is not None]
  if given and not _DISTRIBUTED.value:
    raise app.UsageError(f"--{given[0]} needs --distributed")
  logging.set_verbosity(logging.INFO)

  def run():
    if _DISTRIBUTED.value:
      distributed.initialize(**cluster)
    if "study" in _CONFIG.value:
      study.run(_CONFIG.value, _WORKDIR.value)
    else:
      experiment.run(_CONFIG.value, _WORKDIR.value)

  return errors.run_reported(run, workdir=_WORKDIR.value, verbose=_VERBOSE.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)
