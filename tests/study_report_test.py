"""The study report's aggregation, on hand-written metrics.jsonl / stages.jsonl files of a made-up study."""

import json
import pathlib

import numpy as np
import pytest

from rest_jax import study_report
from rest_jax.study_report import Slot

# Test pass@1 per (run, method) and iteration; train pass@1 is test + 0.1.
_TEST = {
    ("runs/rest_em/seed_0", "rest_em"): [0.20, 0.40, 0.35],
    ("runs/rest_em/seed_1", "rest_em"): [0.30, 0.50, 0.60],
    ("runs/rest_em/seed_0", "sft_human"): [0.20, 0.30],
    ("runs/rest_em/seed_1", "sft_human"): [0.30, 0.36],
    ("runs/rest_em/seed_0/size_small", "rest_em"): [0.10, 0.12, 0.15],
    ("runs/rest_em/seed_1/size_small", "rest_em"): [0.10, 0.20, 0.11],
}
# sampled_tokens per (run, iteration) of ReST-EM's stages; the second seed also has an online stage at iteration 2.
_TOKENS = {"runs/rest_em/seed_0": {1: 1000, 2: 3000}, "runs/rest_em/seed_1": {1: 2000, 2: 1000},
           "runs/rest_em/seed_0/size_small": {1: 10, 2: 10}, "runs/rest_em/seed_1/size_small": {1: 10, 2: 10}}


def _write(root: pathlib.Path) -> None:
  for (run, method), curve in _TEST.items():
    path = root / run
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "metrics.jsonl", "a") as f:
      for it, value in enumerate(curve):
        for split, v in (("test", value), ("train", value + 0.1)):
          record = {"method": method, "iteration": it, "split": split, "pass@1": v, "num_problems": 100}
          if split == "test":
            record["pass@4"] = min(1.0, v + 0.2)
          f.write(json.dumps({**record, "kind": "eval"}) + "\n")
    with open(path / "stages.jsonl", "a") as f:
      for it in range(1, len(curve)):
        record = {"method": method, "iteration": it, "stage": "mstep", "wall_s": 1.0}
        if method == "rest_em":  # SFT's stages have no sampled_tokens: they count 0.
          f.write(json.dumps({"method": method, "iteration": it, "stage": "estep", "wall_s": 1.0,
                              "sampled_tokens": _TOKENS[run][it]}) + "\n")
        f.write(json.dumps(record) + "\n")
  with open(root / "runs/rest_em/seed_1/stages.jsonl", "a") as f:
    f.write(json.dumps({"method": "rest_em", "iteration": 2, "stage": "rollout", "wall_s": 1.0,
                        "sampled_tokens": 500}) + "\n")


_SLOTS = [
    Slot("rest_em", "rest_em", 0, None, "runs/rest_em/seed_0", 100),
    Slot("sft_human", "sft_human", 0, None, "runs/rest_em/seed_0", 100),
    Slot("rest_em", "rest_em", 1, None, "runs/rest_em/seed_1", 100),
    Slot("sft_human", "sft_human", 1, None, "runs/rest_em/seed_1", 100),
    Slot("rest_em", "rest_em", 0, "medium", "runs/rest_em/seed_0", 100),
    Slot("rest_em", "rest_em", 1, "medium", "runs/rest_em/seed_1", 100),
    Slot("rest_em", "rest_em", 0, "small", "runs/rest_em/seed_0/size_small", 10),
    Slot("rest_em", "rest_em", 1, "small", "runs/rest_em/seed_1/size_small", 10),
]
_ARMS = [("rest_em", "rest_em"), ("sft_human", "sft_human")]
_ALL_RUNS = {s.run for s in _SLOTS}


@pytest.fixture
def study(tmp_path) -> study_report.Study:
  _write(tmp_path)
  return study_report.Study(tmp_path, _SLOTS, _ARMS, _ALL_RUNS)


def test_spread_is_mean_sample_std_and_min_max():
  s = study_report.spread([0.2, 0.4, 0.9])
  assert (s.n, s.lo, s.hi) == (3, 0.2, 0.9)
  assert s.mean == pytest.approx(0.5)
  assert s.std == pytest.approx(np.sqrt(((0.2 - 0.5) ** 2 + (0.4 - 0.5) ** 2 + (0.9 - 0.5) ** 2) / 2))
  assert study_report.spread([0.3]).std is None
  assert study_report.spread([]) is None


