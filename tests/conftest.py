"""Test-wide setup: 8 host CPU devices so sharding tests see a real mesh; tests pin their own meshes."""

import logging
import os
import pathlib
import sys

import pytest
from absl import flags

# Must run before JAX initialises its backends (conftest is imported before any test module).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("REST_JAX_PROGRESS", "0")


@pytest.fixture
def parse_flags(monkeypatch):
  """Parses `rest_jax.main` arguments as app.run would: `parse_flags("--config=...", "--workdir=...")`.

  config_flags reads overrides from sys.argv, so that is patched too, and defines a flag per override on the global
  FLAGS, which a second parse with the same override would define again: they are removed after each test. Parsing
  also sets the level of absl's logger (from --verbosity), which is restored so later tests see the usual logging.
  """
  import rest_jax.main  # noqa: F401  (importing it defines the flags)

  monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[1])
  absl_logger = logging.getLogger("absl")
  monkeypatch.setattr(absl_logger, "level", absl_logger.level)

  def forget_overrides() -> None:
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
      delattr(flags.FLAGS, name)

  def parse(*args: str) -> None:
    argv = ["rest_jax.main", *args]
    monkeypatch.setattr(sys, "argv", argv)
    forget_overrides()
    flags.FLAGS(argv)

  yield parse
  forget_overrides()
