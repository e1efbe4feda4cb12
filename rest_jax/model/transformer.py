"""A decoder-only transformer in flax.linen: params in, logits and the updated KV cache out.

It covers the features of the Llama / Qwen / Gemma / Mistral families: RMSNorm (optionally Gemma's `1 + scale`),
rotary embeddings, gated MLP (SwiGLU or GeGLU), grouped-query attention, optional tied and scaled embeddings,
attention biases, soft-capping and sliding-window attention (on all or some layers), Gemma 2's post-attention and
post-MLP norms, Llama 3.1 rotary frequency scaling, configurable head dim, and bfloat16 compute on float32 parameters.

Two ways to call it: with a mask (training, `LM.logits`: packing and causality are the caller's `mask_BxTxS`), or
with a sampling cache (`init_sampling_cache`, `SampleKeys`), where the keys and values of each prompt are held once
for all of its samples and a decode step attends only to the generated slots it is told are filled.

Shape letters:
  B: batch             T: tokens in this call        S: key/value slots (generated slots attended, or T)
  D: model dimension   N: query heads   K: key/value heads   G: query heads per kv head (N // K)
  H: head dimension    F: MLP hidden    V: vocabulary        L: layers (or, in a sampling cache, prompt slots)
  P: prompts           M: query rows of one prompt (its samples x T x G)
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

# A sampling cache, one dict per layer: {"prefix_k", "prefix_v": PxKxLxH} the prompts' keys and values (written by
# the prefill), {"k", "v": BxKxNxH} each sample's generated ones, B = P * n with the n samples of prompt p in rows
# [p * n, (p + 1) * n). Slots are the second-to-last axis, so attention contracts each cache as it lies in memory.
# With `ModelConfig.scan_layers` it is a list of one dict, each array with a leading layer axis.
Cache = list[dict[str, jax.Array]]


@flax.struct.dataclass
class SampleKeys:
  """The rotary positions of a sampling cache's keys, from which attention computes what each query sees.

  A query at position q sees the keys at positions [0, q] (the last `sliding_window` of them on windowed layers).
  Padding slots of a left-padded prompt have position -1; a generated slot's position is that of the token it will
  hold, so slots not written yet lie past every current query and need no mask of their own.
  """

  prefix_pos_PxL: jax.Array  # int32.
  gen_pos_BxN: jax.Array | None = None  # int32; None in the prefill, which writes the prompts' keys.


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture hyperparameters. Frozen and hashable: it is a static argument of jitted functions."""

  vocab_size: int
  num_layers: int
  embed_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  activation: str = "silu"  # "silu" (SwiGLU) or "gelu" (GeGLU, tanh approximation as in Gemma).
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  norm_plus_one: bool = False  # Gemma: RMSNorm multiplies by (1 + scale).
  tied_embeddings: bool = True
  scale_embeddings: bool = False  # Gemma: embeddings times sqrt(embed_dim).
  qkv_bias: bool = False  # Qwen2.
  attn_logits_softcap: float | None = None  # Gemma 2.
  final_logits_softcap: float | None = None  # Gemma 2.
  sliding_window: int | None = None  # Mistral / Gemma 2 local attention.
  sliding_window_layers: tuple[int, ...] | None = None  # Layers that use the window; None = all when set.
  query_scale: float | None = None  # Defaults to head_dim ** -0.5.
  post_norms: bool = False  # Gemma 2: RMSNorm on the attention and MLP outputs before each residual add.
  # Llama 3.1 frequency scaling: (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings).
  rope_scaling: tuple[float, float, float, float] | None = None
  dtype: str = "float32"  # Compute dtype, e.g. "bfloat16".
  param_dtype: str = "float32"
  # Parameter layout, not architecture: True runs the blocks under one `nn.scan` (compile time flat in depth) over
  # parameters stacked under "layers" ([L, ...] leaves) and a stacked sampling cache; `stack_layers` converts.
  scan_layers: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"):
      if getattr(self, name) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"ModelConfig.num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig.head_dim must be even (rotary embeddings rotate pairs), got {self.head_dim}")
    if self.sliding_window is not None and self.sliding_window < 1:
      raise ValueError(f"ModelConfig.sliding_window must be >= 1 or None, got {self.sliding_window}")
    if self.rope_scaling is not None and len(self.rope_scaling) != 4:
      raise ValueError(f"ModelConfig.rope_scaling must be (factor, low_freq_factor, high_freq_factor, "
                       f"original_max_position_embeddings) or None, got {self.rope_scaling}")
    if self.activation not in ("silu", "gelu"):
      raise ValueError(f"ModelConfig.activation must be 'silu' or 'gelu', got {self.activation!r}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"ModelConfig.{name} must be float32, bfloat16 or float16, got {getattr(self, name)!r}")

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"ModelConfig: unknown fields {unknown}")
    d = dict(d)
    for name in ("sliding_window_layers", "rope_scaling"):  # JSON gives lists; the config must stay hashable.
      if d.get(name) is not None:
        d[name] = tuple(d[name])
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def uses_window(self, layer: int) -> bool:
    if self.sliding_window is None:
      return False
    return self.sliding_window_layers is None or layer in self.sliding_window_layers


