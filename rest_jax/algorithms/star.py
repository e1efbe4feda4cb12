"""STaR with rationalisation (Zelikman et al. 2022) on ReST-EM's loop.

Each iteration: an E-step with the current policy, as in ReST-EM; then the training problems with no rewarded sample
are sampled again with their answer given as a hint (`star.hint`, placed before the prompt's trailing whitespace,
`star.rationalization_samples` each); the rewarded rationalisations join the kept samples, and the M-step fine-tunes
the base on them **with the original prompt**: the hint never reaches the training text. Rationalisation targets the
gap between pass@1 after training and the base's pass@K (problems the policy cannot solve alone still teach it).
Both stages count their sampled tokens, so a study compares STaR with ReST-EM at the budget it really spent.
"""

from rest_jax import algorithms
from rest_jax import config_check
from rest_jax import errors

RULES = {
    "star.hint": config_check.Rule((str,), also=lambda v: None if "{answer}" in v else "must contain {answer}"),
    "star.answer_field": config_check.Rule((str,), nonempty=True),
    "star.rationalization_samples": config_check.Rule((int,), low=1),
}


def hinted(prompt: str, answer: str, hint: str) -> str:
  """`prompt` with `hint` (its "{answer}" filled in) before the prompt's trailing whitespace."""
  body = prompt.rstrip()
  return body + hint.format(answer=answer) + prompt[len(body):]


@algorithms.register("star", block="star", rules=RULES)
def run(exp) -> None:
  """STaR: ReST-EM's E-step, then hinted rationalisation of the unsolved problems; train on both without hints."""
  method, c, s = "star", exp.config.rest, exp.config.star
  problems = list(exp.task.split("train"))
  missing = next((p for p in problems if s.answer_field not in p.fields), None)
  if missing is not None:
    raise errors.UsageError(f"config star.answer_field={s.answer_field!r}: problem {missing.id} of task "
                            f"{exp.task.name!r} has no such field (its fields: {', '.join(sorted(missing.fields))})")
  exp.evaluate(exp.base_params, method, 0)
  policy = exp.base_params
  for it in range(1, c.num_iterations + 1):
    samples = exp.estep(policy, method, it)
    solved = {x.problem_id for x in samples if x.kept}
    unsolved = [p for p in problems if p.id not in solved]
    rationalized = exp.estep(policy, method, it, problems=unsolved, stage="rationalize",
                             num_samples=s.rationalization_samples,
                             sample_prompt=lambda p: hinted(p.prompt, str(p.fields[s.answer_field]), s.hint)
                             ) if unsolved else []
    kept = [x for x in samples + rationalized if x.kept]
    init = exp.base_params if c.restart_from_base else policy
    policy = exp.mstep(init, [x.prompt for x in kept], [x.completion for x in kept], [x.reward for x in kept],
                       method, it)
    exp.evaluate(policy, method, it)
