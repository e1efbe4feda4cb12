"""A study on the embedded arithmetic task: ReST-EM, SFT on the human-written solutions and GRPO (online RL at
ReST-EM's sampling budget), 3 seeds each, and ReST-EM over three base sizes; one report side by side
(rest_jax/study.py).

  python -m rest_jax.main --config=configs/study_default.py --workdir=runs/study
  python -m rest_jax.main --config=configs/study_default.py:smoke --workdir=/tmp/study_smoke    # a few minutes
  python -m rest_jax.main --config=configs/study_default.py --workdir=runs/study --config.study.seeds=(0,1)

Arguments after the colon select a mode: "" (the study), "smoke" (ReST-EM and SFT, 2 seeds of
configs/default.py:smoke, 2 base sizes; used by the tests).

The "small" and "large" bases are shipped under rest_jax/assets beside "arithmetic_base" (the "medium" runs are the
main ReST-EM runs, run once); a study whose base is missing stops before its first run, naming the field.
"""

import ml_collections

from rest_jax import config_files

# The arms, in report order: a name, the method read from its runs' metrics, the dotted experiment fields it sets.
_REST_EM = {"name": "rest_em", "method": "rest_em",
            "overrides": {"rest.algorithm": "rest_em", "rest.sft_human_baseline": False}}
_SFT_HUMAN = {"name": "sft_human", "method": "sft_human",
              "overrides": {"rest.algorithm": "sft_human", "rest.sft_human_baseline": False}}
# GRPO's settings are configs/default.py's grpo block (added to the study's experiment below): its sampling budget
# per iteration is ReST-EM's E-step.
_GRPO = {"name": "grpo", "method": "grpo", "overrides": {"rest.algorithm": "grpo", "rest.sft_human_baseline": False}}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  mode = config_files.mode(arg, __file__, ("study", "smoke"))
  default = config_files.sibling_module(__file__, "default")
  c = ml_collections.ConfigDict()
  c.study = ml_collections.ConfigDict()
  c.study.title = "ReST-EM vs SFT on human data vs GRPO: embedded multi-step arithmetic, 3 seeds, 3 base sizes"
  # The experiment every run starts from (a whole experiment config; the arms, seeds and sizes change it).
  c.study.experiment = e = default.get_config("smoke" if mode == "smoke" else None)
  c.study.arms = (_REST_EM, _SFT_HUMAN, _GRPO)
  c.study.seeds = (0, 1, 2)  # The experiment's `seed` (training randomness); task.kwargs.seed keeps the problems.
  # The scaling sweep: size name -> base.checkpoint, run for the arms of size_arms.
  c.study.sizes = ml_collections.ConfigDict(
      {"small": "arithmetic_base_small", "medium": "arithmetic_base", "large": "arithmetic_base_large"})
  c.study.size_arms = ("rest_em",)

  if mode == "smoke":
    c.study.title = "Study smoke test: ReST-EM vs SFT on human data"
    c.study.arms = (_REST_EM, _SFT_HUMAN)
    c.study.seeds = (0, 1)
    c.study.sizes = ml_collections.ConfigDict({"small": "arithmetic_base_small", "medium": "arithmetic_base"})
    e.eval.splits = ("test", "train")
  else:
    # A budget for 15 runs (ReST-EM 3 seeds x 3 sizes, SFT and GRPO 3 seeds) in under an hour on two CPU cores:
    # 1000 training problems instead of 2000 (measured: ReST-EM 0.574 -> 0.638 -> 0.700 -> 0.750 in 160 s; at 500
    # problems its M-steps on ~320 kept samples did not beat the base on validation), no transfer split, train
    # pass@1 on 200 problems, pass@4 / maj@4 only, 100 validation problems, 2 iterations.
    e.task.kwargs.num_train = 1000
    e.rest.num_iterations = 2
    e.eval.update(splits=("test", "train"), train_subset=200, num_samples=4, ks=(4,), val_size=100)
  e.title = c.study.title
  e.grpo = default.grpo(ml_collections.ConfigDict(e.to_dict())).grpo  # At this experiment's sampling budget.
  return c
