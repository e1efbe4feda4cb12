"""Warm workers of `rest_jax.sandbox`: a bubblewrap sandbox started once, whose fork server runs each program.

Internal to `rest_jax.sandbox`, which documents the design; `_fork_server.py` is the half that runs inside.
"""

import array
import atexit
import concurrent.futures
import contextlib
import marshal
import os
import pathlib
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

from rest_jax import _sandbox_host as _host

if TYPE_CHECKING:
  from rest_jax.sandbox import Limits

WARM_ENV = "REST_JAX_SANDBOX_WARM"
SERVER_SOURCE = (pathlib.Path(__file__).parent / "_fork_server.py").read_text(encoding="utf-8")
_SERVER_FILE = "fork_server.py"
_PROGRAMS_DIR = "programs"
# How long the server may take to kill a program and everything it started, and clean up after it (a few ms, as a
# rule). Past it the whole sandbox is killed instead: a program may have stopped its server (SIGSTOP: same uid), or
# left it more to clean up than is worth waiting for, and this bounds what that adds to the program's wall time.
_KILL_TIMEOUT_S = 1.0
# Idle workers kept for later programs (each holds a slot uid and an interpreter, ~15 MB).
MAX_IDLE = 16


def enabled() -> bool:
  """Whether programs run in warm workers (REST_JAX_SANDBOX_WARM=1, the default) or each in a fresh sandbox (=0).

  The default since the hostile and reward-hack suites run, and pass, in both modes (tests/sandbox_modes.py).
  """
  value = os.environ.get(WARM_ENV, "1")
  if value not in ("0", "1"):
    raise ValueError(f"{WARM_ENV} must be '0' or '1', got {value!r}")
  return value == "1"


def runs(argv: list[str]) -> bool:
  """Whether a warm worker can run argv: this interpreter as `sandbox.python_argv` starts it."""
  return len(argv) >= 5 and argv[:4] == [sys.executable, "-s", "-S", "-c"]


class Died(RuntimeError):
  """The worker's server is gone (a program killed it, or it crashed) before it took the program."""


# bwrap's --die-with-parent follows the thread that started it: workers are started from this thread, which lives
# as long as the process, not from the reward's pool threads, which come and go.
_LAUNCHER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-warm-launcher")


