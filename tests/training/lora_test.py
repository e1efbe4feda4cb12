"""Behaviour tests for LoRA in the M-step (rest_jax/training/lora.py and `finetune` with train.lora_rank > 0)."""

import jax
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import NamedSharding, PartitionSpec

from rest_jax import checkpoints
from rest_jax.model import sharding
from rest_jax.model.transformer import Transformer, causal_mask
from rest_jax.models import load_pretrained
from rest_jax.tools import export
from rest_jax.training import batching, finetune, lora
from rest_jax.training.finetune import TrainConfig
from tests.helpers import CharTokenizer, random_params, tiny_config
from tests.models.hf_test import assert_logits_match, random_tokens, torch_logits, write_checkpoint

TOK = CharTokenizer()
CFG = tiny_config(vocab_size=64, num_layers=2)
SEQ_LEN = 16
LORA = dict(lora_rank=4, lora_alpha=8.0, learning_rate=1e-2, warmup_steps=0, seq_len=SEQ_LEN, batch_rows=8)


def _mesh(**shape):
  return sharding.make_mesh(**shape) if shape else sharding.make_mesh(devices=jax.devices()[:1])


def _examples(n: int = 16, seed: int = 0) -> list[batching.Example]:
  rs = np.random.default_rng(seed)
  pairs = [(int(a), int(b)) for a, b in rs.integers(0, 60, size=(n, 2))]
  return batching.make_examples(TOK, [f"{a}+{b}=" for a, b in pairs], [str(a + b) for a, b in pairs],
                                rs.uniform(0.5, 1.5, size=n).tolist())


def _batch_1xBxT():
  packed = batching.pack(_examples(), SEQ_LEN, np.arange(16))
  return {k: v[None, :8] for k, v in packed.items()}


def _inputs(seed: int = 1):
  tokens_BxT = np.random.default_rng(seed).integers(0, CFG.vocab_size, size=(2, 12)).astype(np.int32)
  positions_BxT = np.broadcast_to(np.arange(12, dtype=np.int32), (2, 12))
  return tokens_BxT, positions_BxT, causal_mask(np.ones((2, 12), np.int32))


def _logits(params):
  return np.asarray(Transformer(CFG).apply({"params": params}, *_inputs())[0])


def _adapted_logits(c, base, adapters):
  return np.asarray(lora.model(CFG, c).apply({"params": lora.combine(base, adapters)}, *_inputs())[0])


def _max_diff(a, b) -> float:
  return max(float(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)).max())
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def params():
  return random_params(CFG, 0)


def test_fresh_adapters_reproduce_the_base_logits_exactly(params):
  c = lora.LoraConfig(rank=4, alpha=8.0)
  mesh = _mesh()
  adapters = lora.init_adapters(CFG, c, mesh, jax.random.key(0))
  a_leaves = [v for path, v in jax.tree_util.tree_leaves_with_path(adapters) if path[-1].key.endswith("_lora_a")]
  b_leaves = [v for path, v in jax.tree_util.tree_leaves_with_path(adapters) if path[-1].key.endswith("_lora_b")]
  assert len(a_leaves) == len(b_leaves) == 7 * CFG.num_layers  # q k v o gate up down in every layer.
  assert all(float(np.abs(a).max()) > 0 for a in a_leaves) and all(not np.any(b) for b in b_leaves)
  np.testing.assert_array_equal(_adapted_logits(c, params, adapters), _logits(params))
  merged = lora.merge(CFG, c, params, adapters, mesh)
  jax.tree.map(np.testing.assert_array_equal, merged, params)


