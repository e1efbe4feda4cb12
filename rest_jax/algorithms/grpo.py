"""GRPO-style online RL (Shao et al. 2024), on the same tasks, rewards and sampler as ReST-EM, for comparison.

Each iteration is one resumable stage of `grpo.batches_per_iteration` rollout batches. A batch: the next
`grpo.prompts_per_batch` training problems (a seeded order, epoch after epoch), `grpo.samples_per_prompt` samples
each from the current policy at `grpo.temperature` (no top-k / top-p, so the recorded log-probabilities are the
policy's), scored by the task's reward; group-relative advantages; then `grpo.updates_per_batch` passes of clipped
policy-gradient updates over the batch (in steps of `train.batch_rows` x `train.seq_len` tokens) against the
sampling policy's log-probabilities, with an optional k3 KL penalty to the base (`grpo.kl_coef`). Groups whose
rewards are all equal have zero advantage and are left out of the updates (they carry no gradient).

The optimizer is AdamW as `train.*` sets it, at `grpo.learning_rate`, constant after `train.warmup_steps`; its
state starts afresh each iteration (an iteration's artifact is the policy and its samples). Every stage records
`sampled_tokens`, so the study report can put GRPO and ReST-EM side by side at equal sampling budgets.
"""

import dataclasses

import numpy as np

from rest_jax import algorithms
from rest_jax import config_check
from rest_jax import generation
from rest_jax import selection
from rest_jax import tokenizers
from rest_jax.sampling import strategies
from rest_jax.training import TrainConfig
from rest_jax.training import grpo as grpo_lib

_NUMBER = (int, float)
RULES = {
    "grpo.prompts_per_batch": config_check.Rule((int,), low=1),
    "grpo.samples_per_prompt": config_check.Rule((int,), low=2),  # A group needs two samples to compare.
    "grpo.batches_per_iteration": config_check.Rule((int,), low=1),
    "grpo.updates_per_batch": config_check.Rule((int,), low=1),
    "grpo.learning_rate": config_check.Rule(_NUMBER, low=0, open_low=True),
    "grpo.temperature": config_check.Rule(_NUMBER, low=0, open_low=True),
    "grpo.clip_eps": config_check.Rule(_NUMBER, low=0, high=1, open_low=True, open_high=True),
    "grpo.clip_eps_high": config_check.Rule(_NUMBER, low=0),  # 0: the same as clip_eps.
    "grpo.kl_coef": config_check.Rule(_NUMBER, low=0),
    "grpo.advantage_norm": config_check.Rule((str,), choices=lambda: grpo_lib.ADVANTAGE_NORMS),
    "grpo.loss_norm": config_check.Rule((str,), choices=lambda: grpo_lib.LOSS_NORMS),
}


def grpo_config(c) -> grpo_lib.GRPOConfig:
  return grpo_lib.GRPOConfig(clip_eps=c.clip_eps, clip_eps_high=c.clip_eps_high or None, kl_coef=c.kl_coef,
                             temperature=c.temperature, advantage_norm=c.advantage_norm, loss_norm=c.loss_norm,
                             updates_per_batch=c.updates_per_batch)


def _step_chunks(rollouts, capacity_tokens: int) -> list[list[grpo_lib.Rollout]]:
  """Consecutive runs of rollouts of at most ~3/4 of a step's tokens each (first-fit packing then fits them)."""
  chunks, current, tokens = [], [], 0
  for r in rollouts:
    size = len(r.prompt_ids) + len(r.completion_ids)
    if current and tokens + size > capacity_tokens * 3 // 4:
      chunks.append(current)
      current, tokens = [], 0
    current.append(r)
    tokens += size
  return chunks + ([current] if current else [])


