"""Rewards for MATH and GSM8K: the final answer, extracted and checked for mathematical equivalence.

  reward = rewards.get("math")
  reward(prompts, ["... so the area is $\\boxed{\\dfrac{1}{2}}$."], answer=["\\frac{1}{2}"])  # -> [1.0]
  rewards.get("gsm8k")(prompts, ["... The answer is $1,200."], answer=["... #### 1200"])      # -> [1.0]

An answer is checked in three steps, each only when the one before cannot decide:
  1. `normalize_answer` of both sides are equal strings ("\\dfrac12" and "0.5", "\\$1,000" and "1000");
  2. both sides are rational numbers, compared in this process ("0.333" is not 1/3; see below);
  3. math-verify (sympy) compares them symbolically and numerically in a worker process.

Sympy can take unbounded time and memory on what a model writes (`9^{9^{9^{9}}}`, `10^{100000}!`), and
math-verify's own time limit uses SIGALRM, which works only in the main thread, while rewards run in threads
(`rest_jax.generation`). So step 3 runs in a small pool of worker processes (fresh interpreters, as with
multiprocessing's "spawn": the parent runs JAX threads, which "fork" would copy mid-flight), started on first use
and shared by all threads. Each check has a time limit (`DEFAULT_TIMEOUT_S`) and scores 0 when it runs out: the
worker's own SIGALRM interrupts sympy; a worker that still has not answered `_KILL_GRACE_S` later (stuck in C code)
is killed and replaced. Workers also have a memory budget, answers longer than `MAX_ANSWER_CHARS` are never parsed,
and the pool is closed at interpreter exit (a worker whose parent dies exits when its socket closes).

Decisions on ambiguous equivalences:
  * "10\\%" == "10" (percent signs are dropped), but "10\\%" != "0.1";
  * "90^\\circ" == "90" (degree signs are dropped), but "\\frac{\\pi}{2}" != "90^\\circ": no unit conversion;
  * "5\\text{ cm}" == "5", "\\$18.90" == "18.9", "1,000,000" == "1000000", "3.0" == "3";
  * "x = 3" == "3", "y = 2x + 3" == "2x + 3": an assignment to one variable is its right-hand side;
  * "\\{1, 2\\}" == "1, 2" == "2, 1" (a list of solutions is a set), "(1, 2)" != "(2, 1)" (a tuple is ordered);
    following math-verify, an open interval "(1, 2)" also matches the list "1, 2";
  * a decimal of 6 or more places matches a value that rounds to it ("0.333333" == "\\frac13" and "1.414214" ==
    "\\sqrt{2}", but "0.333" != "\\frac13" and "0.0000001" != "0"); otherwise numbers must be equal;
  * "(C)", "\\text{(C)}" and "C" are the same choice; math-verify treats single letters case-insensitively.
"""

import atexit
from collections.abc import Sequence
import fractions
import multiprocessing.connection
import os
import queue
import socket
import subprocess
import sys
import threading

from rest_jax.rewards import math_answers
from rest_jax.rewards import registry
from rest_jax.rewards.math_answers import extract_answer
from rest_jax.rewards.math_answers import extract_gsm8k_answer
from rest_jax.rewards.math_answers import gsm8k_reference
from rest_jax.rewards.math_answers import normalize_answer
from rest_jax.rewards.math_answers import parse_rational

__all__ = ["DEFAULT_NUM_WORKERS", "DEFAULT_TIMEOUT_S", "MAX_ANSWER_CHARS", "extract_answer", "extract_gsm8k_answer",
           "gsm8k_reference", "is_equivalent", "is_equivalent_batch", "normalize_answer", "shutdown_workers",
           "start_workers"]

# Seconds one symbolic check may run before it scores 0. Typical checks take 1-200 ms; the margin is for a loaded host.
DEFAULT_TIMEOUT_S = 3.0
# Worker processes shared by all threads; each holds sympy (~150 MB).
DEFAULT_NUM_WORKERS = min(8, os.cpu_count() or 1)
# Normalised answers longer than this are compared as strings only, never parsed.
MAX_ANSWER_CHARS = 1000
# Answers longer than this score 0 without being normalised.
_MAX_RAW_CHARS = 10 * MAX_ANSWER_CHARS
# Memory a worker may allocate beyond what it holds after start-up; past it sympy raises MemoryError (scores 0).
WORKER_MEMORY_BYTES = 2 << 30
# Seconds past its time limit after which a check that ignores its worker's SIGALRM is ended by killing the worker.
_KILL_GRACE_S = 0.5
# Seconds a new worker may take to import sympy and math-verify.
_STARTUP_TIMEOUT_S = 120.0
# Decimal places a decimal needs to stand for a value it is rounded from ("0.333333" for 1/3; math-verify's
# `float_rounding`, which it also applies to irrational values: "1.414214" for \sqrt{2}).
_FLOAT_ROUNDING = 6

