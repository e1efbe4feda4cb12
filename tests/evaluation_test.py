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


def test_summarize_threshold_for_scalar_rewards():
  metrics = evaluation.summarize(
      greedy_rewards=[0.6],
      sample_rewards=[[0.5, 0.7]],
      sample_answers=[["a", "b"]],
      references=["b"],
      threshold=0.6,
  )
  assert metrics == {"pass@1": 1.0, "sample_accuracy": 0.5, "num_problems": 1}


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
