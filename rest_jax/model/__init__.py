"""The decoder-only transformer and its sharding rules."""

from rest_jax.model.sharding import make_mesh, use_mesh
from rest_jax.model.transformer import (Cache, ModelConfig, SampleKeys, Transformer, causal_mask, init_sampling_cache,
                                        param_count, stack_layers, unstack_layers)