def test_only_adapters_of_the_named_modules_exist_and_the_merge_is_what_the_adapted_model_computes(params):
  c = lora.LoraConfig(rank=2, alpha=4.0, modules=("q", "v", "down"))
  mesh = _mesh()
  adapters = lora.init_adapters(CFG, c, mesh, jax.random.key(0))
  assert sorted(adapters["layer_0"]["attn"]) == ["q", "v"] and sorted(adapters["layer_0"]["mlp"]) == ["down"]
  # Non-zero B, as after training: the merged model equals the adapted one applied on the fly.
  rs = np.random.default_rng(3)
  adapters = jax.tree.map(lambda x: 0.3 * rs.normal(size=x.shape).astype(np.float32), adapters)
  merged = lora.merge(CFG, c, params, adapters, mesh)
  on_the_fly, merged_logits = _adapted_logits(c, params, adapters), _logits(merged)
  assert _max_diff(on_the_fly, _logits(params)) > 1e-2
  np.testing.assert_allclose(merged_logits, on_the_fly, rtol=1e-5, atol=1e-5)
  assert _max_diff(merged["layer_0"]["mlp"]["up"], params["layer_0"]["mlp"]["up"]) == 0  # Not adapted.


@pytest.fixture(scope="module")
def trained(params):
  """Five LoRA steps on one device on a fixed batch."""
  mesh = _mesh()
  config = TrainConfig(**LORA)
  step_fn, state = finetune.init_train_state(params, cfg=CFG, config=config, mesh=mesh, total_steps=10)
  original = jax.tree.map(np.array, params)
  adapters0 = jax.tree.map(np.array, state.params)
  batch, losses = _batch_1xBxT(), []
  for _ in range(5):
    with sharding.use_mesh(mesh):
      state, metrics = step_fn(state, batch)
    losses.append(float(metrics["loss"]))
  return state, losses, original, adapters0


def test_lora_trains_only_the_adapters_and_the_loss_goes_down(params, trained):
  state, losses, original, adapters0 = trained
  assert losses[-1] < 0.7 * losses[0] and all(b < a for a, b in zip(losses, losses[1:]))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.frozen), original)  # Base untouched.
  jax.tree.map(np.testing.assert_array_equal, params, original)  # The caller's base too (not donated away).
  assert _max_diff(state.params, adapters0) > 1e-3
  # The optimizer holds the adapters' two Adam moments and three step counters, nothing of the base.
  n_adapters = lora.count(state.params)
  assert lora.count(state.opt_state) == 2 * n_adapters + 3
  assert n_adapters < 0.2 * lora.count(params)


def test_lora_gradient_is_taken_for_the_adapters_only(params):
  """The train step differentiates the loss of the adapters alone: the gradient tree is the adapters'."""
  mesh = _mesh()
  config = TrainConfig(**LORA)
  _, state = finetune.init_train_state(params, cfg=CFG, config=config, mesh=mesh, total_steps=10)
  batch = jax.tree.map(lambda x: x[0], _batch_1xBxT())
  model_loss = state.loss_factory(CFG, batch)
  grads = jax.eval_shape(jax.grad(lambda a: model_loss(lora.combine(state.frozen, a))[0]), state.params)
  assert jax.tree.structure(grads) == jax.tree.structure(state.params)


def test_lora_with_remat_and_the_chunked_loss_gives_the_same_loss_and_adapter_gradient(params):
  mesh = _mesh()
  batch = jax.tree.map(lambda x: x[0], _batch_1xBxT())
  results = []
  for memory in (dict(), dict(remat="full", loss_chunk_size=4)):
    config = TrainConfig(**LORA, **memory)
    _, state = finetune.init_train_state(params, cfg=CFG, config=config, mesh=mesh, total_steps=10)
    adapters = jax.tree.map(lambda x: x + 0.1, state.params)  # B != 0, so every adapter gets a gradient.
    model_loss = state.loss_factory(CFG, batch)
    results.append(jax.jit(jax.value_and_grad(lambda a, f: model_loss(lora.combine(f, a))[0]))(adapters,
                                                                                                state.frozen))
  (plain_loss, plain_grads), (memory_loss, memory_grads) = results
  np.testing.assert_allclose(memory_loss, plain_loss, rtol=1e-5)
  assert _max_diff(memory_grads, plain_grads) < 1e-4 * max(float(np.abs(g).max()) for g in jax.tree.leaves(plain_grads))


