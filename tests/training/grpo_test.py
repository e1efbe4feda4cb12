"""Behaviour tests for rest_jax.training.grpo: advantages, packed rollouts, the clipped surrogate and the update."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rest_jax.model import sharding
from rest_jax.model.transformer import Transformer, causal_mask
from rest_jax.training import grpo
from rest_jax.training.finetune import TrainConfig
from rest_jax.training.grpo import GRPOConfig, Rollout
from tests.helpers import random_params, tiny_config

CFG = tiny_config(vocab_size=64, num_layers=1)
SEQ_LEN = 16
# Tiny programs: LLVM optimisation would cost more compile time than it saves.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def params():
  return random_params(CFG, 0)


def _rollouts(n: int = 12, seed: int = 0, logprobs=None) -> list[Rollout]:
  """Random rollouts (one-token prompts among them, so completions of adjacent segments touch)."""
  rs = np.random.default_rng(seed)
  out = []
  for i in range(n):
    prompt = (1, *rs.integers(4, 60, size=int(rs.integers(0, 5))))
    completion = (*rs.integers(4, 60, size=int(rs.integers(0, 4))), 2)
    lp = rs.uniform(-3, -0.1, size=len(completion)) if logprobs is None else logprobs[i]
    out.append(Rollout(prompt, completion, lp, float(rs.normal())))
  return out


def _model_logp(params, batch, temperature=1.0):
  """log softmax(logits / temperature) at the targets, straight from the model (none of loss.py's code)."""
  logits_BxTxV, _ = Transformer(CFG).apply({"params": params}, batch["tokens"], batch["positions"],
                                           causal_mask(batch["segment_ids"]))
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV / temperature, axis=-1)
  return jnp.take_along_axis(logp_BxTxV, batch["targets"][..., None], axis=-1)[..., 0]


_explicit_logp = jax.jit(_model_logp, static_argnames=("temperature",), compiler_options=_FAST_COMPILE)


def _one_per_row(rollouts: list[Rollout]) -> dict[str, np.ndarray]:
  """Each rollout alone in its own row from slot 0: an independent layout to check `pack_rollouts` against."""
  batch = {k: np.zeros((len(rollouts), SEQ_LEN), np.int32) for k in ("tokens", "targets", "positions", "segment_ids")}
  for r, ro in enumerate(rollouts):
    seq = np.asarray(ro.prompt_ids + ro.completion_ids)
    batch["tokens"][r, :len(seq) - 1], batch["targets"][r, :len(seq) - 1] = seq[:-1], seq[1:]
    batch["positions"][r, :len(seq) - 1], batch["segment_ids"][r, :len(seq) - 1] = np.arange(len(seq) - 1), 1
  return batch


def _sampled_by(params, rollouts: list[Rollout], temperature: float) -> list[Rollout]:
  """`rollouts` with the log-probs `params` give their completion tokens, as a sampler would record them."""
  logp_RxT = np.asarray(_explicit_logp(params, _one_per_row(rollouts), temperature))
  return [Rollout(ro.prompt_ids, ro.completion_ids,
                  logp_RxT[r, len(ro.prompt_ids) - 1:len(ro.prompt_ids) - 1 + len(ro.completion_ids)], ro.advantage)
          for r, ro in enumerate(rollouts)]


def _rows(rollouts, batch_rows: int = 8) -> dict[str, np.ndarray]:
  """The packed [B, T] rows of one micro-batch."""
  return {k: v[0] for k, v in grpo.pack_rollouts(rollouts, seq_len=SEQ_LEN, batch_rows=batch_rows,
                                                 micro_batches=1).items()}


def _assert_trees_close(a, b, rtol=1e-5, atol_scale=1e-6):
  scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(b))
  assert scale > 0
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol_scale * scale,
                               err_msg=jax.tree_util.keystr(path))


def _max_diff(a, b) -> float:
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(jax.tree.leaves(a),
                                                                                 jax.tree.leaves(b)))