class Dense(nn.Module):
  """y = x . kernel over the last `len(in_axes)` dims of x; the kernel is created in its final shape.

  (flax's DenseGeneral creates a flat kernel and reshapes it, which breaks logical sharding constraints.)
  """

  cfg: ModelConfig
  features: tuple[int, ...]
  axes: tuple[str, ...]  # Logical axes of the kernel: the contracted input dims, then `features`.
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = len(self.axes) - len(self.features)
    shape = x.shape[x.ndim - n_in:] + self.features
    init = nn.initializers.lecun_normal(in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, len(shape))))
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), shape, self.cfg.param_dtype)
    # tensordot's dot_general, written out: qwix (rest_jax/training/lora.py) intercepts jnp.asarray and
    # lax.dot_general, not jnp.tensordot, to add the adapters and to multiply by a quantised kernel.
    contracted = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(x.astype(self.cfg.dtype), jnp.asarray(kernel, self.cfg.dtype), (contracted, ((), ())))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), self.axes[n_in:]),
                        self.features, self.cfg.param_dtype)
      y = y + bias.astype(self.cfg.dtype)
    return y


class _Kernel(nn.Module):
  """A `Dense` kernel on its own (`lm_head/kernel`), for callers that apply it themselves."""

  cfg: ModelConfig
  shape: tuple[int, int]
  axes: tuple[str, str]

  @nn.compact
  def __call__(self) -> jax.Array:
    init = nn.initializers.lecun_normal(in_axis=(0,), out_axis=(1,))
    return self.param("kernel", nn.with_logical_partitioning(init, self.axes), self.shape, self.cfg.param_dtype)


class RMSNorm(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    init = nn.initializers.zeros_init() if self.cfg.norm_plus_one else nn.initializers.ones_init()
    scale_D = self.param("scale", nn.with_logical_partitioning(init, ("norm",)), (x_BxTxD.shape[-1],),
                         self.cfg.param_dtype)
    x = x_BxTxD.astype(jnp.float32)  # Normalise in float32 whatever the compute dtype.
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.cfg.norm_eps)
    scale_D = scale_D.astype(jnp.float32) + (1.0 if self.cfg.norm_plus_one else 0.0)
    return (x * scale_D).astype(self.cfg.dtype)


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, theta: float,
               scaling: tuple[float, float, float, float] | None = None) -> jax.Array:
  """Rotary embeddings, rotating the two halves of each head (the Llama / Hugging Face convention)."""
  half = x_BxTxNxH.shape[-1] // 2
  if scaling is None:
    freqs_h = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  else:
    freqs_h = jnp.asarray(_llama3_frequencies(half, theta, scaling))
  angles_BxTxh = positions_BxT[..., None].astype(jnp.float32) * freqs_h
  sin, cos = jnp.sin(angles_BxTxh)[:, :, None, :], jnp.cos(angles_BxTxh)[:, :, None, :]
  x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


