"""Behaviour tests for rest_jax.model.transformer: causality, packing, the KV cache, GQA, windows, Gemma options.

Parameters are drawn with numpy from the model's abstract shapes: compiling the model's own initialiser costs seconds
per config on CPU, and these tests only need generic, non-degenerate weights.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rest_jax.model import transformer
from rest_jax.model.transformer import ModelConfig, Transformer, causal_mask
from rest_jax.sampling import sampler
from tests.helpers import tiny_config

T = 8  # Row length used by most tests.
# Each test compiles a few tiny programs: LLVM optimisation would cost more time than it saves.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _param_shapes(cfg: ModelConfig):
  tokens_1x1 = jnp.zeros((1, 1), jnp.int32)
  init = lambda rng: Transformer(cfg).init(rng, tokens_1x1, tokens_1x1, jnp.ones((1, 1, 1), bool))["params"]
  return nn.unbox(jax.eval_shape(init, jax.random.key(0)))


def _random_params(cfg: ModelConfig, seed: int = 0, scale: float = 0.3):
  """Gaussian weights; norm scales near their identity value (1, or 0 under Gemma's `1 + scale`)."""
  rs = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rs.normal(size=leaf.shape).astype(np.float32)
    if path[-1].key == "scale":
      return (0.0 if cfg.norm_plus_one else 1.0) + 0.1 * noise
    return scale * noise

  return jax.tree_util.tree_map_with_path(draw, _param_shapes(cfg))


@functools.partial(jax.jit, static_argnames="cfg", compiler_options=_FAST_COMPILE)
def _forward(params, tokens_BxT, positions_BxT, segment_ids_BxT, cfg):
  logits_BxTxV, _ = Transformer(cfg).apply({"params": params}, tokens_BxT, positions_BxT,
                                           causal_mask(segment_ids_BxT))
  return logits_BxTxV


def _forward_row(params, tokens_BxT, cfg):
  """Forward of unpacked rows without padding."""
  tokens_BxT = jnp.asarray(tokens_BxT, jnp.int32)
  B, L = tokens_BxT.shape
  return _forward(params, tokens_BxT, jnp.broadcast_to(jnp.arange(L), (B, L)), jnp.ones((B, L), jnp.int32), cfg)


@functools.partial(jax.jit, static_argnames="cfg", compiler_options=_FAST_COMPILE)
def _input_jacobian(params, tokens_1xT, cfg):
  """jac_TxVxTxD[t, :, s] = d logits[t] / d (input embedding at s), through a perturbation added to the embedding."""
  L = tokens_1xT.shape[1]

  def logits_of(delta_TxD):
    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, nn.Embed) and context.method_name == "__call__":
        out = out + delta_TxD[None].astype(out.dtype)
      return out

    with nn.intercept_methods(add_delta):
      logits_1xTxV, _ = Transformer(cfg).apply({"params": params}, tokens_1xT, jnp.arange(L)[None],
                                               causal_mask(jnp.ones_like(tokens_1xT)))
    return logits_1xTxV[0]

  return jax.jacrev(logits_of)(jnp.zeros((L, cfg.embed_dim), jnp.float32))


def _input_dependence(params, tokens_1xT, cfg) -> np.ndarray:
  """dep_TxT[t, s] = || d logits[t] / d (input embedding at s) ||.

  The norm is taken on the host: on jax 0.10.2 / CPU, reducing the jacobian inside the same jit returned wrong values
  (non-zero entries outside the window) that neither eager mode, jacfwd nor finite differences reproduce.
  """
  jac_TxVxTxD = np.asarray(_input_jacobian(params, jnp.asarray(tokens_1xT), cfg))
  return np.sqrt(np.sum(jac_TxVxTxD.astype(np.float64) ** 2, axis=(1, 3)))


def _tokens(seed: int, shape, vocab: int = 64) -> np.ndarray:
  return np.random.default_rng(seed).integers(4, vocab, size=shape).astype(np.int32)


@pytest.fixture(scope="module")
def cfg():
  return tiny_config()


@pytest.fixture(scope="module")
def params(cfg):
  return _random_params(cfg)


