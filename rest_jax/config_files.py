"""Loading `configs/*.py` files by path: how one config builds on another, and how tests and notebooks read them;
and what is wrong with a `--config=...` command line, in one line."""

import difflib
import importlib.util
import os
import pathlib
import types
from collections.abc import Sequence

import ml_collections

from rest_jax import errors


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
    raise errors.UsageError(f"configs/{pathlib.Path(config_file).name}: unknown mode {chosen!r}; use one of {options}")
  return chosen


def _flag_values(argv: Sequence[str], name: str) -> list[tuple[str, str]]:
  """(flag, value) of every `--name=value` / `--name value` in argv (the form absl accepts)."""
  found = []
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      found.append((arg.split("=", 1)[0], arg.split("=", 1)[1]))
    elif arg == f"--{name}" and i + 1 < len(argv):
      found.append((arg, argv[i + 1]))
  return found


def check_command_line(argv: Sequence[str]) -> None:
  """Raises `errors.UsageError` saying what is wrong with the `--config` flags of `argv`, if anything is.

  It names the config file that is missing, does not parse or whose get_config fails, the unknown mode, or the
  unknown `--config.<field>` override with the nearest field name: what the config flag's own errors (a traceback,
  or "Configuration is not available because of an earlier failure to load") leave out.
  """
  given = _flag_values(argv, "config")
  if not given:
    raise errors.UsageError("--config is required: --config=configs/<name>.py[:mode] (see configs/default.py)")
  spec = given[-1][1]
  path, _, arg = spec.partition(":")
  if not pathlib.Path(path).is_file():
    raise errors.UsageError(f"--config={spec}: config file {path} does not exist (from {os.getcwd()})")
  try:
    compile(pathlib.Path(path).read_bytes(), path, "exec")
  except SyntaxError as error:
    raise errors.UsageError(f"{path}:{error.lineno}: syntax error in the config file: {error.msg}") from None
  try:
    config = load(path, arg or None)
  except errors.UserError:
    raise
  except Exception as error:  # pylint: disable=broad-except  (any failure of the user's config code is reported)
    message = " ".join(str(error).split())
    raise errors.UsageError(f"{path}: get_config({arg or ''!r}) failed: {type(error).__name__}: {message}") from None
  if not hasattr(config, "get"):
    raise errors.UsageError(f"{path}: get_config returned a {type(config).__name__}, not an ml_collections.ConfigDict")
  fields = _leaf_names(config)
  for arg_text in argv:
    if not arg_text.startswith("--config."):
      continue
    field = arg_text.removeprefix("--config.").split("=", 1)[0]
    if field not in fields:
      close = difflib.get_close_matches(field, sorted(fields), n=1)
      hint = f"; did you mean --config.{close[0]}?" if close else ""
      raise errors.UsageError(f"--config.{field}: {path} has no field {field!r}{hint}")


def _leaf_names(node, prefix: str = "") -> set[str]:
  names = set()
  for key, value in node.items():
    name = f"{prefix}{key}"
    names.add(name)  # A whole block may be overridden too.
    if hasattr(value, "items"):
      names |= _leaf_names(value, f"{name}.")
  return names
