"""The fork server of a warm sandbox worker: started once inside a sandbox, it runs each program in a fresh fork.

Internal to `rest_jax.sandbox` (which documents the design); stdlib only, and run as the sandbox's unprivileged uid.
`python -s -S fork_server.py FD` talks to the host over the SOCK_SEQPACKET socket FD, one program at a time:

  host -> server:  marshal'd {"cwd", "tmpdir", "argv", "code", "env", "rlimits"} with three fds (the program's stdin,
                   stdout and stderr pipes) as SCM_RIGHTS
  host -> server:  b"kill"  (kill the running program now; ignored when none runs)
  server -> host:  b"exit STATUS CLEAN"  once the program exited (STATUS as waitpid gives it) and everything it
                   started is dead; CLEAN is 0 when something survived or a trace of it could not be removed, and
                   the host then throws the whole sandbox away.

The child is `python -s -S -c CODE ARGV...` without the interpreter's start: it makes its own session (so its whole
process group is killed), gets the program's pipes as fds 0-2 and fresh sys.std* objects, a fresh `__main__`, its
working directory, environment (TMPDIR a fresh directory of the sandbox's /tmp) and resource limits, then runs CODE.
The server itself never sees a program's source or data (the child reads its files from its own directory), is not
dumpable (a program cannot ptrace it or open its /proc files, so it can only kill it: the host then starts another),
and is the subreaper of everything its programs start: after each program it SIGKILLs every process it can signal
(kill(-1): in the sandbox's PID namespace, all but itself and the namespace's init) until it has no children left,
then empties /tmp, /var/tmp and /dev/shm and checks that no SysV IPC object is left.

It imports no more than the harness needs before a program would: `_json` (the harness's codec) is the only module
here on the programs' behalf; `random` and `tempfile` are never imported, so no seeded state is shared by forks.
"""

import _json  # noqa: F401  (imported once here so that no program's harness pays for it)
import _socket
import builtins
import ctypes
import io
import marshal
import os
import resource
import select
import signal
import stat
import sys
import time

_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
_SYSV_IPC = ("/proc/sysvipc/shm", "/proc/sysvipc/msg", "/proc/sysvipc/sem")
_KILL_TIMEOUT_S = 5.0
_MAX_MESSAGE = 1 << 20
_CANNOT_START = 126
_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option, value):
  if _libc.prctl(option, value, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "prctl failed")


def _receive(sock):
  """The next message and the fds sent with it; b"" when the host is gone."""
  message, ancillary, _, _ = sock.recvmsg(_MAX_MESSAGE, _socket.CMSG_SPACE(3 * 4))
  fds = []
  for level, kind, data in ancillary:
    if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
      fds += memoryview(data[: len(data) - len(data) % 4]).cast("i").tolist()
  return message, fds


def _contained():
  """Whether kill(-1) is safe here: not root, and alone in a PID namespace with its init (its parent) only."""
  if os.geteuid() == 0 or os.getuid() == 0 or os.getppid() != 1:
    return False
  return {pid for pid in os.listdir("/proc") if pid.isdigit()} <= {"1", str(os.getpid())}


def main():
  if not _contained():
    # kill(-1) below would reach every process this uid may signal outside a sandbox.
    sys.exit("fork server: refusing to run outside a sandbox's PID namespace or as root")
  sock = _socket.socket(fileno=int(sys.argv[1]))
  _prctl(_PR_SET_DUMPABLE, 0)
  _prctl(_PR_SET_CHILD_SUBREAPER, 1)
  program_path = [""] + sys.path[1:]  # What `python -s -S -c` puts on sys.path.
  depth = _depth()
  while True:
    try:
      message, fds = _receive(sock)
    except OSError:
      return
    if not message:
      return
    if message == b"kill" or len(fds) != 3:
      for fd in fds:
        os.close(fd)
      continue
    request = marshal.loads(message)
    pid = os.fork()
    if pid == 0:
      _run_program(request, fds, sock, program_path, depth)
    for fd in fds:
      os.close(fd)
    status, host_gone = _wait(sock, pid)
    clean = _kill_all() and _empty_scratch() and _no_ipc_objects()
    if host_gone:
      return
    sock.send(b"exit %d %d" % (status, clean))


def _wait(sock, pid):
  """Waits until the program exits or the host asks to kill it; returns its wait status and whether the host left."""
  pidfd = os.pidfd_open(pid)
  poller = select.poll()
  poller.register(pidfd, select.POLLIN)
  poller.register(sock.fileno(), select.POLLIN)
  host_gone = False
  try:
    while True:
      ready = {fd for fd, _ in poller.poll()}
      if pidfd in ready:
        break
      try:
        message, fds = _receive(sock)
      except OSError:
        message, fds = b"", []
      for fd in fds:
        os.close(fd)
      if not message:
        host_gone = True
        poller.unregister(sock.fileno())
      try:
        os.killpg(pid, signal.SIGKILL)
      except OSError:
        os.kill(pid, signal.SIGKILL)  # Killed before its setsid.
  finally:
    os.close(pidfd)
  return os.waitpid(pid, 0)[1], host_gone


def _kill_all():
  """SIGKILLs every other process of the sandbox and reaps them; False if one survives."""
  deadline = time.monotonic() + _KILL_TIMEOUT_S
  while True:
    try:
      os.kill(-1, signal.SIGKILL)  # A fork racing with this fails; the next round gets what it made anyway.
    except OSError:
      pass
    try:
      while os.waitpid(-1, os.WNOHANG)[0]:
        pass
    except ChildProcessError:
      break
    if time.monotonic() > deadline:
      return False
    time.sleep(0.0005)
  left = [pid for pid in os.listdir("/proc") if pid.isdigit() and pid not in ("1", str(os.getpid()))]
  return not left