def test_points_aggregate_over_seeds(study):
  p = study.point("rest_em", 2)
  assert (p.n, p.lo, p.hi) == (2, 0.35, 0.60)
  assert p.mean == pytest.approx(0.475) and p.std == pytest.approx(np.std([0.35, 0.60], ddof=1))
  assert study.point("rest_em", 1, "test", "pass@4").mean == pytest.approx(0.65)
  assert study.point("sft_human", 1, "train").mean == pytest.approx(0.43)
  assert study.metric_names("rest_em") == ["pass@1", "pass@4"]
  assert study.iterations("sft_human") == [0, 1]


def test_cumulative_sampled_tokens_sum_every_stage_and_count_missing_as_zero(study):
  records = study.records["runs/rest_em/seed_1"]
  assert records.cumulative_tokens("rest_em") == {0: 0, 1: 2000, 2: 3500}  # E-step 1000 + rollout 500 at it 2.
  assert records.cumulative_tokens("sft_human") == {0: 0, 1: 0}
  assert study.tokens("rest_em", 2).mean == pytest.approx((4000 + 3500) / 2)
  assert study.tokens("sft_human", 1).mean == 0


def test_gains_over_the_base_per_size(study):
  base, best, final = study.gains("rest_em", "small")
  assert base.mean == pytest.approx(0.10)
  assert [best.lo, best.hi] == pytest.approx([5.0, 10.0])  # Seed 0: best 0.15 (+5); seed 1: best 0.20 (+10).
  assert [final.lo, final.hi] == pytest.approx([1.0, 5.0])  # Finals 0.15 and 0.11.
  _, _, medium_final = study.gains("rest_em", "medium")
  assert medium_final.mean == pytest.approx(100 * ((0.35 - 0.20) + (0.60 - 0.30)) / 2)
  assert study.sizes == ["small", "medium"]  # Smallest base first.
  assert study.base_params("small") == 10


def test_largest_drop():
  assert study_report.largest_drop({0: 0.2, 1: 0.5, 2: 0.4, 3: 0.1}) == pytest.approx((0.3, 2, 3))
  assert study_report.largest_drop({0: 0.2, 1: 0.5}) is None


def test_report_sections_and_headline_are_computed(tmp_path):
  _write(tmp_path)
  path = study_report.write_report(tmp_path, _SLOTS, arms=_ARMS, finished=_ALL_RUNS, num_runs=4, title="T")
  report = pathlib.Path(path).read_text()
  for section in ("## Summary", "## Test accuracy per iteration", "## Sample efficiency", "## Stability",
                  "## Scaling", "## Overfitting", "## Runs"):
    assert f"\n{section}\n" in report, section
  # Finals: rest_em (0.35 + 0.60) / 2 = 0.475, sft_human (0.30 + 0.36) / 2 = 0.330: 14.5 points apart.
  assert ("**rest_em** has the highest final mean test pass@1, 0.475 over 2 seeds, 14.5 points above the next arm, "
          "**sft_human** (0.330 over 2 seeds)") in report
  std = np.std([0.35, 0.60], ddof=1)
  assert f"| 2 | 2 | 0.475 ± {std:.3f} [0.350, 0.600] | 0.675 ± " in report  # Iteration 2 of rest_em.
  # The mean rises (0.25, 0.45, 0.475); seed 0 falls 0.40 -> 0.35.
  assert "| rest_em | none | 5.0 (seed 0, it 1 → 2) | 1 of 2 |" in report
  assert "| rest_em | small | 10 | 2 | 0.100 ± 0.000 [0.100, 0.100] |" in report
  for name in ("test_pass_at_1.png", "sample_efficiency.png", "scaling.png", "overfitting.png"):
    assert f"(plots/{name})" in report and (tmp_path / "plots" / name).exists(), name
  # The same files give the same bytes.
  again = pathlib.Path(study_report.write_report(tmp_path, _SLOTS, arms=_ARMS, finished=_ALL_RUNS, num_runs=4,
                                                 title="T")).read_bytes()
  assert again == report.encode()


def test_a_partial_study_reports_only_its_finished_runs(tmp_path):
  _write(tmp_path)
  finished = {"runs/rest_em/seed_0"}
  report = pathlib.Path(study_report.write_report(tmp_path, _SLOTS, arms=_ARMS, finished=finished, num_runs=4,
                                                  title="T")).read_text()
  assert "1 of 4 runs finished (a partial study" in report
  assert "0.350 ± – [0.350, 0.350]" in report  # rest_em's final, from seed 0 alone.
  assert "No finished run of the size sweep" not in report  # The medium slots are the main runs.
  assert "| rest_em | small |" not in report
