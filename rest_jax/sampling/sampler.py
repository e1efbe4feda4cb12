"""Batched autoregressive sampling with a KV cache: prefill, then `jax.lax.while_loop` decode.

Layout: a batch of prompts is left-padded to a bucket length L; row p's real tokens start at slot pad_P[p], whose
rotary position is 0. The prefill writes each prompt's keys and values once (`Cache`: P x L prompt slots); its n
samples (rows [p * n, (p + 1) * n)) each write their own generated slots [0, N) and read the prompt's slots in one
matmul per prompt, so the prompt is neither recomputed nor copied n times. The decode runs in segments of static
length (`attend_buckets`): a step in the segment ending at slot A attends to generated slots [0, A) only, so early
steps do not read the whole cache. The prefill projects only each prompt's last position onto the vocabulary.

This is the "static" schedule: a batch decodes until its longest row ends. `SamplerConfig.schedule = "continuous"`
hands the same prompts to `rest_jax.sampling.continuous`, whose slots take the next waiting prompt as soon as theirs
are done.

Shape letters: B rows (prompts x samples), P prompts, L prompt bucket, N new tokens, V vocabulary, D model dim.
"""

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rest_jax import distributed
from rest_jax import tokenizers
from rest_jax.model import sharding
from rest_jax.sampling import continuous, quantization
from rest_jax.model.transformer import Cache, ModelConfig, SampleKeys, init_sampling_cache, output_logits
from rest_jax.sampling.strategies import Strategy
from rest_jax.tokenizers import Tokenizer

DEFAULT_ATTEND_BUCKETS = (64, 128, 256, 512, 1024)
DTYPES = ("float32", "bfloat16")  # What `SamplerConfig.dtype` may name (None: the model's own).
SCHEDULES = ("static", "continuous")  # What `SamplerConfig.schedule` may name.


@flax.struct.dataclass
class SamplingState:
  """The decode loop's carry (the prompts' keys and values are read-only, outside it)."""

  tokens_BxN: jax.Array  # int32: the generated tokens; slot `step` holds the newest.
  cache: Cache  # Per layer {"k", "v"}: BxKxNxH; generated slots [0, step) are filled.
  step: jax.Array  # int32 scalar: generated slot of the newest token, which is not in the cache yet.
  length_B: jax.Array  # int32: generated tokens so far, up to and including EOS / a stop sequence.
  done_B: jax.Array  # bool: the row has produced EOS or a stop sequence.
  rng: jax.Array
  logprobs_BxN: jax.Array | None = None  # float32: each token's log-probability under the strategy's policy.


def _stop_hits(tokens_BxN, step, stop_sequences) -> jax.Array:
  """Whether the tokens ending at generated slot `step` spell one of `stop_sequences`."""
  B = tokens_BxN.shape[0]
  hit_B = jnp.zeros((B,), bool)
  for seq in stop_sequences:
    m = len(seq)
    window_Bxm = jax.lax.dynamic_slice_in_dim(tokens_BxN, jnp.maximum(step - m + 1, 0), m, axis=1)
    match_B = jnp.all(window_Bxm == jnp.asarray(seq, jnp.int32), axis=1)
    hit_B = hit_B | (match_B & (step - m + 1 >= 0))
  return hit_B


def segment_ends(max_new_tokens: int, attend_buckets: Sequence[int]) -> tuple[int, ...]:
  """The generated-slot bounds of the decode segments: the buckets below `max_new_tokens`, then it."""
  return tuple(sorted({b for b in attend_buckets if 0 < b < max_new_tokens} | {max_new_tokens}))