def _llama3_frequencies(half: int, theta: float, scaling: tuple[float, float, float, float]) -> np.ndarray:
  """Llama 3.1's rotary frequencies: long wavelengths slowed down by `factor`, a smooth blend in between.

  Computed in float32 as Hugging Face's `_compute_llama3_parameters` does, so the band boundaries fall alike.
  """
  factor, low_freq_factor, high_freq_factor, old_context = scaling
  freqs_h = (1.0 / (theta ** (np.arange(0, 2 * half, 2).astype(np.float32) / np.float32(2 * half)))).astype(
      np.float32)
  wavelen_h = np.float32(2 * math.pi) / freqs_h
  low_freq_wavelen, high_freq_wavelen = old_context / low_freq_factor, old_context / high_freq_factor
  scaled_h = np.where(wavelen_h > low_freq_wavelen, freqs_h / np.float32(factor), freqs_h)
  smooth_h = (old_context / wavelen_h - low_freq_factor) / (high_freq_factor - low_freq_factor)
  smoothed_h = (1 - smooth_h) * scaled_h / np.float32(factor) + smooth_h * scaled_h
  medium_h = ~(wavelen_h < high_freq_wavelen) & ~(wavelen_h > low_freq_wavelen)
  return np.where(medium_h, smoothed_h, scaled_h).astype(np.float32)


class Attention(nn.Module):
  """`windowed`: whether this layer uses `cfg.sliding_window`; a Python bool, or a traced bool scalar under scan."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, cache: dict[str, jax.Array] | None, cache_index,
               attend_len: int | None = None, windowed: Any = False):
    cfg = self.cfg
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q_BxTxNxH = Dense(cfg, (N, H), ("embed", "heads", "head_dim"), cfg.qkv_bias, name="q")(x_BxTxD)
    k_BxTxKxH = Dense(cfg, (K, H), ("embed", "kv_heads", "head_dim"), cfg.qkv_bias, name="k")(x_BxTxD)
    v_BxTxKxH = Dense(cfg, (K, H), ("embed", "kv_heads", "head_dim"), cfg.qkv_bias, name="v")(x_BxTxD)
    q_BxTxNxH = apply_rope(q_BxTxNxH, positions_BxT, cfg.rope_theta, cfg.rope_scaling)
    k_BxTxKxH = apply_rope(k_BxTxKxH, positions_BxT, cfg.rope_theta, cfg.rope_scaling)

    scale = cfg.query_scale if cfg.query_scale is not None else H ** -0.5
    q_BxTxNxH = q_BxTxNxH * jnp.asarray(scale, q_BxTxNxH.dtype)
    window = None if cfg.sliding_window is None or windowed is False else (cfg.sliding_window, windowed)
    if isinstance(mask_BxTxS, SampleKeys):
      out_BxTxNxH, new_cache = _cached_attention(cfg, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, positions_BxT, mask_BxTxS,
                                                 cache, cache_index, attend_len, window)
    else:
      if cache is not None:
        raise ValueError("Attention: a cache needs SampleKeys in place of the mask")
      out_BxTxNxH, new_cache = _masked_attention(cfg, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask_BxTxS, window), None
    out_BxTxNxH = nn.with_logical_constraint(out_BxTxNxH, ("batch", "length", "act_heads", "head_dim"))
    out_BxTxD = Dense(cfg, (cfg.embed_dim,), ("heads", "head_dim", "embed"), name="o")(out_BxTxNxH)
    return out_BxTxD, new_cache


def _softcapped(cfg: ModelConfig, logits: jax.Array) -> jax.Array:
  if cfg.attn_logits_softcap is None:
    return logits
  return jnp.tanh(logits / cfg.attn_logits_softcap) * cfg.attn_logits_softcap


def _masked_attention(cfg, q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_BxTxS, window):
  """Attention of every query over this call's keys, as `mask_BxTxS` allows (training: S == T)."""
  B, T, N, H = q_BxTxNxH.shape
  K = k_BxSxKxH.shape[2]
  q_BxTxKxGxH = q_BxTxNxH.reshape(B, T, K, N // K, H)
  logits_BxKxGxTxS = _softcapped(cfg, jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH.astype(cfg.dtype),
                                                 preferred_element_type=jnp.float32))
  if window is not None:
    mask_BxTxS = mask_BxTxS & _where_windowed(window, _window_mask(mask_BxTxS, window[0]))
  logits_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], logits_BxKxGxTxS, jnp.finfo(jnp.float32).min)
  probs_BxKxGxTxS = jax.nn.softmax(logits_BxKxGxTxS, axis=-1).astype(cfg.dtype)
  out_BxTxKxGxH = jnp.einsum("bkgts,bskh->btkgh", probs_BxKxGxTxS, v_BxSxKxH.astype(cfg.dtype))
  return out_BxTxKxGxH.reshape(B, T, N, H)


