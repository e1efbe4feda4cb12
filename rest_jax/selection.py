"""The ReST-EM E-step filter: which sampled completions the M-step trains on.

A completion is eligible when its reward is strictly above a threshold (0 for
the binary rewards of ReST-EM). Per problem, exact duplicates are dropped and
at most `cap` distinct eligible completions are kept, chosen uniformly at
random so the training set does not over-represent easy problems, whose many
correct samples would otherwise dominate it (Singh et al. 2023, sec. 3).

Samples are stored between the E- and M-steps as gzip JSONL, one `Sample` per
line, written atomically.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
import tempfile
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Sample:
  """One sampled completion and its E-step outcome.

  Attributes:
    problem_id: identifier of the problem the completion answers.
    prompt: the prompt text the model was conditioned on.
    completion: the generated text, without the prompt.
    reward: the automatic reward; finite.
    iteration: the ReST-EM iteration that generated it, >= 0.
    kept: whether the E-step selected it for the M-step.
    completion_ids: the sampled token ids behind `completion` (the end id last when one ended it), or None.
    logprobs: the sampling policy's log-probability of each of `completion_ids`, or None.
    round: the adaptive E-step's round that drew it (1, 2, ...), or None (a fixed E-step).
    pass_rate: the adaptive E-step: its problem's running pass rate after that round, or None.
  """

  problem_id: str
  prompt: str
  completion: str
  reward: float
  iteration: int
  kept: bool = False
  completion_ids: tuple[int, ...] | None = None
  logprobs: tuple[float, ...] | None = None
  round: int | None = None
  pass_rate: float | None = None

  def __post_init__(self):
    # A NaN reward would silently compare False against every threshold.
    if not math.isfinite(self.reward):
      raise ValueError(
          f"Sample {self.problem_id!r}: reward must be finite, got"
          f" {self.reward}"
      )
    if self.iteration < 0:
      raise ValueError(
          f"Sample {self.problem_id!r}: iteration must be >= 0, got"
          f" {self.iteration}"
      )

  def to_json(self) -> dict[str, Any]:
    """Returns a dict of JSON-serialisable fields (ids and log-probabilities only when present)."""
    record = dataclasses.asdict(self)
    for name in ("completion_ids", "logprobs", "round", "pass_rate"):
      if record[name] is None:
        del record[name]
      elif name in ("completion_ids", "logprobs"):
        record[name] = list(record[name])
    if self.logprobs is not None:
      record["logprobs"] = [round(float(x), 6) for x in self.logprobs]
    return record

  @classmethod
  def from_json(cls, record: dict[str, Any]) -> Sample:
    """Builds a Sample from a `to_json` dict, checking field names and types."""
    if not isinstance(record, dict):
      raise ValueError(f"Sample.from_json: expected a dict, got {record!r}")
    expected = {field.name: field.type for field in dataclasses.fields(cls)}
    required = {
        field.name
        for field in dataclasses.fields(cls)
        if field.default is dataclasses.MISSING
    }
    missing = required - record.keys()
    if missing:
      raise ValueError(f"Sample.from_json: missing fields {sorted(missing)}")
    unknown = record.keys() - expected.keys()
    if unknown:
      raise ValueError(f"Sample.from_json: unknown fields {sorted(unknown)}")
    for name in ("problem_id", "prompt", "completion"):
      if not isinstance(record[name], str):
        raise ValueError(
            f"Sample.from_json: {name} must be a string, got"
            f" {record[name]!r}"
        )
    # bool is an int subclass; a bool reward or iteration is a corrupt record.
    if isinstance(record["reward"], bool) or not isinstance(
        record["reward"], (int, float)
    ):
      raise ValueError(
          f"Sample.from_json: reward must be a number, got {record['reward']!r}"
      )
    if isinstance(record["iteration"], bool) or not isinstance(
        record["iteration"], int
    ):
      raise ValueError(
          "Sample.from_json: iteration must be an int, got"
          f" {record['iteration']!r}"
      )
    kept = record.get("kept", False)
    if not isinstance(kept, bool):
      raise ValueError(f"Sample.from_json: kept must be a bool, got {kept!r}")
    ids, logprobs = record.get("completion_ids"), record.get("logprobs")
    if ids is not None and not (isinstance(ids, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in ids)):
      raise ValueError(f"Sample.from_json: completion_ids must be a list of ints, got {ids!r}"[:200])
    if logprobs is not None and not (isinstance(logprobs, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in logprobs)
                                     and ids is not None and len(logprobs) == len(ids)):
      raise ValueError("Sample.from_json: logprobs must be numbers, one per completion id"[:200])
    return cls(
        problem_id=record["problem_id"],
        prompt=record["prompt"],
        completion=record["completion"],
        reward=float(record["reward"]),
        iteration=record["iteration"],
        kept=kept,
        completion_ids=None if ids is None else tuple(ids),
        round=_optional_number(record, "round", int),
        pass_rate=_optional_number(record, "pass_rate", (int, float)),
        logprobs=None if logprobs is None else tuple(float(x) for x in logprobs),
    )


def _optional_number(record: dict[str, Any], name: str, types) -> Any:
  value = record.get(name)
  if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
    raise ValueError(f"Sample.from_json: {name} must be a number, got {value!r}"[:200])
  return value


def dedup_key(completion: str) -> str:
  """What makes two completions of a problem the same one to `keep`."""
  return _dedup_key(completion)


def _dedup_key(completion: str) -> str:
  # Trailing whitespace differs between otherwise identical generations
  # (stop-token handling), and never changes what is learned.
  return completion.rstrip()


def _problem_rng(seed: int, problem_id: str) -> np.random.Generator:
  # Python's hash() of a str is salted per process; sha256 gives the same
  # stream in every worker and every rerun, and separates problems so one
  # problem's choice does not depend on which other problems are present.
  digest = hashlib.sha256(f"{seed}\x00{problem_id}".encode()).digest()
  return np.random.default_rng(int.from_bytes(digest, "little"))


def _group_by_problem(samples: Iterable[Sample]) -> dict[str, list[int]]:
  indices = collections.defaultdict(list)
  for index, sample in enumerate(samples):
    indices[sample.problem_id].append(index)
  return indices


def _first_eligible_copies(
    samples: Sequence[Sample], indices: Sequence[int], threshold: float
) -> dict[str, int]:
  """Maps each distinct eligible completion to the index of its first copy."""
  first = {}
  for index in indices:
    sample = samples[index]
    if sample.reward > threshold:
      first.setdefault(_dedup_key(sample.completion), index)
  return first


def keep(
    samples: Sequence[Sample],
    *,
    cap: int,
    threshold: float = 0.0,
    seed: int,
) -> list[Sample]:
  """Marks the samples the M-step trains on.

  Per problem: a sample is eligible iff reward > threshold (strictly). Eligible
  completions equal after stripping trailing whitespace count once, and only
  their first copy in input order can be kept. Then min(cap, #distinct)
  distinct completions are chosen uniformly at random without replacement;
  scalar rewards do not bias the choice, they weight the loss later.

  The choice depends only on (seed, problem_id) and the set of that problem's
  distinct eligible completions: not on other problems, nor on the order of
  samples (beyond which duplicate copy is marked).

  Args:
    samples: the E-step samples, any mix of problems.
    cap: most completions kept per problem, >= 1.
    threshold: a sample is eligible iff its reward is strictly above it.
    seed: seed of the random choice.

  Returns:
    All samples, in input order, with `kept` set.
  """
  if cap < 1:
    raise ValueError(f"keep: cap must be >= 1, got cap={cap}")
  kept_indices = set()
  for problem_id, indices in _group_by_problem(samples).items():
    first = _first_eligible_copies(samples, indices, threshold)
    # Sorting makes the choice independent of sample order within the problem.
    distinct = sorted(first)
    chosen = _problem_rng(seed, problem_id).choice(
        len(distinct), size=min(cap, len(distinct)), replace=False
    )
    kept_indices.update(first[distinct[c]] for c in chosen)
  return [
      dataclasses.replace(sample, kept=index in kept_indices)
      for index, sample in enumerate(samples)
  ]


def selection_stats(
    samples: Sequence[Sample], *, threshold: float = 0.0
) -> dict[str, float | int]:
  """Counts describing one E-step, from samples returned by `keep`.

  Args:
    samples: the samples with `kept` set.
    threshold: the eligibility threshold `keep` was called with.

  Returns:
    generated: number of samples.
    rewarded: samples with reward > threshold.
    kept: samples with kept set.
    num_problems: distinct problem ids.
    problems_with_kept: problems with at least one kept sample.
    solve_rate: problems_with_kept / num_problems (0.0 when there are none).
    duplicates_dropped: rewarded samples whose completion repeats an earlier
      rewarded one of the same problem.
  """
  by_problem = _group_by_problem(samples)
  num_distinct = sum(
      len(_first_eligible_copies(samples, indices, threshold))
      for indices in by_problem.values()
  )
  rewarded = sum(sample.reward > threshold for sample in samples)
  problems_with_kept = len({s.problem_id for s in samples if s.kept})
  return {
      "generated": len(samples),
      "rewarded": rewarded,
      "kept": sum(sample.kept for sample in samples),
      "num_problems": len(by_problem),
      "problems_with_kept": problems_with_kept,
      "solve_rate": (
          problems_with_kept / len(by_problem) if by_problem else 0.0
      ),
      "duplicates_dropped": rewarded - num_distinct,
  }


def _check_path(path: str | os.PathLike[str]) -> str:
  path = os.fspath(path)
  if not path.endswith(".jsonl.gz"):
    raise ValueError(f"path must end with .jsonl.gz, got {path!r}")
  return path


def write_jsonl(
    path: str | os.PathLike[str], samples: Iterable[Sample]
) -> None:
  """Writes samples as gzip JSONL, atomically.

  The data goes to a temporary file in the destination directory, which is
  then renamed over `path`: readers see the old file or the complete new one,
  never a truncated file after a crash or preemption.

  Args:
    path: destination, ending in .jsonl.gz; parent directories are created.
    samples: the samples to write.
  """
  path = _check_path(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  # Same directory as `path` so os.replace stays a rename on one filesystem.
  fd, tmp_path = tempfile.mkstemp(
      dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
  )
  try:
    with os.fdopen(fd, "wb") as raw:
      # mtime=0 makes the bytes a function of the samples alone.
      with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as compressed:
        with io.TextIOWrapper(compressed, encoding="utf-8") as text:
          for sample in samples:
            text.write(json.dumps(sample.to_json(), ensure_ascii=False))
            text.write("\n")
      raw.flush()
      os.fsync(raw.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    os.unlink(tmp_path)
    raise


def read_jsonl(path: str | os.PathLike[str]) -> list[Sample]:
  """Reads samples written by `write_jsonl`."""
  path = _check_path(path)
  samples = []
  with gzip.open(path, "rt", encoding="utf-8") as text:
    for line_number, line in enumerate(text, start=1):
      if not line.strip():
        continue
      try:
        samples.append(Sample.from_json(json.loads(line)))
      except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}:{line_number}: {error}") from error
  return samples
