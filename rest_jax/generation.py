"""Sampling plus scoring: the device decodes while a host thread pool scores what it already decoded.

Used by the E-step (many samples per training problem) and by evaluation (greedy and sampled completions).
"""

import concurrent.futures
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from rest_jax import distributed
from rest_jax import evaluation
from rest_jax import reporting
from rest_jax import rewards as rewards_lib
from rest_jax import tasks as tasks_lib
from rest_jax.sampling import Completion, Sampler, Strategy


@dataclasses.dataclass
class Scored:
  completions: list[list[str]]  # [problem][sample]
  rewards: np.ndarray  # [problem, sample] float
  sampled: list[list[Completion]]  # [problem][sample]: the sampled ids (and log-probabilities) behind each text

  @property
  def sampled_tokens(self) -> int:
    """New tokens generated, end ids included: the sampling budget spent."""
    return sum(len(c.ids) for row in self.sampled for c in row)


def generate_and_score(sampler: Sampler, params: Any, problems: Sequence[tasks_lib.Problem], *, reward: str,
                       num_samples: int, strategy: Strategy, max_new_tokens: int, seed: int,
                       stop_strings: Sequence[str] = (), workers: int = 4, desc: str = "sample",
                       with_logprobs: bool = False, sample_prompts: Sequence[str] | None = None) -> Scored:
  """`num_samples` completions per problem and their rewards.

  Each decoded batch goes to a pool of `workers` threads (rewards that run programs spawn sandboxed processes, so
  threads are enough) while the next batch is decoding on the device. With several processes, each scores its share of
  the problems (round-robin) and all get the gathered result.
  `with_logprobs` also returns each sampled token's log-probability under the sampling policy. `sample_prompts`
  (one per problem) are what the model is conditioned on instead of the problems' prompts, which the reward still
  sees (e.g. STaR's hinted prompts).
  """
  if sample_prompts is not None and len(sample_prompts) != len(problems):
    raise ValueError(f"generate_and_score: {len(sample_prompts)} sample_prompts for {len(problems)} problems")
  reward_fn = rewards_lib.get(reward)
  completions: list[list[str]] = [[] for _ in problems]
  sampled: list[list[Completion]] = [[] for _ in problems]
  rewards_PxN = np.zeros((len(problems), num_samples), np.float32)
  futures = {}
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool, \
      reporting.progress(total=len(problems), desc=desc, unit="problem") as bar:
    conditioned = [p.prompt for p in problems] if sample_prompts is None else list(sample_prompts)
    batches = sampler.iter_completions(params, conditioned, num_samples=num_samples,
                                       strategy=strategy, max_new_tokens=max_new_tokens, seed=seed,
                                       stop_strings=stop_strings, with_logprobs=with_logprobs)
    for idx, batch_sampled in batches:
      batch_completions = [[c.text for c in row] for row in batch_sampled]
      for i, cs, row in zip(idx, batch_completions, batch_sampled):
        completions[i], sampled[i] = cs, row
      owned = [i for i in idx if distributed.owns(i)]  # With several processes, each scores its share.
      if owned:
        batch_problems = [problems[i] for i in owned]
        flat = [c for i in owned for c in completions[i]]
        fields = {k: [v for v in vs for _ in range(num_samples)]
                  for k, vs in tasks_lib.reward_fields(batch_problems).items()}
        prompts = [p.prompt for p in batch_problems for _ in range(num_samples)]
        futures[pool.submit(reward_fn, prompts, flat, **fields)] = owned
      bar.update(len(idx))
      bar.set_postfix(scored=sum(len(i) for f, i in futures.items() if f.done()))
    for future in concurrent.futures.as_completed(futures):
      idx = futures[future]
      rewards_PxN[idx] = np.asarray(future.result(), np.float32).reshape(len(idx), num_samples)
    bar.set_postfix(scored=len(problems))
  # Every process decoded the same completions and scored the problems it owns; the gathered rewards make the
  # selection identical on all of them even when a reward is not deterministic (programs under a wall-clock timeout).
  rewards_PxN = distributed.gather_owned(rewards_PxN)
  return Scored(completions=completions, rewards=rewards_PxN, sampled=sampled)


def evaluate(sampler: Sampler, params: Any, task: tasks_lib.Task, problems: Sequence[tasks_lib.Problem], *,
             greedy_strategy: Strategy, sample_strategy: Strategy | None, num_samples: int, ks: Sequence[int],
             max_new_tokens: int, seed: int, correct_threshold: float = 1.0, desc: str = "eval") -> dict[str, float]:
  """Greedy pass@1, and with `sample_strategy` the unbiased pass@K and maj@K from `num_samples` samples.

  Each rate comes with its 95% interval ("pass@1_lo", "pass@1_hi", ...), and problems with a "level" field add
  per-level greedy pass@1 (`evaluation.level_metrics`)."""
  kw = dict(reward=task.reward, max_new_tokens=max_new_tokens, stop_strings=task.stop_strings)
  greedy = generate_and_score(sampler, params, problems, num_samples=1, strategy=greedy_strategy, seed=seed,
                              desc=f"{desc} greedy", **kw)
  greedy_correct = greedy.rewards[:, 0] >= correct_threshold
  # Tasks with difficulty levels (MATH: fields["level"], 1 to 5) also get pass@1 per level.
  levels = evaluation.level_metrics(greedy_correct.tolist(), [p.fields.get("level") for p in problems])
  if sample_strategy is None:
    lo, hi = evaluation.clopper_pearson(int(greedy_correct.sum()), len(problems))
    return {"pass@1": float(np.mean(greedy_correct)), "pass@1_lo": lo, "pass@1_hi": hi,
            "num_problems": len(problems), **levels}
  sampled = generate_and_score(sampler, params, problems, num_samples=num_samples, strategy=sample_strategy,
                               seed=seed + 1, desc=f"{desc} sampled", **kw)
  # maj@K: the task's reward judges the winning answer (through the first sample that gave it), so equivalent
  # forms of an answer ("0.5" for "\\frac{1}{2}") and programs, which have no reference string, are judged right.
  return evaluation.summarize(
      greedy_rewards=greedy.rewards[:, 0].tolist(), sample_rewards=sampled.rewards.tolist(),
      sample_answers=[[task.extract_answer(c) for c in cs] for cs in sampled.completions],
      ks=tuple(ks), threshold=correct_threshold) | levels
