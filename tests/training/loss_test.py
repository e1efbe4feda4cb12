"""Behaviour tests for rest_jax.training.loss: the reward-weighted NLL counts completion tokens only."""

import functools

import jax
import numpy as np
import pytest

from rest_jax.model.transformer import Transformer, causal_mask
from rest_jax.training import batching, lora, loss
from tests.helpers import random_params, tiny_config

CFG = tiny_config(num_layers=1)
SEQ_LEN = 12
# Tiny programs: LLVM optimisation would cost more compile time than it saves.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}



def _random_params(seed: int = 0):
  return random_params(CFG, seed)


@functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
def _loss(params, batch):
  return loss.weighted_nll(CFG, batch)(params)


@functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
def _logits(params, batch):
  return Transformer(CFG).apply({"params": params}, batch["tokens"], batch["positions"],
                                causal_mask(batch["segment_ids"]))[0]


@functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
def _loss_grad_wrt_weights(params, batch):
  return jax.grad(lambda w: loss.weighted_nll(CFG, dict(batch, weights=w))(params)[0])(batch["weights"])


A = batching.Example(prompt_ids=(1, 10, 11, 12), completion_ids=(20, 21, 2), weight=0.75)  # 6 input tokens.
B = batching.Example(prompt_ids=(1, 13), completion_ids=(22, 23, 24, 2), weight=1.5)  # 5 input tokens.


def _pack(*examples):
  return batching.pack(list(examples), SEQ_LEN, np.arange(len(examples)))


@pytest.fixture(scope="module")
def params():
  return _random_params()


@pytest.fixture(scope="module")
def batch():
  packed = _pack(A, B)  # One row: A, B, one padding slot.
  assert packed["tokens"].shape == (1, SEQ_LEN)
  return packed


def test_loss_matches_a_hand_computed_weighted_nll(params, batch):
  loss_sum, aux = _loss(params, batch)
  logits_TxV = np.asarray(_logits(params, batch), np.float64)[0]
  logprobs_TxV = logits_TxV - np.log(np.exp(logits_TxV).sum(-1, keepdims=True))
  nll_T = -logprobs_TxV[np.arange(SEQ_LEN), batch["targets"][0]]
  # Completion targets: A's at slots 3, 4, 5 (20, 21, EOS); B's at slots 7, 8, 9, 10 (22, 23, 24, EOS).
  np.testing.assert_allclose(loss_sum, 0.75 * nll_T[3:6].sum() + 1.5 * nll_T[7:11].sum(), rtol=1e-5)
  np.testing.assert_allclose(aux["nll_sum"], nll_T[3:6].sum() + nll_T[7:11].sum(), rtol=1e-5)
  assert int(aux["tokens"]) == 7


def test_targets_of_prompt_positions_do_not_change_the_loss(params, batch):
  base, _ = _loss(params, batch)
  prompt_slots = np.flatnonzero((batch["segment_ids"][0] > 0) & ~batch["loss_mask"][0])
  assert len(prompt_slots) == 4
  changed = dict(batch, targets=batch["targets"].copy())
  changed["targets"][0, prompt_slots] = 40
  np.testing.assert_allclose(_loss(params, changed)[0], base, rtol=1e-6)
  completion = dict(batch, targets=batch["targets"].copy())
  completion["targets"][0, 4] = 40  # A completion target: the loss must see it.
  assert abs(float(_loss(params, completion)[0]) - float(base)) > 1e-3


def test_weights_on_prompt_positions_are_ignored_and_get_no_gradient(params, batch):
  grad_BxT = np.asarray(_loss_grad_wrt_weights(params, batch))
  mask_BxT = batch["loss_mask"]
  assert np.all(grad_BxT[~mask_BxT] == 0)
  assert np.all(grad_BxT[mask_BxT] > 0)  # d loss / d weight is the token's NLL.
  noisy = dict(batch, weights=np.where(mask_BxT, batch["weights"], 5.0).astype(np.float32))
  np.testing.assert_allclose(_loss(params, noisy)[0], _loss(params, batch)[0], rtol=1e-6)


def test_weight_scales_the_loss(params):
  unweighted = _loss(params, _pack(batching.Example(A.prompt_ids, A.completion_ids, 1.0), B))[0]
  b_only = _loss(params, _pack(B))[0]
  a_weighted = _loss(params, _pack(batching.Example(A.prompt_ids, A.completion_ids, 0.3), B))[0]
  np.testing.assert_allclose(a_weighted - b_only, 0.3 * (unweighted - b_only), rtol=1e-4)


def test_packed_loss_is_the_sum_of_each_example_alone(params, batch):
  alone = _loss(params, _pack(A))[0] + _loss(params, _pack(B))[0]
  np.testing.assert_allclose(_loss(params, batch)[0], alone, rtol=1e-5)


def test_get_looks_up_losses_by_name():
  assert loss.get("weighted_nll") is loss.weighted_nll
  with pytest.raises(ValueError, match="unknown loss 'nll2'"):
    loss.get("nll2")


# The chunked cross-entropy: equal to the plain loss and its gradient, with and without tied embeddings and softcaps.

