"""Tests for the "math" and "gsm8k" rewards: extraction, normalisation, equivalence, time limits, threads."""

import concurrent.futures
import os
import subprocess
import sys
import textwrap
import time

import pytest

from rest_jax import rewards
from rest_jax.rewards import math as math_rewards
from tests.rewards.math_cases import boxed
from tests.rewards.math_cases import GSM8K_CASES
from tests.rewards.math_cases import MATH_CASES

# Time a check may take past its limit here: killing a worker, pipes and thread hand-offs on a loaded 2-core machine.
_MARGIN_S = 2.0


def _score(name, cases):
  completions = [completion for completion, _, _ in cases]
  answers = [answer for _, answer, _ in cases]
  return rewards.get(name)([""] * len(cases), completions, answer=answers)


def _warm_pool(num_workers):
  """Leaves exactly `num_workers` workers, all ready, so that timings exclude start-up."""
  math_rewards.start_workers(num_workers)
  assert len(math_rewards._get_pool()._idle) == num_workers


@pytest.fixture(scope="module")
def math_scores():
  return _score("math", MATH_CASES)  # One batched call for the whole table.


@pytest.fixture(scope="module")
def gsm8k_scores():
  return _score("gsm8k", GSM8K_CASES)


@pytest.mark.parametrize("index", range(len(MATH_CASES)), ids=lambda i: f"{i}:{MATH_CASES[i][1][:20]}")
def test_math_reward_on_the_case_table(math_scores, index):
  completion, reference, expected = MATH_CASES[index]
  assert math_scores[index] == expected, (completion, reference)


@pytest.mark.parametrize("index", range(len(GSM8K_CASES)), ids=lambda i: f"{i}:{GSM8K_CASES[i][2]}")
def test_gsm8k_reward_on_the_case_table(gsm8k_scores, index):
  completion, answer_field, expected = GSM8K_CASES[index]
  assert gsm8k_scores[index] == expected, (completion, answer_field)


@pytest.mark.parametrize("completion, expected", [
    (r"So $x = \boxed{\dfrac{1}{2}}$.", r"\dfrac{1}{2}"),
    (r"\boxed{\left(\frac{1}{2}, \{3\}\right)} and done", r"\left(\frac{1}{2}, \{3\}\right)"),
    (r"first \boxed{1} then \boxed{2}.", "2"),
    (r"so $\boxed 5$ ok", "5"),
    (r"$\fbox{7}$", "7"),
    (r"\boxed{3} and a truncated \boxed{\frac{1}{", "3"),
    ("Final Answer: The final answer is $\\$18.90$. I hope it is correct.", r"\$18.90"),
    ("Final Answer: The final answer is 5. I hope it is correct.", "5"),
    ("Final Answer: The final answer is $(-\\infty, 3]$.I hope it is correct.", r"(-\infty, 3]"),
    ("Final Answer: 17", "17"),
    ("The answer is $x = 3$.", "x = 3"),
    ("Thus the answer is 3.5. Done.", "3.5"),
    ("The answer is \\(\\frac{3}{4}\\).", r"\frac{3}{4}"),
    ("The answer is: **12**", "12"),
    ("The final answer is \\boxed{4}. The answer is 5.", "4"),
    ("There is no marked answer, only 42.", None),
    ("", None),
    (r"\boxed{}", None),
])
def test_extract_answer(completion, expected):
  assert math_rewards.extract_answer(completion) == expected


@pytest.mark.parametrize("completion, expected", [
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("so $1,200 in all.\n#### $1,200.", "1200"),
    ("#### -3", "-3"),
    ("#### 5 apples", "5"),
    ("#### 42\nThe answer is 41.", "42"),
    ("The answer is $18.00.", "18.00"),
    ("The answer is 18 dollars.", "18"),
    ("The answer is 2 * 9 = 18.", "18"),
    ("The answer is -0.5.", "-0.5"),
    (r"So she has $\boxed{1,234}$ left.", "1234"),
    ("He pays 3 * 6 = 18 dollars in total.", "18"),
    ("Total: 1,000,000 and then 7.5.", "7.5"),
    ("No number here.", None),
])
def test_extract_gsm8k_answer(completion, expected):
  assert math_rewards.extract_gsm8k_answer(completion) == expected


def test_gsm8k_reference_is_the_text_after_the_marks_without_commas():
  field = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 1,272"
  assert math_rewards.gsm8k_reference(field) == "1272"
  assert math_rewards.gsm8k_reference("#### -5") == "-5"
  with pytest.raises(ValueError, match="####"):
    math_rewards.gsm8k_reference("72")
  with pytest.raises(ValueError, match="nothing after"):
    math_rewards.gsm8k_reference("Some work.\n####  ")


