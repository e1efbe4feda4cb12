"""Tests for rest_jax.evaluation."""

import fractions
import itertools
import math
import random

import pytest

from rest_jax import evaluation


def _brute_force_pass_at_k(n, c, k):
  labels = [True] * c + [False] * (n - c)
  subsets = list(itertools.combinations(range(n), k))
  hits = sum(any(labels[i] for i in subset) for subset in subsets)
  return hits / len(subsets)


@pytest.mark.parametrize("n", range(1, 10))
def test_pass_at_k_matches_enumeration_of_all_k_subsets(n):
  for c in range(n + 1):
    for k in range(1, n + 1):
      assert evaluation.pass_at_k(n, c, k) == pytest.approx(
          _brute_force_pass_at_k(n, c, k), abs=1e-12
      ), (n, c, k)


def test_pass_at_k_edge_cases():
  assert evaluation.pass_at_k(5, 0, 3) == 0.0
  assert evaluation.pass_at_k(5, 5, 1) == 1.0
  assert evaluation.pass_at_k(5, 3, 3) == 1.0  # n - c < k
  assert evaluation.pass_at_k(1, 1, 1) == 1.0
  assert evaluation.pass_at_k(7, 3, 1) == pytest.approx(3 / 7)
  assert evaluation.pass_at_k(7, 3, 7) == 1.0


def test_pass_at_k_is_accurate_where_binomials_overflow_floats():
  n, c, k = 3000, 3, 300
  with pytest.raises(OverflowError):
    float(math.comb(n, k))
  exact = 1 - fractions.Fraction(math.comb(n - c, k), math.comb(n, k))
  assert evaluation.pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
  assert evaluation.pass_at_k(1000, 1, 1) == pytest.approx(1e-3, rel=1e-12)


@pytest.mark.parametrize(
    "n, c, k, bad",
    [(0, 0, 1, "n=0"), (4, 5, 1, "c=5"), (4, -1, 1, "c=-1"),
     (4, 2, 0, "k=0"), (4, 2, 5, "k=5")],
)
def test_pass_at_k_rejects_bad_arguments_naming_them(n, c, k, bad):
  with pytest.raises(ValueError, match=bad):
    evaluation.pass_at_k(n, c, k)


def test_mean_pass_at_k_averages_problems():
  assert evaluation.mean_pass_at_k([0, 2, 4], n=4, k=2) == pytest.approx(
      (0.0 + 5 / 6 + 1.0) / 3
  )
  with pytest.raises(ValueError, match="empty"):
    evaluation.mean_pass_at_k([], n=4, k=2)


def test_majority_vote():
  assert evaluation.majority_vote(["a", "b", "b"]) == "b"
  assert evaluation.majority_vote(["b", "a", "a", "b"]) == "b"  # tie: first
  assert evaluation.majority_vote(["a", "b", "a", "b"]) == "a"
  assert evaluation.majority_vote([None, None, "c"]) == "c"  # None never wins
  assert evaluation.majority_vote([None, "x", None, "y", "y"]) == "y"
  assert evaluation.majority_vote([None, None]) is None
  assert evaluation.majority_vote([]) is None


def test_maj_at_k_hand_written():
  answers = [
      # Groups of 2: ("1","2") tie -> "1" correct; (None,"1") -> "1" correct;
      # ("2","2") wrong. 2/3.
      ["1", "2", None, "1", "2", "2"],
      # Groups of 2: (None, None) -> None wrong; ("5","3") tie -> "5" wrong.
      # The fifth sample is left over. 0/2.
      [None, None, "5", "3", "3"],
      # One group ("7","7"), right. 1/1.
      ["7", "7", "9"],
  ]
  references = ["1", "3", "7"]
  assert evaluation.maj_at_k(answers, references, 2) == pytest.approx(
      (2 / 3 + 0 + 1) / 3
  )
  # k=1 is the fraction of samples whose answer is the reference.
  assert evaluation.maj_at_k(answers, references, 1) == pytest.approx(
      (2 / 6 + 2 / 5 + 2 / 3) / 3
  )
  # k=3: problem 0 -> ("1","2",None) tie "1" right, ("1","2","2") wrong: 1/2;
  # problem 1 -> (None,None,"5") wrong; problem 2 -> right.
  assert evaluation.maj_at_k(answers, references, 3) == pytest.approx(
      (1 / 2 + 0 + 1) / 3
  )


