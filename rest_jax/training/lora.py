"""LoRA for the M-step, optionally over an int8 or int4 base: qwix intercepts the adapted projections.

`qwix.LoraProvider` wraps the `flax.linen` Transformer unchanged: inside every adapted `Dense` (the modules named in
`LoraConfig.modules`, in every layer) it intercepts the kernel's dot_general and adds
`scale * (x . A) . B`, with A (prod(contracted dims) x rank, He-uniform) and B (rank x prod(output dims), zeros), so
fresh adapters start exactly at the base model. With `base_quant` the frozen kernels are also quantised (per
output channel, absmax) and the matmul runs on them, as in QLoRA.

The parameter trees:
  base      the model's ordinary parameters; with `base_quant` its adapted kernels are qwix `WithAux(QArray)`s
            (`quantize_base`).
  adapters  only `{"layer_i": {"attn"|"mlp": {"q"...: {"kernel_lora_a", "kernel_lora_b"}}}}` (`init_adapters`):
            what the optimizer holds and the gradient is taken for. Under `ModelConfig.scan_layers` all three trees
            are stacked (`{"layers": {"block": ...}}`, [L, ...] leaves; a quantised base is not supported).
  merged    ordinary parameters of the adapted model, kernel + scale * A @ B (`merge`): what the sampler,
            evaluation, checkpoints and export use, so that nothing downstream of the M-step knows about LoRA.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from jax.sharding import Mesh

from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig, Transformer

MODULES = ("q", "k", "v", "o", "gate", "up", "down")  # The adaptable projections (attention, then MLP).
BASE_QUANT = ("none", "int8", "int4")
_ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int
  alpha: float = 16.0  # The update is scaled by alpha / rank.
  modules: tuple[str, ...] = MODULES
  base_quant: str = "none"  # "none", "int8" or "int4": the frozen base kernels' storage in the M-step.

  def __post_init__(self):
    object.__setattr__(self, "modules", tuple(self.modules))
    if self.rank < 1:
      raise ValueError(f"train.lora_rank must be >= 1 for LoRA, got {self.rank}")
    if self.alpha <= 0:
      raise ValueError(f"train.lora_alpha must be > 0, got {self.alpha}")
    unknown = sorted(set(self.modules) - set(MODULES))
    if unknown or not self.modules:
      raise ValueError(f"train.lora_modules must be a non-empty subset of {MODULES}, got {self.modules}")
    if self.base_quant not in BASE_QUANT:
      raise ValueError(f"train.lora_base_quant must be one of {BASE_QUANT}, got {self.base_quant!r}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _module_path(c: LoraConfig) -> str:
  # "layers/block": the scanned blocks (`ModelConfig.scan_layers`), whose adapters are stacked like their kernels.
  return rf"(layer_\d+|layers/block)/(attn|mlp)/({'|'.join(c.modules)})"


@functools.lru_cache(maxsize=32)
def model(cfg: ModelConfig, c: LoraConfig, remat: str = "none") -> nn.Module:
  """The Transformer with `c`'s adapters (and quantised base). Cached: the same settings give the same module, so
  train steps built on it share one compilation."""
  provider = qwix.LoraProvider(module_path=_module_path(c), rank=c.rank, alpha=c.alpha,
                               weight_qtype=None if c.base_quant == "none" else c.base_quant)
  return qwix.apply_lora_to_model(Transformer(cfg, remat=remat), provider)


def _abstract(cfg: ModelConfig, c: LoraConfig) -> Any:
  """Shapes of the adapted model's whole parameter tree (base and adapters), boxed with their logical axes."""
  tokens_BxT = jnp.zeros((1, 1), jnp.int32)
  mask_BxTxS = jnp.ones((1, 1, 1), jnp.bool_)
  return jax.eval_shape(lambda r: model(cfg, c).init(r, tokens_BxT, tokens_BxT, mask_BxTxS)["params"],
                        jax.random.key(0))


def _is_adapter(path: tuple[str, ...]) -> bool:
  return path[-1].endswith(_ADAPTER_SUFFIXES)


def _split(tree: Any) -> tuple[Any, Any]:
  """(base, adapters) parts of a whole adapted-model tree."""
  flat = flax.traverse_util.flatten_dict(tree)
  base = {k: v for k, v in flat.items() if not _is_adapter(k)}
  adapters = {k: v for k, v in flat.items() if _is_adapter(k)}
  return flax.traverse_util.unflatten_dict(base), flax.traverse_util.unflatten_dict(adapters)


