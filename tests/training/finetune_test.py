"""Behaviour tests for rest_jax.training.finetune: the train step, gradient accumulation, sharding and `train()`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from rest_jax.model import sharding
from rest_jax.training import batching, finetune, loss
from rest_jax.training.finetune import TrainConfig, TrainState
from tests.helpers import CharTokenizer, random_params, tiny_config

TOK = CharTokenizer()
CFG = tiny_config(vocab_size=64, num_layers=1)
SEQ_LEN = 16
# Plain SGD is linear in the gradient, so updates can be compared tightly (Adam's g / (|g| + eps) amplifies rounding
# where |g| ~ eps). One object shared by all tests: the optimizer is a static part of TrainState and a new one would
# recompile the step. `train()` below runs the real AdamW.
SGD = optax.sgd(0.3)
# Not donated, so the tests can reuse their inputs; tiny programs compile faster without LLVM optimisation.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}
_step = jax.jit(finetune.train_step, compiler_options=_FAST_COMPILE)



def _random_params(seed: int = 0):
  return random_params(CFG, seed)


def _examples(n: int = 12, seed: int = 0) -> list[batching.Example]:
  rs = np.random.default_rng(seed)
  pairs = [(int(a), int(b)) for a, b in rs.integers(0, 60, size=(n, 2))]
  return batching.make_examples(TOK, [f"{a}+{b}=" for a, b in pairs], [str(a + b) for a, b in pairs],
                                rs.uniform(0.5, 1.5, size=n).tolist())


def _state(params, tx) -> TrainState:
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state=tx.init(params), cfg=CFG, tx=tx,
                    loss_factory=loss.weighted_nll)


@pytest.fixture(scope="module")
def params():
  return _random_params()


@pytest.fixture(scope="module")
def rows():
  """Four packed rows [4, T] with different numbers of completion tokens."""
  packed = batching.pack(_examples(), SEQ_LEN, np.arange(12))
  rows = {k: v[:4] for k, v in packed.items()}
  assert len(set(rows["loss_mask"].sum(axis=1).tolist())) > 1
  return rows


def _as_steps(rows, micro_batches: int):
  return {k: v.reshape(micro_batches, -1, *v.shape[1:]) for k, v in rows.items()}


def _max_diff(a, b) -> float:
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(jax.tree.leaves(a),
                                                                                 jax.tree.leaves(b)))


def test_train_steps_decrease_the_loss_on_a_fixed_batch(params, rows):
  state, batch = _state(params, SGD), _as_steps(rows, 1)
  losses = []
  for _ in range(6):
    state, metrics = _step(state, batch)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 6
  assert int(metrics["tokens"]) == rows["loss_mask"].sum()
  assert losses[-1] < 0.7 * losses[0]
  assert all(b < a for a, b in zip(losses, losses[1:]))


def test_the_reported_loss_is_the_weighted_nll_per_completion_token(params, rows):
  _, metrics = _step(_state(params, SGD), _as_steps(rows, 1))
  loss_sum, aux = jax.jit(lambda p, b: loss.weighted_nll(CFG, b)(p), compiler_options=_FAST_COMPILE)(params, rows)
  np.testing.assert_allclose(metrics["loss"], loss_sum / aux["tokens"], rtol=1e-5)


def test_two_micro_batches_make_the_same_update_as_one_batch_of_all_rows(params, rows):
  one, m1 = _step(_state(params, SGD), _as_steps(rows, 1))
  two, m2 = _step(_state(params, SGD), _as_steps(rows, 2))
  assert _max_diff(one.params, params) > 1e-3  # The step did move the weights.
  assert _max_diff(one.params, two.params) < 1e-6
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
  assert int(m1["tokens"]) == int(m2["tokens"])
  np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-5)


def test_a_train_step_on_a_data4_tensor2_mesh_equals_the_single_device_step(params, rows):
  batch = _as_steps(rows, 1)
  expected, expected_metrics = _step(_state(params, SGD), batch)
  mesh = sharding.make_mesh(data=4, tensor=2)
  sharded_params = jax.device_put(params, sharding.param_shardings(CFG, mesh))
  sharded_batch = jax.device_put(batch, NamedSharding(mesh, PartitionSpec(None, ("data", "fsdp"), None)))
  with sharding.use_mesh(mesh):
    state, metrics = _step(_state(sharded_params, SGD), sharded_batch)
  assert len(state.params["layer_0"]["mlp"]["gate"]["kernel"].sharding.device_set) == 8
  assert _max_diff(expected.params, params) > 1e-3
  assert _max_diff(state.params, expected.params) < 1e-5
  np.testing.assert_allclose(metrics["loss"], expected_metrics["loss"], rtol=1e-5)


@pytest.fixture(scope="module")
def trained(params):
  """One `train()` run on a data=4 x tensor=2 mesh with a scripted validation score; records what it saw."""
  scores = iter([0.1, 0.5, 0.9, 0.3, 0.2, 0.95, 0.99])  # Evaluated at steps 0, 1, 2, ...
  seen, step_traces = [], []

  def val_fn(p):
    seen.append(jax.tree.map(np.array, p))  # Copies: the trainer reuses its buffers.
    return next(scores)

  def counting_nll(cfg, batch):
    step_traces.append(1)  # The loss factory runs once each time train_step is traced.
    return loss.weighted_nll(cfg, batch)

  original = jax.tree.map(np.array, params)
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(loss.LOSSES, "counting_nll", counting_nll)
    config = TrainConfig(learning_rate=1e-2, warmup_steps=0, seq_len=SEQ_LEN, batch_rows=4, num_epochs=50,
                         max_steps=10, eval_every=1, patience=2, loss="counting_nll")
    result = finetune.train(params, _examples(), cfg=CFG, config=config, mesh=sharding.make_mesh(data=4, tensor=2),
                            val_fn=val_fn)
  return result, seen, step_traces, original


def test_train_returns_the_best_validation_params_and_stops_when_patience_runs_out(params, trained):
  result, seen, _, original = trained
  # Steps 3 and 4 do not beat step 2's 0.9: with patience 2 training stops after step 4, well before max_steps.
  assert result.steps == 4
  assert (result.best_step, result.best_val) == (2, 0.9)
  assert [h["step"] for h in result.history] == [0, 1, 2, 3, 4]
  assert [h["val"] for h in result.history] == [0.1, 0.5, 0.9, 0.3, 0.2]
  assert len(seen) == 5 and _max_diff(seen[0], original) == 0
  assert _max_diff(result.params, seen[2]) == 0
  assert _max_diff(seen[4], seen[2]) > 1e-4  # Returning the last params would fail the line above.
  assert result.tokens > 0
  assert _max_diff(params, original) == 0  # The caller's params are untouched.


def test_train_compiles_the_step_once(trained):
  # A second trace means a second compile of the whole step (minutes for a real model) because the state's
  # shardings after a step differ from those train() starts with.
  _, _, step_traces, _ = trained
  assert len(step_traces) == 1


def _optax_schedule(c: TrainConfig, total_steps: int):
  """The schedule as optax's own pieces compose it: linear warmup joined to the decay over the remaining steps."""
  warmup = min(c.warmup_steps, max(total_steps - 1, 0))
  decay_steps = max(total_steps - warmup, 1)
  decay = {
      "cosine": optax.cosine_decay_schedule(c.learning_rate, decay_steps, alpha=c.end_lr_factor),
      "linear": optax.linear_schedule(c.learning_rate, c.learning_rate * c.end_lr_factor, decay_steps),
      "constant": optax.constant_schedule(c.learning_rate),
  }[c.lr_schedule]
  return optax.join_schedules([optax.linear_schedule(0.0, c.learning_rate, warmup), decay], [warmup])