def _packed_batch(seq_len: int, seed: int = 0):
  """Two rows of packed examples with random rewards, padding at the ends: masked and weighted tokens."""
  rs = np.random.default_rng(seed)
  examples = [batching.Example(tuple(rs.integers(4, 60, size=int(rs.integers(2, 5)))),
                               tuple(rs.integers(4, 60, size=int(rs.integers(1, 4)))) + (2,),
                               float(rs.uniform(0.2, 2.0))) for _ in range(5)]
  packed = batching.pack(examples, seq_len, np.arange(len(examples)), open_rows=2)
  assert packed["tokens"].shape[0] >= 2 and (packed["segment_ids"] == 0).any() and (~packed["loss_mask"]).any()
  return packed


@functools.partial(jax.jit, static_argnames=("cfg", "chunk_size", "remat"), compiler_options=_FAST_COMPILE)
def _loss_and_grad(params, batch, cfg, chunk_size, remat="none"):
  return jax.value_and_grad(lambda p: loss.weighted_nll(cfg, batch, chunk_size=chunk_size, remat=remat)(p),
                            has_aux=True)(params)


def _assert_trees_close(a, b, rtol, atol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("overrides", [{}, {"tied_embeddings": False}, {"final_logits_softcap": 3.0}])
@pytest.mark.parametrize("chunk_size", [1, 5, 16])  # 5 does not divide T = 16: the last chunk is padded.
def test_chunked_loss_and_gradient_equal_the_plain_ones(overrides, chunk_size):
  cfg = tiny_config(num_layers=1, **overrides)
  params, batch = random_params(cfg, 1), _packed_batch(16)
  (plain, plain_aux), plain_grads = _loss_and_grad(params, batch, cfg, 0)
  (chunked, aux), grads = _loss_and_grad(params, batch, cfg, chunk_size)
  np.testing.assert_allclose(chunked, plain, rtol=1e-6)
  np.testing.assert_allclose(aux["nll_sum"], plain_aux["nll_sum"], rtol=1e-6)
  assert int(aux["tokens"]) == int(plain_aux["tokens"]) == batch["loss_mask"].sum()
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(plain_grads))
  _assert_trees_close(grads, plain_grads, rtol=1e-5, atol=1e-6 * scale)


def test_the_final_softcap_changes_the_chunked_loss():
  """The chunked path applies the model's softcap: without it the two losses would be equal."""
  cfg, capped = tiny_config(num_layers=1), tiny_config(num_layers=1, final_logits_softcap=1.0)
  params, batch = random_params(cfg, 1), _packed_batch(16)
  free, capped_chunked = (_loss_and_grad(params, batch, c, 4)[0][0] for c in (cfg, capped))
  np.testing.assert_allclose(capped_chunked, _loss_and_grad(params, batch, capped, 0)[0][0], rtol=1e-6)
  assert abs(float(capped_chunked) - float(free)) > 1e-2


def test_chunked_loss_never_materialises_the_full_logits():
  """The plain loss's compiled gradient holds more than B x T x V floats of temporaries; the chunked one's, over
  chunks of one position (a sixteenth of the logits), less than a quarter of the plain one's. (B x T is taken well
  above D: the V x D head gradient is the floor of both.)"""
  cfg = tiny_config(vocab_size=4096, num_layers=1)
  params = random_params(cfg, 1)
  batch = {k: np.tile(v, (8, 1)) for k, v in _packed_batch(16).items()}
  full_bytes = 4 * batch["tokens"].size * cfg.vocab_size
  temp = lambda chunk: jax.jit(lambda p, b: jax.grad(lambda q: loss.weighted_nll(cfg, b, chunk_size=chunk)(q)[0])(p),
                               ).lower(params, batch).compile().memory_analysis().temp_size_in_bytes
  plain = temp(0)
  assert plain > full_bytes
  assert temp(1) < plain / 4


def test_get_binds_the_memory_options_once():
  factory = loss.get("weighted_nll", chunk_size=8, remat="full")
  assert factory is loss.get("weighted_nll", chunk_size=8, remat="full")  # One compiled step for equal settings.
  assert factory.keywords == {"chunk_size": 8, "remat": "full", "lora": None}
  c = lora.LoraConfig(rank=4)
  assert loss.get("weighted_nll", lora=c) is loss.get("weighted_nll", lora=lora.LoraConfig(rank=4))
  assert loss.get("weighted_nll", lora=c).keywords == {"chunk_size": 0, "remat": "none", "lora": c}
  with pytest.raises(ValueError, match="loss_chunk_size"):
    loss.get("weighted_nll", chunk_size=-1)
  with pytest.raises(ValueError, match="train.remat"):
    loss.get("weighted_nll", remat="some")


@pytest.mark.parametrize("remat", ["full", "dots_saveable", "dots_with_no_batch_dims_saveable"])
def test_remat_gives_the_same_loss_and_gradient(remat):
  cfg = tiny_config(num_layers=2)
  params, batch = random_params(cfg, 2), _packed_batch(16)
  (plain, _), plain_grads = _loss_and_grad(params, batch, cfg, 0)
  (rematted, _), grads = _loss_and_grad(params, batch, cfg, 4, remat)
  np.testing.assert_allclose(rematted, plain, rtol=1e-6)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(plain_grads))
  _assert_trees_close(grads, plain_grads, rtol=1e-5, atol=1e-6 * scale)
