"""Batched KV-cache sampling: strategies, the prefill + while_loop sampler and its continuous-batching schedule."""

from rest_jax.sampling.sampler import Completion, Sampled, Sampler, SamplerConfig, SamplingState, sample_tokens
from rest_jax.sampling.strategies import Greedy, Sampling, Strategy, make