def test_lora_sharded_on_data4_tensor2_equals_one_device(params, trained):
  expected, expected_losses, _, _ = trained
  mesh = _mesh(data=4, tensor=2)
  config = TrainConfig(**LORA)
  step_fn, state = finetune.init_train_state(jax.device_put(params, sharding.param_shardings(CFG, mesh)), cfg=CFG,
                                             config=config, mesh=mesh, total_steps=10)
  assert len(state.params["layer_0"]["mlp"]["gate"]["kernel_lora_b"].sharding.device_set) == 8
  assert not state.params["layer_0"]["mlp"]["gate"]["kernel_lora_b"].sharding.is_fully_replicated
  batch, losses = _batch_1xBxT(), []
  for _ in range(5):
    with sharding.use_mesh(mesh):
      state, metrics = step_fn(state, jax.device_put(batch, NamedSharding(mesh, PartitionSpec(None, ("data", "fsdp"),
                                                                                              None))))
    losses.append(float(metrics["loss"]))
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
  assert _max_diff(state.params, expected.params) < 1e-5


def test_train_with_lora_returns_merged_params_and_adapters_that_survive_a_checkpoint(params, tmp_path):
  mesh = _mesh()
  config = TrainConfig(**{**LORA, "max_steps": 4, "eval_every": 2})
  seen = []
  result = finetune.train(params, _examples(), cfg=CFG, config=config, mesh=mesh,
                          val_fn=lambda p: seen.append(jax.tree.map(np.array, p)) or len(seen))
  assert result.best_step == 4
  c = config.lora()
  merged = lora.merge(CFG, c, params, result.adapters, mesh)
  assert _max_diff(result.params, params) > 1e-4
  jax.tree.map(np.testing.assert_array_equal, result.params, merged)
  jax.tree.map(np.testing.assert_array_equal, seen[-1], merged)  # val_fn saw the merged model.
  jax.tree.map(np.testing.assert_array_equal, seen[0], params)  # Step 0: fresh adapters are the base.
  store = checkpoints.IterationCheckpoints(tmp_path)
  store.save_adapters("rest_em", 1, result.adapters, {"model_config": CFG.to_dict(), "lora": {"rank": 4}})
  store.save("rest_em", 1, result.params, {"model_config": CFG.to_dict()})
  adapters, metadata = checkpoints.load(store.adapters_path("rest_em", 1))
  assert metadata["lora"] == {"rank": 4} and store.latest("rest_em") == 1
  jax.tree.map(np.testing.assert_array_equal, lora.merge(CFG, c, params, adapters, mesh), result.params)
  restored, _ = store.load("rest_em", 1, shardings=sharding.param_shardings(CFG, mesh))
  jax.tree.map(np.testing.assert_array_equal, restored, result.params)
  assert lora.count(adapters) < 0.2 * lora.count(restored)


def test_fresh_adapters_every_m_step_with_another_seed(params):
  mesh = _mesh()
  c = lora.LoraConfig(rank=4)
  a0, a1 = (lora.init_adapters(CFG, c, mesh, jax.random.key(s)) for s in (0, 1))
  assert _max_diff(a0, a1) > 1e-3