class Worker:
  """One warm sandbox: bwrap, its PID namespace and the fork server, running one program at a time."""

  def __init__(self, tmpfs_bytes: int):
    self.tmpfs_bytes = tmpfs_bytes
    self._slot = _host.SLOTS.acquire() if os.geteuid() == 0 else None
    self.uid = self._slot.uid if self._slot else None
    self._base: str | None = None
    self._proc: subprocess.Popen[bytes] | None = None
    self._sock: socket.socket | None = None
    self._pidfd = self._info_r = -1
    try:
      self._launch()
    except BaseException:
      self.destroy()
      raise

  def _launch(self) -> None:
    from rest_jax.sandbox import Limits  # pylint: disable=import-outside-toplevel  (sandbox imports this module)

    # Read-only to the sandbox but for programs/, where each program gets a directory of its own.
    self._base = _host.make_workdir({_SERVER_FILE: SERVER_SOURCE}, None)
    self.programs_dir = os.path.join(self._base, _PROGRAMS_DIR)
    os.mkdir(self.programs_dir)
    for path, mode in ((self._base, 0o755), (self.programs_dir, 0o755), (os.path.join(self._base, _SERVER_FILE), 0o644)):
      os.chmod(path, mode)
    self._sock, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    self._info_r, info_w = os.pipe()
    try:
      argv = [sys.executable, "-s", "-S", os.path.join(self._base, _SERVER_FILE), str(server_end.fileno())]
      env = {"PATH": _host.PATH, "HOME": self._base, "PWD": self._base, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
             "PYTHONDONTWRITEBYTECODE": "1"}
      command = _host.bubblewrap_command(argv, self._base, self.uid, info_w, env, Limits(file_bytes=self.tmpfs_bytes),
                                         writable=[self.programs_dir])
      self._proc = _LAUNCHER.submit(
          subprocess.Popen, command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
          stderr=subprocess.DEVNULL, cwd=self._base, env=env, pass_fds=(info_w, server_end.fileno()),
          start_new_session=True).result()
    finally:
      os.close(info_w)
      server_end.close()
    self._pidfd = os.pidfd_open(self._proc.pid)

  @property
  def exit_fd(self) -> int:
    """Readable once the running program has exited and the server has cleaned up after it (or the server died)."""
    return self._sock.fileno()

  def healthy(self) -> bool:
    """Whether the server is up and idle (nothing pending from it: no EOF, no stray message)."""
    return (self._proc is not None and not _host.poll(self._pidfd, select.POLLIN, 0)
            and not _host.poll(self._sock.fileno(), select.POLLIN, 0))

  def start(self, argv: list[str], files, limits: "Limits"):
    """Starts argv (`runs(argv)`) with `files` in a fresh directory; returns its stdin, stdout and stderr pipes."""
    workdir = _host.make_workdir(files, self.uid, parent=self.programs_dir)
    env = {"PATH": _host.PATH, "HOME": workdir, "PWD": workdir, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": f"/tmp/{os.path.basename(workdir)}"}
    # Under root the slot uid's count is the server and the program; else every process of ours counts.
    nproc = limits.processes + 1 if self.uid is not None else _host.user_tasks() + limits.processes
    request = {
        "cwd": workdir, "tmpdir": env["TMPDIR"], "argv": ["-c", *argv[5:]], "code": argv[4], "env": env,
        "rlimits": [(resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1),
                    (resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
                    (resource.RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes),
                    (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
                    (resource.RLIMIT_NPROC, nproc, nproc), (resource.RLIMIT_CORE, 0, 0)],
    }
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    try:
      self._sock.sendmsg([marshal.dumps(request)],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [stdin_r, stdout_w, stderr_w]))])
    except OSError as e:
      for fd in (stdin_w, stdout_r, stderr_r):
        os.close(fd)
      raise Died(f"the warm sandbox's server is gone: {e}") from e
    finally:
      for fd in (stdin_r, stdout_w, stderr_w):
        os.close(fd)
    return open(stdin_w, "wb", buffering=0), open(stdout_r, "rb", buffering=0), open(stderr_r, "rb", buffering=0)

  def stop(self, exited: bool) -> tuple[int, bool] | None:
    """Kills the running program (unless it `exited`) and all it started; returns its wait status and whether the
    server found the sandbox clean after it, or None when the server did not answer (the worker is then useless)."""
    if not exited:
      with contextlib.suppress(OSError):
        self._sock.send(b"kill")
    if not _host.poll(self._sock.fileno(), select.POLLIN, _KILL_TIMEOUT_S):
      return None
    try:
      reply = self._sock.recv(64).split()
    except OSError:
      return None
    if len(reply) != 3 or reply[0] != b"exit" or not all(part.isdigit() for part in reply[1:]):
      return None
    return int(reply[1]), reply[2] == b"1"

  def end_program(self) -> None:
    """Removes what the program had on the host (its directory, and anything else it made in programs/)."""
    if self._base is None:
      return
    for name in os.listdir(self.programs_dir):
      _host.remove_tree(os.path.join(self.programs_dir, name))

  def destroy(self) -> None:
    """Kills the whole sandbox and releases everything it holds. Idempotent."""
    if self._proc is not None:
      with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(self._proc.pid, signal.SIGKILL)
      self._proc.wait()
      _host.wait_for_namespace(self._info_r)
      self._proc = None
    if self._sock is not None:
      self._sock.close()
    for fd in (self._pidfd, self._info_r):
      if fd >= 0:
        os.close(fd)
    self._pidfd = self._info_r = -1
    if self._base is not None:
      _host.remove_tree(self._base)
      self._base = None
    if self._slot is not None:
      _host.SLOTS.release(self._slot)
      self._slot = None


class Pool:
  """Idle warm workers, by the size of their tmpfs mounts."""

  def __init__(self):
    self._lock = threading.Lock()
    self._idle: list[Worker] = []

  def take(self, tmpfs_bytes: int) -> Worker:
    """An idle, healthy worker, or a new one."""
    while True:
      with self._lock:
        worker = next((w for w in reversed(self._idle) if w.tmpfs_bytes == tmpfs_bytes), None)
        if worker is None:
          break
        self._idle.remove(worker)
      if worker.healthy():
        return worker
      worker.destroy()
    return Worker(tmpfs_bytes)

  def give_back(self, worker: Worker) -> None:
    with self._lock:
      if len(self._idle) < MAX_IDLE and worker.healthy():
        self._idle.append(worker)
        return
    worker.destroy()

  def close(self) -> None:
    """Destroys every idle worker."""
    with self._lock:
      idle, self._idle = self._idle, []
    for worker in idle:
      worker.destroy()


POOL = Pool()
atexit.register(POOL.close)
