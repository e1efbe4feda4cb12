"""Runs a test module in both sandbox modes: a fresh sandbox per program, and warm workers (REST_JAX_SANDBOX_WARM).

`from tests.sandbox_modes import sandbox_mode, fresh_workers  # noqa: F401` parametrises every test of a module over
the two modes (module-scoped, so module-scoped fixtures that run programs can depend on `sandbox_mode` too) and
stops the idle warm workers before and after each test, so that no worker (nor its files, fds or uid slot) outlives
the test that started it. Warm workers are bubblewrap's only: a test of the rlimits backend runs once, per program.
"""

import os

import pytest

from rest_jax import _sandbox_warm
from rest_jax import sandbox

PER_PROGRAM = "per_program"
WARM = "warm"
MODES = [PER_PROGRAM, WARM]


@pytest.fixture(scope="module", params=MODES)
def sandbox_mode(request):
  if request.param == WARM and sandbox.unavailable_reason(sandbox.BUBBLEWRAP):
    pytest.skip("warm workers need bubblewrap, which cannot run here")
  start = _sandbox_warm.Worker.start

  def counting_start(self, *args, **kwargs):
    _WARM_STARTS[0] += 1
    return start(self, *args, **kwargs)

  _WARM_STARTS[0] = 0
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(_sandbox_warm.WARM_ENV, "1" if request.param == WARM else "0")
    patch.setattr(_sandbox_warm.Worker, "start", counting_start)
    sandbox.close_workers()
    yield request.param
    sandbox.close_workers()


@pytest.fixture(autouse=True)
def fresh_workers(sandbox_mode, request):
  params = getattr(getattr(request.node, "callspec", None), "params", {})
  if sandbox_mode == WARM and params.get("backend") == sandbox.RLIMITS:
    pytest.skip("warm workers are bubblewrap's only")
  _WARM_STARTS[0] = 0
  sandbox.close_workers()
  yield
  sandbox.close_workers()


def warm() -> bool:
  """Whether programs run in warm workers now."""
  return _sandbox_warm.enabled() and sandbox.backend() == sandbox.BUBBLEWRAP


def _status(pid: str) -> dict[str, str] | None:
  try:
    with open(f"/proc/{pid}/status") as f:
      return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
  except OSError:
    return None


def _cmdline(pid: str) -> bytes:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return f.read()
  except OSError:
    return b""


def processes_of(uid: int) -> list[tuple[str, dict[str, str]]]:
  """The live processes (not zombies with no threads left) whose real uid is `uid`."""
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    status = _status(pid)
    if status is None or int(status["Uid"].split()[0]) != uid:
      continue
    if status["State"].startswith("Z") and status.get("Threads", "1").strip() == "1":
      continue
    found.append((pid, status))
  return found


def idle_worker_uids() -> list[int]:
  """The slot uids of the idle warm workers (ours while they are idle: no other sandbox runs as them)."""
  with _sandbox_warm.POOL._lock:  # pylint: disable=protected-access
    return [w.uid for w in _sandbox_warm.POOL._idle if w.uid is not None]  # pylint: disable=protected-access


def left_under(uids) -> list[str]:
  """What is alive under the slot uids of warm workers but their fork servers (empty when nothing else is).

  A forked program carries its server's command line, so it is found by uid: under a worker's slot uid only the
  server may live between programs. The server is the one process of that uid whose parent (the namespace's init,
  root's bwrap) is not of that uid; what programs start is the server's (its subreaper's) or theirs.
  """
  found = []
  for uid in uids:
    servers = []
    for pid, status in processes_of(uid):
      parent = _status(status["PPid"].strip())
      if parent is not None and int(parent["Uid"].split()[0]) != uid and b"fork_server.py" in _cmdline(pid):
        servers.append(pid)
      else:
        found.append(f"{pid} uid={uid} {_cmdline(pid)!r}")
    found += [f"{pid} uid={uid} (a second server)" for pid in servers[1:]]
  return found


def left_in_idle_workers() -> list[str]:
  """What programs left alive in the idle warm workers (`left_under` their uids). Not root, every sandbox runs as
  our own uid and this cannot tell them apart: empty."""
  return left_under(idle_worker_uids())


def warm_starts() -> int:
  """How many programs started in warm workers since the current test (or, in a module-scoped fixture, the
  module's mode) began."""
  return _WARM_STARTS[0]


_WARM_STARTS = [0]