@pytest.mark.parametrize("lr_schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup_steps", [0, 3, 20])
def test_learning_rate_is_optax_warmup_then_decay(lr_schedule, warmup_steps):
  c = TrainConfig(learning_rate=2e-3, lr_schedule=lr_schedule, warmup_steps=warmup_steps, end_lr_factor=0.1)
  for total in (1, 2, 5, 40):
    steps = np.arange(total + 3)
    expected = np.array([float(_optax_schedule(c, total)(s)) for s in steps])
    np.testing.assert_allclose(finetune.learning_rate(c, steps, total), expected, rtol=1e-6, atol=1e-12)


def test_m_steps_of_any_length_share_one_compiled_step(params):
  """The schedule's length is data in the optimizer state: an M-step of another length, seed and patience reuses the
  step compiled for the first, and trains exactly as a step compiled for it alone would."""
  traces = {"shared": 0, "alone": 0}

  def counting(name):
    def factory(cfg, batch):
      traces[name] += 1
      return loss.weighted_nll(cfg, batch)
    return factory

  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  run = lambda loss_name, max_steps, seed, patience: finetune.train(
      params, _examples(), cfg=CFG, mesh=mesh, config=TrainConfig(
          learning_rate=1e-2, warmup_steps=2, seq_len=SEQ_LEN, batch_rows=4, num_epochs=50, loss=loss_name,
          max_steps=max_steps, seed=seed, patience=patience))
  with pytest.MonkeyPatch.context() as patch:
    for name in traces:  # Two loss objects: the second run of "shared" must not see the first's schedule.
      patch.setitem(loss.LOSSES, name, counting(name))
    run("shared", 6, 0, 0)
    second = run("shared", 3, 1, 9)
    alone = run("alone", 3, 1, 9)
  assert traces == {"shared": 1, "alone": 1}
  assert second.steps == 3 and _max_diff(second.params, alone.params) == 0
  assert _max_diff(second.params, params) > 1e-3


