"""Loads a GGUF checkpoint (llama.cpp's single-file format) as a rest_jax config, params and tokenizer.

The file is memory-mapped; each tensor is dequantized on its own by the `gguf` package (F32, F16, BF16, Q8_0, Q4_0,
Q4_1, Q5_x and the K-quants among others), rearranged into rest_jax's kernel layout and placed on the mesh before the
next one is read, so the host holds at most one dequantized tensor on top of the placed params.

GGUF lists a matrix's dims as [ne0, ne1] = [in, out]; its row-major data is the (out, in) PyTorch weight, written
O x I below. Other shape letters as in `rest_jax.model.transformer`.
"""

from collections.abc import Mapping
import os
from typing import Any

import gguf
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rest_jax import distributed
from rest_jax import errors
from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig
from rest_jax.models.gguf_tokenizer import GGUFTokenizer

# Llama covers the Llama 2 / 3 family, SmolLM2 and Mistral, which llama.cpp's converter files as "llama".
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
# Vocabulary-sized arrays: the tokenizer consumes them; they are left out of the metadata `load_gguf` returns.
_TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                     "tokenizer.ggml.scores")


def open_reader(path: str) -> gguf.GGUFReader:
  """The gguf package's reader of `path`, or a one-line error when the file is not GGUF or is cut short (the reader
  itself fails with IndexError or a numpy reshape error from deep inside, wherever the cut falls)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file not found: {path}")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic != b"GGUF":
    raise errors.UserError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'; {size:,} bytes)")
  try:
    reader = gguf.GGUFReader(path)
  except (ValueError, IndexError, KeyError, OverflowError) as e:
    raise errors.UserError(f"{path}: truncated or damaged GGUF file ({size:,} bytes; the gguf reader: "
                           f"{' '.join(str(e).split())}); download or convert it again") from e
  return reader


def read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
  """Every key/value field of the file as a Python value (str, int, float, bool or list)."""
  return {name: field.contents() for name, field in reader.fields.items()}


def dequantize(tensor: gguf.ReaderTensor) -> np.ndarray:
  """The float32 values of `tensor`, row-major with the GGUF dims reversed (a matrix comes out O x I)."""
  values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
  return np.asarray(values, np.float32).reshape(tuple(int(n) for n in reversed(tensor.shape)))


def unpermute_rope_rows(w_OxI: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes the row permutation llama.cpp's converter applies to Llama q/k projections.

  llama.cpp rotates adjacent pairs (x0, x1), (x2, x3), ... of each head, Hugging Face and rest_jax rotate the two
  halves (x_i, x_{i + H/2}); `convert_hf_to_gguf.py` permutes each head's rows from half order to pair order so the
  GGUF works with llama.cpp. This is its inverse: (heads, 2, H/2) <- (heads, H/2, 2). It also works on biases (I
  absent).
  """
  rows = w_OxI.shape[0]
  if rows % (2 * num_heads):
    raise ValueError(f"q/k projection has {rows} rows, not a multiple of 2 x {num_heads} heads")
  rest = w_OxI.shape[1:]
  return w_OxI.reshape(num_heads, rows // num_heads // 2, 2, *rest).swapaxes(1, 2).reshape(w_OxI.shape)


def _int_field(metadata: Mapping[str, Any], key: str, default: int | None = None) -> int:
  value = metadata.get(key, default)
  if value is None:
    raise ValueError(f"GGUF metadata lacks {key}")
  if isinstance(value, list):
    raise ValueError(f"GGUF metadata {key}={value} varies per layer, which rest_jax does not support")
  return int(value)


def config_from_metadata(metadata: Mapping[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]],
                         dtype: str = "float32") -> ModelConfig:
  """The ModelConfig of a GGUF file, from its `{arch}.*` metadata and which tensors it has.

  `tensor_shapes` maps tensor names to their row-major shapes (GGUF dims reversed).
  """
  arch = metadata.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"GGUF general.architecture={arch!r} is not supported; supported: {SUPPORTED_ARCHITECTURES}")
  embed_dim = _int_field(metadata, f"{arch}.embedding_length")
  num_heads = _int_field(metadata, f"{arch}.attention.head_count")
  head_dim = _int_field(metadata, f"{arch}.attention.key_length", embed_dim // num_heads)
  if _int_field(metadata, f"{arch}.attention.value_length", head_dim) != head_dim:
    raise ValueError(f"GGUF {arch}.attention.value_length differs from key_length={head_dim}; rest_jax needs "
                     "them equal")
  if _int_field(metadata, f"{arch}.rope.dimension_count", head_dim) != head_dim:
    raise ValueError(f"GGUF {arch}.rope.dimension_count={metadata[f'{arch}.rope.dimension_count']} rotates part of "
                     f"each head (head_dim={head_dim}); rest_jax rotates whole heads")
  scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
  if scaling != "none" or "rope_freqs.weight" in tensor_shapes:
    raise ValueError(f"GGUF {arch}.rope.scaling.type={scaling!r} / rope_freqs: rest_jax has no rope scaling")
  if "token_embd.weight" not in tensor_shapes:
    raise ValueError("GGUF file has no token_embd.weight tensor")
  return ModelConfig(
      vocab_size=tensor_shapes["token_embd.weight"][0],
      num_layers=_int_field(metadata, f"{arch}.block_count"),
      embed_dim=embed_dim,
      num_heads=num_heads,
      num_kv_heads=_int_field(metadata, f"{arch}.attention.head_count_kv", num_heads),
      head_dim=head_dim,
      mlp_dim=_int_field(metadata, f"{arch}.feed_forward_length"),
      activation="silu",
      rope_theta=float(metadata.get(f"{arch}.rope.freq_base", 10_000.0)),
      norm_eps=float(metadata.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
      tied_embeddings="output.weight" not in tensor_shapes,
      qkv_bias="blk.0.attn_q.bias" in tensor_shapes,
      dtype=dtype,
      param_dtype=dtype,
  )


def _tensor_source(path: tuple[str, ...], cfg: ModelConfig, rope_permuted: bool) -> tuple[str, Any]:
  """(GGUF tensor name, O x I -> rest_jax layout) of the rest_jax parameter at `path`.

  `rope_permuted`: the q/k rows (and biases) are in llama.cpp's pair order and are put back in half order.
  """
  N, K, H, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim
  unrope = (lambda w, heads: unpermute_rope_rows(w, heads)) if rope_permuted else (lambda w, heads: w)
  same = lambda w: w
  transpose = lambda w_OxI: w_OxI.T
  if path == ("embed", "embedding"):
    return "token_embd.weight", same
  if path == ("final_norm", "scale"):
    return "output_norm.weight", same
  if path == ("lm_head", "kernel"):
    return "output.weight", transpose
  layer, *rest = path
  by_path = {
      ("attn_norm", "scale"): ("attn_norm.weight", same),
      ("mlp_norm", "scale"): ("ffn_norm.weight", same),
      ("attn", "q", "kernel"): ("attn_q.weight", lambda w_NHxD: unrope(w_NHxD, N).T.reshape(D, N, H)),
      ("attn", "k", "kernel"): ("attn_k.weight", lambda w_KHxD: unrope(w_KHxD, K).T.reshape(D, K, H)),
      ("attn", "v", "kernel"): ("attn_v.weight", lambda w_KHxD: w_KHxD.T.reshape(D, K, H)),
      ("attn", "q", "bias"): ("attn_q.bias", lambda b_NH: unrope(b_NH, N).reshape(N, H)),
      ("attn", "k", "bias"): ("attn_k.bias", lambda b_KH: unrope(b_KH, K).reshape(K, H)),
      ("attn", "v", "bias"): ("attn_v.bias", lambda b_KH: b_KH.reshape(K, H)),
      ("attn", "o", "kernel"): ("attn_output.weight", lambda w_DxNH: w_DxNH.T.reshape(N, H, D)),
      ("mlp", "gate", "kernel"): ("ffn_gate.weight", transpose),
      ("mlp", "up", "kernel"): ("ffn_up.weight", transpose),
      ("mlp", "down", "kernel"): ("ffn_down.weight", transpose),
  }
  if not layer.startswith("layer_") or tuple(rest) not in by_path:
    raise ValueError(f"no GGUF tensor known for rest_jax parameter {'/'.join(path)}")
  name, rearrange = by_path[tuple(rest)]
  return f"blk.{layer.removeprefix('layer_')}.{name}", rearrange


def load_gguf(path: str, *, mesh: Mesh | None = None, dtype: str = "float32"
              ) -> tuple[ModelConfig, Any, GGUFTokenizer, dict[str, Any]]:
  """Loads a GGUF file: (config, params on `mesh`, tokenizer, metadata without the vocabulary arrays).

  `dtype` is the params' and the compute dtype. `mesh` defaults to `sharding.make_mesh()` over all devices; params
  are placed with `sharding.param_shardings`.
  """
  reader = open_reader(path)
  metadata = read_metadata(reader)
  tensors = {t.name: t for t in reader.tensors}
  shapes = {name: tuple(int(n) for n in reversed(t.shape)) for name, t in tensors.items()}
  cfg = config_from_metadata(metadata, shapes, dtype)
  tokenizer = GGUFTokenizer(metadata)
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(f"GGUF tokenizer has {tokenizer.vocab_size} tokens but token_embd.weight only {cfg.vocab_size}")
  mesh = sharding.make_mesh() if mesh is None else mesh
  shardings = sharding.param_shardings(cfg, mesh)
  abstract = sharding.abstract_params(cfg, boxed=False)
  # llama.cpp runs Llama with pair-order RoPE, so its converter permuted q/k; Qwen2 it runs with half order as is.
  rope_permuted = metadata["general.architecture"] == "llama"

  def place(key_path, abstract_leaf, leaf_sharding):
    param_path = tuple(k.key for k in key_path)
    name, rearrange = _tensor_source(param_path, cfg, rope_permuted)
    if name not in tensors:
      raise ValueError(f"GGUF file lacks tensor {name} (for rest_jax parameter {'/'.join(param_path)})")
    w = rearrange(dequantize(tensors[name]))
    if w.shape != abstract_leaf.shape:
      raise ValueError(f"GGUF tensor {name} gives shape {w.shape} for {'/'.join(param_path)}, the model expects "
                       f"{abstract_leaf.shape}")
    return distributed.host_to_global(w.astype(jnp.dtype(dtype), copy=False), leaf_sharding)

  unused = sorted(set(tensors) - _used_tensor_names(abstract, cfg, rope_permuted))
  if unused:
    raise ValueError(f"GGUF tensors {unused[:5]}{'...' if len(unused) > 5 else ''} have no rest_jax parameter")
  params = jax.tree_util.tree_map_with_path(place, abstract, shardings)
  return cfg, params, tokenizer, {k: v for k, v in metadata.items() if k not in _TOKENIZER_ARRAYS}


def _used_tensor_names(abstract: Any, cfg: ModelConfig, rope_permuted: bool) -> set[str]:
  paths = jax.tree_util.tree_flatten_with_path(abstract)[0]
  return {_tensor_source(tuple(k.key for k in key_path), cfg, rope_permuted)[0] for key_path, _ in paths}
