"""Evaluation metrics for ReST-EM: pass@k, maj@k and per-iteration summaries.

Everything here works on plain Python lists of rewards and extracted answers so
that the EM loop, notebooks and reports can call it without JAX.

Conventions:
  * A sample is "correct" when its reward is >= `threshold` (binary rewards use
    the default 1.0).
  * Answers are compared to references by exact string equality; normalising
    answers (stripping units, canonicalising numbers) is the task's job when it
    extracts them. An answer of None means extraction failed and never votes.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
import math

import numpy as np

# Resamples and seed of the bootstrap intervals: fixed, so a report is the same every time it is rebuilt.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k estimate from `n` samples of which `c` are correct.

  Chen et al. 2021, eq. 1: 1 - C(n - c, k) / C(n, k), the probability that a
  uniformly random k-subset of the n samples holds at least one correct one.

  Args:
    n: number of samples drawn for the problem.
    c: number of correct samples, 0 <= c <= n.
    k: subset size, 1 <= k <= n.

  Returns:
    The estimate, a float in [0, 1].
  """
  if n < 1:
    raise ValueError(f"pass_at_k: n must be >= 1, got n={n}")
  if not 0 <= c <= n:
    raise ValueError(f"pass_at_k: c must be in [0, n={n}], got c={c}")
  if not 1 <= k <= n:
    raise ValueError(f"pass_at_k: k must be in [1, n={n}], got k={k}")
  if n - c < k:
    # Every k-subset must contain a correct sample.
    return 1.0
  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i); the product form never
  # builds the huge binomials, which overflow floats for n in the hundreds.
  i = np.arange(n - c + 1, n + 1, dtype=np.float64)
  return float(1.0 - np.prod(1.0 - k / i))


def mean_pass_at_k(num_correct: Sequence[int], n: int, k: int) -> float:
  """Mean pass@k over problems that each drew `n` samples.

  Args:
    num_correct: number of correct samples for each problem.
    n: samples drawn per problem.
    k: subset size, 1 <= k <= n.

  Returns:
    The average of `pass_at_k(n, c, k)` over `num_correct`.
  """
  if not num_correct:
    raise ValueError("mean_pass_at_k: num_correct is empty")
  return float(np.mean([pass_at_k(n, c, k) for c in num_correct]))


def majority_vote(answers: Sequence[str | None]) -> str | None:
  """Most frequent non-None answer; ties go to the answer seen first.

  Args:
    answers: extracted answers, None where extraction failed.

  Returns:
    The winning answer, or None when every answer is None (or there are none).
  """
  counts = collections.Counter(a for a in answers if a is not None)
  if not counts:
    return None
  # Counter keeps insertion order, and max() returns the first maximal item,
  # so the tie-break is first occurrence.
  return max(counts, key=counts.__getitem__)


def maj_at_k(
    answers: Sequence[Sequence[str | None]],
    references: Sequence[str | None] | None,
    k: int,
    *,
    rewards: Sequence[Sequence[float]] | None = None,
    threshold: float = 1.0,
) -> float:
  """maj@k: accuracy of a majority vote over k samples, the mean of `maj_at_k_per_problem`."""
  return float(np.mean(maj_at_k_per_problem(answers, references, k, rewards=rewards, threshold=threshold)))