# Answers in one group are one vote; answers in different groups are different votes.
_VOTING_GROUPS = [
    [r"\dfrac{1}{2}", r"\frac12", "1/2", "0.5", ".50", r"\tfrac{2}{4}", r"$\boxed{\frac{1}{2}}$"],
    [r"\frac{1}{3}", "1/3", r"\dfrac{2}{6}", r"0.\overline{3}"],
    [r"\emptyset", r"\varnothing", "\u2205"],
    ["0.333"],
    [r"\$1,000", "1000", "1,000", r"1{,}000", r"1,\!000", "1000.00", "1000 dollars", r"1000\text{ dollars}"],
    ["1, 000", r"\{1,000\}"],
    ["50", r"50\%", "50%", "50 percent", r"50^\circ", r"50^{\circ}", "x=50", "x = 50"],
    [r"\text{(B)}", "(B)", "B", r"\textbf{(B)}", "B)"],
    ["1, 2", "1,2", r"\{1, 2\}", r"\left\{1,2\right\}"],
    ["12"],
    ["-3", "- 3", "\u22123", "-3.0"],
    ["3", "+3", "003", "3."],
    [r"(-\infty, 3]", r"\left( -\infty, 3 \right]", r"(-\infty,3]"],
    [r"(-\infty, 3)"],
    [r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{bmatrix}1\\2\end{bmatrix}"],
    [r"\frac{5}{2}", r"2\frac{1}{2}", "2.5"],
    [r"\text{Monday}", "Monday", "monday"],
    [r"\frac{\sqrt{3}}{2}", r"\dfrac{\sqrt3}{2}"],
    [r"\pi r^2", r"\pi r^{2}", r"\pi\, r^2"],
    ["5", r"5\text{ cm}", r"5 \mbox{ cm}^2", "5 square feet"],
    ["3ab"],
    [r"\infty", r"+\infty", "\u221e"],
]


def test_normalize_answer_gives_one_key_per_vote():
  keys = [{math_rewards.normalize_answer(answer) for answer in group} for group in _VOTING_GROUPS]
  for group, group_keys in zip(_VOTING_GROUPS, keys):
    assert len(group_keys) == 1, (group, group_keys)
  distinct = [next(iter(group_keys)) for group_keys in keys]
  assert len(set(distinct)) == len(distinct), distinct
  assert [math_rewards.normalize_answer(key) for key in distinct] == distinct  # A key is its own key.


def test_normalize_answer_keys_are_still_answers():
  # A voting key can itself be graded: it means what the answers it stands for mean.
  for group in _VOTING_GROUPS:
    key = math_rewards.normalize_answer(group[0])
    assert math_rewards.is_equivalent(key, group[0]), (key, group[0])


def test_numbers_and_equal_keys_are_decided_without_a_worker(monkeypatch):
  def no_pool():
    raise AssertionError("this check should not need sympy")
  monkeypatch.setattr(math_rewards, "_get_pool", no_pool)
  pairs = [("0.5", r"\frac12", True), (r"\$1,000", "1000", True), ("3.0", "3", True), ("-3", "3", False),
           ("0.333", r"\frac13", False), ("0.3333333", r"\frac13", True), ("1/2", "2", False),
           (r"\text{(C)}", "C", True), ("9" * 5000, "9" * 4999 + "8", False), ("x", "", False)]
  predictions, references, expected = zip(*pairs)
  assert math_rewards.is_equivalent_batch(predictions, references) == list(expected)


def test_a_worker_that_misses_its_deadline_is_killed_and_replaced(monkeypatch):
  # A negative grace makes the parent's deadline come before the worker's own SIGALRM, as when sympy is stuck in C.
  monkeypatch.setattr(math_rewards, "_KILL_GRACE_S", -0.75)
  _warm_pool(1)
  pool = math_rewards._get_pool()
  (worker,) = pool._idle
  start = time.monotonic()
  assert not math_rewards.is_equivalent(r"9^{9^{9^{9}}}", "1", timeout_s=1.0, num_workers=1)
  assert time.monotonic() - start < 0.25 + _MARGIN_S, time.monotonic() - start
  assert worker._process.wait(timeout=10) == -9  # SIGKILL.
  (successor,) = pool._idle  # Started at once; it boots while other checks run (later tests use it).
  assert successor is not worker and successor._process.poll() is None


def test_pathological_answers_score_zero_within_the_time_limit(monkeypatch):
  nested = "x"
  for _ in range(14):
    nested = f"({nested}+1)^{{2}}"
  pathological = [
      (r"9^{9^{9^{9}}}", "1"),  # A number with ~10^(3.7e8) digits.
      (r"10^{100000}!", "5"),
      (nested, "x^{16384}+1"),  # simplify() of a degree-16384 polynomial.
  ]
  timeout_s = 1.0
  monkeypatch.setattr(math_rewards, "DEFAULT_TIMEOUT_S", timeout_s)
  monkeypatch.setattr(math_rewards, "DEFAULT_NUM_WORKERS", len(pathological))
  _warm_pool(len(pathological))
  start = time.monotonic()
  scores = rewards.get("math")([""] * len(pathological), [boxed(p) for p, _ in pathological],
                               answer=[r for _, r in pathological])
  elapsed = time.monotonic() - start
  assert scores == [0.0] * len(pathological)
  # Each ran into the limit (none was decided quickly), in parallel, and was stopped there.
  assert timeout_s * 0.9 <= elapsed < timeout_s + math_rewards._KILL_GRACE_S + _MARGIN_S, elapsed
  # Huge inputs are not even parsed.
  start = time.monotonic()
  huge = [boxed("1+" * 5000 + "1"), boxed(r"\frac{1}{" * 400 + "2" + "}" * 400), boxed("(" * 20000)]
  assert rewards.get("math")([""] * 3, huge, answer=["5001", "2", "1"]) == [0.0] * 3
  assert time.monotonic() - start < _MARGIN_S, time.monotonic() - start
  # The workers still answer correctly afterwards (with a generous limit: the 1 s set above is about the
  # pathological inputs, and a fresh worker's first sympy check can take longer than that on a loaded machine).
  assert math_rewards.is_equivalent("(x+1)^2", "x^2+2x+1", timeout_s=30.0)


def test_threads_calling_at_once_get_the_sequential_results(math_scores):
  reward = rewards.get("math")
  subsets = [MATH_CASES[offset::8] for offset in range(4)]  # Half the table: distinct work for each thread.
  with concurrent.futures.ThreadPoolExecutor(4) as executor:
    results = list(executor.map(lambda cases: reward([""] * len(cases), [c for c, _, _ in cases],
                                                     answer=[a for _, a, _ in cases]), subsets))
  for offset, scores in enumerate(results):
    assert scores == math_scores[offset::8]


def test_bad_inputs_raise_clear_errors():
  math_reward, gsm8k_reward = rewards.get("math"), rewards.get("gsm8k")
  with pytest.raises(ValueError, match="field 'answer' must hold strings, got int"):
    math_reward([""], [boxed("1")], answer=[1])
  with pytest.raises(ValueError, match="field 'answer' must hold strings"):
    gsm8k_reward([""], ["#### 1"], answer=[None])
  with pytest.raises(ValueError, match="empty reference"):
    math_reward([""], [boxed("1")], answer=["  "])
  with pytest.raises(ValueError, match="####"):
    gsm8k_reward([""], ["#### 1"], answer=["1"])
  with pytest.raises(ValueError, match="completions must be strings"):
    math_reward([""], [None], answer=["1"])
  with pytest.raises(TypeError, match="must be a str"):
    math_rewards.is_equivalent(5, "5")
  with pytest.raises(ValueError, match="timeout_s"):
    math_rewards.is_equivalent("1", "1", timeout_s=0)
  with pytest.raises(ValueError, match="num_workers"):
    math_rewards.is_equivalent("1", "1", num_workers=0)


def test_a_worker_that_cannot_start_raises_a_clear_error(monkeypatch):
  math_rewards.shutdown_workers()
  monkeypatch.setattr(math_rewards, "_WORKER_COMMAND", "import sys; sys.exit(3)")  # As when math-verify is missing.
  with pytest.raises(RuntimeError, match="exited with code 3 while starting"):
    math_rewards.is_equivalent("x+1", "1+x", num_workers=1)
  assert math_rewards._get_pool()._live == 0
  math_rewards.shutdown_workers()


def test_workers_stop_at_shutdown_and_at_interpreter_exit():
  _warm_pool(1)
  (worker,) = math_rewards._get_pool()._idle
  math_rewards.shutdown_workers()
  assert worker._process.poll() == 0  # It read the request to stop and exited.
  script = textwrap.dedent("""
      from rest_jax.rewards import math as math_rewards
      assert math_rewards.is_equivalent("(x+1)^2", "x^2+2x+1", num_workers=1)
      print(math_rewards._get_pool()._idle[0]._process.pid)
  """)
  run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
  pid = int(run.stdout.split()[-1])
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)
