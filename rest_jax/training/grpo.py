"""GRPO, the group-relative policy-gradient update of online RL: a loss over packed rollouts on finetune's train step.

What the algorithm loop calls, with `config` a `GRPOConfig` and `train_config` a `finetune.TrainConfig`:
  once:      `update, state = make_update(params, cfg=, train_config=, grpo_config=config, mesh=, total_steps=)`
             (`total_steps` = rollout batches x `config.updates_per_batch`, the learning-rate schedule's length).
  per batch of rollouts (P prompts x N samples, drawn with `policy_params(state, ...)` at `config.temperature`):
    1. `advantages_PxN = group_advantages(rewards_PxN, norm=config.advantage_norm)`;
    2. `Rollout(prompt_ids, completion_ids, logprobs, advantage)` per sample, from the sampler's ids and log-probs;
    3. `batch = pack_rollouts(rollouts, seq_len=..., batch_rows=..., micro_batches=...)`: one step's [A, B, T];
    4. with `config.kl_coef > 0`: `batch["ref_logprobs"] = ref_logprobs(base_params, batch, ...)`;
    5. `state, metrics = update(state, batch)`, `config.updates_per_batch` times.

Batch keys, each [A, B, T] (batching's packed rows, with `weights` left out):
  tokens, targets, positions, segment_ids, loss_mask  as `batching.pack` (loss_mask: completion targets only);
  old_logprobs   float32: the sampling policy's log-prob of each target;
  advantages     float32: the target's sequence's advantage;
  token_weights  float32: 1 / its sequence's completion length (the weights of loss_norm="sequence");
  ref_logprobs   float32: the base policy's log-prob of each target (only needed with kl_coef > 0).
All are 0 off the loss mask, and nothing there reaches the loss or its gradient.

Shape letters: P prompts, N samples per prompt, A micro-batches, B rows, T tokens.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rest_jax import distributed
from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig
from rest_jax.training import batching, finetune
from rest_jax.training import lora as lora_lib
from rest_jax.training import loss as loss_lib
from rest_jax.training.finetune import TrainConfig, TrainState

ADVANTAGE_NORMS = ("std", "mean")
LOSS_NORMS = ("token", "sequence")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  clip_eps: float = 0.2  # The ratio is clipped to [1 - clip_eps, 1 + clip_eps_high].
  clip_eps_high: float | None = None  # None = clip_eps; larger lets unlikely tokens grow faster (DAPO).
  kl_coef: float = 0.0  # Weight of the k3 KL estimate to the reference policy per token (0 = no reference).
  temperature: float = 1.0  # Log-probs are of softmax(logits / temperature), as the sampler draws and records them.
  # "std": (r - mean) / (std + eps) within each prompt's group; "mean": r - mean (Dr. GRPO).
  advantage_norm: str = "std"
  # "token": the sum over the batch's completion tokens / their count; "sequence": each sequence's token mean,
  # averaged over the sequences.
  loss_norm: str = "token"
  updates_per_batch: int = 1  # Optimizer steps on each batch of rollouts (the loop's).

  def __post_init__(self):
    if not 0 < self.clip_eps < 1:
      raise ValueError(f"grpo.clip_eps must be in (0, 1), got {self.clip_eps}")
    if self.clip_eps_high is not None and self.clip_eps_high <= 0:
      raise ValueError(f"grpo.clip_eps_high must be > 0 or None (= clip_eps), got {self.clip_eps_high}")
    if self.kl_coef < 0:
      raise ValueError(f"grpo.kl_coef must be >= 0, got {self.kl_coef}")
    if self.temperature <= 0:
      raise ValueError(f"grpo.temperature must be > 0, got {self.temperature}")
    if self.advantage_norm not in ADVANTAGE_NORMS:
      raise ValueError(f"grpo.advantage_norm must be one of {ADVANTAGE_NORMS}, got {self.advantage_norm!r}")
    if self.loss_norm not in LOSS_NORMS:
      raise ValueError(f"grpo.loss_norm must be one of {LOSS_NORMS}, got {self.loss_norm!r}")
    if self.updates_per_batch < 1:
      raise ValueError(f"grpo.updates_per_batch must be >= 1, got {self.updates_per_batch}")

  @property
  def eps_high(self) -> float:
    return self.clip_eps if self.clip_eps_high is None else self.clip_eps_high


def group_advantages(rewards_PxN: Any, norm: str = "std", eps: float = 1e-6) -> Any:
  """Each sample's advantage within its prompt's N samples (numpy in, numpy out; jax in, jax out).

  "std": (r - mean) / (std + eps), the std over the group (ddof=0); "mean": r - mean. A group whose rewards are all
  equal gets exactly 0.
  """
  xp = jnp if isinstance(rewards_PxN, jax.Array) else np
  rewards_PxN = xp.asarray(rewards_PxN, xp.float32)
  if rewards_PxN.ndim != 2:
    raise ValueError(f"group_advantages: rewards must be [prompts, samples], got shape {rewards_PxN.shape}")
  if norm not in ADVANTAGE_NORMS:
    raise ValueError(f"grpo.advantage_norm must be one of {ADVANTAGE_NORMS}, got {norm!r}")
  centred_PxN = rewards_PxN - rewards_PxN.mean(axis=1, keepdims=True)
  if norm == "std":
    centred_PxN = centred_PxN / (rewards_PxN.std(axis=1, keepdims=True) + eps)
  equal_Px1 = (rewards_PxN == rewards_PxN[:, :1]).all(axis=1, keepdims=True)  # The mean may round off r.
  return xp.where(equal_Px1, 0.0, centred_PxN).astype(xp.float32)


@dataclasses.dataclass(frozen=True)
class Rollout:
  prompt_ids: tuple[int, ...]  # BOS + prompt tokens.
  completion_ids: tuple[int, ...]  # The sampled tokens, with the end id when the sample ended with one.
  logprobs: tuple[float, ...]  # The sampling policy's log-prob of each completion token.
  advantage: float

  def __post_init__(self):
    object.__setattr__(self, "prompt_ids", tuple(int(t) for t in self.prompt_ids))
    object.__setattr__(self, "completion_ids", tuple(int(t) for t in self.completion_ids))
    object.__setattr__(self, "logprobs", tuple(float(x) for x in self.logprobs))
    if not self.prompt_ids or not self.completion_ids:
      raise ValueError(f"Rollout: the prompt ({len(self.prompt_ids)} ids) and the completion "
                       f"({len(self.completion_ids)} ids) must both be non-empty")
    if len(self.logprobs) != len(self.completion_ids):
      raise ValueError(f"Rollout: {len(self.logprobs)} logprobs for {len(self.completion_ids)} completion ids; the "
                       "sampler records one per completion token")


def pack_rollouts(rollouts: Sequence[Rollout], *, seq_len: int, batch_rows: int, micro_batches: int,
                  order: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """One step's [A, B, T] batch (see the module docstring) of `rollouts` packed in `order`, rows padded to B x A."""
  if not rollouts:
    raise ValueError("pack_rollouts: no rollouts")
  examples = [
      batching.Example(r.prompt_ids, r.completion_ids, token_values=(
          ("old_logprobs", r.logprobs), ("advantages", (r.advantage,) * len(r.logprobs)),
          ("token_weights", (1.0 / len(r.logprobs),) * len(r.logprobs))))
      for r in rollouts]
  packed = batching.pack(examples, seq_len, np.arange(len(rollouts)) if order is None else order)
  del packed["weights"]
  rows, step_rows = packed["tokens"].shape[0], batch_rows * micro_batches
  if rows > step_rows:
    raise ValueError(f"pack_rollouts: {len(rollouts)} rollouts fill {rows} rows of {seq_len} tokens, more than "
                     f"train.batch_rows x train.micro_batches = {step_rows}")
  return {k: np.pad(v, ((0, step_rows - rows), (0, 0))).reshape(micro_batches, batch_rows, seq_len)
          for k, v in packed.items()}


