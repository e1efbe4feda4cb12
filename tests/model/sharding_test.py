"""Behaviour tests for rest_jax.model.sharding on 8 host CPU devices (tests/conftest.py sets XLA_FLAGS)."""

import dataclasses
import functools
import itertools
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rest_jax.model import sharding
from rest_jax.model.transformer import Transformer, causal_mask
from tests.helpers import tiny_config

CFG = tiny_config(num_layers=1, tied_embeddings=False)  # Untied: the lm_head's sharding is checked too.
# Tiny programs: LLVM optimisation would cost more compile time than it saves.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _spec(named_sharding) -> tuple:
  """The PartitionSpec as a tuple without trailing Nones (P('a', None) and P('a') shard alike)."""
  spec = tuple(named_sharding.spec)
  while spec and spec[-1] is None:
    spec = spec[:-1]
  return spec


@functools.partial(jax.jit, static_argnames="cfg", compiler_options=_FAST_COMPILE)
def _forward(params, tokens_BxT, positions_BxT, segment_ids_BxT, cfg):
  logits_BxTxV, _ = Transformer(cfg).apply({"params": params}, tokens_BxT, positions_BxT,
                                           causal_mask(segment_ids_BxT))
  return logits_BxTxV


@pytest.fixture(scope="module")
def single_params():
  return sharding.init_params(CFG, sharding.make_mesh(devices=jax.devices()[:1]), jax.random.key(7))


def test_there_are_eight_devices():
  assert len(jax.devices()) == 8  # Otherwise the mesh tests below prove nothing.


@pytest.mark.parametrize("kwargs, shape", [
    ({}, (8, 1, 1)),
    ({"data": 2, "fsdp": 2, "tensor": 2}, (2, 2, 2)),
    ({"tensor": 2}, (4, 1, 2)),
    ({"data": 1, "fsdp": -1}, (1, 8, 1)),
    ({"data": 2, "tensor": -1}, (2, 1, 4)),
    ({"devices": jax.devices()[:1]}, (1, 1, 1)),
    ({"data": 1, "tensor": 2, "devices": jax.devices()[:2]}, (1, 1, 2)),
])
def test_make_mesh_shapes(kwargs, shape):
  mesh = sharding.make_mesh(**kwargs)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.shape[a] for a in mesh.axis_names) == shape


@pytest.mark.parametrize("kwargs, message", [
    ({"data": -1, "fsdp": -1}, "at most one"),
    ({"data": 3}, "does not divide"),
    ({"data": 0}, "does not divide"),
    ({"data": -2}, "does not divide"),
    ({"data": 2, "tensor": 2}, "must use all 8"),
    ({"data": 16}, "does not divide|must use all"),
])
def test_make_mesh_rejects_bad_shapes(kwargs, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(**kwargs)


@dataclasses.dataclass(frozen=True)
class _FakeTpu:
  """What jax.experimental.mesh_utils reads of a TPU chip (one core each, as on v4)."""

  id: int
  coords: tuple[int, int, int]
  slice_index: int = 0
  core_on_chip: int = 0
  process_index: int = 0
  platform: str = "tpu"
  device_kind: str = "TPU v4"


def _shuffled_cube(slice_index: int = 0) -> list[_FakeTpu]:
  """A 2x2x2 torus of chips listed in a scrambled order (as a host list may be)."""
  coords = list(itertools.product(range(2), repeat=3))
  random.Random(0).shuffle(coords)
  return [_FakeTpu(8 * slice_index + i, c, slice_index) for i, c in enumerate(coords)]


def _neighbours_along(grid: np.ndarray, axis: int) -> bool:
  """Whether devices adjacent along `axis` of the grid are one hop apart on the torus."""
  a, b = np.moveaxis(grid, axis, 0)[:-1].ravel(), np.moveaxis(grid, axis, 0)[1:].ravel()
  return all(sum(x != y for x, y in zip(d.coords, e.coords)) == 1 for d, e in zip(a, b))


def test_the_device_grid_follows_the_tpu_torus_not_the_listed_order():
  devices = _shuffled_cube()
  grid = sharding.device_grid([2, 2, 2], devices)
  assert sorted(d.id for d in grid.flat) == list(range(8))
  assert all(_neighbours_along(grid, axis) for axis in range(3))
  # The listed order would not: the test can tell the two apart.
  assert not all(_neighbours_along(np.asarray(devices).reshape(2, 2, 2), axis) for axis in range(3))


def test_a_multi_slice_job_splits_data_across_slices_first():
  devices = _shuffled_cube(0) + _shuffled_cube(1)
  grid = sharding.device_grid([4, 2, 2], devices)
  assert [{d.slice_index for d in grid[i].flat} for i in range(4)] == [{0}, {0}, {1}, {1}]
  assert all(_neighbours_along(grid[:2], axis) for axis in (1, 2))  # Inside a slice, still the torus.
  with pytest.raises(ValueError, match="data=1 must be a multiple of the 2 slices"):
    sharding.device_grid([1, 4, 4], devices)


def test_chips_with_holes_between_them_keep_the_listed_order(caplog):
  corners = [d for d in _shuffled_cube() if sum(d.coords) % 2 == 0]  # 4 chips of the cube, no two adjacent.
  with caplog.at_level("WARNING"):
    grid = sharding.device_grid([2, 1, 2], corners)
  assert [d.id for d in grid.flat] == [d.id for d in corners]
  assert "does not map onto the devices' physical topology" in caplog.text


def test_cpu_grids_keep_the_listed_order():
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]