def _packed(rollouts, train_config: TrainConfig) -> list[dict[str, np.ndarray]]:
  """The update steps' host batches of `rollouts`; a chunk first-fit cannot place is split in two."""
  kw = dict(seq_len=train_config.seq_len, batch_rows=train_config.batch_rows, micro_batches=train_config.micro_batches)
  todo = _step_chunks(rollouts, train_config.seq_len * train_config.batch_rows * train_config.micro_batches)
  batches = []
  while todo:
    chunk = todo.pop(0)
    try:
      batches.append(grpo_lib.pack_rollouts(chunk, **kw))
    except ValueError:
      if len(chunk) == 1:
        raise
      todo[:0] = [chunk[:len(chunk) // 2], chunk[len(chunk) // 2:]]
  return batches


@algorithms.register("grpo", block="grpo", rules=RULES)
def run(exp) -> None:
  """GRPO: online group-relative policy gradient; one stage per `grpo.batches_per_iteration` rollout batches."""
  method, g = "grpo", exp.config.grpo
  exp.evaluate(exp.base_params, method, 0)
  problems = list(exp.task.split("train"))
  config = grpo_config(g)
  train_config = TrainConfig(**{**exp.config.train.to_dict(), "learning_rate": g.learning_rate,
                                "lr_schedule": "constant"})
  tok = exp.sampler.tokenizer
  prefix = tuple(tokenizers.prefix_ids(tok))
  rng = np.random.default_rng(exp.seed(method, "order"))
  epochs = -(-g.prompts_per_batch * g.batches_per_iteration * exp.config.rest.num_iterations // len(problems))
  order = np.concatenate([rng.permutation(len(problems)) for _ in range(epochs)])
  policy = exp.base_params
  for it in range(1, exp.config.rest.num_iterations + 1):

    def compute(it=it, start=policy):
      update, state = grpo_lib.make_update(
          start, cfg=exp.cfg, train_config=dataclasses.replace(train_config, seed=exp.seed(method, it, "m")),
          grpo_config=config, mesh=exp.mesh, total_steps=1 << 30)
      samples, sums = [], {"sampled_tokens": 0, "updates": 0, "update_tokens": 0, "clip_frac": 0.0, "kl": 0.0}
      for b in range(g.batches_per_iteration):
        first = ((it - 1) * g.batches_per_iteration + b) * g.prompts_per_batch
        batch_problems = [problems[i] for i in order[first:first + g.prompts_per_batch]]
        params = grpo_lib.policy_params(state, train_config=train_config, mesh=exp.mesh)
        scored = generation.generate_and_score(
            exp.sampler, params, batch_problems, reward=exp.task.reward, num_samples=g.samples_per_prompt,
            strategy=strategies.Sampling(temperature=g.temperature), max_new_tokens=exp.config.sampler.max_new_tokens,
            seed=exp.seed(method, it, "rollout", b), stop_strings=exp.task.stop_strings,
            workers=exp.config.sampler.reward_workers, desc=f"{method} it{it} rollouts {b + 1}/{g.batches_per_iteration}",
            with_logprobs=True)
        sums["sampled_tokens"] += scored.sampled_tokens
        advantages_PxN = grpo_lib.group_advantages(scored.rewards, norm=g.advantage_norm)
        rollouts = []
        for p, texts, rewards_N, adv_N, row in zip(batch_problems, scored.completions, scored.rewards,
                                                   advantages_PxN, scored.sampled):
          prompt_ids = prefix + tuple(tok.encode(p.prompt))
          for text, reward, adv, c in zip(texts, rewards_N, adv_N, row):
            samples.append(selection.Sample(problem_id=p.id, prompt=p.prompt, completion=text, reward=float(reward),
                                            iteration=it, kept=bool(adv != 0), completion_ids=c.ids,
                                            logprobs=c.logprobs))
            if adv != 0 and c.ids:
              rollouts.append(grpo_lib.Rollout(prompt_ids, c.ids, c.logprobs, float(adv)))
        if not rollouts:
          continue
        steps = _packed(rollouts, train_config)
        if config.kl_coef > 0:
          for batch in steps:
            batch["ref_logprobs"] = grpo_lib.ref_logprobs(exp.base_params, batch, cfg=exp.cfg, mesh=exp.mesh,
                                                          temperature=config.temperature,
                                                          chunk_size=train_config.loss_chunk_size)
        for _ in range(config.updates_per_batch):
          for batch in steps:
            state, metrics = update(state, batch)
            if not np.isfinite(float(metrics["loss"])):
              raise FloatingPointError(f"{method} it{it}: the GRPO loss is {float(metrics['loss'])} at update "
                                       f"{sums['updates'] + 1} (grpo.learning_rate={g.learning_rate}); lower it")
            sums["updates"] += 1
            sums["update_tokens"] += int(metrics["tokens"])
            sums["clip_frac"] += float(metrics["clip_frac"]) * float(metrics["tokens"])
            sums["kl"] += float(metrics.get("kl_mean", 0.0)) * float(metrics["tokens"])
      stats = selection.selection_stats(samples, threshold=exp.config.rest.reward_threshold)
      counters = {"generated": stats["generated"], "rewarded": stats["rewarded"], "solve_rate": stats["solve_rate"],
                  "sampled_tokens": sums["sampled_tokens"], "updates": sums["updates"],
                  "update_tokens": sums["update_tokens"],
                  "clip_frac": sums["clip_frac"] / max(sums["update_tokens"], 1),
                  "mean_reward": float(np.mean([s.reward for s in samples]))}
      if config.kl_coef > 0:
        counters["kl"] = sums["kl"] / max(sums["update_tokens"], 1)
      return grpo_lib.policy_params(state, train_config=train_config, mesh=exp.mesh), samples, counters

    policy = exp.online_stage(method, it, compute)
    exp.evaluate(policy, method, it)
