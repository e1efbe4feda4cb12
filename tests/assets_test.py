"""The shipped arithmetic bases of three sizes: each loads, is the model its metadata and config mode describe, has
the intended size, and records how to rebuild it (configs/default.py: "", "base_small", "base_large")."""

import pathlib

import jax
import ml_collections
import pytest

from rest_jax import checkpoints
from rest_jax import config_check
from rest_jax import config_files
from rest_jax import experiment
from rest_jax import tasks
from rest_jax import tokenizers
from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig, param_count

_REPO = pathlib.Path(__file__).resolve().parents[1]
_DEFAULT = _REPO / "configs" / "default.py"
_ASSETS = pathlib.Path(experiment._asset(""))

# (mode of configs/default.py, shipped asset, parameter count range).
_BASES = [
    pytest.param("base_small", "arithmetic_base_small", (40_000, 90_000), id="small"),
    pytest.param("", "arithmetic_base", (200_000, 300_000), id="medium"),
    pytest.param("base_large", "arithmetic_base_large", (700_000, 1_400_000), id="large"),
]


def _config(mode: str) -> ml_collections.ConfigDict:
  return config_files.load(_DEFAULT, mode or None)


@pytest.mark.parametrize("mode, asset, size_range", _BASES)
def test_shipped_base_is_the_model_its_config_mode_describes(mode, asset, size_range):
  config = _config(mode)
  config_check.validate(config)
  path = _ASSETS / asset
  # The mode's experiment starts from this base: the default names no checkpoint and gets the task's shipped one.
  assert (config.base.checkpoint or experiment._asset(experiment.DEFAULT_BASE[config.task.name])) == str(path)

  params, metadata = checkpoints.load(path)
  tokenizer = tokenizers.load(tokenizers.default_tokenizer_path(config.task.name))
  cfg = ModelConfig.from_dict(metadata["model_config"])
  assert cfg == ModelConfig(vocab_size=tokenizer.vocab_size, **config.pretrain.model)
  expected_shapes = jax.tree.map(lambda x: x.shape, sharding.abstract_params(cfg, boxed=False))
  assert jax.tree.map(lambda x: x.shape, params) == expected_shapes
  low, high = size_range
  assert low <= param_count(params) <= high

  # How to rebuild it: the tool, and the pretrain block of this mode, trained on this task's human solutions.
  assert metadata["made_by"] == "rest_jax.tools.pretrain_base"
  assert metadata["pretrain"] == config.pretrain.to_dict()
  made_from = tasks.from_config(ml_collections.ConfigDict(metadata["task"]))
  assert made_from.split("human") == tasks.from_config(config.task).split("human")
  assert 0 < metadata["best_val_pass@1"] <= 1 and 0 < metadata["best_step"] <= metadata["steps"]


def test_shipped_bases_grow_by_size_and_stay_small_on_disk():
  counts = [param_count(checkpoints.load(_ASSETS / p.values[1])[0]) for p in _BASES]
  assert counts == sorted(counts) and counts[-1] > 10 * counts[0]
  for p in _BASES:
    on_disk = sum(f.stat().st_size for f in (_ASSETS / p.values[1]).rglob("*") if f.is_file())
    assert on_disk < 8 * 2**20, (p.values[1], on_disk)  # Committed to git like the code: float32, no optimizer state.