def token_logprobs(cfg: ModelConfig, params: Any, batch: dict[str, jax.Array], *, temperature: float = 1.0,
                   remat: str = "none", lora: lora_lib.LoraConfig | None = None, chunk_size: int = 0) -> jax.Array:
  """logp_BxT: the log-prob of each target under softmax(logits / temperature) (options as `loss.token_nll`)."""
  return -loss_lib.token_nll(cfg, params, batch, chunk_size=chunk_size, remat=remat, lora=lora,
                             temperature=temperature)


@functools.partial(jax.jit, static_argnames=("cfg", "temperature", "chunk_size"))
def _ref_logprobs_AxBxT(params, batch_AxBxT, *, cfg, temperature, chunk_size):
  # One micro-batch at a time, as the train step runs the model: no more rows' logits at once than training holds.
  return jax.lax.map(lambda b: token_logprobs(cfg, params, b, temperature=temperature, chunk_size=chunk_size),
                     batch_AxBxT)


def ref_logprobs(params: Any, batch: dict[str, np.ndarray], *, cfg: ModelConfig, mesh: Mesh,
                 temperature: float = 1.0, chunk_size: int = 0) -> np.ndarray:
  """The host [A, B, T] log-probs of `batch`'s targets under `params` (the reference policy: the base model, full
  precision even with a quantised LoRA base), for `batch["ref_logprobs"]`; `params` on `mesh`."""
  inputs = {k: batch[k] for k in ("tokens", "targets", "positions", "segment_ids")}
  inputs = distributed.host_to_global(inputs, finetune.step_batch_sharding(mesh))
  with sharding.use_mesh(mesh):
    logp_AxBxT = _ref_logprobs_AxBxT(params, inputs, cfg=cfg, temperature=temperature, chunk_size=chunk_size)
  return np.asarray(distributed.global_to_host(logp_AxBxT))