def _where_windowed(window: tuple[int, Any], within_window: jax.Array) -> jax.Array:
  """`within_window` on a windowed layer, all True elsewhere. `window` is (size, windowed): windowed is True, or a
  traced bool scalar (layers under scan, whose windows differ: Gemma 2, Qwen2)."""
  windowed = window[1]
  return within_window if windowed is True else within_window | ~windowed


def _visible(key_pos_BxS: jax.Array, query_pos_BxT: jax.Array, window: tuple[int, Any] | None) -> jax.Array:
  """mask_BxTxS of a sampling cache: keys at positions [0, q] (within the window) for a query at position q."""
  k_Bx1xS, q_BxTx1 = key_pos_BxS[:, None, :], query_pos_BxT[:, :, None]
  visible_BxTxS = (k_Bx1xS >= 0) & (k_Bx1xS <= q_BxTx1)
  if window is not None:
    visible_BxTxS = visible_BxTxS & _where_windowed(window, q_BxTx1 - k_Bx1xS < window[0])
  return visible_BxTxS


def _cached_attention(cfg, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, positions_BxT, keys: SampleKeys, cache, cache_index,
                      attend_len, window):
  """Attention over a sampling cache (see `Cache`): the prompt's slots, read once for all its samples, and the first
  `attend_len` generated slots of each sample (all N when None).

  Prefill (`keys.gen_pos_BxN` None, B == P, T == L): this call's keys become the prompts' and are all that is
  attended. A decode step writes its keys at generated slot `cache_index` first. The softmax runs over the prompt's
  and the generated slots together, so the result equals attention over one concatenated cache.
  """
  B, T, N, H = q_BxTxNxH.shape
  K = k_BxTxKxH.shape[2]
  G = N // K
  P, L = keys.prefix_pos_PxL.shape
  n = B // P
  constrain = lambda x: nn.with_logical_constraint(x, ("batch", "act_kv_heads", "cache_length", "head_dim"))
  as_slots = lambda x_BxTxKxH, like: x_BxTxKxH.transpose(0, 2, 1, 3).astype(like.dtype)
  new_cache = dict(cache)
  if keys.gen_pos_BxN is None:
    new_cache["prefix_k"] = prefix_k_PxKxLxH = constrain(as_slots(k_BxTxKxH, cache["prefix_k"]))
    new_cache["prefix_v"] = prefix_v_PxKxLxH = constrain(as_slots(v_BxTxKxH, cache["prefix_v"]))
  else:
    prefix_k_PxKxLxH, prefix_v_PxKxLxH = cache["prefix_k"], cache["prefix_v"]
    for name, x_BxTxKxH in (("k", k_BxTxKxH), ("v", v_BxTxKxH)):
      new_cache[name] = constrain(_write_generated(cache[name], as_slots(x_BxTxKxH, cache[name]), cache_index))

  # The prompt's slots: its n samples' queries are the rows of one matmul per (prompt, kv head).
  q_BxTxKxGxH = q_BxTxNxH.reshape(B, T, K, G, H)
  q_PxKxMxH = q_BxTxKxGxH.reshape(P, n, T, K, G, H).transpose(0, 3, 1, 2, 4, 5).reshape(P, K, n * T * G, H)
  prefix_PxKxMxL = jnp.einsum("pkmh,pklh->pkml", q_PxKxMxH, prefix_k_PxKxLxH.astype(cfg.dtype),
                              preferred_element_type=jnp.float32)
  prefix_BxKxTxGxL = prefix_PxKxMxL.reshape(P, K, n, T, G, L).transpose(0, 2, 1, 3, 4, 5).reshape(B, K, T, G, L)
  logits = [prefix_BxKxTxGxL]
  masks = [_visible(jnp.repeat(keys.prefix_pos_PxL, n, axis=0), positions_BxT, window)]
  if keys.gen_pos_BxN is not None:
    S = attend_len or keys.gen_pos_BxN.shape[1]
    gen_k_BxKxSxH, gen_v_BxKxSxH = new_cache["k"][:, :, :S], new_cache["v"][:, :, :S]
    logits.append(jnp.einsum("btkgh,bksh->bktgs", q_BxTxKxGxH, gen_k_BxKxSxH.astype(cfg.dtype),
                             preferred_element_type=jnp.float32))
    masks.append(_visible(keys.gen_pos_BxN[:, :S], positions_BxT, window))
  logits_BxKxTxGxX = _softcapped(cfg, jnp.concatenate(logits, axis=-1))  # X: the prompt's slots, then S.
  mask_BxTxX = jnp.concatenate(masks, axis=-1)
  logits_BxKxTxGxX = jnp.where(mask_BxTxX[:, None, :, None, :], logits_BxKxTxGxX, jnp.finfo(jnp.float32).min)
  probs_BxKxTxGxX = jax.nn.softmax(logits_BxKxTxGxX, axis=-1).astype(cfg.dtype)

  probs_PxKxMxL = probs_BxKxTxGxX[..., :L].reshape(P, n, K, T, G, L).transpose(0, 2, 1, 3, 4, 5).reshape(
      P, K, n * T * G, L)
  out_PxKxMxH = jnp.einsum("pkml,pklh->pkmh", probs_PxKxMxL, prefix_v_PxKxLxH.astype(cfg.dtype))
  out_BxTxKxGxH = out_PxKxMxH.reshape(P, K, n, T, G, H).transpose(0, 2, 3, 1, 4, 5).reshape(B, T, K, G, H)
  if keys.gen_pos_BxN is not None:
    out_BxKxTxGxH = jnp.einsum("bktgs,bksh->bktgh", probs_BxKxTxGxX[..., L:], gen_v_BxKxSxH.astype(cfg.dtype))
    out_BxTxKxGxH = out_BxTxKxGxH + out_BxKxTxGxH.transpose(0, 2, 1, 3, 4)
  return out_BxTxKxGxH.reshape(B, T, N, H), new_cache


