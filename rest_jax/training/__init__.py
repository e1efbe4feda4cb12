"""The M-step: packed batches, loss factories and the fine-tuning loop; GRPO's update for online RL."""

from rest_jax.training.batching import Example, make_examples, pack
from rest_jax.training.finetune import (FinetuneResult, TrainConfig, TrainState, learning_rate, make_optimizer, train,
                                       train_step)
from rest_jax.training.grpo import (GRPOConfig, Rollout, group_advantages, make_update, pack_rollouts, policy_params,
                                   ref_logprobs)
from rest_jax.training.loss import weighted_nll
