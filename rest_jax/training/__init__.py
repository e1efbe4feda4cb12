"""The M-step: packed batches, loss factories and the fine-tuning loop."""

from rest_jax.training.batching import Example, make_examples, pack
from rest_jax.training.finetune import (FinetuneResult, TrainConfig, TrainState, learning_rate, make_optimizer, train,
                                       train_step)
from rest_jax.training.loss import weighted_nll