def prefill(params: Any, prompt_PxL: jax.Array, pad_P: jax.Array, *, cfg: ModelConfig, rows: int,
            max_new_tokens: int, weight_quant: str = "none") -> tuple[jax.Array, Cache, SampleKeys]:
  """The prompts' keys and values, once each: (last-position logits_PxV, cache with `rows` generated rows, keys)."""
  P, L = prompt_PxL.shape
  positions_PxL = jnp.maximum(jnp.arange(L)[None, :] - pad_P[:, None], 0)
  prefix_pos_PxL = jnp.where(jnp.arange(L)[None, :] >= pad_P[:, None], positions_PxL, -1)
  cache = init_sampling_cache(cfg, P, L, rows, max_new_tokens)
  keys = SampleKeys(prefix_pos_PxL=prefix_pos_PxL)
  x_PxLxD, cache = quantization.model(cfg, weight_quant).apply({"params": params}, prompt_PxL, positions_PxL, keys,
                                                                cache, 0, hidden=True)
  logits_PxV = output_logits(cfg, params, x_PxLxD[:, -1:])[:, 0]
  n = rows // P
  gen_pos_BxN = (jnp.repeat(L - pad_P, n)[:, None] + jnp.arange(max_new_tokens)[None, :]).astype(jnp.int32)
  return logits_PxV, cache, SampleKeys(prefix_pos_PxL=prefix_pos_PxL, gen_pos_BxN=gen_pos_BxN)


def decode_step(params: Any, token_B: jax.Array, step: jax.Array, cache: Cache, keys: SampleKeys, *,
                cfg: ModelConfig, attend_len: int | None = None, weight_quant: str = "none"
                ) -> tuple[jax.Array, Cache]:
  """One token per row at generated slot `step` -> (logits_BxV, cache with its keys written)."""
  positions_Bx1 = jax.lax.dynamic_slice_in_dim(keys.gen_pos_BxN, step, 1, axis=1)
  logits_Bx1xV, cache = quantization.model(cfg, weight_quant).apply(
      {"params": params}, token_B[:, None], positions_Bx1, keys, cache, step, attend_len=attend_len)
  return logits_Bx1xV[:, 0], cache


@functools.partial(
    jax.jit, static_argnames=("cfg", "strategy", "num_samples", "max_new_tokens", "eos_id", "pad_id", "stop_sequences",
                              "attend_buckets", "with_logprobs", "weight_quant"))