def objective(logp_BxT: jax.Array, batch: dict[str, jax.Array], *, config: GRPOConfig) -> tuple[jax.Array, dict]:
  """(loss sum, aux) of the GRPO objective at the current policy's target log-probs logp_BxT (see `grpo_loss`)."""
  mask_BxT = batch["loss_mask"]
  # Off the mask everything is replaced before any exp, so no value there reaches the loss or (as 0 x inf) its
  # gradient.
  log_ratio_BxT = jnp.where(mask_BxT, logp_BxT - batch["old_logprobs"], 0.0)
  ratio_BxT = jnp.exp(log_ratio_BxT)
  adv_BxT = jnp.where(mask_BxT, batch["advantages"], 0.0)
  low, high = 1.0 - config.clip_eps, 1.0 + config.eps_high
  per_token_BxT = -jnp.minimum(ratio_BxT * adv_BxT, jnp.clip(ratio_BxT, low, high) * adv_BxT)
  clipped_BxT = mask_BxT & (((adv_BxT > 0) & (ratio_BxT > high)) | ((adv_BxT < 0) & (ratio_BxT < low)))
  aux = {"completion_tokens": jnp.sum(mask_BxT), "clipped_sum": jnp.sum(clipped_BxT),
         "ratio_sum": jnp.sum(jnp.where(mask_BxT, ratio_BxT, 0.0))}
  if config.kl_coef > 0:
    if "ref_logprobs" not in batch:
      raise ValueError("grpo: kl_coef > 0 needs batch['ref_logprobs'] (grpo.ref_logprobs of the base params)")
    ref_minus_new_BxT = jnp.where(mask_BxT, batch["ref_logprobs"] - logp_BxT, 0.0)
    kl_BxT = jnp.exp(ref_minus_new_BxT) - ref_minus_new_BxT - 1.0  # k3: unbiased for KL(new || ref), >= 0.
    per_token_BxT = per_token_BxT + config.kl_coef * kl_BxT
    aux["kl_sum"] = jnp.sum(jnp.where(mask_BxT, kl_BxT, 0.0))
  if config.loss_norm == "token":
    weights_BxT, divisor = mask_BxT.astype(jnp.float32), aux["completion_tokens"]
  else:
    weights_BxT, divisor = jnp.where(mask_BxT, batch["token_weights"], 0.0), _num_sequences(batch)
  aux["tokens"] = divisor
  return jnp.sum(weights_BxT * per_token_BxT), aux


def _num_sequences(batch: dict[str, jax.Array]) -> jax.Array:
  """The number of completions in the batch: loss-mask stretches, each the end of its own segment."""
  mask_BxT, seg_BxT = batch["loss_mask"], batch["segment_ids"]
  continues_BxT = jnp.pad(mask_BxT[:, :-1] & (seg_BxT[:, :-1] == seg_BxT[:, 1:]), ((0, 0), (1, 0)))
  return jnp.sum(mask_BxT & ~continues_BxT)


