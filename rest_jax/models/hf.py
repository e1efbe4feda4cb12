"""Hugging Face checkpoints: `config.json` <-> ModelConfig, safetensors <-> the rest_jax parameter tree.

A Hugging Face checkpoint directory holds `config.json`, one `model.safetensors` or several shards listed in
`model.safetensors.index.json`, and the tokenizer files. Every Hugging Face weight maps onto exactly one rest_jax
parameter (none of the supported architectures fuses projections), so loading reads one tensor at a time and places
it straight into its shards: the host never holds more than one tensor of the model.

Layouts (PyTorch `nn.Linear` stores `out x in`; rest_jax kernels are `in x out` with heads split out):
  q/k/v_proj.weight  (N*H) x D  ->  DxNxH        o_proj.weight  D x (N*H)  ->  NxHxD
  q/k/v_proj.bias    (N*H)      ->  NxH          gate/up/down_proj, lm_head  out x in  ->  in x out
Rotary embeddings rotate halves in both, so q and k need no permutation.
"""

import dataclasses
import json
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from jax.sharding import Mesh

from rest_jax import distributed
from rest_jax import errors
from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig, Transformer, unstack_layers
from rest_jax.models import hf_tokenizer
from rest_jax.models.lm import LM

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "gemma", "gemma2")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM",
                  "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM"}
_TIED_BY_DEFAULT = {"llama": False, "qwen2": False, "mistral": False, "gemma": True, "gemma2": True}
# Activation names of Hugging Face configs -> rest_jax's; "gelu" is tanh-approximated GELU (as Gemma trains with).
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu", "gelu_new": "gelu"}
_INDEX_FILE = "model.safetensors.index.json"
_WEIGHTS_FILE = "model.safetensors"

# Weight kinds: how a Hugging Face tensor becomes a rest_jax leaf.
_SAME, _LINEAR, _IN_PROJ, _IN_BIAS, _OUT_PROJ = "same", "linear", "in_proj", "in_bias", "out_proj"


def read_config(directory: str) -> dict[str, Any]:
  """The parsed `config.json` of a Hugging Face checkpoint directory."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"{directory} is not a Hugging Face checkpoint: it has no config.json")
  with open(path) as f:
    return json.load(f)


def config_from_hf(hf: dict[str, Any], *, dtype: str = "float32") -> ModelConfig:
  """The ModelConfig of a Hugging Face `config.json`; raises ValueError for what rest_jax cannot compute exactly."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")

  def field(name: str) -> Any:
    if hf.get(name) is None:
      raise ValueError(f"config.json ({model_type}) has no {name!r}")
    return hf[name]

  for flag in ("attention_bias", "mlp_bias", "use_bidirectional_attention"):
    if hf.get(flag):
      raise ValueError(f"config.json: {flag}=true is not supported for {model_type}")
  num_layers, hidden, heads = field("num_hidden_layers"), field("hidden_size"), field("num_attention_heads")
  act_key = "hidden_activation" if model_type == "gemma2" else "hidden_act"
  act_name = hf.get(act_key) or ("gelu_pytorch_tanh" if model_type.startswith("gemma") else "silu")
  if model_type == "gemma" and act_name == "gelu":  # Legacy Gemma value; transformers maps it to the tanh form too.
    act_name = "gelu_pytorch_tanh"
  if act_name not in _ACTIVATIONS:
    raise ValueError(f"config.json: {act_key}={act_name!r} is not supported; supported: {sorted(_ACTIVATIONS)}")
  rope_theta, rope_scaling = _rope(hf)
  window, window_layers = _sliding_window(hf, model_type, num_layers)
  gemma = model_type in ("gemma", "gemma2")
  gemma2 = model_type == "gemma2"
  return ModelConfig(
      vocab_size=field("vocab_size"), num_layers=num_layers, embed_dim=hidden, num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=hf.get("head_dim") or hidden // heads,
      mlp_dim=field("intermediate_size"), activation=_ACTIVATIONS[act_name], rope_theta=float(rope_theta),
      rope_scaling=rope_scaling, norm_eps=float(hf.get("rms_norm_eps", 1e-6)), norm_plus_one=gemma,
      tied_embeddings=bool(hf.get("tie_word_embeddings", _TIED_BY_DEFAULT[model_type])), scale_embeddings=gemma,
      qkv_bias=model_type == "qwen2",
      attn_logits_softcap=hf.get("attn_logit_softcapping") if gemma2 else None,
      final_logits_softcap=hf.get("final_logit_softcapping") if gemma2 else None,
      sliding_window=window, sliding_window_layers=window_layers,
      query_scale=float(hf.get("query_pre_attn_scalar", 256)) ** -0.5 if gemma2 else None,
      post_norms=gemma2, dtype=dtype, param_dtype=dtype)


