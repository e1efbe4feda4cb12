"""Errors a user can fix, and how the command line reports every error: one line on stderr, the traceback in a log.

`UserError` is a mistake in the input (config, flags, files, workdir) whose message names the file, field or value
and says what to do; it subclasses ValueError, so code that catches ValueError keeps working. `run_reported` runs a
command and turns whatever ends it into one line and an exit code:

  2  UsageError: bad flags or config (nothing ran, nothing was written),
  1  everything else: a damaged input, a full or read-only disk, a diverged M-step, a bug.

The whole traceback goes to WORKDIR/error.log when the workdir exists (the line says so) and to stderr with
--verbose.
"""

import datetime
import errno
import os
import pathlib
import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

USAGE_EXIT = 2
FAILURE_EXIT = 1
LOG_NAME = "error.log"
# Disk errors the user fixes outside the program; the resume then picks up where the run stopped.
_DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted"}
# Orbax / TensorStore report a full disk as their own exception types; only the text says so.
_NO_SPACE_TEXT = ("No space left on device", "RESOURCE_EXHAUSTED: Failed to write")


class UserError(ValueError):
  """Bad input the message explains in one line (the file, field or value, and the fix): no traceback needed."""


class UsageError(UserError):
  """A bad flag or config value, found before anything ran or was written."""


class DivergedError(UserError):
  """Training produced a non-finite loss."""


def one_line(error: BaseException) -> str:
  """`error` as one line: its message for the errors this project raises on purpose, with the type otherwise."""
  if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
    path = error.filename or "the workdir"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
      return f"{_DISK_ERRNOS[error.errno]} writing {path}; free space and rerun the same command to resume"
    return f"{_DISK_ERRNOS[error.errno]}: {path}; make it writable (or use another --workdir) and rerun"
  text = " ".join(str(error).split())
  if any(marker in text for marker in _NO_SPACE_TEXT):
    return "no space left on device writing the workdir; free space and rerun the same command to resume"
  if isinstance(error, UserError):
    return text
  if isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
    return f"{error.strerror or type(error).__name__}: {error.filename or text}"
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _write_log(workdir: pathlib.Path | None, error: BaseException) -> pathlib.Path | None:
  """Appends the traceback to WORKDIR/error.log; None when the workdir does not exist or cannot take it."""
  if workdir is None or not workdir.is_dir():
    return None
  path = workdir / LOG_NAME
  try:
    with open(path, "a", encoding="utf-8") as f:
      f.write(f"--- {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} "
              f"{' '.join(sys.argv)}\n")
      f.write("".join(traceback.format_exception(error)))
  except OSError:  # A full or read-only disk is likely what is being reported.
    return None
  return path


def report(error: BaseException, *, workdir: str | os.PathLike[str] | None, verbose: bool,
           stream: TextIO | None = None) -> int:
  """Prints `error` as one line to `stream` (stderr), logs its traceback, and returns the exit code."""
  stream = stream or sys.stderr
  if verbose:
    traceback.print_exception(error, file=stream)
  # A UserError's line says all there is to say, and a refused rerun must leave the workdir as it was.
  log = None if isinstance(error, UserError) else _write_log(pathlib.Path(workdir) if workdir else None, error)
  line = one_line(error)
  if not isinstance(error, (UserError, OSError)) and not verbose:
    line += " (an unexpected error: " + (f"the traceback is in {log}" if log else "rerun with --verbose for the "
                                         "traceback") + ")"
  elif log:
    line += f" [details: {log}]"
  print(f"error: {line}", file=stream)
  return USAGE_EXIT if isinstance(error, UsageError) else FAILURE_EXIT


def run_reported(fn: Callable[[], Any], *, workdir: str | os.PathLike[str] | None, verbose: bool) -> int:
  """Runs `fn()`; returns 0, or the exit code of the error that ended it, reported as one line (`report`)."""
  try:
    fn()
  except Exception as error:  # pylint: disable=broad-except  (the command line reports every error the same way)
    return report(error, workdir=workdir, verbose=verbose)
  return 0