def grpo_loss(cfg: ModelConfig, batch: dict[str, jax.Array], *, config: GRPOConfig, chunk_size: int = 0,
              remat: str = "none", lora: lora_lib.LoraConfig | None = None) -> loss_lib.LossFn:
  """The clipped surrogate, per completion token -min(ratio x A, clip(ratio, 1 - eps, 1 + eps_high) x A) with
  ratio = exp(logp - old_logprobs), plus kl_coef x k3(ref, logp); summed with `config.loss_norm`'s weights.

  aux: "tokens" (the divisor: completion tokens, or sequences), "completion_tokens", and sums over them of the
  clipped tokens ("clipped_sum"), the ratio ("ratio_sum") and, with kl_coef > 0, k3 ("kl_sum").
  """

  def loss_fn(params):
    logp_BxT = token_logprobs(cfg, params, batch, temperature=config.temperature, remat=remat, lora=lora,
                              chunk_size=chunk_size)
    return objective(logp_BxT, batch, config=config)

  return loss_fn


@functools.lru_cache(maxsize=32)
def loss_factory(config: GRPOConfig, *, chunk_size: int = 0, remat: str = "none",
                 lora: lora_lib.LoraConfig | None = None) -> loss_lib.LossFactory:
  """`grpo_loss` with its settings bound: a `loss.LossFactory`, the same object for equal settings (one compile)."""
  return functools.partial(grpo_loss, config=config, chunk_size=chunk_size, remat=remat, lora=lora)


def make_update(params: Any, *, cfg: ModelConfig, train_config: TrainConfig, grpo_config: GRPOConfig, mesh: Mesh,
                total_steps: int) -> tuple[Callable[..., Any], TrainState]:
  """(`update(state, batch) -> (state, metrics)`, a fresh train state on `mesh` from a copy of `params`).

  `update` is finetune's jitted train step with the GRPO loss: AdamW as `train_config` sets it (LoRA, remat and the
  chunked loss included), the state donated. It takes `pack_rollouts`' host batch and returns device scalars: the
  loss, the gradient norm, "tokens" (completion tokens), "clip_frac", "ratio_mean" and, with grpo_config.kl_coef > 0,
  "kl_mean".
  """
  if train_config.batch_rows % sharding.batch_divisor(mesh):
    raise ValueError(f"train.batch_rows={train_config.batch_rows} must be a multiple of the mesh's data x fsdp = "
                     f"{sharding.batch_divisor(mesh)}")
  factory = loss_factory(grpo_config, chunk_size=train_config.loss_chunk_size, remat=train_config.remat,
                         lora=train_config.lora())
  step_fn, state = finetune.init_train_state(params, cfg=cfg, config=train_config, mesh=mesh,
                                             total_steps=total_steps, loss_factory=factory)
  shape = (train_config.micro_batches, train_config.batch_rows, train_config.seq_len)
  batch_sharding = finetune.step_batch_sharding(mesh)

  def update(state: TrainState, batch: dict[str, np.ndarray]) -> tuple[TrainState, dict[str, jax.Array]]:
    if batch["tokens"].shape != shape:
      raise ValueError(f"grpo update: the batch is {batch['tokens'].shape}, the step takes [train.micro_batches, "
                       f"train.batch_rows, train.seq_len] = {list(shape)} (pack_rollouts with those)")
    batch = distributed.host_to_global(batch, batch_sharding)
    with sharding.use_mesh(mesh):
      state, m = step_fn(state, batch)
    tokens = jnp.maximum(m["completion_tokens"], 1)
    metrics = {"loss": m["loss"], "grad_norm": m["grad_norm"], "tokens": m["completion_tokens"],
               "clip_frac": m["clipped_sum"] / tokens, "ratio_mean": m["ratio_sum"] / tokens}
    if "kl_sum" in m:
      metrics["kl_mean"] = m["kl_sum"] / tokens
    return state, metrics

  return update, state


def policy_params(state: TrainState, *, train_config: TrainConfig, mesh: Mesh) -> Any:
  """The current policy's model parameters (LoRA merged), to sample with; valid until the next `update` donates
  the state."""
  lora = train_config.lora()
  merged = state.params if lora is None else lora_lib.merge(state.cfg, lora, state.frozen, state.params, mesh)
  return finetune.model_params(state.cfg, merged, cfg=dataclasses.replace(state.cfg, scan_layers=False), mesh=mesh)
