"""The M-step: fine-tune parameters on weighted examples with AdamW, keeping the best on a validation metric.

`train_step(state, batch) -> (state, metrics)` is a module-level pure function, jitted once with the state donated.
The learning-rate schedule's length lives in the optimizer state, so M-steps of any length share one compiled step.
With `lora_rank > 0` the state's params are LoRA adapters over the frozen base it also holds (`lora.py`); `train`
returns the merged model either way.
Shape letters: A micro-batches (gradient accumulation), B rows, T tokens.
"""

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rest_jax import distributed
from rest_jax import errors
from rest_jax import reporting
from rest_jax.model import sharding
from rest_jax.model import transformer
from rest_jax.model.transformer import ModelConfig
from rest_jax.training import batching
from rest_jax.training import lora as lora_lib
from rest_jax.training import loss as loss_lib


LR_SCHEDULES = ("cosine", "linear", "constant")  # What follows the warmup (`learning_rate`).


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  learning_rate: float = 1e-3
  lr_schedule: str = "cosine"  # "cosine", "linear" or "constant" after warmup.
  warmup_steps: int = 20
  end_lr_factor: float = 0.1  # Final learning rate / peak learning rate.
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.98
  grad_clip: float = 1.0
  seq_len: int = 256  # Packed row length.
  batch_rows: int = 16  # Rows per micro-batch.
  micro_batches: int = 1  # Gradient accumulation: rows per optimizer step = batch_rows x micro_batches.
  num_epochs: float = 3.0
  max_steps: int = 0  # If > 0, caps the number of steps.
  eval_every: int = 50  # Steps between validation evaluations (and at the end).
  patience: int = 0  # Stop after this many evaluations without improvement (0 = never stop early).
  loss: str = "weighted_nll"
  # Cross-entropy over chunks of this many positions, never holding B x T x V float32 logits (0 = the plain loss).
  loss_chunk_size: int = 0
  # Per-block gradient checkpointing: "none", "full" (keep only block inputs), "dots_saveable" (also keep matmul
  # outputs) or "dots_with_no_batch_dims_saveable" (keep weight matmuls, recompute attention).
  remat: str = "none"
  # LoRA (rest_jax/training/lora.py): rank > 0 trains only low-rank adapters of `lora_modules` over the frozen base.
  lora_rank: int = 0  # 0 = full fine-tuning.
  lora_alpha: float = 16.0  # The adapters' update is scaled by lora_alpha / lora_rank.
  lora_modules: tuple[str, ...] = lora_lib.MODULES  # Adapted projections of every layer.
  lora_base_quant: str = "none"  # "int8" / "int4": the frozen base is held and multiplied quantised (QLoRA).
  # Run the blocks under one scan (`ModelConfig.scan_layers`): compile time flat in depth. The train state holds the
  # parameters (LoRA: base and adapters; not over a quantised base) stacked; what `train` takes and returns stays
  # per-layer. LoRA's fresh adapters are drawn differently when scanned (another random stream per layer).
  scan_layers: bool = False
  seed: int = 0

  def __post_init__(self):
    if self.lr_schedule not in LR_SCHEDULES:
      raise ValueError(f"train.lr_schedule must be cosine, linear or constant, got {self.lr_schedule!r}")
    for name in ("seq_len", "batch_rows", "micro_batches", "eval_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
    if self.learning_rate <= 0 or self.num_epochs <= 0:
      raise ValueError(f"train.learning_rate and train.num_epochs must be > 0, got {self.learning_rate}, "
                       f"{self.num_epochs}")
    object.__setattr__(self, "lora_modules", tuple(self.lora_modules))  # Hashable: the optimizer cache's key.
    if self.scan_layers and self.lora_rank and self.lora_base_quant != "none":
      raise ValueError(f"train.scan_layers=True cannot be combined with a quantised LoRA base "
                       f"(train.lora_base_quant={self.lora_base_quant!r}): set one of them off")
    if self.lora_rank < 0:
      raise ValueError(f"train.lora_rank must be >= 0 (0 = full fine-tuning), got {self.lora_rank}")
    self.loss_factory()

  def lora(self) -> lora_lib.LoraConfig | None:
    if self.lora_rank == 0:
      return None
    return lora_lib.LoraConfig(rank=self.lora_rank, alpha=self.lora_alpha, modules=self.lora_modules,
                               base_quant=self.lora_base_quant)

  def loss_factory(self) -> loss_lib.LossFactory:
    return loss_lib.get(self.loss, chunk_size=self.loss_chunk_size, remat=self.remat, lora=self.lora())


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # What is trained: the model's parameters, or with LoRA only the adapters.
  opt_state: Any
  cfg: ModelConfig = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  loss_factory: loss_lib.LossFactory = flax.struct.field(pytree_node=False)
  frozen: Any = None  # LoRA: the base the adapters adapt (`lora.quantize_base`), read and passed through unchanged.


class _ScheduleState(NamedTuple):
  count: jax.Array  # int32: updates made so far.
  total_steps: jax.Array  # int32: the M-step's length, which sets the decay; data, so that no length recompiles.


def learning_rate(c: TrainConfig, step: Any, total_steps: Any) -> jax.Array:
  """The learning rate of update `step` (from 0) of `total_steps`: linear warmup from 0, then `c.lr_schedule`.

  optax's linear warmup joined to its cosine / linear / constant decay, operation for operation, with the lengths as
  arrays so that `total_steps` may be traced (under jit, dividing by a traced length may round in the last bit where
  optax's constant length would not).
  """
  step, total = jnp.asarray(step, jnp.int32), jnp.asarray(total_steps, jnp.int32)
  warmup = jnp.minimum(c.warmup_steps, jnp.maximum(total - 1, 0))
  decay_steps = jnp.maximum(total - warmup, 1)
  peak, alpha = c.learning_rate, c.end_lr_factor
  t = step - warmup
  if c.lr_schedule == "cosine":
    decayed = peak * ((1 - alpha) * (0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(t, decay_steps) / decay_steps))) + alpha)
  elif c.lr_schedule == "linear":
    decayed = (peak - peak * alpha) * (1 - jnp.clip(t, 0, decay_steps) / decay_steps) + peak * alpha
  else:
    decayed = jnp.full(jnp.shape(step), peak, jnp.float32)
  warm = (0.0 - peak) * (1 - jnp.clip(step, 0, warmup) / jnp.maximum(warmup, 1)) + peak
  return jnp.where(step < warmup, warm, decayed)