@pytest.mark.parametrize("quant, qmax", [("int8", 127), ("int4", 7)])
def test_lora_over_a_quantised_base_is_within_the_quantisation_error_at_init(params, quant, qmax):
  mesh = _mesh()
  c = lora.LoraConfig(rank=4, base_quant=quant)
  base = lora.quantize_base(CFG, c, params, mesh)
  kernel = base["layer_0"]["mlp"]["gate"]["kernel"]
  assert kernel.array.qvalue.dtype == np.dtype(quant)
  adapters = lora.init_adapters(CFG, c, mesh, jax.random.key(0))
  adapted = _adapted_logits(c, base, adapters)
  # The dequantised kernels differ from the base's by at most half a quantisation step (absmax / qmax per output
  # channel), and the merged model, which holds them, computes the adapted model's logits.
  merged = lora.merge(CFG, c, base, adapters, mesh)
  w, wq = params["layer_0"]["mlp"]["gate"]["kernel"], np.asarray(merged["layer_0"]["mlp"]["gate"]["kernel"])
  step = np.abs(w).max(axis=0, keepdims=True) / qmax
  assert 0 < np.abs(wq - w).max() and np.all(np.abs(wq - w) <= 0.5 * step * 1.01)
  np.testing.assert_allclose(_logits(merged), adapted, rtol=1e-5, atol=1e-5)
  base_logits = _logits(params)
  diff, scale = float(np.abs(adapted - base_logits).max()), float(np.abs(base_logits).max())
  assert 0 < diff, (diff, scale)
  if quant == "int8":  # 4 bits are too coarse for this random model's weights to keep its logits close.
    assert diff < 0.05 * scale, (diff, scale)
  # And it trains: the frozen base stays quantised.
  config = TrainConfig(**{**LORA, "lora_base_quant": quant})
  step_fn, state = finetune.init_train_state(params, cfg=CFG, config=config, mesh=mesh, total_steps=10)
  losses = []
  for _ in range(3):
    with sharding.use_mesh(mesh):
      state, metrics = step_fn(state, _batch_1xBxT())
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0]
  assert state.frozen["layer_1"]["attn"]["o"]["kernel"].array.qvalue.dtype == np.dtype(quant)


def test_lora_merged_model_exports_to_transformers_with_the_same_logits(tmp_path):
  write_checkpoint(tmp_path / "base", "llama")
  mesh = _mesh()
  lm = load_pretrained(str(tmp_path / "base"), mesh=mesh)
  c = lora.LoraConfig(rank=4, alpha=8.0)
  rs = np.random.default_rng(0)
  adapters = jax.tree.map(lambda x: 0.05 * rs.normal(size=x.shape).astype(np.float32),
                          lora.init_adapters(lm.config, c, mesh, jax.random.key(0)))  # As if trained.
  merged = lora.merge(lm.config, c, lm.params, adapters, mesh)
  checkpoints.save(tmp_path / "iteration_1", merged, metadata={"model_config": lm.config.to_dict(), "iteration": 1})
  export.export(str(tmp_path / "iteration_1"), str(tmp_path / "base"), str(tmp_path / "out"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
  tokens_BxT = random_tokens(5)
  on_the_fly = lora.model(lm.config, c).apply(
      {"params": lora.combine(lm.params, adapters)}, tokens_BxT,
      np.broadcast_to(np.arange(tokens_BxT.shape[1], dtype=np.int32), tokens_BxT.shape),
      causal_mask(np.ones(tokens_BxT.shape, np.int32)))[0]
  base_logits = lm.logits(tokens_BxT)
  assert _max_diff(base_logits, on_the_fly) > 1e-3  # The adapters changed the model.
  assert_logits_match(on_the_fly, torch_logits(reloaded, tokens_BxT), "LoRA merged, exported")


def test_train_config_validates_the_lora_options():
  for kwargs, field in [(dict(lora_rank=-1), "lora_rank"), (dict(lora_rank=4, lora_alpha=0.0), "lora_alpha"),
                        (dict(lora_rank=4, lora_modules=("q", "qq")), "lora_modules"),
                        (dict(lora_rank=4, lora_modules=()), "lora_modules"),
                        (dict(lora_rank=4, lora_base_quant="fp8"), "lora_base_quant")]:
    with pytest.raises(ValueError, match=field):
      TrainConfig(**kwargs)
  assert TrainConfig(lora_modules=["q", "v"]).lora_modules == ("q", "v")  # Hashable, as a config gives lists.
  assert TrainConfig().lora() is None