def _naive_vote(group):
  # Independent of the implementation: scan candidates in order of first
  # appearance and keep the first with the strictly highest count.
  best, best_count = None, 0
  for candidate in group:
    if candidate is None:
      continue
    count = group.count(candidate)
    if count > best_count:
      best, best_count = candidate, count
  return best


def test_maj_at_k_matches_naive_on_random_cases():
  rng = random.Random(0)
  for _ in range(200):
    num_problems = rng.randint(1, 4)
    k = rng.randint(1, 4)
    answers = [
        [rng.choice(["a", "b", "c", None]) for _ in range(rng.randint(k, 9))]
        for _ in range(num_problems)
    ]
    references = [rng.choice(["a", "b"]) for _ in range(num_problems)]
    expected = []
    for sample_answers, reference in zip(answers, references):
      groups = [sample_answers[i:i + k]
                for i in range(0, len(sample_answers) - k + 1, k)]
      expected.append(
          sum(_naive_vote(g) == reference for g in groups) / len(groups)
      )
    assert evaluation.maj_at_k(answers, references, k) == pytest.approx(
        sum(expected) / len(expected)
    )


def test_maj_at_k_rejects_too_few_samples_and_mismatched_lengths():
  with pytest.raises(ValueError, match="n=2 samples, fewer than k=3"):
    evaluation.maj_at_k([["a", "b", "c"], ["a", "b"]], ["a", "a"], 3)
  with pytest.raises(ValueError, match="references"):
    evaluation.maj_at_k([["a"]], ["a", "b"], 1)


def test_summarize_tiny_example():
  metrics = evaluation.summarize(
      greedy_rewards=[1.0, 0.0, 1.0],
      sample_rewards=[
          [1.0, 0.0, 1.0, 1.0],  # 3 of 4 correct
          [0.0, 0.5, 0.0, 0.0],  # 0.5 < threshold 1.0: none correct
          [0.0, 1.0, 0.0, 0.0],  # 1 of 4
      ],
      sample_answers=[
          ["4", "5", "4", "4"],
          ["1", "2", "2", None],
          ["9", "8", "9", None],
      ],
      references=["4", "2", "8"],
      ks=(1, 2, 4),
  )
  intervals = {name: metrics.pop(name) for name in list(metrics) if name.endswith(("_lo", "_hi"))}
  assert metrics == pytest.approx({
      "pass@1": 2 / 3,
      # pass@2 per problem: 1 - C(1,2)/C(4,2) = 1; 0; 1 - C(3,2)/C(4,2) = 1/2.
      "pass@2": (1 + 0 + 0.5) / 3,
      "pass@4": (1 + 0 + 1) / 3,
      # maj@1: 3/4, 2/4, 1/4.
      "maj@1": (0.75 + 0.5 + 0.25) / 3,
      # maj@2: ("4","5")->"4" ok, ("4","4") ok; ("1","2")->"1" no,
      # ("2",None)->"2" ok; ("9","8")->"9" no, ("9",None) no.
      "maj@2": (1 + 0.5 + 0) / 3,
      # maj@4: "4" ok; "2" ok; "9" no.
      "maj@4": 2 / 3,
      "sample_accuracy": (0.75 + 0 + 0.25) / 3,
      "num_problems": 3,
  })
  assert isinstance(metrics["num_problems"], int)
  # Every rate but sample_accuracy has its interval: exact for greedy pass@1, bootstrap over problems for the rest.
  assert set(intervals) == {f"{name}_{end}" for name in ("pass@1", "pass@2", "pass@4", "maj@1", "maj@2", "maj@4")
                            for end in ("lo", "hi")}
  assert (intervals["pass@1_lo"], intervals["pass@1_hi"]) == evaluation.clopper_pearson(2, 3)
  assert (intervals["pass@2_lo"], intervals["pass@2_hi"]) == evaluation.bootstrap_interval([1.0, 0.0, 0.5])
  assert (intervals["maj@2_lo"], intervals["maj@2_hi"]) == evaluation.bootstrap_interval([1.0, 0.5, 0.0])
  for name in ("pass@2", "pass@4", "maj@1", "maj@2", "maj@4"):
    assert intervals[f"{name}_lo"] <= metrics[name] <= intervals[f"{name}_hi"]