def test_train_rejects_no_examples_and_batch_rows_not_divisible_by_the_batch_shards(params):
  mesh = sharding.make_mesh(devices=jax.devices()[:2])  # data=2.
  with pytest.raises(ValueError, match="no training examples"):
    finetune.train(params, [], cfg=CFG, config=TrainConfig(batch_rows=2), mesh=mesh)
  with pytest.raises(ValueError, match="batch_rows=3"):
    finetune.train(params, _examples(), cfg=CFG, config=TrainConfig(batch_rows=3), mesh=mesh)


@pytest.mark.parametrize("kwargs, field", [
    ({"lr_schedule": "step"}, "lr_schedule"),
    ({"seq_len": 0}, "seq_len"),
    ({"batch_rows": 0}, "batch_rows"),
    ({"micro_batches": 0}, "micro_batches"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"num_epochs": 0}, "num_epochs"),
    ({"loss": "mse"}, "loss"),
])
def test_train_config_rejects_bad_values(kwargs, field):
  with pytest.raises(ValueError, match=field):
    TrainConfig(**kwargs)


def _adamw_state(params, config: TrainConfig, cfg=CFG) -> TrainState:
  tx = finetune.make_optimizer(config)
  opt_state = finetune.with_total_steps(tx.init(params), 10)
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state=opt_state, cfg=cfg, tx=tx,
                    loss_factory=config.loss_factory())


_ADAMW = dict(learning_rate=1e-2, warmup_steps=0, seq_len=SEQ_LEN, batch_rows=4)


@pytest.mark.parametrize("memory", [dict(remat="full"), dict(remat="dots_with_no_batch_dims_saveable"),
                                    dict(loss_chunk_size=5), dict(remat="full", loss_chunk_size=4)])
def test_remat_and_the_chunked_loss_change_memory_not_results(params, rows, memory):
  """Four AdamW steps with a memory option reach the parameters the plain steps reach, to float32 rounding."""
  cfg = tiny_config(vocab_size=64, num_layers=2)
  params = random_params(cfg, 3)
  batch = _as_steps(rows, 2)
  plain, option = _adamw_state(params, TrainConfig(**_ADAMW), cfg), _adamw_state(
      params, TrainConfig(**_ADAMW, **memory), cfg)
  for _ in range(4):
    plain, plain_metrics = _step(plain, batch)
    option, metrics = _step(option, batch)
    np.testing.assert_allclose(metrics["loss"], plain_metrics["loss"], rtol=1e-5)
  assert _max_diff(plain.params, params) > 1e-2  # AdamW moved every weight by about lr per step.
  assert _max_diff(option.params, plain.params) < 1e-5


@pytest.mark.parametrize("memory", [dict(remat="full", loss_chunk_size=4), dict(loss_chunk_size=16)])
@pytest.mark.parametrize("mesh_shape", [dict(data=4, tensor=2), dict(data=1, fsdp=4, tensor=2)])
def test_remat_and_the_chunked_loss_sharded_equal_the_single_device_step(params, rows, memory, mesh_shape):
  """Rows split over data or fsdp (which also shards the weights), the vocabulary (the chunked logits too) over
  tensor: the same update."""
  batch = _as_steps(rows, 1)
  config = TrainConfig(**_ADAMW, **memory)
  expected, expected_metrics = _step(_adamw_state(params, config), batch)
  mesh = sharding.make_mesh(**mesh_shape)
  step_fn, state_shardings = finetune.jit_train_step(CFG, finetune.make_optimizer(config), config.loss_factory(),
                                                     mesh)
  state = jax.device_put(_adamw_state(params, config), state_shardings)
  sharded_batch = jax.device_put(batch, NamedSharding(mesh, PartitionSpec(None, ("data", "fsdp"), None)))
  with sharding.use_mesh(mesh):
    state, metrics = step_fn(state, sharded_batch)
  assert len(state.params["embed"]["embedding"].sharding.device_set) == 8
  assert not state.params["embed"]["embedding"].sharding.is_fully_replicated
  assert _max_diff(expected.params, params) > 1e-3
  assert _max_diff(state.params, expected.params) < 1e-5
  np.testing.assert_allclose(metrics["loss"], expected_metrics["loss"], rtol=1e-5)


def test_train_config_validates_the_memory_options():
  with pytest.raises(ValueError, match="loss_chunk_size"):
    TrainConfig(loss_chunk_size=-2)
  with pytest.raises(ValueError, match="train.remat"):
    TrainConfig(remat="everything")
  assert TrainConfig(remat="full", loss_chunk_size=64).loss_factory().keywords == {"chunk_size": 64, "remat": "full",
                                                                               "lora": None}