# Advantages, configs and rollouts.

def test_group_advantages_known_values():
  rewards_PxN = np.array([[1, 0, 0, 1], [0, 0, 0, 3], [2, 2, 2, 2]], np.float32)
  s3 = 3 ** 0.5
  np.testing.assert_allclose(grpo.group_advantages(rewards_PxN, "std"),
                             [[1, -1, -1, 1], [-1 / s3, -1 / s3, -1 / s3, s3], [0, 0, 0, 0]], rtol=1e-5)
  np.testing.assert_allclose(grpo.group_advantages(rewards_PxN, "mean"),
                             [[0.5, -0.5, -0.5, 0.5], [-0.75, -0.75, -0.75, 2.25], [0, 0, 0, 0]], rtol=1e-6)


@pytest.mark.parametrize("norm", ["std", "mean"])
def test_group_advantages_of_equal_rewards_are_exactly_zero(norm):
  # The float32 mean of seven 0.1s (or 0.9s) is not 0.1: r - mean is about 1e-8, which "std" would blow up.
  rewards_PxN = np.array([[0.1] * 7, [0.9] * 7, [1.0] * 7, [0.1, 0.2, 0.4, 0.0, 1.0, 0.5, 0.3]], np.float32)
  assert (rewards_PxN[0] - rewards_PxN[0].mean()).any()
  for adv_PxN in (grpo.group_advantages(rewards_PxN, norm), grpo.group_advantages(jnp.asarray(rewards_PxN), norm)):
    assert adv_PxN.shape == (4, 7)
    assert np.all(np.asarray(adv_PxN)[:3] == 0.0)
    assert np.all(np.asarray(adv_PxN)[3] != 0.0)
  assert isinstance(grpo.group_advantages(jnp.asarray(rewards_PxN), norm), jax.Array)
  assert isinstance(grpo.group_advantages(rewards_PxN, norm), np.ndarray)


def test_group_advantages_rejects_bad_shapes_and_norms():
  with pytest.raises(ValueError, match=r"\[prompts, samples\]"):
    grpo.group_advantages(np.zeros(4))
  with pytest.raises(ValueError, match="grpo.advantage_norm"):
    grpo.group_advantages(np.zeros((2, 4)), "max")


@pytest.mark.parametrize("kwargs, field", [
    ({"clip_eps": 0.0}, "clip_eps"), ({"clip_eps_high": -0.1}, "clip_eps_high"), ({"kl_coef": -1.0}, "kl_coef"),
    ({"temperature": 0.0}, "temperature"), ({"advantage_norm": "max"}, "advantage_norm"),
    ({"loss_norm": "row"}, "loss_norm"), ({"updates_per_batch": 0}, "updates_per_batch"),
])
def test_grpo_config_rejects_bad_values(kwargs, field):
  with pytest.raises(ValueError, match=f"grpo.{field} "):
    GRPOConfig(**kwargs)


def test_rollout_needs_one_logprob_per_completion_token():
  ro = Rollout([1, 5], np.array([7, 2]), np.array([-0.5, -1.0]), 1.0)
  assert (ro.prompt_ids, ro.completion_ids, ro.logprobs) == ((1, 5), (7, 2), (-0.5, -1.0))
  with pytest.raises(ValueError, match="1 logprobs for 2 completion ids"):
    Rollout((1, 5), (7, 2), (-0.5,), 1.0)
  with pytest.raises(ValueError, match="non-empty"):
    Rollout((1, 5), (), (), 1.0)


# Packing.

