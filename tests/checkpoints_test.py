import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rest_jax import checkpoints
from rest_jax.model import ModelConfig, sharding
from tests.helpers import tiny_config

ORBAX_TMP = ".orbax-checkpoint-tmp"  # Orbax's on-disk name for a checkpoint still being written.
# sliding_window_layers is a tuple, which JSON gives back as a list: the metadata round trip must survive that.
CFG = tiny_config(sliding_window=4, sliding_window_layers=(1,))


@pytest.fixture(scope="module")
def mesh_params():
  """The tiny model's parameters on a data=2, fsdp=2, tensor=2 mesh (initialised once: compiling init is slow)."""
  return sharding.init_params(CFG, sharding.make_mesh(data=2, fsdp=2, tensor=2), jax.random.key(0))


def _on_default_device(tree):
  return jax.device_put(tree, jax.sharding.SingleDeviceSharding(jax.devices()[0]))


def _assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == e.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def test_round_trip_of_sharded_params_onto_the_default_device(tmp_path, mesh_params):
  metadata = {"model_config": CFG.to_dict(), "method": "rest_em", "iteration": 2, "best_step": 40}
  checkpoints.save(tmp_path / "ckpt", mesh_params, metadata=metadata)

  assert checkpoints.exists(tmp_path / "ckpt")
  assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # No temporary left behind.
  restored, restored_metadata = checkpoints.load(tmp_path / "ckpt")
  _assert_trees_equal(restored, mesh_params)
  assert {leaf.sharding for leaf in jax.tree.leaves(restored)} == {jax.sharding.SingleDeviceSharding(jax.devices()[0])}
  assert restored_metadata == {**metadata, "model_config": {**CFG.to_dict(), "sliding_window_layers": [1]}}
  assert ModelConfig.from_dict(checkpoints.load_metadata(tmp_path / "ckpt")["model_config"]) == CFG