def _rope(hf: dict[str, Any]) -> tuple[float, tuple[float, float, float, float] | None]:
  """(rope_theta, Llama 3 scaling) from either the transformers 4 (`rope_theta`, `rope_scaling`) or the
  transformers 5 (`rope_parameters`) spelling."""
  params = dict(hf.get("rope_parameters") or {})
  theta = params.get("rope_theta", hf.get("rope_theta", 10_000.0))
  scaling = dict(hf.get("rope_scaling") or {})
  scaling.update({k: v for k, v in params.items() if k != "rope_theta"})
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type == "default":
    return theta, None
  if rope_type == "llama3":
    original = scaling.get("original_max_position_embeddings") or hf.get("max_position_embeddings")
    return theta, (float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"]),
                   float(original))
  raise ValueError(f"config.json: rope type {rope_type!r} is not supported; supported: 'default', 'llama3'")


def _sliding_window(hf: dict[str, Any], model_type: str, num_layers: int) -> tuple[int | None, tuple[int, ...] | None]:
  """(window, the layers that use it; None = all), as each architecture's transformers code decides."""
  window = hf.get("sliding_window")
  if model_type in ("llama", "gemma") or window is None:
    return None, None
  if model_type == "mistral":  # Every layer, whatever `layer_types` says (transformers' Mistral ignores it).
    return int(window), None
  if model_type == "qwen2" and not hf.get("use_sliding_window", False):
    return None, None
  layer_types = hf.get("layer_types")
  if layer_types is None:
    if model_type == "qwen2":
      first = hf.get("max_window_layers", 28)
      layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
    else:  # gemma2: even layers are local.
      layer_types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)]
  if len(layer_types) != num_layers:
    raise ValueError(f"config.json: layer_types has {len(layer_types)} entries for {num_layers} layers")
  unknown = sorted(set(layer_types) - {"sliding_attention", "full_attention"})
  if unknown:
    raise ValueError(f"config.json: unsupported layer_types {unknown}")
  layers = tuple(i for i, t in enumerate(layer_types) if t == "sliding_attention")
  if not layers:
    return None, None
  return int(window), None if len(layers) == num_layers else layers


def config_to_hf(cfg: ModelConfig, model_type: str) -> dict[str, Any]:
  """A `config.json` for `cfg` as a `model_type` model; raises ValueError if that architecture cannot express it."""
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
  act = "gelu_pytorch_tanh" if cfg.activation == "gelu" else "silu"
  hf: dict[str, Any] = {
      "model_type": model_type, "architectures": [_ARCHITECTURES[model_type]], "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.embed_dim, "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
      "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tied_embeddings,
      "hidden_activation" if model_type == "gemma2" else "hidden_act": act, "dtype": cfg.param_dtype,
      "sliding_window": cfg.sliding_window,
  }
  if cfg.rope_scaling is not None:
    factor, low, high, original = cfg.rope_scaling
    hf["rope_scaling"] = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                          "original_max_position_embeddings": int(original)}
  if cfg.sliding_window is not None:
    hf["layer_types"] = ["sliding_attention" if cfg.uses_window(i) else "full_attention"
                         for i in range(cfg.num_layers)]
    if model_type == "qwen2":
      hf.update(use_sliding_window=True, max_window_layers=min(
          (i for i in range(cfg.num_layers) if cfg.uses_window(i)), default=cfg.num_layers))
  if model_type == "gemma2":
    hf.update(attn_logit_softcapping=cfg.attn_logits_softcap, final_logit_softcapping=cfg.final_logits_softcap,
              query_pre_attn_scalar=(cfg.query_scale or cfg.head_dim ** -0.5) ** -2)
  check_expresses(hf, cfg)
  return hf


