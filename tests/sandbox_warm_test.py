"""Warm sandbox workers (REST_JAX_SANDBOX_WARM=1, the default): consecutive programs in one worker are isolated."""

import os
import subprocess
import sys

import pytest

from rest_jax import _sandbox_warm
from rest_jax import sandbox


@pytest.fixture(autouse=True)
def warm(monkeypatch):
  monkeypatch.setenv("REST_JAX_SANDBOX", sandbox.BUBBLEWRAP)
  monkeypatch.setenv(_sandbox_warm.WARM_ENV, "1")
  if sandbox.unavailable_reason(sandbox.BUBBLEWRAP):
    pytest.skip("bubblewrap cannot run here")
  sandbox.close_workers()
  yield
  sandbox.close_workers()


def _run(source, **kwargs):
  return sandbox.run(sandbox.python_argv("main.py", "arg"), files={"main.py": source}, **kwargs)


def test_round_trip_and_exit_status():
  result = _run("import os, sys\nprint(sys.argv, os.getcwd() == os.environ['HOME'], sys.stdin.read())\nexit(7)",
                stdin=b"in")
  assert result.stdout == b"['main.py', 'arg'] True in\n"
  assert (result.returncode, result.timed_out) == (7, False)
  assert _run("raise ValueError('boom')").returncode == 1
  assert _run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)").returncode == 128 + 9


def test_one_worker_serves_consecutive_programs():
  server_start = "import os\nprint(open(f'/proc/{os.getppid()}/stat').read().split()[21])"
  first, second = _run(server_start), _run(server_start)
  assert first.stdout == second.stdout  # The same fork server.


def test_nothing_of_a_program_reaches_the_next():
  leave = _run("""
import os, resource, sys
open('/tmp/left', 'w').write('x'); open('/dev/shm/left', 'w').write('x'); open('left', 'w').write('x')
os.environ['LEFT'] = '1'
resource.setrlimit(resource.RLIMIT_NOFILE, (8, 8))
if os.fork() == 0:
    os.setsid()
    import time
    time.sleep(30)
print('ok')
""")
  assert leave.stdout == b"ok\n", leave
  look = _run("""
import os, resource
print(repr(('left' not in os.listdir('/tmp') and os.listdir(os.environ['TMPDIR']) == [], os.listdir('/dev/shm'),
            sorted(os.listdir('.')), 'LEFT' in os.environ, resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            sorted(p for p in os.listdir('/proc') if p.isdigit()), os.listdir('/tmp'), os.environ['TMPDIR'])))
""")
  tmp, shm, here, env, nofile, pids, *_ = eval(look.stdout.decode())  # noqa: S307  (our own program's output)
  assert tmp, look  # /tmp holds nothing of the first program; its own TMPDIR is fresh.
  assert (shm, here, env, nofile) == ([], ["main.py"], False, sandbox.Limits().open_files)
  assert len(pids) == 3, pids  # The namespace's init, the server and this program: the daemon is gone.


def test_random_state_is_not_shared_by_forks():
  draws = {_run("import random\nprint(random.random())").stdout for _ in range(3)}
  assert len(draws) == 3


def test_timeout_kills_the_group_and_a_killed_server_is_replaced():
  result = _run("import os, time\nos.fork()\ntime.sleep(30)", limits=sandbox.Limits(timeout_s=0.5))
  assert (result.returncode, result.timed_out) == (None, True) and result.wall_s < 5
  killer = _run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(1)")
  assert killer.returncode == 128 + 9
  assert _run("print('after')").stdout == b"after\n"


def test_the_server_refuses_to_run_outside_a_sandbox():
  # It runs kill(-1) after each program: outside a PID namespace of its own that would reach the whole machine.
  # Started in a PID namespace of its own (as pid 1, under root): were the check ever to fail, kill(-1) would reach
  # only that namespace, never this machine's processes.
  server = _sandbox_warm.__file__.replace("_sandbox_warm", "_fork_server")
  done = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--mount-proc", sys.executable, "-s", "-S", server,
                         "0"], capture_output=True, timeout=30, check=False)
  assert done.returncode == 1 and b"refusing" in done.stderr