def _write_generated(cache_BxKxNxH: jax.Array, x_BxKxTxH: jax.Array, cache_index) -> jax.Array:
  """Writes this call's keys (or values) at generated slot `cache_index`: one slot for every row (a scalar), or each
  row's own (int32[B], one token per row: continuous batching, where rows are at different steps)."""
  if jnp.ndim(cache_index) == 0:
    return jax.lax.dynamic_update_slice_in_dim(cache_BxKxNxH, x_BxKxTxH, cache_index, 2)
  if x_BxKxTxH.shape[2] != 1:
    raise ValueError(f"per-row cache indices need one token per row, got {x_BxKxTxH.shape[2]}")
  B = cache_BxKxNxH.shape[0]
  return cache_BxKxNxH.at[jnp.arange(B), :, cache_index].set(x_BxKxTxH[:, :, 0], mode="drop")


def _window_mask(mask_BxTxS, window):
  """Restricts each query to its last `window` visible keys (itself included).

  Both layouts that build masks (packed training rows and the left-padded sampler cache) give every query a
  contiguous run of visible slots ending at the query itself, so a key's distance to the query is the number of
  visible keys after it.
  """
  visible_BxTxS = mask_BxTxS.astype(jnp.int32)
  after_BxTxS = jnp.flip(jnp.cumsum(jnp.flip(visible_BxTxS, -1), -1), -1) - visible_BxTxS
  return after_BxTxS < window


