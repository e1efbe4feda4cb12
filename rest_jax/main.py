"""Runs a ReST-EM experiment from a config file; the logic lives in rest_jax.experiment.

  python -m rest_jax.main --config=configs/default.py --workdir=runs/demo
  python -m rest_jax.main --config=configs/default.py:smoke --workdir=/tmp/smoke --config.rest.num_iterations=1
"""

from absl import app, flags, logging
from ml_collections import config_flags

from rest_jax import experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file[:mode].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, samples, metrics and the report go.",
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  experiment.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