def check_expresses(hf: dict[str, Any], cfg: ModelConfig) -> None:
  """Raises ValueError unless `hf` describes exactly the architecture of `cfg` (dtypes aside)."""
  described = config_from_hf(hf, dtype=cfg.dtype)
  expected = ModelConfig.from_dict({**cfg.to_dict(), "param_dtype": cfg.dtype})
  if described.query_scale is not None and expected.query_scale is not None:
    # query_pre_attn_scalar round-trips through a square root: compare the scales, not their last bits.
    if math.isclose(described.query_scale, expected.query_scale, rel_tol=1e-9):
      described = ModelConfig.from_dict({**described.to_dict(), "query_scale": expected.query_scale})
  if described != expected:
    diff = {k: (v, getattr(described, k)) for k, v in expected.to_dict().items() if getattr(described, k) != v}
    raise ValueError(f"a {hf.get('model_type')} config.json cannot express this model: (rest_jax, config.json) "
                     f"differ in {diff}")


def weight_names(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], str]]:
  """Hugging Face weight name -> (rest_jax parameter path, kind), for every parameter of `cfg`."""
  names: dict[str, tuple[tuple[str, ...], str]] = {"model.embed_tokens.weight": (("embed", "embedding"), _SAME)}
  for i in range(cfg.num_layers):
    hf, ours = f"model.layers.{i}", f"layer_{i}"
    names[f"{hf}.input_layernorm.weight"] = ((ours, "attn_norm", "scale"), _SAME)
    for proj in "qkv":
      names[f"{hf}.self_attn.{proj}_proj.weight"] = ((ours, "attn", proj, "kernel"), _IN_PROJ)
      if cfg.qkv_bias:
        names[f"{hf}.self_attn.{proj}_proj.bias"] = ((ours, "attn", proj, "bias"), _IN_BIAS)
    names[f"{hf}.self_attn.o_proj.weight"] = ((ours, "attn", "o", "kernel"), _OUT_PROJ)
    for proj in ("gate", "up", "down"):
      names[f"{hf}.mlp.{proj}_proj.weight"] = ((ours, "mlp", proj, "kernel"), _LINEAR)
    if cfg.post_norms:  # Gemma 2 names its four norms differently: "post_attention" is the attention output's.
      names[f"{hf}.post_attention_layernorm.weight"] = ((ours, "post_attn_norm", "scale"), _SAME)
      names[f"{hf}.pre_feedforward_layernorm.weight"] = ((ours, "mlp_norm", "scale"), _SAME)
      names[f"{hf}.post_feedforward_layernorm.weight"] = ((ours, "post_mlp_norm", "scale"), _SAME)
    else:
      names[f"{hf}.post_attention_layernorm.weight"] = ((ours, "mlp_norm", "scale"), _SAME)
  names["model.norm.weight"] = (("final_norm", "scale"), _SAME)
  if not cfg.tied_embeddings:
    names["lm_head.weight"] = (("lm_head", "kernel"), _LINEAR)
  return names


def _to_rest_jax(w: jax.Array, kind: str, cfg: ModelConfig) -> jax.Array:
  D, H = cfg.embed_dim, cfg.head_dim
  if kind == _LINEAR:
    return w.T
  if kind == _IN_PROJ:
    return w.reshape(-1, H, D).transpose(2, 0, 1)
  if kind == _IN_BIAS:
    return w.reshape(-1, H)
  if kind == _OUT_PROJ:
    return w.reshape(D, -1, H).transpose(1, 2, 0)
  return w


def _to_hf(w: np.ndarray, kind: str) -> np.ndarray:
  if kind == _LINEAR:
    return w.T
  if kind == _IN_PROJ:
    return w.transpose(1, 2, 0).reshape(-1, w.shape[0])
  if kind == _IN_BIAS:
    return w.reshape(-1)
  if kind == _OUT_PROJ:
    return w.transpose(2, 0, 1).reshape(w.shape[2], -1)
  return w


def _safe_open(path: str):
  """safetensors' reader of `path`; a one-line error naming the file when it is cut short or not safetensors."""
  try:
    return safetensors.safe_open(path, framework="flax")  # "flax": numpy cannot represent bfloat16.
  except safetensors.SafetensorError as e:
    raise errors.UserError(f"{path}: truncated or damaged safetensors file ({os.path.getsize(path):,} bytes; "
                           f"{' '.join(str(e).split())}); download or export it again") from e