def test_load_restores_onto_the_given_shardings(tmp_path, mesh_params):
  params = _on_default_device(mesh_params)
  checkpoints.save(tmp_path / "ckpt", params, metadata={})
  target_shardings = sharding.param_shardings(CFG, sharding.make_mesh(data=2, fsdp=2, tensor=2))

  restored, _ = checkpoints.load(tmp_path / "ckpt", shardings=target_shardings)

  _assert_trees_equal(restored, params)
  for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target_shardings), strict=True):
    assert leaf.sharding == want
  # The embedding is split over tensor x fsdp, so each device holds a quarter of it.
  assert restored["embed"]["embedding"].addressable_shards[0].data.shape == (CFG.vocab_size // 2, CFG.embed_dim // 2)


def test_mismatched_shardings_are_rejected(tmp_path, mesh_params):
  checkpoints.save(tmp_path / "ckpt", mesh_params, metadata={})
  wrong = sharding.param_shardings(tiny_config(num_layers=3), sharding.make_mesh(2, 2, 2))
  with pytest.raises(ValueError, match="unexpected.*layer_2"):
    checkpoints.load(tmp_path / "ckpt", shardings=wrong)


def test_interrupted_save_is_ignored_and_the_next_save_succeeds(tmp_path):
  store = checkpoints.IterationCheckpoints(tmp_path)
  store.save("rest_em", 1, {"w": jnp.arange(3.0)}, {"note": "iteration 1"})
  # A save of iteration 2 that died before Orbax's final rename: its temporary sibling holds a partial checkpoint.
  store.save("rest_em", 9, {"w": jnp.zeros(3)}, {})
  crashed = store.path("rest_em", 2).with_name("iteration_2" + ORBAX_TMP)
  store.path("rest_em", 9).rename(crashed)
  shutil.rmtree(crashed / "metadata")

  assert not store.exists("rest_em", 2)
  assert store.latest("rest_em") == 1
  with pytest.raises(ValueError, match="not a complete checkpoint"):
    checkpoints.load(crashed)

  store.save("rest_em", 2, {"w": jnp.full(3, 7.0)}, {})
  assert store.latest("rest_em") == 2
  assert not crashed.exists()
  _assert_trees_equal(store.load("rest_em", 2)[0], {"w": jnp.full(3, 7.0)})
  _assert_trees_equal(store.load("rest_em", 1)[0], {"w": jnp.arange(3.0)})


def test_overwrite_needs_consent_and_keeps_other_checkpoints(tmp_path):
  store = checkpoints.IterationCheckpoints(tmp_path)
  store.save("sft", 0, {"w": jnp.ones(2)}, {"v": 0})
  store.save("sft", 1, {"w": jnp.ones(2)}, {"v": 1})
  with pytest.raises(ValueError, match=r"iteration_1 already exists.*overwrite=True"):
    store.save("sft", 1, {"w": jnp.zeros(2)}, {"v": 2})
  assert store.load_metadata("sft", 1)["v"] == 1

  # A write that fails midway (Orbax cannot serialise the leaf) must leave the existing checkpoint as it was.
  with pytest.raises(ValueError):
    store.save("sft", 1, {"w": object()}, {"v": 3}, overwrite=True)
  params, metadata = store.load("sft", 1)
  _assert_trees_equal(params, {"w": jnp.ones(2)})
  assert metadata["v"] == 1

  store.save("sft", 1, {"w": jnp.zeros(2)}, {"v": 2}, overwrite=True)
  params, metadata = store.load("sft", 1)
  _assert_trees_equal(params, {"w": jnp.zeros(2)})
  assert metadata == {"v": 2, "method": "sft", "iteration": 1}
  assert store.load_metadata("sft", 0)["v"] == 0
  assert sorted(p.name for p in (tmp_path / "sft").iterdir()) == ["iteration_0", "iteration_1"]


def test_latest_is_numeric_and_per_method(tmp_path):
  store = checkpoints.IterationCheckpoints(tmp_path)
  assert store.latest("rest_em") is None
  for iteration in (0, 2, 10):
    store.save("rest_em", iteration, {"w": jnp.zeros(1)}, {})
  (tmp_path / "rest_em" / "iteration_11").mkdir()  # Not a checkpoint.
  assert store.latest("rest_em") == 10
  assert store.latest("sft") is None
  assert store.path("rest_em", 3) == tmp_path / "rest_em" / "iteration_3"


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing"):
    checkpoints.load(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="missing"):
    checkpoints.load_metadata(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="empty is not a complete checkpoint"):
    checkpoints.load(tmp_path / "empty")
  with pytest.raises(ValueError, match="empty already exists"):
    checkpoints.save(tmp_path / "empty", {"w": jnp.zeros(1)}, metadata={})
  with pytest.raises(ValueError, match="JSON"):
    checkpoints.save(tmp_path / "x", {"w": jnp.zeros(1)}, metadata={"cfg": tiny_config()})
  assert not (tmp_path / "x").exists()

  store = checkpoints.IterationCheckpoints(tmp_path)
  with pytest.raises(ValueError, match="iteration"):
    store.path("sft", -1)
  with pytest.raises(ValueError, match="method"):
    store.path("a/b", 0)
  with pytest.raises(ValueError, match=r"metadata\['iteration'\]=3 contradicts iteration=4"):
    store.save("sft", 4, {"w": jnp.zeros(1)}, {"iteration": 3})


def test_restore_sets_a_damaged_checkpoint_aside_and_never_overwrites_an_earlier_damaged_copy(tmp_path, monkeypatch):
  store = checkpoints.IterationCheckpoints(tmp_path)
  params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  assert store.restore("m", 1) is None  # Nothing there: nothing to set aside.
  store.save("m", 1, params, {"x": 1})
  restored, metadata = store.restore("m", 1)
  np.testing.assert_array_equal(restored["w"], params["w"])
  assert metadata["x"] == 1

  class _Frozen(checkpoints.datetime.datetime):
    @classmethod
    def now(cls, tz=None):
      return cls(2026, 1, 2, 3, 4, 5, tzinfo=tz)

  monkeypatch.setattr(checkpoints.datetime, "datetime", _Frozen)
  for round_ in range(2):  # The same second twice: the second copy gets its own name.
    if round_:
      store.save("m", 1, params, {"x": 1})
    (store.path("m", 1) / "metadata" / "metadata").write_bytes(b"")
    assert store.restore("m", 1) is None
    assert not store.path("m", 1).exists()
  assert sorted(p.name for p in tmp_path.joinpath("m").iterdir()) == [
      "iteration_1.damaged-20260102T030405", "iteration_1.damaged-20260102T030405-1"]
  assert store.latest("m") is None
  store.save("m", 1, params, {"x": 2})  # The name is free again: no 'pass overwrite=True'.
  assert store.restore("m", 1)[1]["x"] == 2
