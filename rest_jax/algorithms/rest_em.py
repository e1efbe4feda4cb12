"""ReST-EM (Singh et al. 2023): sample with the current policy, keep the rewarded samples, fine-tune the base on them.

`rest.restart_from_base=False` continues from the last iterate instead; `rest.sampler_checkpoint` makes a fixed
model (Orbax, Hugging Face directory or GGUF file, loaded like the base) sample every E-step: distillation.
"""

from rest_jax import algorithms


@algorithms.register("rest_em")
def run(exp) -> None:
  """ReST-EM: E-step with the current policy (or a teacher), M-step from the base, evaluation, per iteration."""
  method, c = "rest_em", exp.config.rest
  exp.evaluate(exp.base_params, method, 0)
  teacher = exp.load_policy(c.sampler_checkpoint) if c.sampler_checkpoint else None
  policy = exp.base_params
  for it in range(1, c.num_iterations + 1):
    if teacher is None:
      samples = exp.estep(policy, method, it)
    else:
      samples = exp.estep(teacher.params, method, it, sampler=teacher.sampler)
    kept = [s for s in samples if s.kept]
    init = exp.base_params if c.restart_from_base else policy
    policy = exp.mstep(init, [s.prompt for s in kept], [s.completion for s in kept], [s.reward for s in kept],
                       method, it)
    exp.evaluate(policy, method, it)