class MLP(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD):
    cfg = self.cfg
    gate_BxTxF = Dense(cfg, (cfg.mlp_dim,), ("embed", "mlp"), name="gate")(x_BxTxD)
    up_BxTxF = Dense(cfg, (cfg.mlp_dim,), ("embed", "mlp"), name="up")(x_BxTxD)
    act = jax.nn.silu if cfg.activation == "silu" else (lambda x: jax.nn.gelu(x, approximate=True))
    h_BxTxF = nn.with_logical_constraint(act(gate_BxTxF) * up_BxTxF, ("batch", "length", "act_mlp"))
    return Dense(cfg, (cfg.embed_dim,), ("mlp", "embed"), name="down")(h_BxTxF)


class Block(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, cache, cache_index, attend_len=None, windowed=False):
    attn_BxTxD, new_cache = Attention(self.cfg, name="attn")(
        RMSNorm(self.cfg, name="attn_norm")(x_BxTxD), positions_BxT, mask_BxTxS, cache, cache_index, attend_len,
        windowed)
    if self.cfg.post_norms:
      attn_BxTxD = RMSNorm(self.cfg, name="post_attn_norm")(attn_BxTxD)
    x_BxTxD = x_BxTxD + attn_BxTxD
    mlp_BxTxD = MLP(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(x_BxTxD))
    if self.cfg.post_norms:
      mlp_BxTxD = RMSNorm(self.cfg, name="post_mlp_norm")(mlp_BxTxD)
    x_BxTxD = x_BxTxD + mlp_BxTxD
    return nn.with_logical_constraint(x_BxTxD, ("batch", "length", "act_embed")), new_cache


# train.remat -> what a rematerialised block keeps from its forward pass for the backward (None: only its inputs).
REMAT_POLICIES: dict[str, Any] = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(remat: str) -> None:
  if remat != "none" and remat not in REMAT_POLICIES:
    raise ValueError(f"train.remat must be 'none' or one of {sorted(REMAT_POLICIES)}, got {remat!r}")


class _ScannedBlock(nn.Module):
  """`Block` as an `nn.scan` cell: (x_BxTxD, (layer cache, windowed)) -> (x_BxTxD, new layer cache)."""

  cfg: ModelConfig
  attend_len: int | None = None
  windowed: Any = False  # The same for every layer (a Python bool); None: each layer's comes in `xs`.

  @nn.compact
  def __call__(self, x_BxTxD, xs, positions_BxT, mask_BxTxS, cache_index):
    cache, windowed = xs
    windowed = windowed if self.windowed is None else self.windowed
    return Block(self.cfg, name="block")(x_BxTxD, positions_BxT, mask_BxTxS, cache, cache_index, self.attend_len,
                                         windowed)