def _scale_by_learning_rate(c: TrainConfig) -> optax.GradientTransformation:
  """Multiplies updates by -learning_rate(c, count, total_steps); train() writes total_steps into the state."""

  def init(params):
    del params
    return _ScheduleState(count=jnp.zeros([], jnp.int32), total_steps=jnp.ones([], jnp.int32))

  def update(updates, state, params=None):
    del params
    lr = learning_rate(c, state.count, state.total_steps)
    return jax.tree.map(lambda u: -lr * u, updates), state._replace(count=state.count + 1)

  return optax.GradientTransformation(init, update)


def _decay_mask(params: Any) -> Any:
  return jax.tree.map(lambda p: p.ndim > 1, params)  # No weight decay on norm scales and biases (1-D parameters).


# TrainConfig fields the optimizer does not read: M-steps that differ only in these share one optimizer object.
_NOT_OPTIMIZER_FIELDS = ("seq_len", "batch_rows", "micro_batches", "num_epochs", "max_steps", "eval_every", "patience",
                         "loss", "loss_chunk_size", "remat", "lora_rank", "lora_alpha", "lora_modules",
                         "lora_base_quant", "scan_layers", "seed")


def make_optimizer(c: TrainConfig) -> optax.GradientTransformation:
  """Clipped AdamW with warmup and decay over the length `with_total_steps` writes into the state (default 1)."""
  default = TrainConfig()
  return _optimizer(dataclasses.replace(c, **{f: getattr(default, f) for f in _NOT_OPTIMIZER_FIELDS}))