def test_gradients_of_logits_never_reach_future_tokens(cfg, params):
  dep_TxT = _input_dependence(params, _tokens(0, (1, T)), cfg)
  causal_TxT = np.tril(np.ones((T, T), bool))
  assert np.all(dep_TxT[~causal_TxT] == 0.0)
  assert np.all(dep_TxT[causal_TxT] > 1e-6)  # Every earlier token matters: the test can see a dependence.


def test_changing_a_future_token_leaves_earlier_logits_unchanged(cfg, params):
  tokens_2xT = np.repeat(_tokens(1, (1, T)), 2, axis=0)
  tokens_2xT[1, 5] = 4 + (tokens_2xT[1, 5] - 3) % 60  # Row 1 differs from row 0 at position 5 only.
  logits_2xTxV = np.asarray(_forward_row(params, tokens_2xT, cfg))
  np.testing.assert_allclose(logits_2xTxV[1, :5], logits_2xTxV[0, :5], atol=1e-6)
  assert np.abs(logits_2xTxV[1, 5:] - logits_2xTxV[0, 5:]).max() > 1e-3


@pytest.mark.parametrize("window", [None, 3])
def test_packed_sequences_give_the_same_logits_as_each_alone(window):
  cfg = tiny_config(sliding_window=window)
  params = _random_params(cfg, seed=1)
  a, b = _tokens(2, (5,)), _tokens(3, (3,))
  R = 10  # Row length: two padding slots after a and b.
  rows = [  # (tokens, positions, segment ids) of each row, before padding.
      (np.r_[a, b], np.r_[np.arange(5), np.arange(3)], [1] * 5 + [2] * 3),  # a and b packed.
      (a, np.arange(5), [1] * 5),  # a alone.
      (b, np.arange(3), [1] * 3),  # b alone.
      (np.r_[a, b], np.arange(8), [1] * 8),  # a and b as one sequence: b sees a.
  ]
  tokens_4xR, positions_4xR, segments_4xR = (
      np.stack([np.pad(np.asarray(row[k], np.int32), (0, R - len(row[k]))) for row in rows]) for k in range(3))
  logits_4xRxV = np.asarray(_forward(params, tokens_4xR, positions_4xR, segments_4xR, cfg))
  np.testing.assert_allclose(logits_4xRxV[0, :5], logits_4xRxV[1, :5], atol=1e-5)
  np.testing.assert_allclose(logits_4xRxV[0, 5:8], logits_4xRxV[2, :3], atol=1e-5)
  assert np.all(np.isfinite(logits_4xRxV))  # Padding slots attend to themselves and stay finite.
  assert np.abs(logits_4xRxV[3, 5:8] - logits_4xRxV[2, :3]).max() > 1e-3  # Leaking attention would show.


_prefill = jax.jit(sampler.prefill, static_argnames=("cfg", "rows", "max_new_tokens"), compiler_options=_FAST_COMPILE)
_decode_step = jax.jit(sampler.decode_step, static_argnames=("cfg", "attend_len"), compiler_options=_FAST_COMPILE)


@pytest.mark.parametrize("overrides", [{}, {"num_layers": 1, "num_kv_heads": 1, "sliding_window": 3,
                                            "attn_logits_softcap": 2.0}], ids=["gqa", "mqa_window3_softcap"])
