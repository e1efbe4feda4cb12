"""Loading `configs/*.py` files by path: how one config builds on another, and how tests and notebooks read them."""

import importlib.util
import os
import pathlib

import ml_collections


def load(path: str | os.PathLike[str], mode: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(mode)` of the config file at `path` (as `--config=path:mode` would give it)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location(f"_rest_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(mode) if mode is not None else module.get_config()


def sibling(config_file: str, name: str, mode: str | None = None) -> ml_collections.ConfigDict:
  """The config `name`.py next to `config_file` (a config's `__file__`), so that experiments share one schema."""
  return load(pathlib.Path(config_file).with_name(f"{name}.py"), mode)
