"""Tests for the code rewards ("mbpp", "apps", "humaneval"): verdicts, the value codec, field checks, throughput."""

import json
import math
import threading
import time

import pytest

from rest_jax import rewards
from rest_jax import sandbox
from rest_jax.rewards import code
from rest_jax.rewards import code_harness
from tests.sandbox_modes import fresh_workers, sandbox_mode  # noqa: F401  (every test in both modes)


@pytest.fixture
def sandbox_starts(monkeypatch):
  """Counts sandboxes started (sessions and runs) and the most running at once."""
  counts = {"session": 0, "run": 0, "running": 0, "max_running": 0}
  lock = threading.Lock()
  session_cls, run = sandbox.Session, sandbox.run

  def enter(kind):
    with lock:
      counts[kind] += 1
      counts["running"] += 1
      counts["max_running"] = max(counts["max_running"], counts["running"])

  def leave():
    with lock:
      counts["running"] -= 1

  class CountingSession(session_cls):
    def __init__(self, *args, **kwargs):
      enter("session")
      self._counted = True
      super().__init__(*args, **kwargs)

    def close(self):
      if getattr(self, "_counted", False):
        self._counted = False
        leave()
      return super().close()

  def counting_run(*args, **kwargs):
    enter("run")
    try:
      return run(*args, **kwargs)
    finally:
      leave()

  monkeypatch.setattr(sandbox, "Session", CountingSession)
  monkeypatch.setattr(sandbox, "run", counting_run)
  return counts


def _mbpp(completions, test_list, setup=""):
  n = len(completions)
  return rewards.get("mbpp")([""] * n, completions, test_list=[test_list] * n, test_setup_code=[setup] * n)


def _apps(completions, input_output, **fields):
  n = len(completions)
  io = json.dumps(input_output) if isinstance(input_output, dict) else input_output
  return rewards.get("apps")([""] * n, completions, input_output=[io] * n, **{k: [v] * n for k, v in fields.items()})


# The value codec.


@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 2**53, -2**53 - 1, 3**200, -(10**5000), 0.5, -0.0, math.inf, -math.inf, 1e308, 5e-324,
    "", "héllo\n\"ünïcode\"\u2028", b"\x00\xff", 1 + 2j, complex(math.inf, -0.0), [], (), [1, [2, (3,)]],
    {1, "a", (2, 3)}, frozenset({frozenset({1})}), {"a": 1, (1, 2): [3], 4.5: None, frozenset(): b""},
], ids=lambda value: type(value).__name__)
def test_codec_round_trips_exact_types(value):
  decoded = code_harness.decode(code_harness.loads(code_harness.dumps(code_harness.encode(value))))
  assert decoded == value and type(decoded) is type(value)
  if isinstance(value, float):
    assert math.copysign(1, decoded) == math.copysign(1, value)


def test_codec_round_trips_nan():
  assert math.isnan(code_harness.decode(code_harness.loads(code_harness.dumps(code_harness.encode(math.nan)))))


class _Int(int):

  def __eq__(self, other):
    return True

  __hash__ = int.__hash__


class _FakeClass:
  __class__ = int


@pytest.mark.parametrize("value", [_Int(3), [1, _Int(3)], {"k": _FakeClass()}, object(), print, bytearray(b"x"),
                                   type("S", (str,), {})("x"), type("D", (dict,), {})()])
def test_codec_rejects_subclasses_and_objects(value):
  with pytest.raises(code_harness.CodecError):
    code_harness.encode(value)


def test_codec_rejects_deep_and_cyclic_values():
  cyclic = []
  cyclic.append(cyclic)
  with pytest.raises(code_harness.CodecError):
    code_harness.encode(cyclic)
  with pytest.raises(code_harness.CodecError):
    code_harness.decode(code_harness.loads("[\"l\", [" * 300 + "]]" * 300))


