"""Loading `configs/*.py` files by path: how one config builds on another, and how tests and notebooks read them."""

import importlib.util
import os
import pathlib
import types
from collections.abc import Sequence

import ml_collections


def module(path: str | os.PathLike[str]) -> types.ModuleType:
  """The config file at `path`, executed as a module (its `get_config` and any helpers it defines)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location(f"_rest_jax_config_{path.stem}", path)
  loaded = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(loaded)
  return loaded


def load(path: str | os.PathLike[str], mode: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(mode)` of the config file at `path` (as `--config=path:mode` would give it)."""
  get_config = module(path).get_config
  return get_config(mode) if mode is not None else get_config()


def sibling_module(config_file: str, name: str) -> types.ModuleType:
  """The config file `name`.py next to `config_file` (a config's `__file__`), as a module."""
  return module(pathlib.Path(config_file).with_name(f"{name}.py"))


def sibling(config_file: str, name: str, mode: str | None = None) -> ml_collections.ConfigDict:
  """The config `name`.py next to `config_file` (a config's `__file__`), so that experiments share one schema."""
  return load(pathlib.Path(config_file).with_name(f"{name}.py"), mode)


def mode(arg: str | None, config_file: str, modes: Sequence[str]) -> str:
  """The mode `--config=<config_file>:<arg>` selects: `arg`, or the first of `modes` when it is empty or None."""
  chosen = arg or modes[0]
  if chosen not in modes:
    options = ", ".join([f"'' ({modes[0]})", *(repr(m) for m in modes[1:])])
    raise ValueError(f"configs/{pathlib.Path(config_file).name}: unknown mode {chosen!r}; use one of {options}")
  return chosen