def test_pack_rollouts_places_the_per_token_values_on_the_completion_targets():
  a = Rollout((1, 10, 11), (20, 21, 2), (-0.1, -0.2, -0.3), 0.5)  # 5 input slots: targets 10 11 | 20 21 2.
  b = Rollout((1, 12), (22, 2), (-0.4, -0.5), -1.0)  # 3 input slots: targets 12 | 22 2.
  batch = grpo.pack_rollouts([a, b], seq_len=SEQ_LEN, batch_rows=2, micro_batches=2, order=np.array([1, 0]))
  assert set(batch) == {"tokens", "targets", "positions", "segment_ids", "loss_mask", "old_logprobs", "advantages",
                        "token_weights"}
  assert all(v.shape == (2, 2, SEQ_LEN) for v in batch.values())
  row = {k: v[0, 0] for k, v in batch.items()}  # b first (the order), then a.
  np.testing.assert_array_equal(row["targets"][:8], [12, 22, 2, 10, 11, 20, 21, 2])
  np.testing.assert_array_equal(row["loss_mask"][:8], [0, 1, 1, 0, 0, 1, 1, 1])
  np.testing.assert_allclose(row["old_logprobs"][:8], [0, -0.4, -0.5, 0, 0, -0.1, -0.2, -0.3], rtol=1e-6)
  np.testing.assert_allclose(row["advantages"][:8], [0, -1, -1, 0, 0, 0.5, 0.5, 0.5])
  np.testing.assert_allclose(row["token_weights"][:8], [0, 1 / 2, 1 / 2, 0, 0, 1 / 3, 1 / 3, 1 / 3], rtol=1e-6)
  for k in ("old_logprobs", "advantages", "token_weights", "loss_mask", "segment_ids"):
    assert not row[k][8:].any() and not batch[k][1].any() and not batch[k][0, 1].any()  # Padding slots and rows.
  with pytest.raises(ValueError, match="fill 2 rows of 5 tokens, more than train.batch_rows x train.micro_batches = 1"):
    grpo.pack_rollouts([a, b], seq_len=5, batch_rows=1, micro_batches=1)


def test_packed_old_logprobs_score_the_tokens_they_were_sampled_for(params):
  """Log-probs recorded per rollout (each alone) and packed are those of the packed batch's targets: the ratio is 1
  on every completion token."""
  rollouts = _sampled_by(params, _rollouts(), temperature=0.7)
  rows = _rows(rollouts)
  assert len(np.unique(rows["segment_ids"][0])) > 2  # Several rollouts share a row.
  logp_BxT = np.asarray(jax.jit(functools.partial(grpo.token_logprobs, CFG, temperature=0.7))(params, rows))
  mask = rows["loss_mask"]
  np.testing.assert_allclose(logp_BxT[mask], rows["old_logprobs"][mask], rtol=1e-5, atol=1e-5)
  assert mask.sum() == sum(len(r.completion_ids) for r in rollouts)
  _, aux = jax.jit(lambda p, b: grpo.grpo_loss(CFG, b, config=GRPOConfig(temperature=0.7))(p))(params, rows)
  np.testing.assert_allclose(aux["ratio_sum"] / aux["completion_tokens"], 1.0, rtol=1e-6)
  assert int(aux["clipped_sum"]) == 0
  # A different temperature scores them differently: the check above can see a wrong temperature.
  _, aux = jax.jit(lambda p, b: grpo.grpo_loss(CFG, b, config=GRPOConfig())(p))(params, rows)
  assert abs(float(aux["ratio_sum"] / aux["completion_tokens"]) - 1.0) > 1e-2


# The surrogate on hand-made log-probs.

def _hand_batch(old_T, adv_T, mask_T=None, **extra_T):
  T = len(old_T)
  mask_T = np.ones(T, bool) if mask_T is None else np.asarray(mask_T, bool)
  batch = {"old_logprobs": old_T, "advantages": adv_T, "loss_mask": mask_T, "segment_ids": np.ones(T, np.int32),
           "token_weights": np.full(T, 1.0 / T), **extra_T}
  return {k: jnp.asarray(v)[None] for k, v in batch.items()}


def _objective_grad(logp_T, batch, config):
  return np.asarray(jax.grad(lambda lp: grpo.objective(lp, batch, config=config)[0])(jnp.asarray(logp_T)[None]))[0]