def test_param_shardings_follow_the_logical_rules():
  shardings = sharding.param_shardings(CFG, sharding.make_mesh(data=2, fsdp=2, tensor=2))
  layer = shardings["layer_0"]
  assert _spec(layer["mlp"]["gate"]["kernel"]) == ("fsdp", "tensor")
  assert _spec(layer["mlp"]["up"]["kernel"]) == ("fsdp", "tensor")
  assert _spec(layer["mlp"]["down"]["kernel"]) == ("tensor", "fsdp")
  assert _spec(layer["attn"]["q"]["kernel"]) == ("fsdp", "tensor")  # embed x heads x head_dim.
  assert _spec(layer["attn"]["k"]["kernel"]) == ("fsdp", "tensor")
  assert _spec(layer["attn"]["o"]["kernel"]) == ("tensor", None, "fsdp")
  assert _spec(layer["attn_norm"]["scale"]) == ()
  assert _spec(shardings["embed"]["embedding"]) == ("tensor", "fsdp")
  assert _spec(shardings["lm_head"]["kernel"]) == ("fsdp", "tensor")


def test_init_params_on_a_2x2x2_mesh_equals_single_device_init(single_params):
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sharded = sharding.init_params(CFG, mesh, jax.random.key(7))
  assert jax.tree.structure(sharded) == jax.tree.structure(single_params)
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  gate = sharded["layer_0"]["mlp"]["gate"]["kernel"]  # 32 x 64, split over fsdp x tensor.
  assert _spec(gate.sharding) == ("fsdp", "tensor")
  assert {s.data.shape for s in gate.addressable_shards} == {(16, 32)}
  # Weights are random and each parameter draws its own: the equality above is not vacuous.
  assert np.std(np.asarray(gate)) > 0.05
  assert not np.allclose(np.asarray(gate), np.asarray(sharded["layer_0"]["mlp"]["up"]["kernel"]))


def _batch():
  rs = np.random.default_rng(0)
  tokens_4xT = rs.integers(4, CFG.vocab_size, size=(4, 8)).astype(np.int32)
  segments_4xT = np.array([[1] * 8, [1] * 5 + [2] * 3, [1] * 6 + [0] * 2, [1] * 3 + [2] * 3 + [0] * 2], np.int32)
  positions_4xT = np.array([[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 5, 0, 0],
                            [0, 1, 2, 0, 1, 2, 0, 0]], np.int32)
  return tokens_4xT, positions_4xT, segments_4xT


@pytest.mark.parametrize("mesh_shape", [(4, 1, 2), (2, 2, 2)], ids=["data4_tensor2", "data2_fsdp2_tensor2"])
def test_sharded_forward_equals_single_device_forward(single_params, mesh_shape):
  expected = np.asarray(_forward(single_params, *_batch(), CFG))
  mesh = sharding.make_mesh(*mesh_shape)
  params = jax.device_put(single_params, sharding.param_shardings(CFG, mesh))
  batch = sharding.shard_batch(_batch(), mesh)
  assert len(batch[0].addressable_shards) == 8 and batch[0].addressable_shards[0].data.shape == (1, 8)
  with sharding.use_mesh(mesh):
    logits = _forward(params, *batch, CFG)
  assert len(logits.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=1e-5)


def test_batch_divisor_and_replicated():
  assert sharding.batch_divisor(sharding.make_mesh(data=2, fsdp=2, tensor=2)) == 4
  assert sharding.batch_divisor(sharding.make_mesh(data=1, tensor=8)) == 1
  x = jax.device_put(jnp.arange(6), sharding.replicated(sharding.make_mesh()))
  assert all(s.data.shape == (6,) for s in x.addressable_shards)