@functools.lru_cache(maxsize=16)
def _optimizer(c: TrainConfig) -> optax.GradientTransformation:
  # AdamW as optax composes it (Adam moments, decoupled weight decay, learning rate), with the schedule's length in
  # the state. The optimizer is a static part of the jitted step: the same object for the same settings lets every
  # M-step of a run reuse the step compiled for the first.
  return optax.chain(
      optax.clip_by_global_norm(c.grad_clip),
      optax.scale_by_adam(b1=c.b1, b2=c.b2),
      optax.add_decayed_weights(c.weight_decay, mask=_decay_mask),
      _scale_by_learning_rate(c))


def with_total_steps(opt_state: Any, total_steps: Any) -> Any:
  """`opt_state` of `make_optimizer` with the schedule's length set to `total_steps`."""
  *rest, schedule = opt_state
  return (*rest, schedule._replace(total_steps=jnp.asarray(total_steps, jnp.int32)))


def train_step(state: TrainState, batch_AxBxT: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step over A micro-batches; the loss is normalised by the step's total `aux["tokens"]` (completion
  tokens for the NLL). The metrics are that loss, the divisor as "tokens", the gradient norm and the step's sum of
  every other `aux` entry of the loss.

  With LoRA (`state.frozen` set) the gradient is taken for the adapters only: none is computed for the base.
  """

  def micro(carry, batch_BxT):
    grads, loss_sum = carry
    model_loss = state.loss_factory(state.cfg, batch_BxT)
    loss_fn = model_loss if state.frozen is None else lambda a: model_loss(lora_lib.combine(state.frozen, a))
    (l, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return (jax.tree.map(jnp.add, grads, g), loss_sum + l), aux

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  (grads, loss_sum), aux_A = jax.lax.scan(micro, (zeros, 0.0), batch_AxBxT)
  aux = jax.tree.map(lambda x: jnp.sum(x, axis=0), aux_A)
  tokens = aux.pop("tokens")
  denom = jnp.maximum(tokens, 1).astype(jnp.float32)
  grads = jax.tree.map(lambda g: g / denom, grads)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {**aux, "loss": loss_sum / denom, "tokens": tokens, "grad_norm": optax.global_norm(grads)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def step_batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of a step's [A, B, T] batch arrays: rows split over data x fsdp."""
  return NamedSharding(mesh, PartitionSpec(None, ("data", "fsdp"), None))


def jit_train_step(cfg: ModelConfig, tx: optax.GradientTransformation, loss_factory: loss_lib.LossFactory,
                   mesh: Mesh, lora: lora_lib.LoraConfig | None = None) -> tuple[Callable[..., Any], TrainState]:
  """(`train_step` jitted for a mesh, the state's shardings). The state keeps its shardings from step to step, so it
  compiles once; equal static parts (the same `tx` object: see `make_optimizer`) reuse JAX's compilation cache."""
  if lora is None:
    (param_shardings, opt_shardings), frozen_shardings = sharding.train_state_shardings(cfg, mesh, tx), None
  else:
    param_shardings, opt_shardings = lora_lib.adapter_tx_shardings(cfg, lora, mesh, tx)
    frozen_shardings = lora_lib.base_shardings(cfg, lora, mesh)
  state_shardings = TrainState(step=sharding.replicated(mesh), params=param_shardings, opt_state=opt_shardings,
                               cfg=cfg, tx=tx, loss_factory=loss_factory, frozen=frozen_shardings)
  # The state is donated: its buffers are rewritten in place instead of doubling parameter and optimizer memory (a
  # LoRA base is passed through, its output aliasing its input).
  step_fn = jax.jit(train_step, donate_argnums=0, in_shardings=(state_shardings, step_batch_sharding(mesh)),
                    out_shardings=(state_shardings, sharding.replicated(mesh)))
  return step_fn, state_shardings