def test_clipped_tokens_get_no_gradient_and_the_others_do():
  ratio_T = np.array([1.5, 1.1, 0.5, 0.9, 0.5, 1.5], np.float32)
  adv_T = np.array([1.0, 1.0, -1.0, -1.0, 1.0, -1.0], np.float32)
  logp_T = np.full(6, np.log(0.5), np.float32)
  batch = _hand_batch(logp_T - np.log(ratio_T), adv_T)
  config = GRPOConfig(clip_eps=0.2)
  # Clipped: A > 0 above 1 + eps (token 0), A < 0 below 1 - eps (token 2). The min keeps the unclipped term where the
  # ratio moved the other way (tokens 4, 5) and in the band (1, 3): d(-r A)/d logp = -r A.
  np.testing.assert_allclose(_objective_grad(logp_T, batch, config), [0, -1.1, 0, 0.9, -0.5, 1.5], rtol=1e-5)
  loss_sum, aux = grpo.objective(jnp.asarray(logp_T)[None], batch, config=config)
  np.testing.assert_allclose(loss_sum, -(1.2 + 1.1 - 0.8 - 0.9 + 0.5 - 1.5), rtol=1e-5)
  assert int(aux["clipped_sum"]) == 2 and int(aux["tokens"]) == 6
  np.testing.assert_allclose(aux["ratio_sum"], ratio_T.sum(), rtol=1e-5)


def test_clip_eps_high_widens_only_the_upper_bound():
  ratio_T = np.array([1.25, 0.75, 1.15], np.float32)
  adv_T = np.array([1.0, -1.0, 1.0], np.float32)
  logp_T = np.full(3, np.log(0.5), np.float32)
  batch = _hand_batch(logp_T - np.log(ratio_T), adv_T)
  grad = lambda **kw: _objective_grad(logp_T, batch, GRPOConfig(**kw))
  np.testing.assert_allclose(grad(clip_eps=0.2), [0, 0, -1.15], rtol=1e-5)
  np.testing.assert_allclose(grad(clip_eps=0.2, clip_eps_high=0.28), [-1.25, 0, -1.15], rtol=1e-5)
  np.testing.assert_allclose(grad(clip_eps=0.3, clip_eps_high=0.1), [0, 0.75, 0], rtol=1e-5)
  np.testing.assert_allclose(grad(clip_eps=0.3), [-1.25, 0.75, -1.15], rtol=1e-5)


def test_kl_is_the_k3_estimate_and_vanishes_with_its_gradient_at_the_reference():
  new_T = np.log(np.array([0.5, 0.2, 0.9], np.float32))
  ref_T = np.log(np.array([0.25, 0.4, 0.9], np.float32))
  zero_adv = np.zeros(3, np.float32)
  config = GRPOConfig(kl_coef=0.1)
  loss_sum, aux = grpo.objective(jnp.asarray(new_T)[None], _hand_batch(new_T, zero_adv, ref_logprobs=ref_T),
                                 config=config)
  k3_T = [0.5 - np.log(0.5) - 1, 2 - np.log(2) - 1, 0.0]  # ref/new - log(ref/new) - 1.
  np.testing.assert_allclose(aux["kl_sum"], sum(k3_T), rtol=1e-5)
  np.testing.assert_allclose(loss_sum, 0.1 * sum(k3_T), rtol=1e-5)

  adv_T = np.array([1.0, -0.5, 2.0], np.float32)
  at_ref = _hand_batch(new_T, adv_T, ref_logprobs=new_T)
  with_kl = grpo.objective(jnp.asarray(new_T)[None], at_ref, config=config)
  without = grpo.objective(jnp.asarray(new_T)[None], at_ref, config=GRPOConfig())
  assert float(with_kl[1]["kl_sum"]) == 0.0
  np.testing.assert_allclose(with_kl[0], without[0], rtol=1e-6)
  np.testing.assert_allclose(_objective_grad(new_T, at_ref, config), _objective_grad(new_T, at_ref, GRPOConfig()),
                             rtol=1e-6, atol=1e-7)
  assert np.abs(_objective_grad(new_T, _hand_batch(new_T, adv_T, ref_logprobs=ref_T), config)
                - _objective_grad(new_T, at_ref, config)).max() > 1e-2