def test_summarize_threshold_for_scalar_rewards():
  metrics = evaluation.summarize(
      greedy_rewards=[0.6],
      sample_rewards=[[0.5, 0.7]],
      sample_answers=[["a", "b"]],
      references=["b"],
      threshold=0.6,
  )
  assert metrics == {"pass@1": 1.0, "pass@1_lo": evaluation.clopper_pearson(1, 1)[0], "pass@1_hi": 1.0,
                     "sample_accuracy": 0.5, "num_problems": 1}


def test_summarize_rejects_inconsistent_input():
  good = dict(
      greedy_rewards=[1.0],
      sample_rewards=[[1.0, 0.0]],
      sample_answers=[["a", "b"]],
      references=["a"],
  )
  with pytest.raises(ValueError, match="references has 2"):
    evaluation.summarize(**{**good, "references": ["a", "b"]})
  with pytest.raises(ValueError, match="1 sample_answers"):
    evaluation.summarize(**{**good, "sample_answers": [["a"]]})
  with pytest.raises(ValueError, match="ks entry 3"):
    evaluation.summarize(**good, ks=(3,))
  with pytest.raises(ValueError, match="no problems"):
    evaluation.summarize(
        greedy_rewards=[], sample_rewards=[], sample_answers=[], references=[]
    )


def test_difficulty_bins():
  bins = evaluation.difficulty_bins([0.0, 0.1, 0.2, 0.5, 0.79, 0.8, 1.0, 1.0])
  assert bins == {
      "[0, 0.2)": 2,
      "[0.2, 0.4)": 1,
      "[0.4, 0.6)": 1,
      "[0.6, 0.8)": 1,
      "[0.8, 1]": 3,
  }
  assert list(bins) == sorted(bins)  # report order follows the edges
  assert evaluation.difficulty_bins([0.5], edges=(0, 1)) == {"[0, 1]": 1}


def test_difficulty_bins_rejects_bad_input():
  with pytest.raises(ValueError, match="1.5"):
    evaluation.difficulty_bins([1.5])
  with pytest.raises(ValueError, match="nan"):
    evaluation.difficulty_bins([float("nan")])
  with pytest.raises(ValueError, match="strictly increasing"):
    evaluation.difficulty_bins([0.5], edges=(0, 0.5, 0.5, 1))


def test_maj_at_k_judged_by_rewards_without_references():
  # The winning answer of each group is judged by the reward of the first sample that gave it.
  answers = [["0.5", "1/2", "0.5", "3"], ["x", "y", "y", "x"], [None, None, "a", "a"]]
  rewards = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
  # k=2 groups: ("0.5","1/2")->"0.5" ok, ("0.5","3")->"0.5" ok; ("x","y")->"x" no, ("y","x")->"y" ok;
  # (None, None) -> no vote, ("a","a") ok.
  assert evaluation.maj_at_k(answers, None, 2, rewards=rewards) == pytest.approx((1 + 0.5 + 0.5) / 3)
  # k=4: "0.5" ok; tie "x"/"y" -> "x" (first seen) no; "a" ok.
  assert evaluation.maj_at_k(answers, None, 4, rewards=rewards) == pytest.approx(2 / 3)
  # A reference, where given, decides instead of the rewards.
  assert evaluation.maj_at_k(answers, [None, "x", None], 4, rewards=rewards) == pytest.approx(1.0)
  assert evaluation.maj_at_k(answers, None, 4, rewards=rewards, threshold=2.0) == 0.0
  with pytest.raises(ValueError, match="no reference and no rewards"):
    evaluation.maj_at_k(answers, None, 2)


# Reference Clopper-Pearson bounds, computed independently as beta quantiles (scipy.stats.beta.ppf(0.025, k, n - k + 1)
# and beta.ppf(0.975, k + 1, n - k)); 0/n and n/n also have closed forms, checked below.
_CLOPPER_PEARSON = [
    (3, 10, 0.06673951117773447, 0.6524528500599973),
    (137, 500, 0.23534166201192522, 0.315354454511171),
    (1, 1, 0.025, 1.0),
    (50, 100, 0.39832112950330043, 0.6016788704966996),
]


@pytest.mark.parametrize("k,n,lo,hi", _CLOPPER_PEARSON)
def test_clopper_pearson_matches_beta_quantiles(k, n, lo, hi):
  assert evaluation.clopper_pearson(k, n) == pytest.approx((lo, hi), abs=1e-9)


