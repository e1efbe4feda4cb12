"""The host side of `rest_jax.sandbox`: uids, working directories, launch commands, and killing what is left.

Internal to `rest_jax.sandbox`, which documents the design.
"""

from collections.abc import Mapping, Sequence
import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import pathlib
import pwd
import select
import shutil
import site
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from rest_jax.sandbox import Limits

# Host uids the sandboxes run as when we are root: below systemd's DynamicUser range (61184-65519).
FIRST_UID = 61000
NUM_SLOTS = 128
# Host paths the sandbox sees as empty tmpfs mounts: other users' scratch files and home directories.
HIDDEN_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/root", "/home")
WRITABLE_TMPFS = ("/tmp", "/var/tmp", "/dev/shm")
PATH = "/usr/local/bin:/usr/bin:/bin"
READ_CHUNK = 1 << 16


def poll(fd: int, events: int, timeout_s: float) -> bool:
  """Whether `fd` has one of `events` within `timeout_s` (poll, not select: fds may be past FD_SETSIZE)."""
  poller = select.poll()
  poller.register(fd, events)
  return bool(poller.poll(max(0, int(timeout_s * 1000))))


@dataclasses.dataclass(frozen=True)
class Slot:
  """A host uid held by one sandbox: `lock_fd` holds the flock that tells other processes it is taken."""

  index: int
  uid: int
  lock_fd: int