def combine(base: Any, adapters: Any) -> Any:
  """The whole tree `model(...).apply` takes: the base with the adapters next to the kernels they adapt.

  As jax arrays: qwix finds a kernel among the module's parameters by type, and would skip a NumPy one unadapted.
  """
  flat = flax.traverse_util.flatten_dict(base)
  flat.update(flax.traverse_util.flatten_dict(adapters))
  return jax.tree.map(jnp.asarray, flax.traverse_util.unflatten_dict(flat))


def adapter_shardings(cfg: ModelConfig, c: LoraConfig, mesh: Mesh) -> Any:
  """NamedShardings of the adapters: A takes its kernel's input axis, B its first output axis (qwix's choice)."""
  return sharding.logical_sharding(nn.get_partition_spec(_split(_abstract(cfg, c))[1]), mesh)


def base_shardings(cfg: ModelConfig, c: LoraConfig, mesh: Mesh) -> Any:
  """NamedShardings of the (possibly quantised) base; a quantised kernel's scales follow its output axes."""
  if c.base_quant == "none":
    return sharding.param_shardings(cfg, mesh)
  return sharding.logical_sharding(nn.get_partition_spec(_split(_abstract(cfg, c))[0]), mesh)


def adapter_tx_shardings(cfg: ModelConfig, c: LoraConfig, mesh: Mesh, tx: Any) -> tuple[Any, Any]:
  """(adapter, optimizer-state) shardings, the optimizer's moments sharded like their adapters."""
  boxed = _split(_abstract(cfg, c))[1]
  opt_state = jax.eval_shape(tx.init, boxed)
  return (sharding.logical_sharding(nn.get_partition_spec(boxed), mesh),
          sharding.logical_sharding(nn.get_partition_spec(opt_state), mesh))


def init_adapters(cfg: ModelConfig, c: LoraConfig, mesh: Mesh, rng: jax.Array) -> Any:
  """Fresh adapters (B = 0: the adapted model equals its base), initialised directly in their shards."""
  tokens_BxT = jnp.zeros((1, 1), jnp.int32)
  mask_BxTxS = jnp.ones((1, 1, 1), jnp.bool_)

  def init(r):  # The base's initialisation is dead code to XLA: only the adapters are computed.
    return _split(nn.unbox(model(cfg, c).init(r, tokens_BxT, tokens_BxT, mask_BxTxS)["params"]))[1]

  # Outside `sharding.use_mesh`: under the logical rules, qwix's boxing of a new adapter constrains it with its
  # kernel's axes (rank 3 on rank 2) and fails; out_shardings place the adapters all the same.
  return jax.jit(init, out_shardings=adapter_shardings(cfg, c, mesh))(rng)


def quantize_base(cfg: ModelConfig, c: LoraConfig, params: Any, mesh: Mesh) -> Any:
  """The frozen base as the adapted model reads it: `params` itself, or with its adapted kernels quantised."""
  if c.base_quant == "none":
    return params
  abstract = _split(_abstract(cfg, c))[0]
  return jax.jit(lambda p: qwix.quantize_params(p, abstract), out_shardings=base_shardings(cfg, c, mesh))(params)


def _dense_kernel(kernel: Any) -> jax.Array:
  """A kernel as the base model's dtype: a quantised one dequantised (the values the adapters were trained on)."""
  if isinstance(kernel, qwix._src.providers.ptq.WithAux):  # pylint: disable=protected-access
    return qwix.dequantize(kernel.array)
  return kernel


def _merge(base: Any, adapters: Any, scale: float) -> Any:
  merged = {k: _dense_kernel(v) for k, v in flax.traverse_util.flatten_dict(base).items()}
  flat = flax.traverse_util.flatten_dict(adapters)
  for path, a in flat.items():
    if not path[-1].endswith("_lora_a"):
      continue
    name = path[-1][:-len("_lora_a")]
    kernel_path = (*path[:-1], name)
    b = flat[(*path[:-1], name + "_lora_b")]
    kernel = merged[kernel_path]
    delta = (a.astype(jnp.float32) @ b.astype(jnp.float32)).reshape(kernel.shape)
    merged[kernel_path] = (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)
  return flax.traverse_util.unflatten_dict(merged)


def merge(cfg: ModelConfig, c: LoraConfig, base: Any, adapters: Any, mesh: Mesh) -> Any:
  """Ordinary parameters of the adapted model, kernel + (alpha / rank) A @ B, sharded as the model's parameters.

  `base` is what `quantize_base` returned: over a quantised base the merged kernels start from the dequantised ones,
  so the merged model computes what the M-step trained (up to the order of the additions).
  """
  with sharding.use_mesh(mesh):
    return jax.jit(functools.partial(_merge, scale=c.scale), out_shardings=sharding.param_shardings(cfg, mesh))(
        base, adapters)


def count(tree: Any) -> int:
  """Number of scalars in a tree (a quantised kernel counts its stored values)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