def _weight_files(directory: str) -> dict[str, str]:
  """Weight name -> the safetensors file holding it."""
  index = os.path.join(directory, _INDEX_FILE)
  if os.path.isfile(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      located = {name: os.path.join(directory, file) for name, file in weight_map.items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
      raise errors.UserError(f"{index}: not a safetensors index (a JSON object with a \"weight_map\" of weight "
                             f"name -> shard file): {type(e).__name__}: {e}") from e
    for file in sorted(set(located.values())):
      if not os.path.isfile(file):
        names = sorted(name for name, f in located.items() if f == file)
        raise errors.UserError(f"{index} names shard {os.path.basename(file)} (for {len(names)} weights, e.g. "
                               f"{names[0]}), which is not in {directory}; copy the whole checkpoint again")
    return located
  files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
  if not files:
    raise ValueError(f"{directory} has no *.safetensors weights (nor {_INDEX_FILE})")
  located = {}
  for file in files:
    with _safe_open(os.path.join(directory, file)) as f:
      located.update({name: os.path.join(directory, file) for name in f.keys()})
  return located


def _ignorable(name: str, cfg: ModelConfig) -> bool:
  # Older exports store rotary tables, and some tied models store the (identical) output matrix as well.
  return name.endswith("rotary_emb.inv_freq") or (cfg.tied_embeddings and name == "lm_head.weight")


def load_params(directory: str, cfg: ModelConfig, shardings: Any) -> dict[str, Any]:
  """Reads the safetensors weights of `directory` into the rest_jax parameter tree of `cfg`, placed by `shardings`.

  Tensors are read (onto the default device), converted to `cfg.param_dtype` and placed one at a time, so beyond the
  placed params only one tensor of the model is held at once.
  """
  located = _weight_files(directory)
  names = weight_names(cfg)
  missing = sorted(set(names) - set(located))
  if missing:
    raise ValueError(f"{directory} lacks {len(missing)} weights of this {cfg.num_layers}-layer model: "
                     f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
  unexpected = sorted(n for n in set(located) - set(names) if not _ignorable(n, cfg))
  if unexpected:
    raise ValueError(f"{directory} has weights this model does not use (is config.json right?): "
                     f"{', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
  shapes = param_shapes(cfg)
  params: dict[str, Any] = {}
  by_file: dict[str, list[str]] = {}
  for name in names:
    by_file.setdefault(located[name], []).append(name)
  for file, file_names in sorted(by_file.items()):
    with _safe_open(file) as f:
      for name in file_names:
        path, kind = names[name]
        stored, expected = tuple(f.get_slice(name).get_shape()), _hf_shape(_get(shapes, path), kind)
        if stored != expected:
          raise ValueError(f"{os.path.basename(file)}: {name} has shape {stored}, config.json implies {expected}")
        w = _to_rest_jax(f.get_tensor(name).astype(cfg.param_dtype), kind, cfg)
        _set(params, path, distributed.host_to_global(w, _get(shardings, path)))
        del w
  return params


def save_weights(directory: str, cfg: ModelConfig, params: Any, *, max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes `params` as Hugging Face safetensors in `directory` (shards and an index past `max_shard_bytes`).

  Returns the files written. One shard at a time is gathered on the host.
  """
  names = weight_names(cfg)
  shards: list[list[str]] = [[]]
  size = 0
  for name, (path, _) in names.items():
    leaf = _get(params, path)
    nbytes = int(np.prod(leaf.shape)) * leaf.dtype.itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += nbytes
  files = ([_WEIGHTS_FILE] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  total = 0
  for file, shard in zip(files, shards):
    tensors = {}
    for name in shard:
      path, kind = names[name]
      tensors[name] = np.ascontiguousarray(_to_hf(np.asarray(jax.device_get(_get(params, path))), kind))
      total += tensors[name].nbytes
    safetensors.numpy.save_file(tensors, os.path.join(directory, file), metadata={"format": "pt"})
    del tensors
  if len(shards) > 1:
    index = {"metadata": {"total_size": total},
             "weight_map": {name: file for file, shard in zip(files, shards) for name in shard}}
    with open(os.path.join(directory, _INDEX_FILE), "w") as f:
      json.dump(index, f, indent=2, sort_keys=True)
    files.append(_INDEX_FILE)
  return files


def param_shapes(cfg: ModelConfig) -> Any:
  """The rest_jax parameter tree of `cfg` as shapes (nothing is computed)."""
  tokens_1x1 = jnp.zeros((1, 1), jnp.int32)
  init = lambda rng: Transformer(cfg).init(rng, tokens_1x1, tokens_1x1, jnp.ones((1, 1, 1), bool))["params"]
  return jax.tree.map(lambda x: x.shape, nn.unbox(jax.eval_shape(init, jax.random.key(0))),
                      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


def _hf_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
  if kind == _LINEAR:
    return shape[::-1]
  if kind == _IN_PROJ:
    return (shape[1] * shape[2], shape[0])
  if kind == _IN_BIAS:
    return (shape[0] * shape[1],)
  if kind == _OUT_PROJ:
    return (shape[2], shape[0] * shape[1])
  return tuple(shape)


def _get(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def load(directory: str, *, mesh: Mesh, dtype: str = "float32") -> LM:
  """The model in a Hugging Face checkpoint directory, its params in `dtype` placed on `mesh`."""
  cfg = config_from_hf(read_config(directory), dtype=dtype)
  return with_params(directory, cfg, load_params(directory, cfg, sharding.param_shardings(cfg, mesh)), mesh)


def with_params(directory: str, cfg: ModelConfig, params: Any, mesh: Mesh) -> LM:
  """An LM of `params` (e.g. a fine-tuned iterate) with the config.json and tokenizer of the checkpoint at
  `directory`, which must describe `cfg`."""
  hf = read_config(directory)
  check_expresses(hf, cfg)
  has_tokenizer = os.path.isfile(os.path.join(directory, "tokenizer.json"))
  tokenizer = hf_tokenizer.HFTokenizer.from_directory(directory, hf) if has_tokenizer else None
  generation = {}
  if os.path.isfile(os.path.join(directory, "generation_config.json")):
    with open(os.path.join(directory, "generation_config.json")) as f:
      generation = json.load(f)
  eos_ids = [tokenizer.eos_id] if tokenizer is not None else []
  for source in (hf, generation):
    value = source.get("eos_token_id")
    for eos in value if isinstance(value, list) else [value]:
      if eos is not None and eos not in eos_ids:
        eos_ids.append(int(eos))
  # No end id at all is fine for logits; generation and experiments ask for one (`LM.require_eos_ids`).
  pad_id = tokenizer.pad_id if tokenizer is not None else hf.get("pad_token_id")
  if pad_id is None:
    pad_id = eos_ids[0] if eos_ids else 0
  return LM(config=cfg, params=params, tokenizer=tokenizer, mesh=mesh, model_type=hf["model_type"],
            eos_ids=tuple(eos_ids), pad_id=int(pad_id), hf_config=hf, source=directory)


def save(lm: LM, directory: str, *, max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes `lm` as a Hugging Face checkpoint (config.json, safetensors, tokenizer files) that transformers loads.

  The config.json is the source's (checked to describe `lm.config`) or, for models from elsewhere, one built from
  `lm.config` and `lm.model_type`. Returns the files written. Stacked (`scan_layers`) parameters are written per
  layer, as every checkpoint is.
  """
  if lm.config.scan_layers:
    lm = dataclasses.replace(lm, config=dataclasses.replace(lm.config, scan_layers=False),
                             params=unstack_layers(lm.params))
  if lm.hf_config is not None:
    check_expresses(lm.hf_config, lm.config)
    hf = dict(lm.hf_config)
  else:
    hf = config_to_hf(lm.config, lm.model_type)
    hf.update(eos_token_id=lm.eos_ids[0] if len(lm.eos_ids) == 1 else list(lm.eos_ids), pad_token_id=lm.pad_id)
    if lm.tokenizer is not None:
      hf["bos_token_id"] = lm.tokenizer.bos_id
  dtype = str(jax.tree.leaves(lm.params)[0].dtype)
  hf["dtype"] = dtype
  if "torch_dtype" in hf:
    hf["torch_dtype"] = dtype
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  files = ["config.json"] + save_weights(directory, lm.config, lm.params, max_shard_bytes=max_shard_bytes)
  if hasattr(lm.tokenizer, "save"):
    files += lm.tokenizer.save(directory)
  return files
