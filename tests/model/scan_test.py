"""Behaviour tests for `ModelConfig.scan_layers`: the scanned blocks compute what the unrolled ones do.

Logits (a Llama-like model, and Gemma 2 / Qwen2 ones whose layers differ in their sliding windows), a train step with
and without remat, greedy sampling on both schedules, on one device and sharded; the per-layer <-> stacked parameter
conversion, so that loaders, checkpoints and export keep the per-layer format; old workdirs resume unrolled.
"""

import dataclasses
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rest_jax import errors, experiment
from rest_jax.model import sharding, transformer
from rest_jax.model.transformer import Transformer, causal_mask
from rest_jax.models import LM, save_pretrained
from rest_jax.sampling import Greedy, Sampler, SamplerConfig
from rest_jax.training import batching, finetune, lora, loss
from rest_jax.training.finetune import TrainConfig
from tests.helpers import CharTokenizer, random_params, tiny_config

TOK = CharTokenizer(alphabet="abcdefghijklmnopqrstuvwxyz .")  # 32 ids: divisible by the tensor axis.
LLAMA = tiny_config(vocab_size=TOK.vocab_size, num_layers=3, tied_embeddings=False)
# Gemma 2: alternating windows (layers 0 and 2), post-norms, soft-capping, `1 + scale` norms, tied embeddings.
GEMMA2 = tiny_config(vocab_size=TOK.vocab_size, num_layers=3, activation="gelu", norm_plus_one=True,
                     scale_embeddings=True, attn_logits_softcap=50.0, final_logits_softcap=30.0, sliding_window=3,
                     sliding_window_layers=(0, 2), post_norms=True)
# Qwen2: a window on the layers from max_window_layers on, attention biases.
QWEN2 = tiny_config(vocab_size=TOK.vocab_size, num_layers=3, qkv_bias=True, sliding_window=2,
                    sliding_window_layers=(1, 2), tied_embeddings=False)
T = 12
ONE = sharding.make_mesh(devices=jax.devices()[:1])
_REPO = pathlib.Path(__file__).resolve().parents[2]
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _scanned(cfg):
  return dataclasses.replace(cfg, scan_layers=True)


def _max_diff(a, b) -> float:
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(jax.tree.leaves(a),
                                                                                 jax.tree.leaves(b)))


def _logits_fn(params, tokens_BxT, segment_ids_BxT, cfg):
  B, T = tokens_BxT.shape
  positions_BxT = jnp.broadcast_to(jnp.arange(T), (B, T))
  return Transformer(cfg).apply({"params": params}, tokens_BxT, positions_BxT, causal_mask(segment_ids_BxT))[0]


_logits = jax.jit(_logits_fn, static_argnames="cfg", compiler_options=_FAST_COMPILE)


def _tokens(B: int = 2, seed: int = 0):
  tokens_BxT = np.random.default_rng(seed).integers(0, TOK.vocab_size, (B, T)).astype(np.int32)
  segment_ids_BxT = np.ones((B, T), np.int32)
  segment_ids_BxT[1, T // 2:] = 2  # Row 1 packs two sequences.
  return tokens_BxT, segment_ids_BxT


def test_stack_unstack_round_trip_is_exact_and_matches_the_scanned_models_tree():
  params = random_params(QWEN2)
  stacked = transformer.stack_layers(params, QWEN2.num_layers)
  scanned_shapes = jax.tree.map(lambda s: s.shape, random_params(_scanned(QWEN2)))
  assert jax.tree.map(lambda x: x.shape, stacked) == scanned_shapes
  assert stacked["layers"]["block"]["attn"]["q"]["kernel"].shape[0] == QWEN2.num_layers
  np.testing.assert_array_equal(stacked["layers"]["block"]["mlp"]["up"]["kernel"][1],
                                params["layer_1"]["mlp"]["up"]["kernel"])
  back = transformer.unstack_layers(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)))
  with pytest.raises(ValueError, match="layer_0 ... layer_3"):
    transformer.stack_layers(params, 4)
  with pytest.raises(ValueError, match="'layers'"):
    transformer.unstack_layers(params)


@pytest.mark.parametrize("cfg", [LLAMA, GEMMA2, QWEN2], ids=["llama", "gemma2", "qwen2"])
def test_scanned_logits_equal_unrolled(cfg):
  params = random_params(cfg)
  tokens_BxT, segment_ids_BxT = _tokens()
  unrolled = _logits(params, tokens_BxT, segment_ids_BxT, cfg=cfg)
  scanned = _logits(transformer.stack_layers(params, cfg.num_layers), tokens_BxT, segment_ids_BxT, cfg=_scanned(cfg))
  assert float(jnp.abs(unrolled).max()) > 1.0  # Non-degenerate logits.
  np.testing.assert_allclose(scanned, unrolled, atol=2e-5, rtol=2e-5)


