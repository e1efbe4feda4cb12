"""Weight-only quantised sampling: the projection kernels stored in int8 (or int4), activations left in float.

`SamplerConfig.weight_quant` names the storage. qwix's PTQ provider wraps the `flax.linen` Transformer unchanged
(as `rest_jax.training.lora` does for a quantised LoRA base): inside every attention and MLP projection (`Dense`: q,
k, v, o, gate, up, down, in every layer) it intercepts the kernel's dot_general and multiplies by the quantised
kernel, each output channel with its own absmax scale. Activations are not quantised: the sampling dtype
(`SamplerConfig.dtype`) is the compute dtype, in which the kernel is dequantised inside the matmul. The embedding (and
so a tied output head), the norms and the KV cache keep the sampling dtype.

The sampler quantises once per call (`quantize`), from the caller's float parameters, which are not changed: the
M-step keeps its float32 master weights. The quantised tree is sharded as the kernels are: a kernel's int8 values
take its logical axes, its scales (size 1 along the contracted axes) its output axes.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix
from jax.sharding import Mesh

from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig, Transformer

WEIGHT_QUANT = ("none", "int8", "int4")  # What `SamplerConfig.weight_quant` may name.
_PROJECTIONS = r"layer_\d+/(attn|mlp)/(q|k|v|o|gate|up|down)"  # The quantised modules' paths.


@functools.lru_cache(maxsize=32)
def model(cfg: ModelConfig, weight_quant: str = "none") -> nn.Module:
  """The Transformer that reads `quantize`'s parameters. Cached: the same settings give the same module (and so one
  compilation of the jitted functions that take it)."""
  if weight_quant == "none":
    return Transformer(cfg)
  rule = qwix.QtRule(module_path=_PROJECTIONS, weight_qtype=weight_quant)
  return qwix.quantize_model(Transformer(cfg), qwix.PtqProvider([rule]))


@functools.lru_cache(maxsize=32)
def _abstract(cfg: ModelConfig, weight_quant: str) -> Any:
  """Shapes of the quantised model's parameters, boxed with their logical axes (and how each kernel is quantised)."""
  tokens_BxT = jnp.zeros((1, 1), jnp.int32)
  mask_BxTxS = jnp.ones((1, 1, 1), jnp.bool_)
  return jax.eval_shape(lambda r: model(cfg, weight_quant).init(r, tokens_BxT, tokens_BxT, mask_BxTxS)["params"],
                        jax.random.key(0))


def param_shardings(cfg: ModelConfig, weight_quant: str, mesh: Mesh) -> Any:
  """NamedShardings of `quantize`'s tree: each kernel's int8 values as the kernel, its scales along its outputs."""
  if weight_quant == "none":
    return sharding.param_shardings(cfg, mesh)
  return sharding.logical_sharding(nn.get_partition_spec(_abstract(cfg, weight_quant)), mesh)


@functools.lru_cache(maxsize=32)
def _quantizer(cfg: ModelConfig, weight_quant: str, mesh: Mesh):
  abstract = _abstract(cfg, weight_quant)
  return jax.jit(lambda params: qwix.quantize_params(params, abstract),
                 out_shardings=param_shardings(cfg, weight_quant, mesh))


def quantize(params: Any, *, cfg: ModelConfig, weight_quant: str, mesh: Mesh) -> Any:
  """`params` (float, on `mesh`) as `model(cfg, weight_quant)` reads them: the projection kernels become qwix
  `WithAux(QArray)`s (int values and float scales), everything else is unchanged. Compiled once per settings."""
  if weight_quant == "none":
    return params
  if weight_quant not in WEIGHT_QUANT:
    raise ValueError(f"sampler.weight_quant must be one of {', '.join(WEIGHT_QUANT)}, got {weight_quant!r}")
  return _quantizer(cfg, weight_quant, mesh)(params)


def param_bytes(params: Any) -> int:
  """Bytes of the parameters' values at their dtypes' widths (a quantised kernel: its int values and its scales)."""
  return sum(x.size * jax.dtypes.itemsize_bits(x.dtype) // 8 for x in jax.tree.leaves(params))
