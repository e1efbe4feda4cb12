"""The original ReST (Gulcehre et al. 2023): per Grow step (an E-step), Improve steps with rising reward thresholds,
each continuing from the previous model, with the human-written solutions mixed in (`rest.improve_thresholds`,
`rest.mix_human`)."""

from rest_jax import algorithms


@algorithms.register("rest")
def run(exp) -> None:
  """Original ReST: Grow, then Improve steps with rising thresholds; the iteration's model is the last Improve's."""
  method, c = "rest", exp.config.rest
  exp.evaluate(exp.base_params, method, 0)
  policy = exp.base_params
  human_prompts, human_solutions = exp.human_data() if c.mix_human else ([], [])
  for it in range(1, c.num_iterations + 1):
    samples = exp.estep(policy, method, it)
    if (restored := exp.restored(method, it)) is not None:
      policy = restored
    else:
      for step, threshold in enumerate(c.improve_thresholds):
        chosen = [s for s in samples if s.kept and s.reward > threshold]
        prompts = [s.prompt for s in chosen] + human_prompts
        completions = [s.completion for s in chosen] + human_solutions
        weights = [s.reward for s in chosen] + [1.0] * len(human_prompts)
        # Each Improve step is cached under a sub-method so that an interrupted Grow step resumes mid-way.
        policy = exp.mstep(policy, prompts, completions, weights, f"{method}_improve{step}", it)
      exp.store.save(method, it, policy, {"model_config": exp.cfg.to_dict(), "method": method, "iteration": it})
    exp.evaluate(policy, method, it)
