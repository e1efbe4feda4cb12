"""Loss factories: `factory(cfg, batch) -> loss_fn(params) -> (loss_sum, aux)`.

Losses return a SUM over tokens plus the token count in `aux`, so gradient accumulation can divide by the token
count of the whole step, not of each micro-batch. (`aux["tokens"]` is the divisor; a loss may divide by something
else, such as a number of sequences. Every other `aux` entry is summed over the micro-batches too and reported in the
step's metrics.)

Three model options reach the built-in losses as keyword arguments (`get` binds them):
  chunk_size  > 0: the cross-entropy is computed over chunks of `chunk_size` positions, each chunk's float32 logits
              recomputed in the backward pass, so B x T x V logits never exist at once (only B x chunk_size x V);
  remat       the model's per-block rematerialisation policy (`transformer.REMAT_POLICIES`, or "none");
  lora        a `lora.LoraConfig`: the loss takes the adapted model's whole tree (`lora.combine(base, adapters)`).

Shape letters: B rows, T tokens, C chunks, c positions per chunk (T = C x c), D model dimension, V vocabulary.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rest_jax.model import transformer
from rest_jax.model.transformer import ModelConfig, Transformer, causal_mask
from rest_jax.training import lora as lora_lib

LossFn = Callable[[Any], tuple[jax.Array, dict[str, jax.Array]]]
LossFactory = Callable[[ModelConfig, dict[str, jax.Array]], LossFn]


def _nll_of_logits(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """log-sum-exp minus the target's logit. The target logit is picked by a comparison with the vocabulary index, which
  fuses with the reduction and whose gradient is elementwise (a gather's would be a scatter into B x T x V)."""
  lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  vocab_V = jnp.arange(logits_BxTxV.shape[-1], dtype=targets_BxT.dtype)
  target_BxT = jnp.sum(jnp.where(vocab_V == targets_BxT[..., None], logits_BxTxV, 0.0), axis=-1)
  return lse_BxT - target_BxT


def _at_temperature(logits_BxTxV: jax.Array, temperature: float) -> jax.Array:
  return logits_BxTxV if temperature == 1.0 else logits_BxTxV / temperature


def token_nll(cfg: ModelConfig, params: Any, batch: dict[str, jax.Array], *, chunk_size: int = 0,
              remat: str = "none", lora: lora_lib.LoraConfig | None = None, temperature: float = 1.0) -> jax.Array:
  """Per-token negative log-likelihood of the batch targets, NLL_BxT (see the module docstring for the options),
  under softmax(logits / temperature)."""
  model = Transformer(cfg, remat=remat) if lora is None else lora_lib.model(cfg, lora, remat)
  args = (batch["tokens"], batch["positions"], causal_mask(batch["segment_ids"]))
  if chunk_size <= 0:
    logits_BxTxV, _ = model.apply({"params": params}, *args)
    return _nll_of_logits(_at_temperature(logits_BxTxV, temperature), batch["targets"])
  x_BxTxD, _ = model.apply({"params": params}, *args, hidden=True)
  return chunked_nll(cfg, params, x_BxTxD, batch["targets"], chunk_size, temperature=temperature)


def chunked_nll(cfg: ModelConfig, params: Any, x_BxTxD: jax.Array, targets_BxT: jax.Array,
                chunk_size: int, *, temperature: float = 1.0) -> jax.Array:
  """NLL_BxT of the output logits (over `temperature`) of hidden states x_BxTxD, `chunk_size` positions at a time.

  A sequential map over the chunks keeps one chunk's logits alive; jax.checkpoint makes the backward pass recompute
  them per chunk instead of saving every chunk's (which would be the full B x T x V again). The head's gradient is
  accumulated over the chunks by the map's transpose. Rows stay whole, so a batch sharded over rows stays sharded.
  """
  B, T, D = x_BxTxD.shape
  c = min(chunk_size, T)
  C = -(-T // c)
  pad = C * c - T  # A last partial chunk is padded; its padded positions are dropped below.
  x_BxTxD = jnp.pad(x_BxTxD, ((0, 0), (0, pad), (0, 0)))
  targets_BxT = jnp.pad(targets_BxT, ((0, 0), (0, pad)))
  x_CxBxcxD = x_BxTxD.reshape(B, C, c, D).swapaxes(0, 1)
  targets_CxBxc = targets_BxT.reshape(B, C, c).swapaxes(0, 1)
  head = {k: v for k, v in params.items() if k in ("embed", "lm_head")}

  @jax.checkpoint
  def chunk_nll(head, x_Bxcx_D, targets_Bxc):
    logits_BxcxV = _at_temperature(transformer.output_logits(cfg, head, x_Bxcx_D), temperature)
    return _nll_of_logits(logits_BxcxV, targets_Bxc)

  nll_CxBxc = jax.lax.map(lambda xs: chunk_nll(head, *xs), (x_CxBxcxD, targets_CxBxc))
  return nll_CxBxc.swapaxes(0, 1).reshape(B, C * c)[:, :T]


def weighted_nll(cfg: ModelConfig, batch: dict[str, jax.Array], *, chunk_size: int = 0,
                 remat: str = "none", lora: lora_lib.LoraConfig | None = None) -> LossFn:
  """ReST-EM's M-step objective: sum over completion tokens of reward x NLL (prompt tokens carry no loss).

  With binary rewards every kept sample has weight 1 and this is plain SFT on the kept samples.
  """

  def loss_fn(params):
    nll_BxT = token_nll(cfg, params, batch, chunk_size=chunk_size, remat=remat, lora=lora)
    mask_BxT = batch["loss_mask"]
    loss_sum = jnp.sum(jnp.where(mask_BxT, batch["weights"] * nll_BxT, 0.0))
    return loss_sum, {"tokens": jnp.sum(mask_BxT), "nll_sum": jnp.sum(jnp.where(mask_BxT, nll_BxT, 0.0))}

  return loss_fn


LOSSES: dict[str, LossFactory] = {"weighted_nll": weighted_nll}


def get(name: str, *, chunk_size: int = 0, remat: str = "none",
        lora: lora_lib.LoraConfig | None = None) -> LossFactory:
  """The factory registered as `name`, with the model options bound when they are not the defaults.

  The same settings give the same object, so train steps built for them share one compilation.
  """
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r} (train.loss); known: {sorted(LOSSES)}")
  if chunk_size < 0:
    raise ValueError(f"train.loss_chunk_size must be >= 0 (0 = the plain loss), got {chunk_size}")
  transformer.check_remat(remat)
  if chunk_size == 0 and remat == "none" and lora is None:
    return LOSSES[name]
  return _bound(LOSSES[name], chunk_size, remat, lora)


@functools.lru_cache(maxsize=32)
def _bound(factory: LossFactory, chunk_size: int, remat: str, lora: lora_lib.LoraConfig | None) -> LossFactory:
  return functools.partial(factory, chunk_size=chunk_size, remat=remat, lora=lora)