@pytest.mark.parametrize("text", [
    "1.5", "NaN", "Infinity", "123456789012345678901", '{"a": 1}', '["z", []]', '["l", 1]', '["s", [["l", []]]]',
    '["d", [[["l", []], 1]]]', '["x", "0x1.0q"]', '["i", "12"]', '["b", "zz"]', '["r", "root"]', '["c", "0x1p0"]',
    "[" * 100000 + "]" * 100000,
])
def test_codec_rejects_malformed_data(text):
  with pytest.raises(code_harness.CodecError):
    code_harness.decode(code_harness.loads(text))


# Text helpers.


def test_strip_fences():
  assert code.strip_fences("Here:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"
  assert code.strip_fences("```\nx = 1\n```") == "x = 1\n"
  assert code.strip_fences("```py\nx = 1\n") == "x = 1\n"  # Cut off before the closing fence.
  assert code.strip_fences("x = 1\n") == "x = 1\n"


@pytest.mark.parametrize("output,expected,matches", [
    ("3\n", "3", True),
    ("1 2\n3 4  \n\n", "1 2\n3 4\n", True),
    ("  1   2\r\n3 4", "1 2\n3 4", True),
    ("0.3333333333333333\n", "0.333333333", True),
    ("0.33\n", "0.333333333", False),
    ("3.0", "3", True),
    ("1000000008", "1000000007", False),  # Integers must be equal, not merely close.
    ("3 4\n1 2", "1 2\n3 4", False),  # Order matters.
    ("2 1", "1 2", False),
    ("YES", "yes", False),
    ("1 2", "1 2 3", False),
    ("", "", True),
    ("nan", "nan", True),
    ("inf", "1e400", False),
])
def test_stdout_matches(output, expected, matches):
  assert code.stdout_matches(output, expected) == matches


# MBPP.

_MBPP_TESTS = ["assert similar_elements((3, 4, 5, 6), (5, 7, 4, 10)) == (4, 5)",
               "assert similar_elements((1, 2, 3, 4), (5, 4, 3, 7)) == (3, 4)"]
_MBPP_RIGHT = "def similar_elements(a, b):\n  return tuple(sorted(set(a) & set(b)))\n"
_MBPP_WRONG = "def similar_elements(a, b):\n  return tuple(set(a) & set(b))[:1]\n"


def test_mbpp_right_and_wrong_programs():
  fenced = f"Sure, here it is:\n```python\n{_MBPP_RIGHT}```\nIt intersects the sets."
  misnamed = _MBPP_RIGHT.replace("similar_elements", "common")
  raising = "def similar_elements(a, b):\n  raise ValueError('no')\n"
  assert _mbpp([_MBPP_RIGHT, fenced, _MBPP_WRONG, misnamed, raising, "def broken(:\n", ""], _MBPP_TESTS) == [
      1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_mbpp_setup_code_and_fixture_objects_passed_by_reference():
  setup = ("import math\nclass Node:\n  def __init__(self, data):\n    self.data = data\n    self.left = None\n"
           "    self.right = None\nroot = Node(1)\nroot.left = Node(2)\nroot.right = Node(3)\n"
           "root.left.left = Node(4)\nflat = Node(7)\n")
  setup += "forest = [root, flat, None]\n"
  tests = ["assert max_height(root) == 3", "assert max_height(flat) == 1",
           "assert math.isclose(ratio(root), 0.75)", "assert [max_height(t) for t in forest] == [3, 1, 0]",
           "assert tallest(forest) == 3"]
  right = ("class Node:\n  pass\n\ndef max_height(node):\n  if node is None:\n    return 0\n"
           "  return 1 + max(max_height(node.left), max_height(node.right))\n\ndef ratio(node):\n"
           "  return max_height(node) / 4\n\ndef tallest(trees):\n  return max(map(max_height, trees))\n")
  wrong = right.replace("1 + max(", "2 + max(")
  assert _mbpp([right, wrong], tests, setup) == [1.0, 0.0]


def test_mbpp_asserts_see_the_modules_a_program_imported():
  tests = ["assert math.isclose(area(2), 12.566, rel_tol=0.001)"]
  right = "import math\ndef area(r):\n  return math.pi * r * r\n"
  assert _mbpp([right, right.replace("r * r", "r")], tests) == [1.0, 0.0]


def test_mbpp_program_cannot_shadow_what_the_asserts_use():
  tests = ["assert set(pair(1)) == set([1, 2])", "assert len(pair(5)) == 2",
           "assert math.isclose(half(3), 1.5)"]
  shadowing = ("import types\ndef pair(x):\n  return 0\ndef set(*a):\n  return 0\ndef len(*a):\n  return 2\n"
               "def half(x):\n  return 0\nmath = types.ModuleType('math')\nmath.isclose = lambda *a, **k: True\n")
  right = "import math\ndef pair(x):\n  return [x, x + 1]\ndef half(x):\n  return x / 2\n"
  assert _mbpp([shadowing, right], tests) == [0.0, 1.0]


def test_mbpp_names_the_program_does_not_define_fail():
  assert _mbpp(["def helper():\n  return 1\n"], ["assert helper() == 1", "assert solve() == 2"]) == [0.0]


# APPS.

_SUM_IO = {"inputs": ["1 2\n", "10 -3\n", ["5", "6"]], "outputs": ["3\n", "7\n", ["11"]]}


def test_apps_stdio_right_and_wrong_programs():
  right = "a, b = map(int, open(0).read().split())\nprint(a + b)\n"
  right_main_guard = "import sys\ndef main():\n  print(sum(map(int, sys.stdin.read().split())))\n" \
                     "if __name__ == '__main__':\n  main()\n"
  wrong = "a, b = map(int, input().split())\nprint(a - b)\n"
  crashes_after_printing = "a, b = map(int, open(0).read().split())\nprint(a + b)\nraise RuntimeError\n"
  assert _apps([right, f"```python\n{right}```", right_main_guard, wrong, crashes_after_printing],
               _SUM_IO) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_apps_stdio_multi_line_and_float_outputs():
  io = {"inputs": ["3\n"], "outputs": ["1.0000000000\n0.5000000000\n0.3333333333\n"]}
  right = "n = int(input())\nfor i in range(1, n + 1):\n  print(1 / i)\n"
  rounded = "n = int(input())\nfor i in range(1, n + 1):\n  print(f'{1 / i:.2f}')\n"
  one_line = "n = int(input())\nprint(*[1 / i for i in range(1, n + 1)])\n"
  missing_line = "n = int(input())\nfor i in range(1, n):\n  print(1 / i)\n"
  assert _apps([right, rounded, one_line, missing_line], io) == [1.0, 0.0, 0.0, 0.0]


def test_apps_stdio_per_test_timeout():
  io = {"inputs": ["0.1\n", "1.5\n"], "outputs": ["done\n", "done\n"]}
  sleepy = "import time\ntime.sleep(float(input()))\nprint('done')\n"
  assert _apps([sleepy], io, timeout_s=1.0) == [0.0]
  assert _apps([sleepy], io, timeout_s=4.0) == [1.0]


def test_apps_call_based_function_and_class_solution():
  io = {"fn_name": "two_sum", "inputs": [[[2, 7, 11, 15], 9], [[3, 2, 4], 6]], "outputs": [[[0, 1]], [[1, 2]]]}
  function = "def two_sum(nums, target):\n  seen = {}\n  for i, x in enumerate(nums):\n    if target - x in seen:\n" \
             "      return [seen[target - x], i]\n    seen[x] = i\n"
  as_tuple = function.replace("return [seen[target - x], i]", "return seen[target - x], i")
  solution = "class Solution:\n  def two_sum(self, nums: List[int], target: int) -> List[int]:\n" + "\n".join(
      "  " + line for line in function.splitlines()[1:]) + "\n"
  wrong = function.replace("[seen[target - x], i]", "[i, seen[target - x]]")
  missing = "def other(nums, target):\n  return [0, 1]\n"
  assert _apps([function, as_tuple, solution, f"```\n{function}```", wrong, missing], io) == [
      1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_apps_call_based_dict_keys_become_ints():
  io = {"fn_name": "invert", "inputs": [[{"1": "a", "2": "b"}]], "outputs": [[{"a": 1, "b": 2}]]}
  right = "def invert(d):\n  assert all(type(k) is int for k in d)\n  return {v: k for k, v in d.items()}\n"
  assert _apps([right, right.replace("{v: k", "{v: -k")], io) == [1.0, 0.0]


# HumanEval.

_PROMPT = 'def add(x: int, y: int) -> int:\n    """Adds two numbers."""\n'
_TEST = "def check(candidate):\n" + "".join(f"    assert candidate({i}, {2 * i}) == {3 * i}\n" for i in range(100))


def _humaneval(completions, test=_TEST, prompt=_PROMPT, entry_point="add"):
  n = len(completions)
  return rewards.get("humaneval")([prompt] * n, completions, prompt=[prompt] * n, test=[test] * n,
                                  entry_point=[entry_point] * n)


def test_humaneval_uses_one_session_per_program_and_scores_duplicates_once(sandbox_starts):
  right, wrong = "    return x + y\n", "    return x - y\n"
  assert _humaneval([right, wrong, right, right, wrong]) == [1.0, 0.0, 1.0, 1.0, 0.0]
  assert sandbox_starts["session"] == 2  # 100 calls each, two distinct programs.


def test_mbpp_and_apps_score_duplicates_once(sandbox_starts):
  assert _mbpp([_MBPP_RIGHT, _MBPP_WRONG, _MBPP_RIGHT], _MBPP_TESTS) == [1.0, 0.0, 1.0]
  assert sandbox_starts["session"] == 2
  right = "print(sum(map(int, open(0).read().split())))\n"
  assert _apps([right] * 4, _SUM_IO) == [1.0] * 4
  assert sandbox_starts["run"] == len(_SUM_IO["inputs"])


def test_stdio_stops_at_the_first_failed_test(sandbox_starts):
  assert _apps(["print(0)\n"], _SUM_IO) == [0.0]
  assert sandbox_starts["run"] == 1


def test_concurrent_calls_from_threads_share_the_sandbox_limit(sandbox_starts, monkeypatch):
  monkeypatch.setattr(code, "_slots", threading.BoundedSemaphore(3))
  monkeypatch.setattr(code, "_max_sandboxes", 3)
  results = {}

  def worker(i):
    right, wrong = f"    return x + y + {i} - {i}\n", f"    return x + y + {i + 1}\n"
    results[i] = _humaneval([right, wrong])

  threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert results == {i: [1.0, 0.0] for i in range(4)}
  assert sandbox_starts["session"] == 8
  assert sandbox_starts["max_running"] <= 3


def test_set_max_sandboxes():
  previous = code._max_sandboxes
  try:
    code.set_max_sandboxes(5)
    assert code._max_sandboxes == 5
    with pytest.raises(ValueError, match="at least one"):
      code.set_max_sandboxes(0)
  finally:
    code.set_max_sandboxes(previous)


def test_what_a_program_prints_does_not_disturb_the_protocol():
  noisy = ("    import os, sys\n    print('debug', x, y)\n    sys.stdout.write('{\"id\": 1}\\n')\n"
           "    sys.stderr.write('warning\\n')\n    os.write(1, b'raw\\n')\n    return x + y\n")
  assert _humaneval([noisy, noisy.replace("return x + y", "return x * y")]) == [1.0, 0.0]


def test_humaneval_prompt_helpers_are_trusted():
  prompt = "def helper(x):\n    return 2 * x\n\n\ndef double(x):\n    \"\"\"Returns helper(x).\"\"\"\n"
  test = "def check(candidate):\n    for i in range(5):\n        assert candidate(i) == helper(i)\n"
  redefines_helper = "    return 0\n\n\ndef helper(x):\n    return 0\n"
  assert _humaneval(["    return helper(x)\n", redefines_helper], test=test, prompt=prompt,
                    entry_point="double") == [1.0, 0.0]


# Bad fields.


@pytest.mark.parametrize("name,fields,message", [
    ("humaneval", {"prompt": [_PROMPT], "test": [_TEST]}, "needs field 'entry_point'"),
    ("humaneval", {"prompt": [_PROMPT], "test": ["def check(:"], "entry_point": ["add"]}, "not valid Python"),
    ("humaneval", {"prompt": [_PROMPT], "test": [_TEST], "entry_point": ["a-b"]}, "not a Python name"),
    ("humaneval", {"prompt": [_PROMPT], "test": ["x = 1"], "entry_point": ["add"]}, "defines no check"),
    ("humaneval", {"prompt": [None], "test": [_TEST], "entry_point": ["add"]}, "must be a str"),
    ("mbpp", {"test_list": ["assert f() == 1"]}, "list of assert strings"),
    ("mbpp", {"test_list": [["assert f( == 1"]]}, "'test_list' of item 0 is not valid Python"),
    ("mbpp", {"test_list": [["assert f() == 1"]], "test_setup_code": [3]}, "must be a str"),
    ("apps", {"input_output": ["{not json"]}, "not valid JSON"),
    ("apps", {"input_output": ['{"inputs": [], "outputs": [1]}']}, "0 inputs for 1 outputs"),
    ("apps", {"input_output": ['{"inputs": ["1"]}']}, "lists 'inputs' and 'outputs'"),
    ("apps", {"input_output": ['{"inputs": [1], "outputs": ["1"]}']}, "need str"),
    ("apps", {"input_output": ['{"inputs": [1], "outputs": [1], "fn_name": "f"}']}, "lists of arguments"),
    ("apps", {"input_output": ['{"inputs": [], "outputs": [], "fn_name": "no name"}']}, "must be a Python name"),
    ("apps", {"input_output": ['{"inputs": [], "outputs": []}'], "timeout_s": [-1]}, "timeout_s"),
])
def test_bad_fields_raise_one_line_errors(name, fields, message):
  with pytest.raises(ValueError, match=message) as info:
    rewards.get(name)([""], ["x = 1\n"], **fields)
  assert "\n" not in str(info.value)
  assert repr(name) in str(info.value)


def test_rewards_are_registered():
  assert {"humaneval", "mbpp", "apps"} <= set(rewards.names())


def test_a_slow_program_scores_zero_without_holding_up_the_rest(monkeypatch):
  monkeypatch.setattr(code, "CALL_TIMEOUT_S", 1.0)
  start = time.monotonic()
  slow = "    import time\n    time.sleep(30)\n"
  assert _humaneval([slow, "    return x + y\n"], test="def check(candidate):\n    assert candidate(1, 2) == 3\n") == [
      0.0, 1.0]
  assert time.monotonic() - start < 15


def test_codec_rejects_values_built_to_collide_in_hash():
  mersenne = 2**61 - 1  # CPython hashes ints modulo this prime.
  for colliding in ([2**62 + i * mersenne for i in range(1000)], [2.0 ** (61 * j) for j in range(-16, 17)],
                    [(1, 2**62 + i * mersenne) for i in range(100)]):
    assert len({hash(x) for x in colliding}) == 1
    with pytest.raises(code_harness.CodecError, match="collide"):
      code_harness.decode(code_harness.loads(code_harness.dumps(code_harness.encode(colliding))))
  everyday = [-1, -2] * 1000 + [2**70, 2**70, 0.5, (1, 2), (1, 2), frozenset({-1, -2})] * 100
  assert code_harness.decode(code_harness.loads(code_harness.dumps(code_harness.encode(everyday)))) == everyday
