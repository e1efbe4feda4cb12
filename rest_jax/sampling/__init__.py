"""Batched KV-cache sampling: strategies and the prefill + while_loop sampler."""

from rest_jax.sampling.sampler import Completion, Sampled, Sampler, SamplerConfig, SamplingState, sample_tokens
from rest_jax.sampling.strategies import Greedy, Sampling, Strategy, make