def sample_tokens(params: Any, prompt_PxL: jax.Array, pad_P: jax.Array, rng: jax.Array, *, cfg: ModelConfig,
                  strategy: Strategy, num_samples: int, max_new_tokens: int, eos_id: int, pad_id: int,
                  stop_sequences: tuple[tuple[int, ...], ...] = (),
                  attend_buckets: tuple[int, ...] = DEFAULT_ATTEND_BUCKETS, with_logprobs: bool = False,
                  weight_quant: str = "none"
                  ) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, jax.Array]:
  """Samples `num_samples` continuations of each left-padded prompt.

  Returns (tokens_BxN, length_B) with B = P * num_samples, samples of prompt p in rows [p * n, (p + 1) * n). Tokens
  after EOS / a stop sequence (which are included in the length) or past the budget are `pad_id`. With
  `with_logprobs`, also logprobs_BxN: each token's log-probability under the sampling policy
  (`Strategy.log_probs`: the model's softmax at the strategy's temperature), 0 past a row's end. `weight_quant`
  other than "none": `params` are `quantization.quantize`'s.
  """
  P, L = prompt_PxL.shape
  N, B = max_new_tokens, P * num_samples
  logits_PxV, full_cache, keys = prefill(params, prompt_PxL, pad_P, cfg=cfg, rows=B, max_new_tokens=N,
                                         weight_quant=weight_quant)
  prompt_cache = [{"prefix_k": c["prefix_k"], "prefix_v": c["prefix_v"]} for c in full_cache]
  rng, first_rng = jax.random.split(rng)
  first_B = strategy.next_tokens(jnp.repeat(logits_PxV, num_samples, axis=0), first_rng)
  tokens_BxN = jnp.full((B, N), pad_id, jnp.int32).at[:, 0].set(first_B)
  logprobs_BxN = None
  if with_logprobs:
    first_logp_B = strategy.log_probs(jnp.repeat(logits_PxV, num_samples, axis=0), first_B)
    logprobs_BxN = jnp.zeros((B, N), jnp.float32).at[:, 0].set(first_logp_B)
  state = SamplingState(tokens_BxN=tokens_BxN, cache=[{"k": c["k"], "v": c["v"]} for c in full_cache],
                        step=jnp.asarray(0, jnp.int32), length_B=jnp.ones((B,), jnp.int32),
                        done_B=(first_B == eos_id) | _stop_hits(tokens_BxN, 0, stop_sequences), rng=rng,
                        logprobs_BxN=logprobs_BxN)

  def body(state: SamplingState, attend_len: int) -> SamplingState:
    step = state.step
    cache = [{**p, **g} for p, g in zip(prompt_cache, state.cache)]
    logits_BxV, cache = decode_step(params, state.tokens_BxN[:, step], step, cache, keys, cfg=cfg,
                                    attend_len=attend_len, weight_quant=weight_quant)
    rng, step_rng = jax.random.split(state.rng)
    next_B = strategy.next_tokens(logits_BxV, step_rng)
    tokens_BxN = jax.lax.dynamic_update_slice_in_dim(state.tokens_BxN, next_B[:, None], step + 1, axis=1)
    hit_B = (next_B == eos_id) | _stop_hits(tokens_BxN, step + 1, stop_sequences)
    logprobs_BxN = state.logprobs_BxN
    if with_logprobs:
      logprobs_BxN = jax.lax.dynamic_update_slice_in_dim(
          logprobs_BxN, strategy.log_probs(logits_BxV, next_B)[:, None], step + 1, axis=1)
    return SamplingState(tokens_BxN=tokens_BxN, cache=[{"k": c["k"], "v": c["v"]} for c in cache], step=step + 1,
                         length_B=state.length_B + (~state.done_B).astype(jnp.int32), done_B=state.done_B | hit_B,
                         rng=rng, logprobs_BxN=logprobs_BxN)

  # Segment by segment: a step writing generated slot `step` < end attends to slots [0, end) only.
  for end in segment_ends(N, attend_buckets):
    state = jax.lax.while_loop(lambda s, end=end: (s.step < min(end, N - 1)) & ~jnp.all(s.done_B),
                               functools.partial(body, attend_len=end), state)
  # Mask once, after the loop: everything past each row's end becomes padding.
  filled_BxN = jnp.arange(N)[None, :] < state.length_B[:, None]
  new_BxN = jnp.where(filled_BxN, state.tokens_BxN, pad_id)
  if with_logprobs:
    return new_BxN, state.length_B, jnp.where(filled_BxN, state.logprobs_BxN, 0.0)
  return new_BxN, state.length_B


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  batch_rows: int = 256  # Rows (prompts x samples) per device call; rounded to the mesh's batch shards.
  prompt_buckets: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)  # Prompts are left-padded to the next bucket.
  max_total_len: int | None = None  # Longest prompt bucket + max_new_tokens allowed (the model's context).
  # Decode segments: a step attends to generated slots up to the next of these (compiles one loop body each).
  attend_buckets: tuple[int, ...] = DEFAULT_ATTEND_BUCKETS
  # Compute, weight and KV-cache dtype of sampling ("bfloat16", "float32"); None: the model's own. The caller's
  # (training) parameters are not changed: the sampler casts its device copy. Log-probabilities stay float32.
  dtype: str | None = None
  # Weight-only quantisation of the attention and MLP projection kernels while sampling ("none", "int8", "int4";
  # `rest_jax.sampling.quantization`): quantised once per call from the caller's float parameters, which are not
  # changed; activations, embeddings and the KV cache stay in `dtype`.
  weight_quant: str = "none"
  # "static": each batch of prompts decodes until its longest row ends. "continuous": `batch_rows` decode slots, a
  # finished group's slots take the next waiting prompt (`rest_jax.sampling.continuous`); other random draws.
  schedule: str = "static"
  slot_group: int = 0  # continuous: samples of a prompt that share one group of slots and prompt copy (0: all).
  chunk_steps: int = 16  # continuous: most decode steps between two host checks for finished groups.
  # Run the blocks under one scan (`ModelConfig.scan_layers`): compile time flat in depth. The caller's parameters
  # stay per-layer: the sampler stacks its device copy.
  scan_layers: bool = False

  def __post_init__(self):
    if self.dtype is not None and self.dtype not in DTYPES:
      raise ValueError(f"sampler.dtype must be float32 or bfloat16 (or empty for the model's own), got {self.dtype!r}")
    if self.weight_quant not in quantization.WEIGHT_QUANT:
      raise ValueError(f"sampler.weight_quant must be one of {', '.join(quantization.WEIGHT_QUANT)}, got "
                       f"{self.weight_quant!r}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"sampler.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
    if self.scan_layers and self.weight_quant != "none":
      raise ValueError(f"sampler.weight_quant={self.weight_quant!r} cannot be combined with sampler.scan_layers=True "
                       "(qwix does not quantise inside the scan); set one of them off")
    if self.slot_group < 0 or self.chunk_steps < 1:
      raise ValueError(f"sampler.slot_group must be >= 0 and sampler.chunk_steps >= 1, got {self.slot_group}, "
                       f"{self.chunk_steps}")


class Sampler:
  """Host side: buckets and batches prompts, keeps one batch in flight; with a tokenizer, encodes and decodes text.

  `end_ids` end a row (default: the tokenizer's EOS); instruct models often have several (Llama 3: end of text and
  end of turn). `pad_id` defaults to the tokenizer's. Without a tokenizer both must be given and only the id methods
  work.
  """

  def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer | None, mesh: Mesh, config: SamplerConfig = SamplerConfig(),
               *, end_ids: Sequence[int] | None = None, pad_id: int | None = None):
    if tokenizer is None and (end_ids is None or pad_id is None):
      raise ValueError("a Sampler without a tokenizer needs end_ids and pad_id")
    self.cfg, self.tokenizer, self.mesh, self.config = cfg, tokenizer, mesh, config
    self.end_ids = tuple(int(e) for e in (end_ids if end_ids is not None else (tokenizer.eos_id,)))
    self.pad_id = int(pad_id if pad_id is not None else tokenizer.pad_id)
    if not self.end_ids:
      raise ValueError("Sampler end_ids must name at least one id")
    self._param_shardings = sharding.param_shardings(cfg, mesh)
    # The model as it samples: compute (and so the KV cache, `init_sampling_cache`) in the sampling dtype, the
    # blocks scanned or not.
    self._sample_cfg = dataclasses.replace(cfg, dtype=config.dtype or cfg.dtype,
                                           scan_layers=cfg.scan_layers or config.scan_layers)
    if cfg.scan_layers and config.weight_quant != "none":
      raise ValueError(f"sampler.weight_quant={config.weight_quant!r} needs a model with per-layer parameters; this "
                       "one scans its layers (ModelConfig.scan_layers)")
    self._stack_params = self._sample_cfg.scan_layers and not cfg.scan_layers

  def _bucket(self, n: int, index: int) -> int:
    for b in sorted(self.config.prompt_buckets):
      if n <= b:
        return b
    raise ValueError(f"prompt {index} has {n} tokens, more than the largest prompt bucket "
                     f"{max(self.config.prompt_buckets)} (sampler.prompt_buckets)")

  def iter_sample_ids(self, params: Any, prompt_ids: Sequence[Sequence[int]], *, num_samples: int, strategy: Strategy,
                      max_new_tokens: int, seed: int, stop_sequences: Sequence[Sequence[int]] = ()
                      ) -> Iterator[tuple[list[int], list[list[list[int]]]]]:
    """Yields (prompt indices, their `num_samples` completions' token ids each) batch by batch.

    Prompts are continued as given (no BOS added). A completion stops after an end id, which is dropped, or after a
    stop sequence, which is kept. The next batch is dispatched before the current one is read back, so the device
    keeps decoding while the caller scores the completions it was just given (continuous schedule: prompts come back
    as they complete, while the device decodes the slots just refilled). Results depend only on the prompts,
    settings and seed.
    """
    for idx, rows in self.iter_sampled(params, prompt_ids, num_samples=num_samples, strategy=strategy,
                                       max_new_tokens=max_new_tokens, seed=seed, stop_sequences=stop_sequences):
      yield idx, [[list(c.content_ids) for c in row] for row in rows]

  def iter_sampled(self, params: Any, prompt_ids: Sequence[Sequence[int]], *, num_samples: int, strategy: Strategy,
                   max_new_tokens: int, seed: int, stop_sequences: Sequence[Sequence[int]] = (),
                   with_logprobs: bool = False) -> Iterator[tuple[list[int], list[list["Sampled"]]]]:
    """`iter_sample_ids` with every generated token kept (`Sampled.ids` ends with the end id when one ended it) and,
    with `with_logprobs`, each token's log-probability under the sampling policy (same tokens for a given seed)."""
    if num_samples < 1 or max_new_tokens < 1:
      raise ValueError(f"num_samples and max_new_tokens must be >= 1, got {num_samples}, {max_new_tokens}")
    by_bucket: dict[int, list[int]] = {}
    for i, ids in enumerate(prompt_ids):
      if not len(ids):
        raise ValueError(f"prompt {i} is empty")
      by_bucket.setdefault(self._bucket(len(ids), i), []).append(i)
    limit = self.config.max_total_len
    if limit is not None and by_bucket and max(by_bucket) + max_new_tokens > limit:
      raise ValueError(f"prompt bucket {max(by_bucket)} + max_new_tokens {max_new_tokens} exceeds the model context "
                       f"{limit} (sampler.max_total_len)")
    shards = sharding.batch_divisor(self.mesh)
    per_call = max(1, self.config.batch_rows // num_samples)
    per_call = -(-per_call // shards) * shards
    eos_id, *other_ends = self.end_ids
    stop_sequences = tuple(tuple(int(t) for t in seq) for seq in stop_sequences if len(seq))
    stop_sequences += tuple((e,) for e in other_ends)
    params = jax.device_put(params, self._param_shardings)
    # Quantised from the float values first, then the rest (and the scales) cast to the sampling dtype.
    params = quantization.quantize(params, cfg=self.cfg, weight_quant=self.config.weight_quant, mesh=self.mesh)
    if self.config.dtype is not None:
      params = _cast_floats(params, self.config.dtype)
    if self._stack_params:
      params = sharding.stacked_params(params, self._sample_cfg, self.mesh)

    if self.config.schedule == "continuous":
      for i, samples in continuous.iter_sampled(
          params, prompt_ids, cfg=self._sample_cfg, mesh=self.mesh, prompt_len=max(by_bucket, default=1),
          slots=self.config.batch_rows, slot_group=self.config.slot_group, chunk_steps=self.config.chunk_steps,
          segment_ends=segment_ends(max_new_tokens, self.config.attend_buckets), num_samples=num_samples,
          strategy=strategy, max_new_tokens=max_new_tokens, seed=seed, eos_id=eos_id, pad_id=self.pad_id,
          stop_sequences=stop_sequences, with_logprobs=with_logprobs, weight_quant=self.config.weight_quant):
        yield i, [[Sampled(ids=ids, logprobs=logp, ended=bool(ids) and ids[-1] in self.end_ids)
                   for ids, logp in row] for row in samples]
      return
    batches = [(L, idx[i:i + per_call]) for L, idx in sorted(by_bucket.items()) for i in range(0, len(idx), per_call)]

    def dispatch(batch_index):
      L, idx = batches[batch_index]
      prompt_PxL = np.full((per_call, L), self.pad_id, np.int32)
      pad_P = np.full((per_call,), L - 1, np.int32)  # Filler rows: a single pad token.
      for row, i in enumerate(idx):
        prompt_PxL[row, L - len(prompt_ids[i]):] = prompt_ids[i]
        pad_P[row] = L - len(prompt_ids[i])
      prompt_PxL, pad_P = sharding.shard_batch((prompt_PxL, pad_P), self.mesh)
      rng = jax.random.fold_in(jax.random.key(seed), batch_index)
      with sharding.use_mesh(self.mesh):
        return sample_tokens(params, prompt_PxL, pad_P, rng, cfg=self._sample_cfg, strategy=strategy,
                             num_samples=num_samples, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=self.pad_id,
                             stop_sequences=stop_sequences, attend_buckets=tuple(self.config.attend_buckets),
                             with_logprobs=with_logprobs, weight_quant=self.config.weight_quant)

    in_flight = dispatch(0) if batches else None
    for b, (_, idx) in enumerate(batches):
      current, in_flight = in_flight, dispatch(b + 1) if b + 1 < len(batches) else None
      tokens_BxN, length_B, *logprobs = distributed.global_to_host(current)  # On every process of the mesh.
      rows = []
      for row in range(len(idx) * num_samples):
        ids = tuple(tokens_BxN[row, :length_B[row]].tolist())
        logp = tuple(logprobs[0][row, :length_B[row]].tolist()) if logprobs else None
        rows.append(Sampled(ids=ids, logprobs=logp, ended=bool(ids) and ids[-1] in self.end_ids))
      yield list(idx), [rows[j * num_samples:(j + 1) * num_samples] for j in range(len(idx))]

  def iter_samples(self, params: Any, prompts: Sequence[str], *, num_samples: int, strategy: Strategy,
                   max_new_tokens: int, seed: int, stop_strings: Sequence[str] = ()
                   ) -> Iterator[tuple[list[int], list[list[str]]]]:
    """Text version of `iter_sample_ids`: prompts get the tokenizer's BOS, completions are cut at `stop_strings`."""
    for idx, rows in self.iter_completions(params, prompts, num_samples=num_samples, strategy=strategy,
                                           max_new_tokens=max_new_tokens, seed=seed, stop_strings=stop_strings):
      yield idx, [[c.text for c in row] for row in rows]

  def iter_completions(self, params: Any, prompts: Sequence[str], *, num_samples: int, strategy: Strategy,
                       max_new_tokens: int, seed: int, stop_strings: Sequence[str] = (), with_logprobs: bool = False
                       ) -> Iterator[tuple[list[int], list[list["Completion"]]]]:
    """`iter_samples` with each completion's sampled ids (and log-probabilities) beside its text."""
    tok = self.tokenizer
    if tok is None:
      raise ValueError("this Sampler has no tokenizer; use iter_sample_ids")
    encoded = [tokenizers.prefix_ids(tok) + tok.encode(p) for p in prompts]
    stop_sequences = [tok.encode(s) for s in stop_strings if s]
    for idx, rows in self.iter_sampled(params, encoded, num_samples=num_samples, strategy=strategy,
                                       max_new_tokens=max_new_tokens, seed=seed, stop_sequences=stop_sequences,
                                       with_logprobs=with_logprobs):
      yield idx, [[Completion(text=_truncate(tok.decode(c.content_ids), stop_strings),
                              ids=c.ids, logprobs=c.logprobs, ended=c.ended) for c in row] for row in rows]

  def sample(self, params: Any, prompts: Sequence[str], **kwargs) -> list[list[str]]:
    """`num_samples` completions for every prompt, in prompt order. Takes the arguments of `iter_samples`."""
    out: list[list[str]] = [[] for _ in prompts]
    for idx, completions in self.iter_samples(params, prompts, **kwargs):
      for i, c in zip(idx, completions):
        out[i] = c
    return out


@dataclasses.dataclass(frozen=True)
class Sampled:
  """One sampled continuation: every generated token (the end id last when one ended it) and, when asked for, each
  token's log-probability under the sampling policy."""

  ids: tuple[int, ...]
  logprobs: tuple[float, ...] | None
  ended: bool  # Ended by an end id (the last of `ids`); otherwise by a stop sequence or the token budget.

  @property
  def content_ids(self) -> tuple[int, ...]:
    """`ids` without the end id."""
    return self.ids[:-1] if self.ended else self.ids


@dataclasses.dataclass(frozen=True)
class Completion(Sampled):
  """A `Sampled` continuation with its text: decoded without the end id, cut at the first stop string."""

  text: str = ""


@functools.partial(jax.jit, static_argnames="dtype")
def _cast_floats(params: Any, dtype: str) -> Any:
  """The floating-point parameters in `dtype`, on device and in their shards (integer leaves unchanged)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def _truncate(text: str, stop_strings: Sequence[str]) -> str:
  """Cuts `text` at the earliest stop string (which is not part of the completion)."""
  cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=len(text))
  return text[:cut]
