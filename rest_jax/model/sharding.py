"""Every partitioning decision of rest_jax: the mesh and one table of logical axis rules.

Parameters and activations name their axes logically ("embed", "heads", ...); `RULES` maps those names onto the
three mesh axes:
  data:   batch parallelism (prompts and training sequences are split over it),
  fsdp:   batch parallelism that also shards the parameters and optimizer state (ZeRO-3 style),
  tensor: Megatron-style model parallelism inside each layer (heads, MLP hidden units, vocabulary).
"""

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from rest_jax import distributed
from rest_jax.model import transformer

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes. Parameter axes first, then activation and cache axes.
RULES: tuple[tuple[str, Any], ...] = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),  # The stacked layer axis of `scan_layers` parameters: every device holds all its layers.
    # Activations: the model dimension of activations is never sharded, fsdp gathers the weights instead.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_length", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (all by default); one size may be -1 to take the rest."""
  devices = list(jax.devices() if devices is None else devices)
  shape = [data, fsdp, tensor]
  if shape.count(-1) > 1:
    raise ValueError(f"mesh: at most one of data/fsdp/tensor may be -1, got {shape}")
  known = int(np.prod([s for s in shape if s != -1]))
  if any(s == 0 or s < -1 for s in shape) or len(devices) % known:
    raise ValueError(f"mesh: data x fsdp x tensor = {shape} does not divide the {len(devices)} devices")
  shape = [len(devices) // known if s == -1 else s for s in shape]
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh: data x fsdp x tensor = {shape} must use all {len(devices)} devices")
  # Auto axes: XLA propagates shardings from the constraints below (JAX 0.10 defaults to explicit axes).
  return Mesh(device_grid(shape, devices), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def device_grid(shape: Sequence[int], devices: Sequence[Any]) -> np.ndarray:
  """`devices` laid out as a (data, fsdp, tensor) array the way the hardware is wired.

  On TPUs, by the chips' physical torus (mesh_utils), so that the inner axes, which communicate most (tensor, then
  fsdp), ride the fastest links; a multi-slice job splits `data` across its slices first, since the data-center
  network between slices is the slowest link and data parallelism only all-reduces gradients over it. On GPUs by
  device id, elsewhere in the given order: a process's devices stay together in the inner axes.
  """
  shape = list(shape)
  slices = sorted({getattr(d, "slice_index", 0) for d in devices})
  if len(slices) > 1:
    if shape[0] % len(slices):
      raise ValueError(f"mesh: data={shape[0]} must be a multiple of the {len(slices)} slices (data spans them)")
    per_slice = [shape[0] // len(slices), *shape[1:]]
    return mesh_utils.create_hybrid_device_mesh(per_slice, [len(slices), 1, 1], devices,
                                                 allow_split_physical_axes=True)
  try:
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  # mesh_utils refuses a shape the torus cannot take (ValueError, NotImplementedError) and a set of chips with holes
  # in it, such as some of a host's chips (AssertionError): then the listed order, as before topology was read.
  except (ValueError, NotImplementedError, AssertionError) as e:
    logging.warning("mesh: %s does not map onto the devices' physical topology (%s); using their listed order",
                    shape, e)
    return np.asarray(devices).reshape(shape)


@contextlib.contextmanager
def use_mesh(mesh: Mesh) -> Iterator[None]:
  """Activates `mesh` and the logical rules, so the model's activation constraints take effect under jit."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    yield


def logical_sharding(logical_specs: Any, mesh: Mesh) -> Any:
  """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, RULES)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Shards the leading (batch) axis of an `ndim`-array over data x fsdp; the rest is replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_divisor(mesh: Mesh) -> int:
  """Batch sizes must be multiples of this: the number of batch shards."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def shard_batch(tree: Any, mesh: Mesh) -> Any:
  """Places host arrays on the mesh, batch axis split over data x fsdp.

  On a mesh over several processes every process passes the same full arrays (`distributed.host_to_global`).
  """
  return distributed.host_to_global(tree, jax.tree.map(lambda x: batch_sharding(mesh, np.ndim(x)), tree))


def _init_fn(cfg):
  """rng -> the model's parameters, boxed with their logical axes."""
  model = transformer.Transformer(cfg)
  tokens_BxT = jax.numpy.zeros((1, 1), np.int32)
  mask_BxTxS = jax.numpy.ones((1, 1, 1), np.bool_)
  return lambda rng: model.init(rng, tokens_BxT, tokens_BxT, mask_BxTxS)["params"]


def abstract_params(cfg: Any, *, boxed: bool = True) -> Any:
  """Shapes and dtypes of the model's parameters (no compute), boxed with their logical axes unless `boxed=False`."""
  params = jax.eval_shape(_init_fn(cfg), jax.random.key(0))
  return params if boxed else nn.unbox(params)


def param_shardings(cfg: Any, mesh: Mesh) -> Any:
  """NamedShardings of the model's parameters, from the logical axes each parameter declares."""
  return logical_sharding(nn.get_partition_spec(abstract_params(cfg)), mesh)


def stacked_params(params: Any, scanned_cfg: Any, mesh: Mesh) -> Any:
  """Per-layer parameters in the `scan_layers` layout (`transformer.stack_layers`), placed in `scanned_cfg`'s shards
  on `mesh`: new arrays, the caller's are left as they are."""
  return jax.jit(transformer.stack_layers, static_argnums=1, out_shardings=param_shardings(scanned_cfg, mesh))(
      params, scanned_cfg.num_layers)


def train_state_shardings(cfg: Any, mesh: Mesh, tx: Any) -> tuple[Any, Any]:
  """(param, optimizer-state) shardings: optimizer moments are sharded exactly like their parameters."""
  boxed = abstract_params(cfg)
  # Initialising the optimizer on the boxed (logically annotated) params keeps the annotations on its moments;
  # scalars such as Adam's step count have none and are replicated.
  opt_state = jax.eval_shape(tx.init, boxed)
  return (logical_sharding(nn.get_partition_spec(boxed), mesh),
          logical_sharding(nn.get_partition_spec(opt_state), mesh))


def init_params(cfg: Any, mesh: Mesh, rng: jax.Array) -> Any:
  """Initialises parameters directly in their shards: shapes first, then a jitted init with out_shardings."""
  init = _init_fn(cfg)
  shardings = param_shardings(cfg, mesh)
  with use_mesh(mesh):
    return jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