class Transformer(nn.Module):
  """`apply(params, tokens_BxT, positions_BxT, mask_BxTxS, cache, cache_index) -> (logits_BxTxV, cache)`.

  Without a cache, `mask_BxTxS[b, t, s]` says whether query t of row b may attend to key s of the same call
  (causality, padding and packing are all expressed by the caller through it; see `causal_mask`). With a sampling
  cache (`init_sampling_cache`), the mask's place takes `SampleKeys`: the prefill (T == L, one row per prompt)
  writes the prompts' keys; a decode step writes its keys at generated slot `cache_index` (a scalar, or int32[B]: each
  row's own slot) and attends to the prompt and to the first `attend_len` generated slots (a static bound; all when
  None).

  `remat` (training only, without a cache) recomputes each block's activations in the backward pass instead of
  keeping them (`REMAT_POLICIES`); `hidden=True` returns the final-normed hidden states x_BxTxD instead of the logits,
  for losses that project onto the vocabulary themselves (`output_logits`).

  With `cfg.scan_layers` the blocks run as one `nn.scan` over parameters stacked under "layers" (`stack_layers`) and
  a stacked cache, so that compilation traces one block whatever the depth.
  """

  cfg: ModelConfig
  remat: str = "none"

  @nn.compact
  def __call__(self, tokens_BxT, positions_BxT, mask_BxTxS, cache: Cache | None = None, cache_index=0,
               hidden: bool = False, attend_len: int | None = None):
    cfg = self.cfg
    check_remat(self.remat)
    if self.remat != "none" and cache is not None:
      raise ValueError("Transformer: remat is for training; it cannot be combined with a KV cache")
    embed = nn.Embed(
        cfg.vocab_size, cfg.embed_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")), name="embed")
    x_BxTxD = embed(tokens_BxT)
    if cfg.scale_embeddings:
      x_BxTxD = x_BxTxD * jnp.asarray(cfg.embed_dim ** 0.5, x_BxTxD.dtype)
    x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "length", "act_embed"))
    if cfg.scan_layers:
      x_BxTxD, new_cache = self._scanned_blocks(x_BxTxD, positions_BxT, mask_BxTxS, cache, cache_index, attend_len)
    else:
      x_BxTxD, new_cache = self._unrolled_blocks(x_BxTxD, positions_BxT, mask_BxTxS, cache, cache_index, attend_len)
    x_BxTxD = RMSNorm(cfg, name="final_norm")(x_BxTxD)
    if cfg.tied_embeddings:
      head = embed.embedding  # VxD
    else:
      head = _Kernel(cfg, (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"), name="lm_head")()  # DxV
    if hidden:
      return x_BxTxD, new_cache
    logits_BxTxV = nn.with_logical_constraint(_project(cfg, head, x_BxTxD), ("batch", "length", "act_vocab"))
    return logits_BxTxV, new_cache

  def _unrolled_blocks(self, x_BxTxD, positions_BxT, mask_BxTxS, cache, cache_index, attend_len):
    cfg = self.cfg
    block = Block
    if self.remat != "none":
      # prevent_cse: the blocks are not inside a scan, where XLA could otherwise merge the recomputation away.
      block = nn.remat(Block, policy=REMAT_POLICIES[self.remat], prevent_cse=True, static_argnums=(5, 6, 7))
    new_cache = [] if cache is not None else None
    for i in range(cfg.num_layers):
      x_BxTxD, layer_cache = block(cfg, name=f"layer_{i}")(
          x_BxTxD, positions_BxT, mask_BxTxS, None if cache is None else cache[i], cache_index, attend_len,
          cfg.uses_window(i))
      if cache is not None:
        new_cache.append(layer_cache)
    return x_BxTxD, new_cache

  def _scanned_blocks(self, x_BxTxD, positions_BxT, mask_BxTxS, cache, cache_index, attend_len):
    cfg = self.cfg
    flags = [cfg.uses_window(i) for i in range(cfg.num_layers)]
    # One static flag when the layers agree (no select in the mask); otherwise each layer's, scanned with it.
    same = flags[0] if len(set(flags)) == 1 else None
    windowed_L = None if same is not None else jnp.asarray(flags)
    cell = _ScannedBlock
    if self.remat != "none":
      # Under scan XLA cannot merge the recomputation into the forward pass, so CSE need not be prevented.
      cell = nn.remat(_ScannedBlock, policy=REMAT_POLICIES[self.remat], prevent_cse=False, static_argnums=(5,))
    scan = nn.scan(cell, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                   metadata_params={nn.PARTITION_NAME: "layers"})
    layers_cache = None if cache is None else _single(cache)
    x_BxTxD, new_cache = scan(cfg, attend_len, same, name="layers")(
        x_BxTxD, (layers_cache, windowed_L), positions_BxT, mask_BxTxS, cache_index)
    return x_BxTxD, None if cache is None else [new_cache]


def _single(cache: Cache) -> dict[str, jax.Array]:
  if len(cache) != 1:
    raise ValueError(f"a scanned model's sampling cache is one dict of stacked layers, got {len(cache)} dicts")
  return cache[0]


def stack_layers(params: Any, num_layers: int) -> Any:
  """Per-layer parameters ("layer_i" subtrees) -> the `scan_layers` layout: one "layers" subtree of [L, ...] leaves.

  Works on any tree keyed like the parameters (optimizer moments too); the other entries are kept as they are.
  """
  names = [f"layer_{i}" for i in range(num_layers)]
  missing = [n for n in names if n not in params]
  if missing or "layers" in params:
    raise ValueError(f"stack_layers: expected per-layer parameters layer_0 ... layer_{num_layers - 1}, "
                     f"got keys {sorted(params)}")
  rest = {k: v for k, v in params.items() if k not in names}
  return {**rest, "layers": {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *[params[n] for n in names])}}


def unstack_layers(params: Any) -> Any:
  """The inverse of `stack_layers`: the per-layer layout every loader, checkpoint and export reads and writes."""
  if "layers" not in params:
    raise ValueError(f"unstack_layers: expected stacked parameters under 'layers', got keys {sorted(params)}")
  stacked = params["layers"]["block"]
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  rest = {k: v for k, v in params.items() if k != "layers"}
  return {**rest, **{f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_layers)}}


