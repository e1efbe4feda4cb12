"""The M-step stops on a loss that turns NaN or inf, naming the step and the learning rate; a loss far above where it
started is reported as diverging."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rest_jax import errors
from rest_jax.model import sharding
from rest_jax.training import batching, finetune
from rest_jax.training.finetune import TrainConfig
from tests.helpers import CharTokenizer, random_params, tiny_config

_TOK = CharTokenizer()
_CFG = tiny_config(vocab_size=64, num_layers=1)


def _examples(n: int = 12) -> list[batching.Example]:
  rs = np.random.default_rng(0)
  pairs = [(int(a), int(b)) for a, b in rs.integers(0, 60, size=(n, 2))]
  return batching.make_examples(_TOK, [f"{a}+{b}=" for a, b in pairs], [str(a + b) for a, b in pairs])


def _train(learning_rate: float, val_fn=None, **overrides):
  config = TrainConfig(**{**dict(learning_rate=learning_rate, warmup_steps=0, lr_schedule="constant", seq_len=16,
                                 batch_rows=4, num_epochs=50, max_steps=12, eval_every=3), **overrides})
  return finetune.train(random_params(_CFG), _examples(), cfg=_CFG, config=config,
                        mesh=sharding.make_mesh(devices=jax.devices()[:1]), val_fn=val_fn)


def test_a_huge_learning_rate_stops_the_m_step_naming_the_step_and_learning_rate():
  with pytest.raises(errors.DivergedError) as error:
    _train(1e6)
  message = str(error.value)
  assert "\n" not in message
  assert "the loss is nan" in message or "the loss is inf" in message, message
  assert "train.learning_rate=1e+06" in message and "learning rate 1e+06" in message, message
  step = int(message.split(" at step ")[1].split()[0])
  assert 1 <= step <= 12, message


def test_a_nan_loss_is_reported_at_the_step_where_it_appears(monkeypatch):
  real_step = finetune.train_step

  def poisoned(state, batch):
    state, metrics = real_step(state, batch)  # state.step counts from 1 after the update.
    return state, dict(metrics, loss=jnp.where(state.step >= 4, jnp.nan, metrics["loss"]))

  monkeypatch.setattr(finetune, "train_step", poisoned)
  with pytest.raises(errors.DivergedError, match=r"the loss is nan at step 4 of 12 \(learning rate 0\.01 of "):
    _train(1e-2)


def test_a_finite_loss_far_above_its_start_is_reported_as_diverging(monkeypatch, caplog):
  real_step = finetune.train_step

  def exploding(state, batch):
    state, metrics = real_step(state, batch)
    return state, dict(metrics, loss=metrics["loss"] * 100.0 ** state.step)

  monkeypatch.setattr(finetune, "train_step", exploding)
  with caplog.at_level(logging.WARNING):
    result = _train(1e-2, val_fn=lambda params: 0.0, max_steps=6)
  assert result.steps == 6  # Finite: training goes on, the best step on val guards the result.
  warnings = [r.getMessage() for r in caplog.records if "diverging" in r.getMessage()]
  assert len(warnings) == 1 and "train.learning_rate=0.01" in warnings[0], warnings


def test_a_healthy_loss_draws_no_warning(caplog):
  with caplog.at_level(logging.WARNING):
    _train(1e-2, max_steps=6)
  assert not [r for r in caplog.records if "diverging" in r.getMessage()]
