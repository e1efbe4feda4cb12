"""Batched autoregressive sampling with a KV cache: prefill, then a `jax.lax.while_loop` decode.

Layout: a batch of prompts is left-padded to a bucket length L, so every prompt ends at slot L - 1 and all rows write
the cache at the same slot. The cache has S = L + max_new_tokens slots; generated tokens fill slots [L, S). Row b's
real tokens start at slot pad_B[b], whose rotary position is 0.

Shape letters: B rows (prompts x samples), P prompts, L prompt bucket, S cache slots, N new tokens, V vocabulary.
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
from rest_jax.model.transformer import Cache, ModelConfig, Transformer, init_cache
from rest_jax.sampling.strategies import Strategy
from rest_jax.tokenizers import Tokenizer


@flax.struct.dataclass
class SamplingState:
  """The decode loop's carry."""

  tokens_BxS: jax.Array  # int32: left-padded prompt, then the generated tokens.
  cache: Cache  # Per layer {"k", "v"}: BxSxKxH; slots [0, slot) are filled.
  pad_B: jax.Array  # int32: left padding of each row; slot pad_B[b] has position 0.
  slot: jax.Array  # int32 scalar: slot of the newest token, which is not in the cache yet.
  length_B: jax.Array  # int32: generated tokens so far, up to and including EOS / a stop sequence.
  done_B: jax.Array  # bool: the row has produced EOS or a stop sequence.
  rng: jax.Array


def _prefill_mask(pad_B: jax.Array, L: int, S: int) -> jax.Array:
  """Query t sees slots [pad, t]; padding queries see only themselves, which keeps their softmax finite."""
  t_LxS, s_LxS = np.arange(L)[:, None], np.arange(S)[None, :]
  real_BxLxS = (s_LxS >= pad_B[:, None, None]) & (s_LxS <= t_LxS)
  return real_BxLxS | (t_LxS == s_LxS)[None]


def _stop_hits(tokens_BxS, slot, L, stop_sequences) -> jax.Array:
  """Whether the tokens ending at `slot` spell one of `stop_sequences` entirely inside the generated region."""
  B = tokens_BxS.shape[0]
  hit_B = jnp.zeros((B,), bool)
  for seq in stop_sequences:
    m = len(seq)
    window_Bxm = jax.lax.dynamic_slice_in_dim(tokens_BxS, jnp.maximum(slot - m + 1, 0), m, axis=1)
    match_B = jnp.all(window_Bxm == jnp.asarray(seq, jnp.int32), axis=1)
    hit_B = hit_B | (match_B & (slot - m + 1 >= L))
  return hit_B


@functools.partial(
    jax.jit, static_argnames=("cfg", "strategy", "num_samples", "max_new_tokens", "eos_id", "pad_id", "stop_sequences"))
