"""Loss factories: `factory(cfg, batch) -> loss_fn(params) -> (loss_sum, aux)`.

Losses return a SUM over tokens plus the token count in `aux`, so gradient accumulation can divide by the token
count of the whole step, not of each micro-batch.

Shape letters: B rows, T tokens, V vocabulary.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rest_jax.model.transformer import ModelConfig, Transformer, causal_mask

LossFn = Callable[[Any], tuple[jax.Array, dict[str, jax.Array]]]
LossFactory = Callable[[ModelConfig, dict[str, jax.Array]], LossFn]


def token_nll(cfg: ModelConfig, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
  """Per-token negative log-likelihood of the batch targets, NLL_BxT."""
  logits_BxTxV, _ = Transformer(cfg).apply(
      {"params": params}, batch["tokens"], batch["positions"], causal_mask(batch["segment_ids"]))
  logprobs_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
  return -jnp.take_along_axis(logprobs_BxTxV, batch["targets"][..., None], axis=-1)[..., 0]


def weighted_nll(cfg: ModelConfig, batch: dict[str, jax.Array]) -> LossFn:
  """ReST-EM's M-step objective: sum over completion tokens of reward x NLL (prompt tokens carry no loss).

  With binary rewards every kept sample has weight 1 and this is plain SFT on the kept samples.
  """

  def loss_fn(params):
    nll_BxT = token_nll(cfg, params, batch)
    mask_BxT = batch["loss_mask"]
    loss_sum = jnp.sum(jnp.where(mask_BxT, batch["weights"] * nll_BxT, 0.0))
    return loss_sum, {"tokens": jnp.sum(mask_BxT), "nll_sum": jnp.sum(jnp.where(mask_BxT, nll_BxT, 0.0))}

  return loss_fn


LOSSES: dict[str, LossFactory] = {"weighted_nll": weighted_nll}


def get(name: str) -> LossFactory:
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r} (train.loss); known: {sorted(LOSSES)}")
  return LOSSES[name]