def test_kl_coef_zero_ignores_the_reference_and_a_positive_one_needs_it():
  new_T = np.log(np.array([0.5, 0.2], np.float32))
  adv_T = np.array([1.0, -1.0], np.float32)
  plain = grpo.objective(jnp.asarray(new_T)[None], _hand_batch(new_T, adv_T), config=GRPOConfig())
  far_ref = grpo.objective(jnp.asarray(new_T)[None], _hand_batch(new_T, adv_T, ref_logprobs=np.full(2, -40.0)),
                           config=GRPOConfig())
  np.testing.assert_allclose(far_ref[0], plain[0], rtol=0)
  assert "kl_sum" not in far_ref[1]
  with pytest.raises(ValueError, match="ref_logprobs"):
    grpo.objective(jnp.asarray(new_T)[None], _hand_batch(new_T, adv_T), config=GRPOConfig(kl_coef=0.1))


def test_sequence_and_token_normalisation_by_hand():
  """Two completions of 2 and 4 tokens; the second's prompt is BOS alone, so its completion targets start right
  after the first's and only the segment ids tell them apart."""
  rollouts = [Rollout((1, 5, 6), (7, 2), (-1.0, -1.0), 1.0), Rollout((1,), (8, 9, 10, 2), (-1.0,) * 4, -0.5)]
  rows = _rows(rollouts, batch_rows=1)
  mask = rows["loss_mask"][0]
  np.testing.assert_array_equal(mask[:9], [0, 0, 1, 1, 1, 1, 1, 1, 0])
  ratio = np.zeros(SEQ_LEN, np.float32)
  ratio[2:8] = [1.1, 0.9, 1.0, 1.05, 0.95, 1.1]  # All inside the clip band: each token's loss is -ratio x A.
  logp_1xT = jnp.asarray(np.where(mask, rows["old_logprobs"][0] + np.log(np.where(mask, ratio, 1.0)), 0.0))[None]

  def mean_loss(loss_norm):
    loss_sum, aux = grpo.objective(logp_1xT, rows, config=GRPOConfig(loss_norm=loss_norm))
    return float(loss_sum / aux["tokens"]), int(aux["tokens"])

  first, second = -(1.1 + 0.9) * 1.0, (1.0 + 1.05 + 0.95 + 1.1) * 0.5
  token, sequence = mean_loss("token"), mean_loss("sequence")
  assert token[1] == 6 and sequence[1] == 2
  np.testing.assert_allclose(token[0], (first + second) / 6, rtol=1e-5)
  np.testing.assert_allclose(sequence[0], (first / 2 + second / 4) / 2, rtol=1e-5)


# Through the model.

@pytest.fixture(scope="module")
def on_policy(params):
  """Packed rows of rollouts sampled (at temperature 0.8) by `params`, with reference log-probs of other params."""
  rows = _rows(_sampled_by(params, _rollouts(seed=1), temperature=0.8))
  ref_BxT = np.asarray(_explicit_logp(random_params(CFG, 5), rows, 0.8))
  return dict(rows, ref_logprobs=np.where(rows["loss_mask"], ref_BxT, 0.0).astype(np.float32))


@functools.partial(jax.jit, static_argnames=("config", "chunk_size"), compiler_options=_FAST_COMPILE)
def _loss_and_grad(params, batch, config, chunk_size=0):
  return jax.value_and_grad(grpo.grpo_loss(CFG, batch, config=config, chunk_size=chunk_size), has_aux=True)(params)