def sample_tokens(params: Any, prompt_PxL: jax.Array, pad_P: jax.Array, rng: jax.Array, *, cfg: ModelConfig,
                  strategy: Strategy, num_samples: int, max_new_tokens: int, eos_id: int, pad_id: int,
                  stop_sequences: tuple[tuple[int, ...], ...] = ()) -> tuple[jax.Array, jax.Array]:
  """Samples `num_samples` continuations of each left-padded prompt.

  Returns (tokens_BxN, length_B) with B = P * num_samples, samples of prompt p in rows [p * n, (p + 1) * n). Tokens
  after EOS / a stop sequence (which are included in the length) or past the budget are `pad_id`.
  """
  model = Transformer(cfg)
  P, L = prompt_PxL.shape
  S = L + max_new_tokens
  n = num_samples

  # Prefill once per prompt, then copy the cache for its n samples.
  positions_PxL = jnp.maximum(jnp.arange(L)[None, :] - pad_P[:, None], 0)
  cache = init_cache(cfg, P, S)
  logits_PxLxV, cache = model.apply({"params": params}, prompt_PxL, positions_PxL, _prefill_mask(pad_P, L, S),
                                    cache, 0)
  repeat = lambda x: jnp.repeat(x, n, axis=0)
  cache, pad_B = jax.tree.map(repeat, cache), repeat(pad_P)
  rng, first_rng = jax.random.split(rng)
  first_B = strategy.next_tokens(repeat(logits_PxLxV[:, -1]), first_rng)
  B = P * n
  tokens_BxS = jnp.full((B, S), pad_id, jnp.int32).at[:, :L].set(repeat(prompt_PxL)).at[:, L].set(first_B)
  done_B = (first_B == eos_id) | _stop_hits(tokens_BxS, L, L, stop_sequences)
  state = SamplingState(tokens_BxS=tokens_BxS, cache=cache, pad_B=pad_B, slot=jnp.asarray(L, jnp.int32),
                        length_B=jnp.ones((B,), jnp.int32), done_B=done_B, rng=rng)

  def cond(state: SamplingState):
    return (state.slot < S - 1) & ~jnp.all(state.done_B)

  def body(state: SamplingState):
    slot = state.slot
    token_Bx1 = jax.lax.dynamic_slice_in_dim(state.tokens_BxS, slot, 1, axis=1)
    positions_Bx1 = (slot - state.pad_B)[:, None]
    s_S = jnp.arange(S)
    mask_Bx1xS = ((s_S[None, :] >= state.pad_B[:, None]) & (s_S[None, :] <= slot))[:, None, :]
    logits_Bx1xV, cache = model.apply({"params": params}, token_Bx1, positions_Bx1, mask_Bx1xS, state.cache, slot)
    rng, step_rng = jax.random.split(state.rng)
    next_B = strategy.next_tokens(logits_Bx1xV[:, 0], step_rng)
    tokens_BxS = jax.lax.dynamic_update_slice_in_dim(state.tokens_BxS, next_B[:, None], slot + 1, axis=1)
    hit_B = (next_B == eos_id) | _stop_hits(tokens_BxS, slot + 1, L, stop_sequences)
    return SamplingState(tokens_BxS=tokens_BxS, cache=cache, pad_B=state.pad_B, slot=slot + 1,
                         length_B=state.length_B + (~state.done_B).astype(jnp.int32), done_B=state.done_B | hit_B,
                         rng=rng)

  state = jax.lax.while_loop(cond, body, state)
  # Mask once, after the loop: everything past each row's end becomes padding.
  new_BxN = state.tokens_BxS[:, L:]
  new_BxN = jnp.where(jnp.arange(max_new_tokens)[None, :] < state.length_B[:, None], new_BxN, pad_id)
  return new_BxN, state.length_B


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  batch_rows: int = 256  # Rows (prompts x samples) per device call; rounded to the mesh's batch shards.
  prompt_buckets: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)  # Prompts are left-padded to the next bucket.
  max_total_len: int | None = None  # Longest prompt bucket + max_new_tokens allowed (the model's context).


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
    keeps decoding while the caller scores the completions it was just given. Results depend only on the prompts,
    settings and seed.
    """
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
        return sample_tokens(params, prompt_PxL, pad_P, rng, cfg=self.cfg, strategy=strategy, num_samples=num_samples,
                             max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=self.pad_id,
                             stop_sequences=stop_sequences)

    in_flight = dispatch(0) if batches else None
    for b, (_, idx) in enumerate(batches):
      current, in_flight = in_flight, dispatch(b + 1) if b + 1 < len(batches) else None
      tokens_BxN, length_B = distributed.global_to_host(current)  # On every process, when the mesh spans several.
      rows = []
      for row in range(len(idx) * num_samples):
        ids = tokens_BxN[row, :length_B[row]].tolist()
        rows.append(ids[:-1] if ids and ids[-1] in self.end_ids else ids)
      yield list(idx), [rows[j * num_samples:(j + 1) * num_samples] for j in range(len(idx))]

  def iter_samples(self, params: Any, prompts: Sequence[str], *, num_samples: int, strategy: Strategy,
                   max_new_tokens: int, seed: int, stop_strings: Sequence[str] = ()
                   ) -> Iterator[tuple[list[int], list[list[str]]]]:
    """Text version of `iter_sample_ids`: prompts get the tokenizer's BOS, completions are cut at `stop_strings`."""
    tok = self.tokenizer
    if tok is None:
      raise ValueError("this Sampler has no tokenizer; use iter_sample_ids")
    encoded = [tokenizers.prefix_ids(tok) + tok.encode(p) for p in prompts]
    stop_sequences = [tok.encode(s) for s in stop_strings if s]
    for idx, ids in self.iter_sample_ids(params, encoded, num_samples=num_samples, strategy=strategy,
                                         max_new_tokens=max_new_tokens, seed=seed, stop_sequences=stop_sequences):
      yield idx, [[_truncate(tok.decode(c), stop_strings) for c in row] for row in ids]

  def sample(self, params: Any, prompts: Sequence[str], **kwargs) -> list[list[str]]:
    """`num_samples` completions for every prompt, in prompt order. Takes the arguments of `iter_samples`."""
    out: list[list[str]] = [[] for _ in prompts]
    for idx, completions in self.iter_samples(params, prompts, **kwargs):
      for i, c in zip(idx, completions):
        out[i] = c
    return out


def _truncate(text: str, stop_strings: Sequence[str]) -> str:
  """Cuts `text` at the earliest stop string (which is not part of the completion)."""
  cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=len(text))
  return text[:cut]