# Run by `python -P -c` in a worker: argv is [math_answers.py, socket fd, memory bytes, start-up timeout].
_WORKER_COMMAND = (
    "import runpy, sys; runpy.run_path(sys.argv[1], dict(socket_fd=int(sys.argv[2]), memory_bytes=int(sys.argv[3]),"
    " startup_timeout_s=float(sys.argv[4])), run_name='" + math_answers.WORKER_RUN_NAME + "')")


def is_equivalent(prediction: str, reference: str, *, timeout_s: float | None = None,
                  num_workers: int | None = None) -> bool:
  """Whether the final answer `prediction` is mathematically equivalent to the final answer `reference`.

  Both are bare answers as `extract_answer` returns them ("\\frac{1}{2}", "(-\\infty, 3]"), not whole solutions.
  The check is not symmetric in corner cases (math-verify reads the reference as the gold answer).

  Args:
    prediction: the model's final answer.
    reference: the correct final answer.
    timeout_s: seconds the symbolic check may take before it scores False (plus `_KILL_GRACE_S` when the worker
      must be killed); default `DEFAULT_TIMEOUT_S`.
    num_workers: size of the shared worker pool; default `DEFAULT_NUM_WORKERS`.

  Returns:
    True when equivalent; False when not, when either side is empty or too long, or when the check timed out.
  """
  return is_equivalent_batch([prediction], [reference], timeout_s=timeout_s, num_workers=num_workers)[0]


def is_equivalent_batch(predictions: Sequence[str | None], references: Sequence[str], *,
                        timeout_s: float | None = None, num_workers: int | None = None) -> list[bool]:
  """`is_equivalent` of each pair, the symbolic checks spread over the worker pool; a None prediction is False."""
  timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
  num_workers = DEFAULT_NUM_WORKERS if num_workers is None else num_workers
  if not timeout_s > 0:
    raise ValueError(f"timeout_s must be positive, got {timeout_s}")
  if not isinstance(num_workers, int) or num_workers < 1:
    raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
  if len(predictions) != len(references):
    raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
  results = [False] * len(predictions)
  pending: dict[tuple[str, str], list[int]] = {}  # Each distinct (reference, prediction) is checked once.
  for index, (prediction, reference) in enumerate(zip(predictions, references)):
    if prediction is None:
      continue
    if not isinstance(prediction, str) or not isinstance(reference, str):
      raise TypeError(f"answers must be a str, got {type(prediction).__name__} and {type(reference).__name__}")
    if len(prediction) > _MAX_RAW_CHARS:
      continue
    reference_key, prediction_key = normalize_answer(reference), normalize_answer(prediction)
    verdict = _cheap_verdict(prediction_key, reference_key)
    if verdict is None:
      pending.setdefault((reference_key, prediction_key), []).append(index)
    else:
      results[index] = verdict
  if pending:
    pairs = list(pending)
    for pair, verdict in zip(pairs, _get_pool().check_all(pairs, timeout_s, num_workers)):
      for index in pending[pair]:
        results[index] = verdict
  return results


def start_workers(num_workers: int | None = None) -> None:
  """Starts the worker processes now and waits until they are ready (else they start on first use, which takes a
  few seconds), e.g. while a model loads; `num_workers` defaults to `DEFAULT_NUM_WORKERS`."""
  num_workers = DEFAULT_NUM_WORKERS if num_workers is None else num_workers
  if not isinstance(num_workers, int) or num_workers < 1:
    raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
  _get_pool().start(num_workers)


def shutdown_workers() -> None:
  """Stops the worker processes (they also stop at interpreter exit); the next check starts new ones."""
  global _POOL
  with _POOL_LOCK:
    pool, _POOL = _POOL, None
  if pool is not None:
    pool.shutdown()


@registry.register("math")
def math_reward(prompts: Sequence[str], completions: Sequence[str], *, answer: Sequence[object],
                **unused_fields: Sequence[object]) -> list[float]:
  """1.0 where the completion's final answer (`extract_answer`) is equivalent to `answer`, else 0.0.

  `answer` holds the reference final answers, e.g. "\\frac{1}{2}" as in the last \\boxed{} of a MATH solution; a
  whole solution is accepted too, its last \\boxed{} is then the answer.
  """
  del prompts, unused_fields
  references = [_math_reference(a) for a in answer]
  predictions = [extract_answer(_completion(c)) for c in completions]
  return [float(ok) for ok in is_equivalent_batch(predictions, references)]