@pytest.mark.parametrize("loss_norm", ["token", "sequence"])
def test_at_the_sampling_policy_the_loss_is_minus_the_mean_advantage_and_its_gradient_the_policy_gradient(
    params, on_policy, loss_norm):
  config = GRPOConfig(temperature=0.8, loss_norm=loss_norm)
  (loss_sum, aux), grads = _loss_and_grad(params, on_policy, config)
  mask, adv = on_policy["loss_mask"], on_policy["advantages"]
  weights = mask.astype(np.float32) if loss_norm == "token" else on_policy["token_weights"]
  divisor = mask.sum() if loss_norm == "token" else 12
  assert int(aux["tokens"]) == divisor
  np.testing.assert_allclose(aux["ratio_sum"], mask.sum(), rtol=1e-5)
  np.testing.assert_allclose(loss_sum / divisor, -(weights * adv).sum() / divisor, rtol=1e-5, atol=1e-6)

  def policy_gradient_objective(p):  # -sum_t w_t A_t log p(target_t): REINFORCE with the group baseline.
    return -jnp.sum(jnp.where(mask, weights * adv * _model_logp(p, on_policy, 0.8), 0.0))

  _assert_trees_close(grads, jax.jit(jax.grad(policy_gradient_objective), compiler_options=_FAST_COMPILE)(params))


def test_values_off_the_loss_mask_change_neither_the_loss_nor_its_gradient(params, on_policy):
  config = GRPOConfig(temperature=0.8, kl_coef=0.2, loss_norm="sequence", clip_eps_high=0.3)
  off = ~on_policy["loss_mask"]
  assert off.sum() > 20 and (on_policy["segment_ids"] == 0).any()  # Prompt and padding slots.
  rs = np.random.default_rng(3)
  noisy = dict(on_policy)
  for k, scale in (("old_logprobs", 60.0), ("advantages", 50.0), ("ref_logprobs", 60.0), ("token_weights", 9.0)):
    noisy[k] = np.where(off, scale * rs.normal(size=off.shape), on_policy[k]).astype(np.float32)
  noisy["targets"] = np.where(off, rs.integers(0, 64, size=off.shape), on_policy["targets"]).astype(np.int32)
  (base, _), base_grads = _loss_and_grad(params, on_policy, config)
  (loss_sum, _), grads = _loss_and_grad(params, noisy, config)
  np.testing.assert_allclose(loss_sum, base, rtol=1e-6)
  _assert_trees_close(grads, base_grads, rtol=1e-6, atol_scale=1e-7)
  # One advantage on the mask is seen.
  r, t = np.argwhere(on_policy["loss_mask"])[3]
  changed = dict(on_policy, advantages=on_policy["advantages"].copy())
  changed["advantages"][r, t] += 5.0
  assert abs(float(_loss_and_grad(params, changed, config)[0][0]) - float(base)) > 1e-2


def test_the_chunked_loss_equals_the_plain_one(params, on_policy):
  config = GRPOConfig(temperature=0.8, kl_coef=0.1, clip_eps_high=0.28)
  shifted = dict(on_policy, old_logprobs=on_policy["old_logprobs"] + np.where(on_policy["loss_mask"], 0.3, 0.0)
                 .astype(np.float32))  # Off-policy: ratios of 0.74 clip where A < 0.
  (plain, plain_aux), plain_grads = _loss_and_grad(params, shifted, config)
  (chunked, aux), grads = _loss_and_grad(params, shifted, config, chunk_size=5)  # 5 does not divide T = 16.
  assert int(plain_aux["clipped_sum"]) > 0
  np.testing.assert_allclose(chunked, plain, rtol=1e-6)
  for k in ("ratio_sum", "kl_sum", "clipped_sum", "tokens"):
    np.testing.assert_allclose(aux[k], plain_aux[k], rtol=1e-6)
  _assert_trees_close(grads, plain_grads)


def test_loss_factory_is_one_object_per_setting():
  c = GRPOConfig(kl_coef=0.1)
  assert grpo.loss_factory(c, chunk_size=8) is grpo.loss_factory(GRPOConfig(kl_coef=0.1), chunk_size=8)
  assert grpo.loss_factory(c).keywords == {"config": c, "chunk_size": 0, "remat": "none", "lora": None}