def output_logits(cfg: ModelConfig, params: Any, x_BxTxD: jax.Array) -> jax.Array:
  """float32 logits_BxTxV of final-normed hidden states, exactly as `Transformer` computes them (softcap included)."""
  head = params["embed"]["embedding"] if cfg.tied_embeddings else params["lm_head"]["kernel"]
  return _project(cfg, head, x_BxTxD)


def _project(cfg: ModelConfig, head: jax.Array, x_BxTxD: jax.Array) -> jax.Array:
  """The output projection: onto the tied embedding table (VxD) or the separate `lm_head` kernel (DxV)."""
  x_BxTxD, head = x_BxTxD.astype(cfg.dtype), head.astype(cfg.dtype)
  if cfg.tied_embeddings:
    logits_BxTxV = jnp.einsum("btd,vd->btv", x_BxTxD, head)
  else:
    logits_BxTxV = jnp.einsum("btd,dv->btv", x_BxTxD, head)
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  if cfg.final_logits_softcap is not None:
    logits_BxTxV = jnp.tanh(logits_BxTxV / cfg.final_logits_softcap) * cfg.final_logits_softcap
  return logits_BxTxV


def causal_mask(segment_ids_BxT: jax.Array) -> jax.Array:
  """Causal attention within packed segments; segment id 0 marks padding, which attends only to itself."""
  T = segment_ids_BxT.shape[1]
  causal_TxT = jnp.tril(jnp.ones((T, T), dtype=bool))
  same_BxTxT = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
  pad_self_BxTxT = (segment_ids_BxT[:, :, None] == 0) & jnp.eye(T, dtype=bool)
  return (causal_TxT & same_BxTxT & (segment_ids_BxT[:, None, :] != 0)) | pad_self_BxTxT


def init_sampling_cache(cfg: ModelConfig, prompts: int, prompt_len: int, rows: int, new_tokens: int,
                        dtype: Any = None) -> Cache:
  """An empty sampling cache (see `Cache`): `prompts` x `prompt_len` prompt slots, `rows` x `new_tokens` generated.

  With `cfg.scan_layers`, one dict whose arrays carry a leading layer axis (Lx...), as the scanned blocks read it.
  """
  dtype = dtype or cfg.dtype
  K, H = cfg.num_kv_heads, cfg.head_dim
  lead = (cfg.num_layers,) if cfg.scan_layers else ()
  layer = lambda: {"prefix_k": jnp.zeros((*lead, prompts, K, prompt_len, H), dtype),
                   "prefix_v": jnp.zeros((*lead, prompts, K, prompt_len, H), dtype),
                   "k": jnp.zeros((*lead, rows, K, new_tokens, H), dtype),
                   "v": jnp.zeros((*lead, rows, K, new_tokens, H), dtype)}
  return [layer()] if cfg.scan_layers else [layer() for _ in range(cfg.num_layers)]


def param_count(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
