"""A study on the embedded arithmetic task: ReST-EM against SFT on the human-written solutions, 3 seeds each, and
ReST-EM's gain over three base sizes; one report side by side (rest_jax/study.py). About 45 minutes on a 2-core CPU.

  python -m rest_jax.main --config=configs/study_default.py --workdir=runs/study
  python -m rest_jax.main --config=configs/study_default.py:smoke --workdir=/tmp/study_smoke    # a few minutes
  python -m rest_jax.main --config=configs/study_default.py --workdir=runs/study --config.study.seeds=(0,1)

Arguments after the colon select a mode: "" (the study), "smoke" (2 seeds of configs/default.py:smoke, 2 sizes; used
by the tests).

The arms' runs: SFT on human data runs today beside ReST-EM (`rest.sft_human_baseline`, logged as method
"sft_human"), so both arms name the same experiment config and share each seed's run (run once, read twice). The
"small" and "large" bases are shipped under rest_jax/assets like "arithmetic_base" (the "medium" runs are the main
ReST-EM runs); a study whose base is missing stops before its first run, naming the field.
"""

import ml_collections

from rest_jax import config_files

# The arms: name, the method read from the runs' metrics, and the dotted experiment fields the arm sets.
_REST_EM = {"name": "rest_em", "method": "rest_em",
            "overrides": {"rest.algorithm": "rest_em", "rest.sft_human_baseline": True}}
# Until `rest.algorithm = "sft_human"` is registered, SFT is the baseline run beside ReST-EM (the same runs).
_SFT_HUMAN = {"name": "sft_human", "method": "sft_human",
              "overrides": {"rest.algorithm": "rest_em", "rest.sft_human_baseline": True}}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  mode = config_files.mode(arg, __file__, ("study", "smoke"))
  c = ml_collections.ConfigDict()
  c.study = ml_collections.ConfigDict()
  c.study.title = "ReST-EM vs SFT on human data: embedded multi-step arithmetic, 3 seeds, 3 base sizes"
  # The experiment every run starts from (a whole experiment config; the arms, seeds and sizes change it).
  c.study.experiment = config_files.sibling(__file__, "default", "smoke" if mode == "smoke" else None)
  # The arms, in report order. The GRPO arm goes here once `rest.algorithm = "grpo"` and its `grpo.*` block are in
  # configs/default.py and config_check: {"name": "grpo", "method": "grpo", "overrides": {"rest.algorithm": "grpo",
  # "rest.sft_human_baseline": False, ...its grpo.* settings}}.
  c.study.arms = (_REST_EM, _SFT_HUMAN)
  c.study.seeds = (0, 1, 2)  # The experiment's `seed` (training randomness); task.kwargs.seed keeps the problems.
  # The scaling sweep: size name -> base.checkpoint, run for the arms of size_arms.
  c.study.sizes = ml_collections.ConfigDict(
      {"small": "arithmetic_base_small", "medium": "arithmetic_base", "large": "arithmetic_base_large"})
  # SFT's gain per size comes free: it runs in the same runs as ReST-EM (see the module docstring).
  c.study.size_arms = ("rest_em", "sft_human")

  e = c.study.experiment
  if mode == "smoke":
    c.study.title = "Study smoke test: ReST-EM vs SFT on human data"
    c.study.seeds = (0, 1)
    c.study.sizes = ml_collections.ConfigDict({"small": "arithmetic_base_small", "medium": "arithmetic_base"})
    c.study.size_arms = ("rest_em",)
    e.eval.splits = ("test", "train")
  else:
    # A budget for 9 runs (3 seeds x 3 sizes; SFT shares them) in under an hour on two CPU cores: fewer training
    # problems, no transfer split, pass@4 / maj@4 only, and capped M-steps.
    e.task.kwargs.num_train = 1000
    e.eval.update(splits=("test", "train"), train_subset=200, num_samples=4, ks=(4,), val_size=100)
    e.train.max_steps = 100
  e.title = c.study.title
  return c