@registry.register("gsm8k")
def gsm8k_reward(prompts: Sequence[str], completions: Sequence[str], *, answer: Sequence[object],
                 **unused_fields: Sequence[object]) -> list[float]:
  """1.0 where the completion's final answer (`extract_gsm8k_answer`) equals the GSM8K `answer` field's, else 0.0.

  `answer` holds the data set's own answer fields, "... <<48/2=24>>24 clips ... #### 72".
  """
  del prompts, unused_fields
  references = [gsm8k_reference(_field(a)) for a in answer]
  predictions = [extract_gsm8k_answer(_completion(c)) for c in completions]
  return [float(ok) for ok in is_equivalent_batch(predictions, references)]


def _field(value: object) -> str:
  if not isinstance(value, str):
    raise ValueError(f"field 'answer' must hold strings, got {type(value).__name__} {value!r}")
  return value


def _completion(value: object) -> str:
  if not isinstance(value, str):
    raise ValueError(f"completions must be strings, got {type(value).__name__}")
  return value


def _math_reference(value: object) -> str:
  reference = _field(value)
  if "\\boxed" in reference or "\\fbox" in reference:
    reference = extract_answer(reference) or ""
  if not reference.strip():
    raise ValueError(f"field 'answer' holds an empty reference answer: {value!r}")
  return reference


def _cheap_verdict(prediction_key: str, reference_key: str) -> bool | None:
  """The verdict when it needs no sympy, else None."""
  if not prediction_key or not reference_key:
    return False
  if prediction_key == reference_key:
    return True
  prediction_number, reference_number = parse_rational(prediction_key), parse_rational(reference_key)
  if prediction_number is not None and reference_number is not None:
    return _numbers_match(prediction_number, reference_number)
  if max(len(prediction_key), len(reference_key)) > MAX_ANSWER_CHARS:
    return False
  return None


def _numbers_match(a: tuple[fractions.Fraction, int | None], b: tuple[fractions.Fraction, int | None]) -> bool:
  """Equal values, or a decimal of `_FLOAT_ROUNDING`+ places that is another value rounded ("0.333333" and 1/3)."""
  (a_value, a_places), (b_value, b_places) = a, b
  if a_value == b_value:
    return True
  for (decimal_value, places), exact_value in (((a_value, a_places), b_value), ((b_value, b_places), a_value)):
    if places is not None and places >= _FLOAT_ROUNDING and round(exact_value, places) == decimal_value:
      return True
  return False


class _Worker:
  """One checking process and this process's end of its socket; used by one thread at a time."""

  def __init__(self):
    parent_socket, child_socket = socket.socketpair()
    # A fresh interpreter (exec, as multiprocessing's "spawn" does, never a bare fork of this JAX process) that runs
    # math_answers.py by path: multiprocessing would also re-import this program's __main__ in every worker (for
    # `python -m rest_jax.main`, JAX and the models: seconds and ~400 MB each), and the worker needs only math-verify.
    with child_socket:
      self._process = subprocess.Popen(
          [sys.executable, "-P", "-c", _WORKER_COMMAND, math_answers.__file__, str(child_socket.fileno()),
           str(WORKER_MEMORY_BYTES), str(_STARTUP_TIMEOUT_S)],
          pass_fds=[child_socket.fileno()], stdin=subprocess.DEVNULL)
    self._connection = multiprocessing.connection.Connection(parent_socket.detach())
    self._ready = False

  def check(self, pair: tuple[str, str], timeout_s: float) -> bool | None:
    """math-verify's verdict on (reference, prediction); None when the worker missed the deadline or died."""
    self.wait_until_ready()
    try:
      self._connection.send((*pair, timeout_s))
      if self._connection.poll(timeout_s + _KILL_GRACE_S):
        return bool(self._connection.recv())
    except (EOFError, OSError):
      pass
    return None

  def wait_until_ready(self) -> None:
    if self._ready:
      return
    try:
      if self._connection.poll(_STARTUP_TIMEOUT_S) and self._connection.recv() == "ready":
        self._ready = True
        return
    except (EOFError, OSError):
      pass
    try:
      exit_code = self._process.wait(timeout=1)
    except subprocess.TimeoutExpired:
      exit_code = None
    self.close()
    if exit_code is not None:
      raise RuntimeError(f"a math-verify worker exited with code {exit_code} while starting; see its error above")
    raise RuntimeError(f"a math-verify worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")

  def kill(self) -> None:
    """SIGKILL, without waiting: freeing a big sympy heap takes a while (subprocess reaps it later)."""
    self._process.kill()
    self._connection.close()

  def close(self) -> None:
    """Asks the worker to exit, kills it if it does not within a second, and reaps it."""
    try:
      self._connection.send(None)
      self._process.wait(timeout=1)
    except (OSError, subprocess.TimeoutExpired):
      pass
    self.kill()
    self._process.wait(timeout=10)