def test_the_windows_differ_per_layer_in_the_scanned_model():
  """Same check as above, but the window flags must matter: giving every layer a window changes the logits."""
  params = transformer.stack_layers(random_params(QWEN2), QWEN2.num_layers)
  tokens_BxT, segment_ids_BxT = _tokens()
  per_layer = _logits(params, tokens_BxT, segment_ids_BxT, cfg=_scanned(QWEN2))
  everywhere = _logits(params, tokens_BxT, segment_ids_BxT, cfg=_scanned(
      dataclasses.replace(QWEN2, sliding_window_layers=None)))
  assert float(jnp.abs(per_layer - everywhere).max()) > 1e-3


def _rows():
  rs = np.random.default_rng(0)
  prompts = ["".join(rs.choice(list("abcdefgh"), 3)) for _ in range(8)]
  examples = batching.make_examples(TOK, prompts, [p[::-1] for p in prompts], rs.uniform(0.5, 1.5, 8).tolist())
  packed = batching.pack(examples, 16, np.arange(8))
  return {k: v[None, :4] for k, v in packed.items()}  # One micro-batch of 4 rows.


_SGD = optax.sgd(0.3)  # Linear in the gradient: updates compare tightly (one object: the step compiles once per cfg).
_step = jax.jit(finetune.train_step, compiler_options=_FAST_COMPILE)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_a_scanned_train_step_gives_the_unrolled_params(remat):
  cfg = GEMMA2
  params = random_params(cfg)
  factory = loss.get("weighted_nll", remat=remat)
  batch = _rows()
  states = []
  for run_cfg, p in ((cfg, params), (_scanned(cfg), transformer.stack_layers(params, cfg.num_layers))):
    state = finetune.TrainState(step=jnp.asarray(0, jnp.int32), params=p, opt_state=_SGD.init(p), cfg=run_cfg,
                                tx=_SGD, loss_factory=factory)
    for _ in range(2):
      state, metrics = _step(state, batch)
    states.append((state, metrics))
  (unrolled, m_unrolled), (scanned, m_scanned) = states
  assert _max_diff(unrolled.params, params) > 1e-2  # The steps moved the parameters.
  assert _max_diff(transformer.unstack_layers(scanned.params), unrolled.params) < 5e-5  # Float32 rounding.
  np.testing.assert_allclose(m_scanned["loss"], m_unrolled["loss"], rtol=1e-5)


def test_train_with_scan_layers_takes_and_returns_per_layer_params():
  params = random_params(LLAMA)
  config = TrainConfig(learning_rate=1e-2, seq_len=16, batch_rows=4, max_steps=2, warmup_steps=1, eval_every=10)
  rows = batching.make_examples(TOK, ["abc", "bcd", "cde", "def"], ["cba", "dcb", "edc", "fed"], [1.0] * 4)
  plain = finetune.train(params, rows, cfg=LLAMA, config=config, mesh=ONE)
  scanned = finetune.train(params, rows, cfg=LLAMA, config=dataclasses.replace(config, scan_layers=True), mesh=ONE)
  assert jax.tree.structure(scanned.params) == jax.tree.structure(params)
  assert _max_diff(plain.params, params) > 5e-3
  # AdamW's g / (|g| + eps) amplifies float32 rounding where |g| ~ eps (the SGD step above compares tightly).
  assert _max_diff(scanned.params, plain.params) < 1e-3


def test_lora_with_scan_layers_trains_the_unrolled_adapters():
  """From the same adapters (a scanned init draws other ones), two steps give the same adapters and merged model."""
  params = random_params(LLAMA)
  config = TrainConfig(learning_rate=1e-2, seq_len=16, batch_rows=4, warmup_steps=1, lora_rank=2,
                       lora_modules=("q", "o", "down"))
  batch = _rows()
  results = []
  for scan in (False, True):
    step_fn, state = finetune.init_train_state(params, cfg=LLAMA, config=dataclasses.replace(config, scan_layers=scan),
                                               mesh=ONE, total_steps=10)
    if scan:
      state = state.replace(params=transformer.stack_layers(adapters0, LLAMA.num_layers))
    else:
      adapters0 = jax.tree.map(np.array, state.params)
    for _ in range(2):
      state, _ = step_fn(state, batch)
    merged = lora.merge(state.cfg, config.lora(), state.frozen, state.params, ONE)
    results.append(jax.tree.map(np.array, (finetune.model_params(state.cfg, state.params, cfg=LLAMA, mesh=None),
                                           finetune.model_params(state.cfg, merged, cfg=LLAMA, mesh=ONE))))
  (plain_adapters, plain_params), (scanned_adapters, scanned_params) = results
  assert _max_diff(plain_adapters, adapters0) > 5e-3  # Trained.
  assert jax.tree.structure(scanned_adapters) == jax.tree.structure(plain_adapters)
  assert _max_diff(scanned_adapters, plain_adapters) < 1e-4
  assert jax.tree.structure(scanned_params) == jax.tree.structure(params)
  assert _max_diff(scanned_params, plain_params) < 1e-4