class Slots:
  """Host uids for sandboxes, one per running sandbox, also across processes (a flock per slot)."""

  def __init__(self):
    self._cond = threading.Condition()
    self._used: set[int] = set()

  @functools.cached_property
  def _lock_dir(self) -> str:
    path = SLOT_LOCK_DIR
    with contextlib.suppress(FileExistsError):
      os.mkdir(path, 0o700)
    info = os.lstat(path)
    # A directory someone else made could hold the locks of every slot, or point them elsewhere.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
      raise RuntimeError(f"{path} must be a directory owned by uid {os.geteuid()} with mode 0700")
    return path

  @functools.cached_property
  def _indices(self) -> list[int]:
    return [i for i in range(NUM_SLOTS) if not uid_exists(FIRST_UID + i)]

  def acquire(self) -> Slot:
    """Returns a free slot, waiting for one when all are taken."""
    with self._cond:
      while True:
        for index in self._indices:
          if index in self._used:
            continue
          fd = os.open(os.path.join(self._lock_dir, f"slot{index}"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
          try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
          except BlockingIOError:
            os.close(fd)
            continue
          self._used.add(index)
          return Slot(index, FIRST_UID + index, fd)
        self._cond.wait(0.05)

  def release(self, slot: Slot) -> None:
    with self._cond:
      os.close(slot.lock_fd)
      self._used.discard(slot.index)
      self._cond.notify()


SLOTS = Slots()
# Fixed at import: every process on the host must agree on it, even one that later points tempfile elsewhere.
SLOT_LOCK_DIR = os.path.join(tempfile.gettempdir(), f"rest_jax_sandbox_slots_{os.geteuid()}")


def uid_exists(uid: int) -> bool:
  """Whether `uid` belongs to an account (such a uid is never used for a sandbox)."""
  try:
    pwd.getpwuid(uid)
  except KeyError:
    return False
  return True


def task_status(pid: str) -> dict[str, str]:
  """The fields of /proc/<pid>/status ({} when the process is gone)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
  except OSError:
    return {}


def kill_uid(uid: int, timeout_s: float = 5.0) -> None:
  """SIGKILLs every process whose real uid is `uid` (a slot uid of the rlimits backend) and waits until none lives.

  The signal comes from kill(-1) run as `uid`, which reaches all of that uid's processes at once, so none escapes
  by forking while a /proc scan would be reading the process list.
  """
  deadline = time.monotonic() + timeout_s
  while uid_has_processes(uid):
    if time.monotonic() > deadline:
      logging.error("sandbox: processes of uid %d survived SIGKILL for %.0f s", uid, timeout_s)
      return
    # Popen switches to `uid` before exec, and does not exec at all if it cannot: this kill(-1) never runs as root.
    subprocess.run([tool("kill"), "-KILL", "-1"], user=uid, group=uid, extra_groups=[], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    time.sleep(0.005)


def uid_has_processes(uid: int) -> bool:
  """Whether a live process (not a zombie, unless its other threads still run) has real uid `uid`."""
  for pid in filter(str.isdigit, os.listdir("/proc")):
    status = task_status(pid)
    if status and int(status["Uid"].split()[0]) == uid:
      if not status["State"].startswith("Z") or int(status.get("Threads", "1")) > 1:
        return True
  return False


def user_tasks() -> int:
  """How many processes and threads our real uid has (what RLIMIT_NPROC counts)."""
  uid = os.getuid()
  total = 0
  for pid in filter(str.isdigit, os.listdir("/proc")):
    status = task_status(pid)
    if status and int(status["Uid"].split()[0]) == uid:
      total += int(status.get("Threads", "1"))
  return total


def wait_for_namespace(info_r: int, timeout_s: float = 5.0) -> None:
  """Waits until the init of the sandbox's PID namespace (named on bwrap's --info-fd) has exited.

  That init dies with bwrap (--die-with-parent), and the kernel kills and reaps every other process of the
  namespace before the init itself counts as exited.
  """
  try:
    info = json.loads(os.read(info_r, READ_CHUNK) or b"{}")
  except (BlockingIOError, ValueError):
    return  # bwrap died before it created the namespace.
  try:
    pidfd = os.pidfd_open(info["child-pid"])
  except (KeyError, OSError):
    return
  try:
    if not poll(pidfd, select.POLLIN, timeout_s):
      logging.error("sandbox: PID namespace of pid %d outlived SIGKILL for %.0f s", info["child-pid"], timeout_s)
  finally:
    os.close(pidfd)


def make_workdir(files: Mapping[str, str | bytes], uid: int | None) -> str:
  """Creates the sandbox's working directory holding `files`, owned by `uid` (when given), private to it."""
  workdir = tempfile.mkdtemp(prefix="rest_jax_sandbox_")
  try:
    for name, content in files.items():
      path = os.path.normpath(os.path.join(workdir, name))
      if os.path.isabs(name) or not path.startswith(workdir + os.sep):
        raise ValueError(f"sandbox file names must be relative paths inside the working directory, got {name!r}")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
    if uid is not None:
      for root, dirs, names in os.walk(workdir):
        for name in [root, *(os.path.join(root, n) for n in dirs + names)]:
          os.chown(name, uid, uid)
      # Group root, so that bwrap (root without CAP_DAC_OVERRIDE) can chdir into it; no other uid can.
      os.chown(workdir, uid, 0)
      os.chmod(workdir, 0o770)
  except BaseException:
    remove_tree(workdir)
    raise
  return workdir


def remove_tree(path: str) -> None:
  """Deletes a working directory, whatever the program did to the permissions inside it."""

  def make_writable_and_retry(function: Any, failed: str, _: Any) -> None:
    # The program may have taken permissions away from its own files (as root this never happens).
    with contextlib.suppress(OSError):
      os.chmod(os.path.dirname(failed), 0o700)
      os.chmod(failed, 0o700)
      function(failed)

  shutil.rmtree(path, onerror=make_writable_and_retry)
  if os.path.lexists(path):
    shutil.rmtree(path, ignore_errors=True)


def prlimit_command(limits: "Limits", nproc: int) -> list[str]:
  """Runs what follows under the resource limits of `limits`, with RLIMIT_NPROC at `nproc`."""
  # The hard CPU limit is one second past the soft one, so a program that handles SIGXCPU is killed anyway.
  return [
      tool("prlimit"), f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}", f"--as={limits.memory_bytes}",
      f"--fsize={limits.file_bytes}", f"--nofile={limits.open_files}", f"--nproc={nproc}", "--core=0", "--",
  ]