@pytest.mark.parametrize("n", [1, 7, 40, 1000])
def test_clopper_pearson_closed_forms_at_zero_and_all(n):
  # 0 successes: upper bound solves (1 - p)^n = 0.025; n successes: lower bound solves p^n = 0.025.
  assert evaluation.clopper_pearson(0, n) == pytest.approx((0.0, 1 - 0.025 ** (1 / n)), abs=1e-9)
  assert evaluation.clopper_pearson(n, n) == pytest.approx((0.025 ** (1 / n), 1.0), abs=1e-9)
  assert evaluation.clopper_pearson(0, n, confidence=0.9)[1] == pytest.approx(1 - 0.05 ** (1 / n), abs=1e-9)


def test_clopper_pearson_contains_the_rate_and_narrows_with_n():
  widths = []
  for n in (10, 100, 1000):
    lo, hi = evaluation.clopper_pearson(3 * n // 10, n)
    assert lo < 0.3 < hi
    widths.append(hi - lo)
  assert widths[0] > widths[1] > widths[2]


@pytest.mark.parametrize("k,n,confidence", [(0, 0, 0.95), (-1, 5, 0.95), (6, 5, 0.95), (1, 5, 1.0)])
def test_clopper_pearson_rejects_bad_arguments(k, n, confidence):
  with pytest.raises(ValueError, match="clopper_pearson"):
    evaluation.clopper_pearson(k, n, confidence)


def test_bootstrap_interval_is_deterministic_and_covers_the_mean_about_95_percent_of_the_time():
  rng = random.Random(0)
  values = [rng.random() for _ in range(50)]
  assert evaluation.bootstrap_interval(values) == evaluation.bootstrap_interval(values)
  assert evaluation.bootstrap_interval(values) != evaluation.bootstrap_interval(values, seed=1)
  # Synthetic per-problem pass@k estimates with a known mean: the interval should hold it in about 95% of data sets.
  true_mean, trials, covered = 0.4, 300, 0
  for trial in range(trials):
    data_rng = random.Random(1000 + trial)
    # Each problem's estimate is c / 4 with c ~ Binomial(4, 0.4): mean 0.4.
    sample = [sum(data_rng.random() < true_mean for _ in range(4)) / 4 for _ in range(100)]
    lo, hi = evaluation.bootstrap_interval(sample, num_resamples=500, seed=trial)
    covered += lo <= true_mean <= hi
  assert 0.90 <= covered / trials <= 0.99


def test_bootstrap_interval_agrees_with_the_normal_interval_on_many_problems():
  rng = random.Random(0)
  values = [float(rng.random() < 0.3) for _ in range(2000)]
  mean = sum(values) / len(values)
  half = 1.96 * math.sqrt(mean * (1 - mean) / len(values))
  lo, hi = evaluation.bootstrap_interval(values)
  assert lo == pytest.approx(mean - half, abs=0.004) and hi == pytest.approx(mean + half, abs=0.004)
  assert evaluation.bootstrap_interval([0.5] * 10) == (0.5, 0.5)


def test_bootstrap_interval_rejects_bad_arguments():
  for kwargs in ({"values": []}, {"values": [[0.5]]}, {"values": [0.5], "confidence": 0.0},
                 {"values": [0.5], "num_resamples": 0}):
    with pytest.raises(ValueError, match="bootstrap_interval"):
      evaluation.bootstrap_interval(**kwargs)


def test_level_metrics_groups_by_level_and_skips_unknown_levels():
  correct = [True, False, True, True, False, True]
  levels = [1, 1, 3, None, 3, 3]
  metrics = evaluation.level_metrics(correct, levels)
  assert list(metrics) == ["level_1/pass@1", "level_1/pass@1_lo", "level_1/pass@1_hi", "level_1/num_problems",
                           "level_3/pass@1", "level_3/pass@1_lo", "level_3/pass@1_hi", "level_3/num_problems"]
  assert metrics["level_1/pass@1"] == 0.5 and metrics["level_1/num_problems"] == 2
  assert metrics["level_3/pass@1"] == pytest.approx(2 / 3) and metrics["level_3/num_problems"] == 3
  assert (metrics["level_3/pass@1_lo"], metrics["level_3/pass@1_hi"]) == evaluation.clopper_pearson(2, 3)
  assert evaluation.level_metrics([True, False], [None, None]) == {}
  with pytest.raises(ValueError, match="level_metrics"):
    evaluation.level_metrics([True], [1, 2])