def test_scan_layers_with_a_quantised_lora_base_is_refused_naming_both_fields():
  with pytest.raises(ValueError, match=r"train\.scan_layers.*train\.lora_base_quant='int8'"):
    TrainConfig(scan_layers=True, lora_rank=4, lora_base_quant="int8")
  TrainConfig(scan_layers=True, lora_rank=4)  # Over a float base it trains (above).


PROMPTS = ["ab", "abcdefg", "q", "xyz", "hello", "a"]
_STATIC = SamplerConfig(batch_rows=4, prompt_buckets=(8, 16))


@pytest.mark.parametrize("schedule", ["static", "continuous"])
@pytest.mark.parametrize("cfg", [LLAMA, GEMMA2], ids=["llama", "gemma2"])
def test_scanned_sampler_gives_the_unrolled_greedy_tokens(cfg, schedule):
  params = random_params(cfg)
  base = dataclasses.replace(_STATIC, schedule=schedule, chunk_steps=3)
  sample = lambda config, mesh: Sampler(cfg, TOK, mesh, config).sample(
      params, PROMPTS, num_samples=2, strategy=Greedy(), max_new_tokens=6, seed=0)
  unrolled = sample(base, ONE)
  assert len({s for row in unrolled for s in row}) > 2  # Different prompts, different completions.
  assert sample(dataclasses.replace(base, scan_layers=True), ONE) == unrolled


def test_sharded_scanned_model_equals_unsharded():
  """8 devices (tests/conftest.py): data x tensor; the stacked layer axis is never split over the mesh."""
  cfg = _scanned(GEMMA2)
  mesh = sharding.make_mesh(data=4, tensor=2)
  shardings = sharding.param_shardings(cfg, mesh)
  q_spec = shardings["layers"]["block"]["attn"]["q"]["kernel"].spec
  assert q_spec[0] is None and "tensor" in tuple(q_spec)
  assert all(s.spec[0] is None for s in jax.tree.leaves(shardings["layers"]))
  params = transformer.stack_layers(random_params(GEMMA2), cfg.num_layers)
  tokens_BxT, segment_ids_BxT = _tokens(B=4)
  expected = _logits(params, tokens_BxT, segment_ids_BxT, cfg=cfg)
  with sharding.use_mesh(mesh):
    placed = jax.device_put(params, shardings)
    sharded = _logits(placed, *sharding.shard_batch((tokens_BxT, segment_ids_BxT), mesh), cfg=cfg)
  assert not placed["layers"]["block"]["attn"]["q"]["kernel"].sharding.is_fully_replicated
  np.testing.assert_allclose(sharded, expected, atol=2e-5, rtol=2e-5)


def test_sharded_scanned_sampler_equals_unsharded():
  params = random_params(GEMMA2)
  config = SamplerConfig(batch_rows=8, prompt_buckets=(8, 16), scan_layers=True)
  kw = dict(num_samples=2, strategy=Greedy(), max_new_tokens=6, seed=0)
  expected = Sampler(GEMMA2, TOK, ONE, config).sample(params, PROMPTS, **kw)
  mesh = sharding.make_mesh(data=4, tensor=2)
  assert Sampler(GEMMA2, TOK, mesh, config).sample(params, PROMPTS, **kw) == expected


def test_a_scanned_lm_exports_the_per_layer_checkpoint(tmp_path):
  params = random_params(LLAMA)
  lm = LM(config=LLAMA, params=params, tokenizer=None, mesh=ONE, model_type="llama", eos_ids=(1,), pad_id=0)
  plain = save_pretrained(lm, str(tmp_path / "plain"))
  scanned = save_pretrained(dataclasses.replace(lm, config=_scanned(LLAMA),
                                                params=transformer.stack_layers(params, LLAMA.num_layers)),
                            str(tmp_path / "scanned"))
  assert scanned == plain
  for name in plain:
    assert (tmp_path / "scanned" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


def _default_config():
  spec = importlib.util.spec_from_file_location("default_config", _REPO / "configs" / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_a_workdir_from_before_scan_layers_resumes_unrolled_and_refuses_scanned(tmp_path):
  config = _default_config()
  saved = json.loads(config.to_json())
  del saved["train"]["scan_layers"], saved["sampler"]["scan_layers"]  # As written before the fields existed.
  (tmp_path / "config.json").write_text(json.dumps(saved))
  experiment._check_workdir_config(tmp_path, config)  # pylint: disable=protected-access
  config.train.scan_layers = True
  with pytest.raises(errors.UserError, match=r"train\.scan_layers \(False there, True now\)"):
    experiment._check_workdir_config(tmp_path, config)  # pylint: disable=protected-access
