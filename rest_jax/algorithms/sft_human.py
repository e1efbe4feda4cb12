"""SFT on the human-written solutions: the baseline ReST-EM is compared with (one M-step from the base).

Runs beside any algorithm with `rest.sft_human_baseline=True`, or alone as `rest.algorithm="sft_human"`.
"""

from rest_jax import algorithms


@algorithms.register("sft_human")
def run(exp) -> None:
  """SFT on the human-written solutions of the task's "human" split."""
  exp.evaluate(exp.base_params, "sft_human", 0)
  prompts, solutions = exp.human_data()
  params = exp.mstep(exp.base_params, prompts, solutions, None, "sft_human", 1)
  exp.evaluate(params, "sft_human", 1)