class _Pool:
  """Worker processes shared by threads: idle ones wait in a list, busy ones belong to the thread that took them."""

  def __init__(self):
    self._changed = threading.Condition()
    self._idle: list[_Worker] = []
    self._live = 0  # Idle plus busy workers.
    self._closed = False

  def check_all(self, pairs: list[tuple[str, str]], timeout_s: float, num_workers: int) -> list[bool]:
    """Verdicts on (reference, prediction) pairs; up to `num_workers` of them are checked at a time."""
    verdicts = [False] * len(pairs)
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(pairs)):
      todo.put(index)
    errors: list[BaseException] = []

    def drain() -> None:
      worker = None
      try:
        while True:
          try:
            index = todo.get_nowait()
          except queue.Empty:
            return
          if worker is None:
            worker = self._acquire(num_workers)
          try:
            verdict = worker.check(pairs[index], timeout_s)
          except BaseException:
            self._discard(worker)
            worker = None
            raise
          if verdict is None:  # Timed out or crashed: a half-finished sympy call can be neither trusted nor stopped.
            self._discard(worker)
            worker = None
            self._start_successor(num_workers)
          verdicts[index] = bool(verdict)
      except BaseException as error:  # pylint: disable=broad-except  (re-raised in the calling thread)
        errors.append(error)
      finally:
        if worker is not None:
          self._release(worker, num_workers)

    helpers = [threading.Thread(target=drain, name="math-verify-dispatch", daemon=True)
               for _ in range(min(num_workers, len(pairs)) - 1)]
    for helper in helpers:
      helper.start()
    drain()
    for helper in helpers:
      helper.join()
    if errors:
      raise errors[0]
    return verdicts

  def shutdown(self) -> None:
    with self._changed:
      self._closed = True
      idle, self._idle = self._idle, []
      self._live -= len(idle)
      self._changed.notify_all()
    for worker in idle:
      worker.close()

  def start(self, num_workers: int) -> None:
    """Starts workers until there are `num_workers` and waits until the idle ones are ready."""
    workers = []
    while len(workers) < num_workers:
      worker = self._acquire(num_workers, block=False)
      if worker is None:
        break  # The others are busy, hence ready.
      workers.append(worker)
    failure = None
    for worker in workers:
      try:
        worker.wait_until_ready()
      except BaseException as error:  # pylint: disable=broad-except  (re-raised once every worker is back)
        failure = failure or error
        self._discard(worker)
      else:
        self._release(worker, num_workers)
    if failure is not None:
      raise failure

  def _acquire(self, num_workers: int, block: bool = True) -> _Worker | None:
    with self._changed:
      while not self._idle and self._live >= num_workers:
        if not block:
          return None
        self._changed.wait()
      if self._idle:
        return self._idle.pop()
      self._live += 1
    try:
      return _Worker()
    except BaseException:
      with self._changed:
        self._live -= 1
        self._changed.notify()
      raise

  def _release(self, worker: _Worker, num_workers: int) -> None:
    """Returns `worker` to the idle list, or closes it (and idle ones) while the pool is larger than `num_workers`."""
    surplus = []
    with self._changed:
      self._idle.append(worker)
      while self._idle and (self._closed or self._live > num_workers):
        surplus.append(self._idle.pop(0))
        self._live -= 1
      self._changed.notify()
    for extra in surplus:
      extra.close()

  def _discard(self, worker: _Worker) -> None:
    worker.kill()
    with self._changed:
      self._live -= 1
      self._changed.notify()

  def _start_successor(self, num_workers: int) -> None:
    """Starts a worker for the idle list now, so that it boots while other checks run."""
    with self._changed:
      if self._closed or self._live >= num_workers:
        return
      self._live += 1
    try:
      successor = _Worker()
    except BaseException:
      with self._changed:
        self._live -= 1
        self._changed.notify()
      raise
    self._release(successor, num_workers)


_POOL: _Pool | None = None
_POOL_PID = 0
_POOL_LOCK = threading.Lock()


def _get_pool() -> _Pool:
  global _POOL, _POOL_PID
  with _POOL_LOCK:
    if _POOL is None or _POOL_PID != os.getpid():  # A forked child cannot use its parent's pipes.
      _POOL, _POOL_PID = _Pool(), os.getpid()
    return _POOL


atexit.register(shutdown_workers)