def test_the_sampling_cache_gives_the_full_forward_logits(overrides):
  # Two left-padded prompts with two samples each; every sample feeds its own tokens through the decode steps.
  cfg = tiny_config(**overrides)
  params = _random_params(cfg, seed=2)
  L, N, n = 5, 6, 2
  prompts = [_tokens(4, (5,)), _tokens(5, (3,))]
  prompt_PxL = np.stack([np.pad(p, (L - len(p), 0)) for p in prompts])
  pad_P = np.asarray([L - len(p) for p in prompts], np.int32)
  fed_BxN = _tokens(6, (2 * n, N))
  logits_PxV, cache, keys = _prefill(params, prompt_PxL, pad_P, cfg=cfg, rows=2 * n, max_new_tokens=N)
  assert cache[0]["prefix_k"].shape == (2, cfg.num_kv_heads, L, cfg.head_dim)  # Once per prompt, not per sample.
  assert cache[0]["k"].shape == (2 * n, cfg.num_kv_heads, N, cfg.head_dim)
  for p, prompt in enumerate(prompts):
    np.testing.assert_allclose(logits_PxV[p], _forward_row(params, prompt[None], cfg)[0, -1], atol=1e-5)
  for step in range(N):
    # Attending to a bound past the filled slots gives the same logits as attending to all of them.
    attend_len = 4 if step < 4 else None
    logits_BxV, cache = _decode_step(params, fed_BxN[:, step], jnp.asarray(step), cache, keys, cfg=cfg,
                                     attend_len=attend_len)
    for b in range(2 * n):
      row = np.r_[prompts[b // n], fed_BxN[b, :step + 1]][None]
      np.testing.assert_allclose(logits_BxV[b], _forward_row(params, row, cfg)[0, -1], atol=1e-5,
                                 err_msg=f"row {b}, step {step}")


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_grouped_query_attention_equals_multi_head_with_shared_kv_heads(num_kv_heads):
  gqa_cfg = tiny_config(num_layers=1, num_kv_heads=num_kv_heads)
  mha_cfg = tiny_config(num_layers=1, num_kv_heads=gqa_cfg.num_heads)
  gqa_params = _random_params(gqa_cfg, seed=3)
  group = gqa_cfg.num_heads // num_kv_heads
  # Query head n reads kv head n // group, so the MHA model repeats each kv head `group` times.
  mha_params = jax.tree_util.tree_map_with_path(
      lambda path, x: np.repeat(x, group, axis=1) if path[-2].key in ("k", "v") else x, gqa_params)
  assert mha_params["layer_0"]["attn"]["k"]["kernel"].shape == (32, 4, 8)
  assert gqa_params["layer_0"]["attn"]["k"]["kernel"].shape == (32, num_kv_heads, 8)
  tokens_2xT = _tokens(5, (2, T))
  np.testing.assert_allclose(_forward_row(gqa_params, tokens_2xT, gqa_cfg),
                             _forward_row(mha_params, tokens_2xT, mha_cfg), atol=1e-5)


def test_tied_and_untied_embeddings_param_trees():
  tied, untied = _param_shapes(tiny_config(tied_embeddings=True)), _param_shapes(tiny_config(tied_embeddings=False))
  assert set(untied) - set(tied) == {"lm_head"}
  assert untied["lm_head"]["kernel"].shape == (32, 64)
  assert tied["embed"]["embedding"].shape == (64, 32)


def test_untied_head_equal_to_the_transposed_embedding_reproduces_the_tied_model():
  tied_cfg, untied_cfg = tiny_config(num_layers=1), tiny_config(num_layers=1, tied_embeddings=False)
  tied_params = _random_params(tied_cfg, seed=4)
  untied_params = dict(tied_params, lm_head={"kernel": tied_params["embed"]["embedding"].T})
  tokens_2xT = _tokens(6, (2, T))
  np.testing.assert_allclose(_forward_row(tied_params, tokens_2xT, tied_cfg),
                             _forward_row(untied_params, tokens_2xT, untied_cfg), atol=1e-5)


def test_bfloat16_compute_on_float32_params_is_close_to_float32(cfg, params):
  bf16_cfg = tiny_config(dtype="bfloat16")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(_param_shapes(bf16_cfg)))
  tokens_2xT = _tokens(7, (2, T))
  f32, bf16 = np.asarray(_forward_row(params, tokens_2xT, cfg)), _forward_row(params, tokens_2xT, bf16_cfg)
  assert bf16.dtype == jnp.float32  # Logits are returned in float32 for the loss and the sampler.
  bf16 = np.asarray(bf16)
  assert np.all(np.isfinite(bf16))
  assert np.abs(bf16 - f32).max() < 0.05 * np.abs(f32).max()
  assert np.abs(bf16 - f32).max() > 0  # The compute really ran in bfloat16.


def test_sliding_window_limits_the_receptive_field():
  window = 3
  cfg = tiny_config(num_layers=1, sliding_window=window)
  dep_TxT = _input_dependence(_random_params(cfg, seed=5), _tokens(8, (1, T)), cfg)
  t, s = np.arange(T)[:, None], np.arange(T)[None, :]
  # One layer: logits at t see the inputs at t - window + 1 .. t and nothing else.
  np.testing.assert_array_equal(dep_TxT > 0, (s <= t) & (s > t - window))


def test_sliding_window_layers_selects_layers():
  cfg = tiny_config(num_layers=3, sliding_window=4, sliding_window_layers=(0, 2))
  assert [cfg.uses_window(i) for i in range(3)] == [True, False, True]
  assert not tiny_config().uses_window(0)
  assert tiny_config(sliding_window=4).uses_window(1)


GEMMA = dict(num_layers=1, norm_plus_one=True, scale_embeddings=True, attn_logits_softcap=5.0, final_logits_softcap=2.0,
             activation="gelu", tied_embeddings=False)


def test_gemma_options_run_and_the_final_softcap_bounds_logits():
  cfg = tiny_config(**GEMMA)
  params = _random_params(cfg, seed=6)
  tokens_2xT = _tokens(9, (2, T))
  capped = np.asarray(_forward_row(params, tokens_2xT, cfg))
  assert np.abs(capped).max() <= 2.0
  # The same model written without Gemma's `1 + scale` norms and without the cap: its logits, capped by hand, match.
  shifted = jax.tree_util.tree_map_with_path(lambda path, x: x + 1.0 if path[-1].key == "scale" else x, params)
  plain_cfg = tiny_config(**dict(GEMMA, norm_plus_one=False, final_logits_softcap=None))
  raw = np.asarray(_forward_row(shifted, tokens_2xT, plain_cfg))
  assert np.abs(raw).max() > 2.0  # The cap has something to do.
  np.testing.assert_allclose(capped, np.tanh(raw / 2.0) * 2.0, atol=1e-5)
  unshifted = np.asarray(_forward_row(params, tokens_2xT, plain_cfg))
  assert np.abs(np.tanh(unshifted / 2.0) * 2.0 - capped).max() > 1e-2  # The `1 + scale` matters.


def test_scale_embeddings_multiplies_input_embeddings_by_sqrt_embed_dim():
  cfg = tiny_config(num_layers=1, scale_embeddings=True, tied_embeddings=False)
  params = _random_params(cfg, seed=8)
  scaled = dict(params, embed={"embedding": params["embed"]["embedding"] * math.sqrt(cfg.embed_dim)})
  tokens_2xT = _tokens(11, (2, T))
  np.testing.assert_allclose(_forward_row(params, tokens_2xT, cfg),
                             _forward_row(scaled, tokens_2xT, tiny_config(num_layers=1, tied_embeddings=False)),
                             atol=1e-4)


def test_tiny_attention_softcap_makes_attention_uniform():
  cfg = tiny_config(num_layers=1, attn_logits_softcap=1e-5)
  params = _random_params(cfg, seed=9)
  # Zero query kernels give all-zero attention logits, i.e. uniform attention over the visible keys.
  zero_q = jax.tree_util.tree_map_with_path(lambda path, x: 0 * x if path[-2].key == "q" else x, params)
  tokens_2xT = _tokens(12, (2, T))
  capped = np.asarray(_forward_row(params, tokens_2xT, cfg))
  uncapped_cfg = tiny_config(num_layers=1)
  np.testing.assert_allclose(capped, _forward_row(zero_q, tokens_2xT, uncapped_cfg), atol=1e-3)
  assert np.abs(capped - np.asarray(_forward_row(params, tokens_2xT, uncapped_cfg))).max() > 1e-2


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_gated_mlp_matches_its_formula(activation):
  cfg = tiny_config(activation=activation)
  rs = np.random.default_rng(10)
  gate, up, down = (rs.normal(size=s).astype(np.float32) for s in [(32, 64), (32, 64), (64, 32)])
  x_BxTxD = rs.normal(size=(2, 3, 32)).astype(np.float32)
  mlp_params = {"gate": {"kernel": gate}, "up": {"kernel": up}, "down": {"kernel": down}}
  out = transformer.MLP(cfg).apply({"params": mlp_params}, x_BxTxD)
  h = x_BxTxD @ gate
  if activation == "silu":
    act = h / (1 + np.exp(-h))
  else:  # The tanh approximation, as Gemma uses.
    act = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
  np.testing.assert_allclose(out, (act * (x_BxTxD @ up)) @ down, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("overrides, field", [
    ({"num_layers": 0}, "num_layers"),
    ({"vocab_size": -1}, "vocab_size"),
    ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads"),
    ({"activation": "relu"}, "activation"),
    ({"dtype": "int8"}, "dtype"),
    ({"param_dtype": "float64"}, "param_dtype"),
    # A window of 0 masks every key, and the softmax then spreads evenly over all slots, future ones included.
    ({"sliding_window": 0}, "sliding_window"),
    ({"sliding_window": -2}, "sliding_window"),
    ({"head_dim": 7}, "head_dim"),  # Rotary embeddings rotate pairs of dimensions.
])
def test_model_config_rejects_bad_values(overrides, field):
  with pytest.raises(ValueError, match=field):
    tiny_config(**overrides)


def test_model_config_dict_round_trip_and_unknown_fields():
  cfg = tiny_config(sliding_window=4, sliding_window_layers=(0,))
  d = cfg.to_dict()
  d["sliding_window_layers"] = list(d["sliding_window_layers"])  # As a JSON file would store it.
  restored = ModelConfig.from_dict(d)
  assert restored == cfg and hash(restored) == hash(cfg)
  with pytest.raises(ValueError, match="n_layers"):
    ModelConfig.from_dict(dict(cfg.to_dict(), n_layers=3))


def test_causal_mask_packing_and_padding():
  mask_1xTxT = np.asarray(causal_mask(jnp.asarray([[1, 1, 2, 2, 0]])))
  expected = np.array([
      [1, 0, 0, 0, 0],
      [1, 1, 0, 0, 0],
      [0, 0, 1, 0, 0],
      [0, 0, 1, 1, 0],
      [0, 0, 0, 0, 1],
  ], bool)
  np.testing.assert_array_equal(mask_1xTxT[0], expected)


def test_param_count(cfg):
  # embed 64x32; per layer q 32x4x8, k, v 32x2x8, o 4x8x32, gate, up 32x64, down 64x32, two norms; final norm.
  per_layer = 2 * 1024 + 2 * 512 + 3 * 2048 + 2 * 32
  assert transformer.param_count(_param_shapes(cfg)) == 64 * 32 + 2 * per_layer + 32


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_remat_keeps_the_forward_and_refuses_a_cache(cfg, params, remat):
  tokens_2xT = _tokens(7, (2, T))
  positions_2xT = jnp.broadcast_to(jnp.arange(T), (2, T))
  mask = causal_mask(jnp.ones((2, T), jnp.int32))
  logits, _ = jax.jit(lambda p: Transformer(cfg, remat=remat).apply({"params": p}, tokens_2xT, positions_2xT, mask),
                      compiler_options=_FAST_COMPILE)(params)
  np.testing.assert_allclose(logits, _forward_row(params, tokens_2xT, cfg), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="remat is for training"):
    Transformer(cfg, remat=remat).apply({"params": params}, tokens_2xT, positions_2xT, mask, [{}] * cfg.num_layers)
  with pytest.raises(ValueError, match="train.remat"):
    Transformer(cfg, remat="most").apply({"params": params}, tokens_2xT, positions_2xT, mask)


@pytest.mark.parametrize("overrides", [{}, {"tied_embeddings": False, "final_logits_softcap": 2.0}])
def test_hidden_states_through_output_logits_are_the_logits(overrides):
  cfg = tiny_config(num_layers=1, **overrides)
  params = _random_params(cfg, seed=5)
  tokens_2xT = _tokens(8, (2, T))
  args = (tokens_2xT, jnp.broadcast_to(jnp.arange(T), (2, T)), causal_mask(jnp.ones((2, T), jnp.int32)))
  x_BxTxD, _ = Transformer(cfg).apply({"params": params}, *args, hidden=True)
  assert x_BxTxD.shape == (2, T, cfg.embed_dim)
  np.testing.assert_allclose(transformer.output_logits(cfg, params, x_BxTxD),
                             Transformer(cfg).apply({"params": params}, *args)[0], rtol=1e-6, atol=1e-6)