def maj_at_k_per_problem(
    answers: Sequence[Sequence[str | None]],
    references: Sequence[str | None] | None,
    k: int,
    *,
    rewards: Sequence[Sequence[float]] | None = None,
    threshold: float = 1.0,
) -> list[float]:
  """Per-problem maj@k score: the fraction of a problem's k-sample votes that are correct.

  Each problem's n samples are cut into floor(n / k) disjoint consecutive
  groups of k (a remainder is unused); each group votes, and a vote scores 1
  when it is correct. Scores are averaged over a problem's groups, then over
  problems, so problems weigh equally whatever their n.

  A vote is correct when it equals the problem's reference string or, where
  there is no reference (`references` None, or a None entry), when the first
  sample of the group that cast the winning answer has reward >= `threshold`.
  The second form lets the task's own reward judge the vote: "0.5" wins for a
  reference "\\frac{1}{2}", a program wins when it passes the tests.

  Args:
    answers: per problem, the extracted answers of its samples in sampling
      order.
    references: per problem, the reference answer or None; None for all.
    k: group size, 1 <= k <= n for every problem.
    rewards: per problem, the rewards of its samples (needed for problems
      without a reference).
    threshold: a reward >= threshold counts as correct.

  Returns:
    Per problem, its score in [0, 1].
  """
  if references is None:
    references = [None] * len(answers)
  if len(answers) != len(references):
    raise ValueError(
        f"maj_at_k: answers has {len(answers)} problems but references has"
        f" {len(references)}"
    )
  if not answers:
    raise ValueError("maj_at_k: answers is empty")
  if k < 1:
    raise ValueError(f"maj_at_k: k must be >= 1, got k={k}")
  if rewards is not None and len(rewards) != len(answers):
    raise ValueError(
        f"maj_at_k: answers has {len(answers)} problems but rewards has"
        f" {len(rewards)}"
    )
  per_problem = []
  for index, (sample_answers, reference) in enumerate(
      zip(answers, references)
  ):
    n = len(sample_answers)
    if n < k:
      raise ValueError(
          f"maj_at_k: problem {index} has n={n} samples, fewer than k={k}"
      )
    if reference is None and rewards is None:
      raise ValueError(
          f"maj_at_k: problem {index} has no reference and no rewards were"
          " given"
      )
    scores = []
    for g in range(n // k):
      group = sample_answers[g * k:(g + 1) * k]
      vote = majority_vote(group)
      if reference is not None:
        scores.append(vote == reference)
      elif vote is None:
        scores.append(False)
      else:
        first = g * k + list(group).index(vote)
        scores.append(rewards[index][first] >= threshold)
    per_problem.append(float(np.mean(scores)))
  return per_problem


def summarize(
    *,
    greedy_rewards: Sequence[float],
    sample_rewards: Sequence[Sequence[float]],
    sample_answers: Sequence[Sequence[str | None]],
    references: Sequence[str | None] | None = None,
    ks: Sequence[int] = (),
    threshold: float = 1.0,
) -> dict[str, float | int]:
  """Evaluation metrics of one model on a set of problems.

  All sequences are indexed by problem and must have the same length. Problem
  i has `len(sample_rewards[i])` samples (this may differ across problems),
  with `sample_answers[i]` holding their extracted answers in the same order.

  Args:
    greedy_rewards: reward of the greedy (temperature 0) completion.
    sample_rewards: rewards of the sampled completions.
    sample_answers: extracted answers of the sampled completions, None where
      extraction failed.
    references: reference answers, compared to votes for maj@K; None (or a
      None entry) lets the rewards judge the vote (see `maj_at_k`).
    ks: the K values to report pass@K and maj@K for; each must be <= the
      sample count of every problem.
    threshold: a reward >= threshold counts as correct.

  Returns:
    A flat dict:
      "pass@1": fraction of problems whose greedy completion is correct.
      "pass@1_lo", "pass@1_hi": its exact 95% interval (`clopper_pearson`).
      "pass@K": for each K in ks other than 1, the unbiased estimate from the
        samples. The sampled pass@1 estimate equals "sample_accuracy", so
        K == 1 never overwrites the greedy "pass@1".
      "maj@K": for each K in ks, see `maj_at_k`.
      "pass@K_lo", "pass@K_hi", "maj@K_lo", "maj@K_hi": their 95% percentile
        bootstrap intervals over problems (`bootstrap_interval`).
      "sample_accuracy": mean over problems of the fraction of correct samples.
      "num_problems": number of problems (int).
  """
  num_problems = len(greedy_rewards)
  for name, field in (
      ("sample_rewards", sample_rewards),
      ("sample_answers", sample_answers),
      ("references", references),
  ):
    if field is not None and len(field) != num_problems:
      raise ValueError(
          f"summarize: {name} has {len(field)} problems but greedy_rewards has"
          f" {num_problems}"
      )
  if num_problems == 0:
    raise ValueError("summarize: no problems given")
  for index, (rewards, problem_answers) in enumerate(
      zip(sample_rewards, sample_answers)
  ):
    if not rewards:
      raise ValueError(f"summarize: problem {index} has no samples")
    if len(rewards) != len(problem_answers):
      raise ValueError(
          f"summarize: problem {index} has {len(rewards)} sample_rewards but"
          f" {len(problem_answers)} sample_answers"
      )

  num_samples = [len(rewards) for rewards in sample_rewards]
  num_correct = [
      sum(r >= threshold for r in rewards) for rewards in sample_rewards
  ]
  metrics: dict[str, float | int] = {
      "pass@1": float(np.mean([r >= threshold for r in greedy_rewards])),
  }
  greedy_correct = sum(r >= threshold for r in greedy_rewards)
  metrics["pass@1_lo"], metrics["pass@1_hi"] = clopper_pearson(
      greedy_correct, num_problems
  )
  for k in ks:
    if k < 1 or k > min(num_samples):
      raise ValueError(
          f"summarize: ks entry {k} must be in [1, {min(num_samples)}], the"
          " smallest per-problem sample count"
      )
    per_problem = {}
    if k != 1:
      per_problem[f"pass@{k}"] = [
          pass_at_k(n, c, k) for n, c in zip(num_samples, num_correct)
      ]
    per_problem[f"maj@{k}"] = maj_at_k_per_problem(
        sample_answers, references, k, rewards=sample_rewards,
        threshold=threshold,
    )
    for name, values in per_problem.items():
      metrics[name] = float(np.mean(values))
      metrics[f"{name}_lo"], metrics[f"{name}_hi"] = bootstrap_interval(
          values
      )
  metrics["sample_accuracy"] = float(
      np.mean([c / n for n, c in zip(num_samples, num_correct)])
  )
  metrics["num_problems"] = num_problems
  return metrics


def clopper_pearson(
    successes: int, trials: int, confidence: float = 0.95
) -> tuple[float, float]:
  """Exact (Clopper-Pearson) interval for a binomial proportion.

  The lower bound is the p at which P(X >= successes) = (1 - confidence) / 2,
  the upper the p at which P(X <= successes) = (1 - confidence) / 2, for X ~
  Binomial(trials, p); 0 successes give lower bound 0, `trials` give upper 1.
  The tails are monotone in p, so bisection finds the bounds to 1e-12.

  Args:
    successes: number of successes, 0 <= successes <= trials.
    trials: number of trials, >= 1.
    confidence: coverage, in (0, 1).

  Returns:
    (lower, upper), with lower <= successes / trials <= upper.
  """
  if trials < 1:
    raise ValueError(f"clopper_pearson: trials must be >= 1, got {trials}")
  if not 0 <= successes <= trials:
    raise ValueError(
        f"clopper_pearson: successes must be in [0, {trials}], got"
        f" {successes}"
    )
  if not 0 < confidence < 1:
    raise ValueError(
        f"clopper_pearson: confidence must be in (0, 1), got {confidence}"
    )
  tail = (1 - confidence) / 2
  lower = 0.0 if successes == 0 else _bisect(
      lambda p: 1 - _binomial_cdf(successes - 1, trials, p) - tail
  )
  upper = 1.0 if successes == trials else _bisect(
      lambda p: tail - _binomial_cdf(successes, trials, p)
  )
  return lower, upper


def _binomial_cdf(k: int, n: int, p: float) -> float:
  """P(X <= k) for X ~ Binomial(n, p), summed in log space (no overflow)."""
  if p <= 0.0:
    return 1.0
  if p >= 1.0:
    return 1.0 if k >= n else 0.0
  log_p, log_q = math.log(p), math.log1p(-p)
  terms = np.array([
      math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
      + i * log_p + (n - i) * log_q
      for i in range(k + 1)
  ])
  peak = terms.max()
  return float(min(1.0, math.exp(peak) * np.exp(terms - peak).sum()))


def _bisect(increasing, lo: float = 0.0, hi: float = 1.0) -> float:
  """The root in [lo, hi] of a function that rises from <= 0 to >= 0."""
  while hi - lo > 1e-12:
    mid = (lo + hi) / 2
    if increasing(mid) < 0:
      lo = mid
    else:
      hi = mid
  return (lo + hi) / 2


def bootstrap_interval(
    values: Sequence[float],
    confidence: float = 0.95,
    *,
    num_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean of per-problem `values`.

  Problems are resampled with replacement `num_resamples` times; the bounds are
  the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of the resampled
  means. The seed is fixed, so the same values always give the same interval.

  Args:
    values: one number per problem (e.g. its unbiased pass@k estimate).
    confidence: coverage, in (0, 1).
    num_resamples: bootstrap resamples, >= 1.
    seed: seed of the resampling.

  Returns:
    (lower, upper).
  """
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(
        f"bootstrap_interval: values must be a non-empty list, got shape"
        f" {values.shape}"
    )
  if not 0 < confidence < 1:
    raise ValueError(
        f"bootstrap_interval: confidence must be in (0, 1), got {confidence}"
    )
  if num_resamples < 1:
    raise ValueError(
        f"bootstrap_interval: num_resamples must be >= 1, got {num_resamples}"
    )
  rng = np.random.default_rng(seed)
  means = np.empty(num_resamples)
  # In chunks, so 2000 resamples of 5000 problems never hold 10^7 indices.
  chunk = max(1, 2**20 // values.size)
  for start in range(0, num_resamples, chunk):
    stop = min(num_resamples, start + chunk)
    draws = rng.integers(0, values.size, size=(stop - start, values.size))
    means[start:stop] = values[draws].mean(axis=1)
  lower, upper = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
  return float(lower), float(upper)


def level_metrics(
    greedy_correct: Sequence[bool], levels: Sequence[int | None]
) -> dict[str, float | int]:
  """Greedy pass@1 per difficulty level (MATH levels 1-5, as the paper reports them).

  Args:
    greedy_correct: per problem, whether its greedy completion is correct.
    levels: per problem, its level; None (MATH's few "Level ?") counts in no
      level.

  Returns:
    For each level L seen, in increasing order, "level_L/pass@1",
    "level_L/pass@1_lo", "level_L/pass@1_hi" (`clopper_pearson`) and
    "level_L/num_problems".
  """
  if len(greedy_correct) != len(levels):
    raise ValueError(
        f"level_metrics: {len(greedy_correct)} results but {len(levels)}"
        " levels"
    )
  by_level = collections.defaultdict(list)
  for correct, level in zip(greedy_correct, levels):
    if level is not None:
      by_level[int(level)].append(bool(correct))
  metrics: dict[str, float | int] = {}
  for level in sorted(by_level):
    results = by_level[level]
    name = f"level_{level}"
    metrics[f"{name}/pass@1"] = sum(results) / len(results)
    metrics[f"{name}/pass@1_lo"], metrics[f"{name}/pass@1_hi"] = (
        clopper_pearson(sum(results), len(results))
    )
    metrics[f"{name}/num_problems"] = len(results)
  return metrics


def difficulty_bins(
    solve_rates: Sequence[float],
    edges: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
) -> dict[str, int]:
  """Counts problems per bin of per-problem sample solve rate.

  Bins are half-open, [lo, hi), except the last, which is closed so that a
  solve rate of exactly edges[-1] is counted.

  Args:
    solve_rates: per problem, the fraction of its samples that are correct.
    edges: strictly increasing bin edges, at least two.

  Returns:
    An ordered dict from a label such as "[0.2, 0.4)" to a count; every bin is
    present, empty ones with 0.
  """
  if len(edges) < 2:
    raise ValueError(f"difficulty_bins: need at least two edges, got {edges}")
  if any(lo >= hi for lo, hi in zip(edges[:-1], edges[1:])):
    raise ValueError(
        f"difficulty_bins: edges must be strictly increasing, got {edges}"
    )
  labels = [f"[{lo:g}, {hi:g})" for lo, hi in zip(edges[:-2], edges[1:-1])]
  labels.append(f"[{edges[-2]:g}, {edges[-1]:g}]")
  counts = dict.fromkeys(labels, 0)
  for rate in solve_rates:
    # Written so that NaN fails the check too.
    if not edges[0] <= rate <= edges[-1]:
      raise ValueError(
          f"difficulty_bins: solve rate {rate} is outside [{edges[0]},"
          f" {edges[-1]}]"
      )
    # Number of inner edges <= rate is the bin index; the closed last bin
    # falls out because edges[-1] is not among the inner edges.
    bin_index = sum(edge <= rate for edge in edges[1:-1])
    counts[labels[bin_index]] += 1
  return counts