def init_train_state(params: Any, *, cfg: ModelConfig, config: TrainConfig, mesh: Mesh, total_steps: int,
                     loss_factory: loss_lib.LossFactory | None = None) -> tuple[Callable[..., Any], TrainState]:
  """(the jitted, donating train step, a fresh state on `mesh` for an M-step of `total_steps` from `params`).

  With LoRA the state trains fresh adapters (seeded by `config.seed`) over `params`, frozen. `loss_factory` replaces
  `config.loss_factory()` (e.g. GRPO's loss, whose settings are not TrainConfig's). With `config.scan_layers` the
  state's `cfg` is `params`' with `scan_layers` set and its params are stacked (`model_params` unstacks them).
  """
  tx = make_optimizer(config)
  lora = config.lora()
  loss_factory = config.loss_factory() if loss_factory is None else loss_factory
  state_cfg = dataclasses.replace(cfg, scan_layers=cfg.scan_layers or config.scan_layers)
  step_fn, state_shardings = jit_train_step(state_cfg, tx, loss_factory, mesh, lora)
  # Fresh copies: the caller's params (the base model) stay valid although the train state is donated. Stacking
  # (scan_layers) makes new arrays too.
  copy = lambda tree, shardings: jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)(tree)
  stacks = state_cfg.scan_layers and not cfg.scan_layers
  if stacks:
    params = sharding.stacked_params(params, state_cfg, mesh)
  if lora is None:
    frozen, params = None, params if stacks else copy(params, state_shardings.params)
  else:
    frozen = lora_lib.quantize_base(state_cfg, lora, params, mesh)  # A quantised base is new arrays already.
    if lora.base_quant == "none" and not stacks:
      frozen = copy(frozen, state_shardings.frozen)
    params = lora_lib.init_adapters(state_cfg, lora, mesh, jax.random.key(config.seed))
  replicated = sharding.replicated(mesh)
  opt_state = jax.jit(lambda p, n: with_total_steps(tx.init(p), n), out_shardings=state_shardings.opt_state)(
      params, distributed.host_to_global(np.asarray(total_steps, np.int32), replicated))
  step0 = distributed.host_to_global(np.asarray(0, np.int32), replicated)
  return step_fn, TrainState(step=step0, params=params, opt_state=opt_state, cfg=state_cfg, tx=tx,
                             loss_factory=state_shardings.loss_factory, frozen=frozen)


def model_params(state_cfg: ModelConfig, params: Any, *, cfg: ModelConfig, mesh: Mesh) -> Any:
  """Model parameters (or LoRA adapters, `mesh=None`: unplaced) laid out for `state_cfg` in the layout of `cfg`, the
  one the caller passed: unstacked when only the state scans its layers (`TrainConfig.scan_layers`), else as given."""
  if not state_cfg.scan_layers or cfg.scan_layers:
    return params
  if mesh is None:
    return transformer.unstack_layers(params)
  return jax.jit(transformer.unstack_layers, out_shardings=sharding.param_shardings(cfg, mesh))(params)


@dataclasses.dataclass
class FinetuneResult:
  params: Any  # The best parameters on the validation metric (the last ones when there is no validation); merged.
  best_step: int
  best_val: float | None
  steps: int
  tokens: int
  history: list[dict[str, float]]  # One entry per evaluation: step, loss, val.
  adapters: Any = None  # With LoRA, the adapters of `params` (`lora.merge(base, adapters)`); None without.


# A mean loss this many times the first step's at an evaluation is reported as diverging.
_LOSS_GROWTH_WARNING = 10.0