def privileges_command(uid: int | None) -> list[str]:
  """Runs what follows with no way to gain privileges, as `uid` (when given) with no capabilities."""
  if uid is None:
    return [tool("setpriv"), "--no-new-privs", "--"]
  return [
      tool("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
      "--bounding-set=-all", "--no-new-privs", "--",
  ]


def bubblewrap_command(
    argv: list[str], workdir: str, uid: int | None, info_fd: int, env: Mapping[str, str], limits: "Limits"
) -> list[str]:
  """Runs argv in the sandbox described in `rest_jax.sandbox`, as `uid` when given (we are root)."""
  command = [
      tool("bwrap"), "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
      "--die-with-parent", "--new-session", "--info-fd", str(info_fd),
  ]
  if uid is None:
    command += ["--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL"]
  else:
    # As root, bwrap mounts without a user namespace and setpriv drops to `uid`, which RLIMIT_NPROC counts.
    command += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
  command += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
  for path in hidden_dirs():
    if path in WRITABLE_TMPFS:
      command += ["--perms", "1777", "--size", str(limits.file_bytes)]
    command += ["--tmpfs", path]
  for path in python_dirs():
    command += mount_point_parents(path) + ["--ro-bind", path, path]
  command += mount_point_parents(workdir) + ["--bind", workdir, workdir, "--chdir", workdir, "--clearenv"]
  for name, value in env.items():
    command += ["--setenv", name, value]
  return command + ["--"] + privileges_command(uid) + argv


def mount_point_parents(path: str) -> list[str]:
  """Creates the directories above a mount point inside a hidden dir with mode 0755.

  bwrap would create them with mode 0700, which the sandbox uid cannot enter.
  """
  parents = [str(p) for p in pathlib.Path(path).parents if under(str(p), hidden_dirs())]
  command = []
  for parent in reversed([p for p in parents if p not in hidden_dirs()]):
    command += ["--perms", "0755", "--dir", parent]
  return command


@functools.cache
def tool(name: str) -> str:
  """The path of an executable the sandbox needs."""
  path = shutil.which(name, path=PATH) or shutil.which(name)
  if path is None:
    raise RuntimeError(f"the sandbox needs {name!r}: install {'bubblewrap' if name == 'bwrap' else 'util-linux'}")
  return path


@functools.cache
def hidden_dirs() -> list[str]:
  """The host directories that the bubblewrap sandbox sees as empty tmpfs mounts."""
  home = os.path.expanduser("~")
  hidden = [*HIDDEN_DIRS, *([home] if home not in ("/", "") and not under(home, HIDDEN_DIRS) else [])]
  return [path for path in hidden if os.path.isdir(path) and not os.path.islink(path)]


def under(path: str, roots: Sequence[str]) -> bool:
  return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


@functools.cache
def site_dirs() -> list[str]:
  """This interpreter's site-packages directories."""
  candidates = [*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
  return list(dict.fromkeys(path for path in candidates if os.path.isdir(path)))


@functools.cache
def python_dirs() -> list[str]:
  """This interpreter's directories that a hidden dir would cover, to be mounted back read-only."""
  candidates = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                                              *site_dirs())}
  candidates.add(os.path.dirname(os.path.realpath(sys.executable)))
  candidates.add(os.path.dirname(os.path.abspath(sys.executable)))
  needed = sorted(path for path in candidates if under(path, hidden_dirs()))
  return [path for path in needed if not under(path, [p for p in needed if p != path])]


def reachable_by_others(program: str) -> bool:
  """Whether a uid with no special rights can execute `program` (every directory above it searchable)."""
  path = shutil.which(program, path=PATH) if os.sep not in program else program
  if path is None:
    return False
  path = os.path.realpath(path)
  directories = [p for p in pathlib.Path(path).parents]
  return all(os.stat(d).st_mode & 0o001 for d in directories) and bool(os.stat(path).st_mode & 0o001)