# The update, on meshes.

_TRAIN = TrainConfig(learning_rate=1e-2, warmup_steps=0, seq_len=SEQ_LEN, batch_rows=8, micro_batches=2)
_GRPO = GRPOConfig(kl_coef=0.05, clip_eps_high=0.28, temperature=0.8)


def _two_updates(params, mesh, train_config=_TRAIN):
  """Two updates on one batch of rollouts sampled by `params`, the reference being `params` too."""
  update, state = grpo.make_update(params, cfg=CFG, train_config=train_config, grpo_config=_GRPO, mesh=mesh,
                                   total_steps=4)
  batch = grpo.pack_rollouts(_rollouts(n=24, seed=2), seq_len=SEQ_LEN, batch_rows=8, micro_batches=2)
  logp_AxBxT = grpo.ref_logprobs(params, batch, cfg=CFG, mesh=mesh, temperature=0.8)
  batch = dict(batch, old_logprobs=np.where(batch["loss_mask"], logp_AxBxT, 0.0).astype(np.float32),
               ref_logprobs=logp_AxBxT)
  metrics = []
  for _ in range(2):
    state, m = update(state, batch)
    metrics.append(jax.tree.map(float, jax.device_get(m)))
  return state, metrics


@pytest.fixture(scope="module")
def single_device(params):
  return _two_updates(params, sharding.make_mesh(devices=jax.devices()[:1]))


def test_the_first_update_is_on_policy_and_the_second_is_not(single_device, params):
  state, (first, second) = single_device
  assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and first["kl_mean"] == pytest.approx(0.0, abs=1e-7)
  assert first["clip_frac"] == 0.0 and first["tokens"] > 40
  assert abs(second["ratio_mean"] - 1.0) > 1e-4 and second["kl_mean"] > 1e-6
  assert int(state.step) == 2 and _max_diff(state.params, params) > 1e-2


@pytest.mark.parametrize("mesh_shape", [dict(data=8), dict(data=2, fsdp=2, tensor=2)])
def test_sharded_updates_equal_the_single_device_updates(params, single_device, mesh_shape):
  expected, expected_metrics = single_device
  state, metrics = _two_updates(params, sharding.make_mesh(**mesh_shape))
  kernel = state.params["layer_0"]["mlp"]["gate"]["kernel"]
  assert len(kernel.sharding.device_set) == 8
  assert kernel.sharding.is_fully_replicated == (mesh_shape == dict(data=8))
  assert _max_diff(state.params, expected.params) < 1e-5
  for m, e in zip(metrics, expected_metrics):
    for k in e:
      np.testing.assert_allclose(m[k], e[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_a_lora_update_trains_the_adapters_and_policy_params_merges_them(params):
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  config = dataclasses.replace(_TRAIN, lora_rank=2)
  state, (first, _) = _two_updates(params, mesh, config)
  assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # Fresh adapters start at the base.
  assert set(jax.tree.leaves(jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key, state.params))) == {
      "kernel_lora_a", "kernel_lora_b"}
  merged = grpo.policy_params(state, train_config=config, mesh=mesh)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  assert _max_diff(merged, params) > 1e-3


def test_update_rejects_batches_of_another_shape_and_rows_the_mesh_cannot_split(params):
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  update, state = grpo.make_update(params, cfg=CFG, train_config=_TRAIN, grpo_config=_GRPO, mesh=mesh, total_steps=1)
  batch = grpo.pack_rollouts(_rollouts(n=4), seq_len=SEQ_LEN, batch_rows=4, micro_batches=1)
  with pytest.raises(ValueError, match=r"the step takes .* \[2, 8, 16\]"):
    update(state, batch)
  with pytest.raises(ValueError, match="train.batch_rows=6"):
    grpo.make_update(params, cfg=CFG, train_config=TrainConfig(batch_rows=6), grpo_config=_GRPO,
                     mesh=sharding.make_mesh(data=8), total_steps=1)
