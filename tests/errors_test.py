"""rest_jax.errors: every error ends in one line and an exit code; the traceback goes to the workdir's log."""

import errno
import io

from rest_jax import errors


def _report(error, workdir=None, verbose=False) -> tuple[int, str]:
  stream = io.StringIO()
  code = errors.report(error, workdir=workdir, verbose=verbose, stream=stream)
  return code, stream.getvalue()


def _raised(error: BaseException) -> BaseException:
  try:
    raise error
  except BaseException as caught:  # pylint: disable=broad-except
    return caught


def test_a_usage_error_is_its_message_and_exit_2(tmp_path):
  code, out = _report(errors.UsageError("config rest.cap=-1: must be >= 1"), workdir=tmp_path)
  assert (code, out) == (2, "error: config rest.cap=-1: must be >= 1\n")
  assert not list(tmp_path.iterdir())  # Nothing written in the workdir: the line is the whole story.


def test_an_unexpected_error_is_one_line_with_the_log_that_holds_its_traceback(tmp_path):
  code, out = _report(_raised(RuntimeError("Event loop is closed")), workdir=tmp_path)
  log = tmp_path / errors.LOG_NAME
  assert code == 1
  assert out == f"error: RuntimeError: Event loop is closed (an unexpected error: the traceback is in {log})\n"
  assert "Traceback (most recent call last)" in log.read_text() and "_raised" in log.read_text()


def test_without_a_workdir_the_line_points_to_verbose_and_verbose_prints_the_traceback(tmp_path):
  error = _raised(KeyError("boom"))
  _, out = _report(error, workdir=tmp_path / "missing")
  assert out.strip().endswith("(an unexpected error: rerun with --verbose for the traceback)") and out.count("\n") == 1
  assert not (tmp_path / "missing").exists()  # The log never creates a workdir.
  _, verbose = _report(error, verbose=True)
  assert "Traceback (most recent call last)" in verbose and verbose.splitlines()[-1] == "error: KeyError: 'boom'"


def test_disk_errors_name_the_path_and_the_fix():
  full = OSError(errno.ENOSPC, "No space left on device", "/w/samples/x.jsonl.gz")
  assert errors.one_line(full) == ("no space left on device writing /w/samples/x.jsonl.gz; free space and rerun the "
                                   "same command to resume")
  read_only = OSError(errno.EROFS, "Read-only file system", "/w/metrics.jsonl")
  assert errors.one_line(read_only).startswith("read-only file system: /w/metrics.jsonl; make it writable")
  # TensorStore's wording for a full disk during an Orbax save.
  tensorstore = ValueError("RESOURCE_EXHAUSTED: Failed to write /w/checkpoints/x/params/d/abc [source locations=...]"
                           "\n  No space left on device")
  assert errors.one_line(tensorstore).startswith("no space left on device writing the workdir; free space and rerun")
  assert _report(full)[0] == 1


def test_run_reported_returns_0_or_the_code_of_the_error(tmp_path):
  assert errors.run_reported(lambda: None, workdir=tmp_path, verbose=False) == 0

  def fail():
    raise errors.UsageError("bad")

  assert errors.run_reported(fail, workdir=tmp_path, verbose=False) == 2