def train(params: Any, examples: Sequence[batching.Example], *, cfg: ModelConfig, config: TrainConfig, mesh: Mesh,
             val_fn: Callable[[Any], float] | None = None, desc: str = "fine-tune") -> FinetuneResult:
  """Fine-tunes a copy of `params` on `examples`; `val_fn(params) -> higher is better` picks the best step.

  With LoRA (`config.lora_rank > 0`) fresh adapters are trained over `params` frozen; `val_fn` and the result see
  the merged model.
  """
  if not examples:
    raise ValueError(f"{desc}: no training examples (nothing was kept?)")
  if config.batch_rows % sharding.batch_divisor(mesh):
    raise ValueError(f"train.batch_rows={config.batch_rows} must be a multiple of the mesh's data x fsdp = "
                     f"{sharding.batch_divisor(mesh)}")
  per_epoch = batching.steps_per_epoch(examples, seq_len=config.seq_len, batch_rows=config.batch_rows,
                                       micro_batches=config.micro_batches)
  total_steps = max(1, int(round(per_epoch * config.num_epochs)))
  if config.max_steps > 0:
    total_steps = min(total_steps, config.max_steps)
  step_fn, state = init_train_state(params, cfg=cfg, config=config, mesh=mesh, total_steps=total_steps)
  lora = config.lora()

  def as_model(trained):  # The current state's base: each step donates the last one's (and aliases it).
    merged = trained if lora is None else lora_lib.merge(state.cfg, lora, state.frozen, trained, mesh)
    return model_params(state.cfg, merged, cfg=cfg, mesh=mesh)

  rng = np.random.default_rng(config.seed)
  best_params, best_val, best_step = None, None, 0
  history: list[dict[str, float]] = []
  evals_without_gain, tokens, step = 0, 0, 0
  recent_loss: list[float] = []
  first_loss, warned_growth = None, False
  t0 = time.time()

  def evaluate():
    nonlocal best_params, best_val, best_step, evals_without_gain
    val = None if val_fn is None else float(val_fn(as_model(state.params)))
    history.append({"step": step, "loss": float(np.mean(recent_loss)) if recent_loss else float("nan"),
                    "val": float("nan") if val is None else val})
    nonlocal warned_growth
    mean_loss = history[-1]["loss"]
    # A finite loss far above where it started is diverging too; the best step on val still guards the result.
    if first_loss and mean_loss > _LOSS_GROWTH_WARNING * first_loss and not warned_growth:
      warned_growth = True
      logging.warning("%s: the loss grew from %.3g to %.3g by step %d (train.learning_rate=%g): training is "
                      "diverging; a lower learning rate is likely better", desc, first_loss, mean_loss, step,
                      config.learning_rate)
    if val is None:
      return False
    if best_val is None or val > best_val:
      best_params = jax.tree.map(jnp.copy, state.params)  # A copy: the state's buffers are donated next step.
      best_val, best_step, evals_without_gain = val, step, 0
    else:
      evals_without_gain += 1
    return config.patience > 0 and evals_without_gain >= config.patience

  stop = evaluate() if val_fn is not None else False
  with reporting.progress(total=total_steps, desc=desc, unit="step") as bar:
    while step < total_steps and not stop:
      for batch in batching.epoch_batches(examples, seq_len=config.seq_len, batch_rows=config.batch_rows,
                                          micro_batches=config.micro_batches, rng=rng):
        batch = distributed.host_to_global(batch, step_batch_sharding(mesh))
        with sharding.use_mesh(mesh):
          state, metrics = step_fn(state, batch)
        step += 1
        metrics = distributed.global_to_host(metrics)
        tokens += int(metrics["tokens"])
        loss = float(metrics["loss"])
        if not math.isfinite(loss):  # On the host already: the metrics were fetched for the progress bar.
          lr = float(learning_rate(config, step - 1, total_steps))
          raise errors.DivergedError(
              f"{desc}: the loss is {loss} at step {step} of {total_steps} (learning rate {lr:.3g} of "
              f"train.learning_rate={config.learning_rate:g}); lower --config.train.learning_rate in a new --workdir "
              "(the finished stages' checkpoints are kept)")
        first_loss = loss if first_loss is None else first_loss
        recent_loss = (recent_loss + [loss])[-config.eval_every:]
        bar.update(1)
        bar.set_postfix(loss=f"{recent_loss[-1]:.3f}", best=f"{best_val:.3f}" if best_val is not None else "-")
        if step % config.eval_every == 0 or step == total_steps:
          stop = evaluate()
        if stop or step >= total_steps:
          break
  if val_fn is None:
    best_params, best_step = state.params, step
  logging.info("%s: %d steps, %d tokens, %.1fs, best step %d val %s", desc, step, tokens, time.time() - t0,
               best_step, best_val)
  return FinetuneResult(params=as_model(best_params),
                        adapters=None if lora is None else model_params(state.cfg, best_params, cfg=cfg, mesh=None),
                        best_step=best_step, best_val=best_val, steps=step, tokens=tokens, history=history)