def _remove(path):
  info = os.lstat(path)
  if stat.S_ISDIR(info.st_mode):
    os.chmod(path, 0o700)
    for name in os.listdir(path):
      _remove(os.path.join(path, name))
    os.rmdir(path)
  else:
    os.unlink(path)


def _empty_scratch():
  # The directories above this server's own (bound read-only where the host keeps it, say below /tmp) stay.
  keep = os.path.dirname(os.path.abspath(sys.argv[0])) + "/"
  try:
    left = []
    for directory in _SCRATCH_DIRS:
      if os.path.isdir(directory):
        for name in os.listdir(directory):
          path = os.path.join(directory, name)
          if keep.startswith(path + "/"):
            left.append(path)
          else:
            _remove(path)
    return all(not os.path.isdir(d) or os.listdir(d) == [os.path.basename(p) for p in left if os.path.dirname(p) == d]
               for d in _SCRATCH_DIRS)
  except (OSError, RecursionError):
    return False


def _no_ipc_objects():
  for path in _SYSV_IPC:
    try:
      with open(path, "rb") as f:
        if len(f.read().splitlines()) > 1:
          return False
    except FileNotFoundError:
      pass
    except OSError:
      return False
  return True


def _depth():
  frame, depth = sys._getframe(), 0
  while frame is not None:
    frame, depth = frame.f_back, depth + 1
  return depth


def _stdio(fd, name, like):
  """A new sys.std* object on fd, made as the interpreter makes them at start (pylifecycle.c create_stdio)."""
  buffer = io.open(fd, "rb" if name == "<stdin>" else "wb", closefd=False)
  buffer.raw.name = name
  stream = io.TextIOWrapper(buffer, encoding=like.encoding, errors=like.errors, newline="\n",
                            line_buffering=like.line_buffering, write_through=False)
  stream.mode = "r" if name == "<stdin>" else "w"
  return stream


def _run_program(request, fds, sock, program_path, depth):
  """In the forked child: becomes the program's process and runs it; never returns."""
  try:
    sock.close()
    os.setsid()
    for target, fd in enumerate(fds):
      os.dup2(fd, target)
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    _prctl(_PR_SET_DUMPABLE, 1)  # As a fresh process is; only the server must stay out of reach.
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.mkdir(request["tmpdir"], 0o700)
    for kind, soft, hard in request["rlimits"]:
      _, current_hard = resource.getrlimit(kind)
      if current_hard != resource.RLIM_INFINITY:
        hard = current_hard if hard == resource.RLIM_INFINITY else min(hard, current_hard)
      resource.setrlimit(kind, (min(soft, hard) if hard != resource.RLIM_INFINITY else soft, hard))
    sys.argv = list(request["argv"])
    sys.path[:] = program_path
    sys.setrecursionlimit(sys.getrecursionlimit() + depth + 2)  # The frames below the program's own.
    sys.stdin = sys.__stdin__ = _stdio(0, "<stdin>", sys.__stdin__)
    sys.stdout = sys.__stdout__ = _stdio(1, "<stdout>", sys.__stdout__)
    sys.stderr = sys.__stderr__ = _stdio(2, "<stderr>", sys.__stderr__)
    main_module = type(sys)("__main__")
    main_module.__builtins__ = builtins
    main_module.__loader__ = sys.modules["__main__"].__loader__
    main_module.__annotations__ = {}
    sys.modules["__main__"] = main_module
    code = compile(request["code"], "<string>", "exec", dont_inherit=True)
    del request, fds, sock
  except BaseException as e:  # pylint: disable=broad-except
    os.write(2, ("sandbox: the warm worker could not start the program: " + repr(e)[:500] + "\n").encode())
    os._exit(_CANNOT_START)
  os._exit(_run_main(code, main_module.__dict__))


def _run_main(code, namespace):
  """Runs code as `python -c` would, with its exit status, atexit handlers and threads joined at the end."""
  status = 0
  interrupted = False
  try:
    exec(code, namespace)  # pylint: disable=exec-used
  except SystemExit as e:
    status = _exit_status(e.code)
  except BaseException as e:  # pylint: disable=broad-except
    interrupted = isinstance(e, KeyboardInterrupt)
    sys.excepthook(type(e), e, e.__traceback__)
    status = 1
  try:
    if "threading" in sys.modules:
      sys.modules["threading"]._shutdown()  # pylint: disable=protected-access
    import atexit  # pylint: disable=import-outside-toplevel

    atexit._run_exitfuncs()  # pylint: disable=protected-access
  except SystemExit as e:
    status = _exit_status(e.code)
  except BaseException:  # pylint: disable=broad-except
    pass
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except BaseException:  # pylint: disable=broad-except
      status = status or 120  # What the interpreter returns when it cannot flush stdout at exit.
  if interrupted:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
  return status & 0xFF


def _exit_status(code):
  if code is None:
    return 0
  if type(code) is int:  # pylint: disable=unidiomatic-typecheck
    return code
  try:
    print(code, file=sys.stderr)
  except BaseException:  # pylint: disable=broad-except
    pass
  return 1


if __name__ == "__main__":
  main()
