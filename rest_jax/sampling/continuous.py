"""Continuous batching: a fixed set of decode slots, each taking the next waiting prompt as soon as its own is done.

The slots are G groups of g rows. A group holds one work item: g samples of one prompt (`SamplerConfig.slot_group`;
by default all of a prompt's samples), which read one copy of the prompt's keys and values (the shared prefix of
`rest_jax.model.transformer.Cache`, one prefix per group). Each group has its own generated slot (`step_G`), rotary
positions and length; rows of a group decode in lockstep. The device decodes in chunks of up to
`SamplerConfig.chunk_steps` steps (`decode_chunk`, jitted, one `while_loop`), leaving the chunk early once a quarter
of the groups are done; between chunks the host reads which groups are done, hands their completions back, and
`insert`s the next waiting items into the freed groups (a prefill of just those prompts, scattered into the groups'
prefix slots, and a fresh start of their generated slots). So decoding stops for a finished group within one chunk,
and completions of very different lengths do not each cost the longest one's time.

Randomness is per sample, not per batch: the token at generated slot t of sample s of prompt p is drawn with
fold_in(fold_in(fold_in(key(seed), p), s), t). The tokens therefore depend on the prompts, settings and seed only,
not on how work items fall into groups, on the number of slots or on the chunk length (tested).

A step attends to the generated slots up to the smallest segment end (`sampler.segment_ends`) that covers the
furthest group's slot at the chunk's end, so short completions do not read the whole cache.

Shape letters: G slot groups, g rows per group, B = G * g rows, R groups (re)filled by one insert, L the prompt
slots (the largest prompt bucket of the call), N new tokens, V vocabulary.
"""

import collections
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rest_jax import distributed
from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig, SampleKeys, init_sampling_cache, output_logits
from rest_jax.sampling import quantization
from rest_jax.sampling.strategies import Strategy


@flax.struct.dataclass
class SlotState:
  """Everything the slots hold between chunks (on the device, batch axes split over the mesh)."""

  tokens_BxN: jax.Array  # int32: generated tokens; slot step_G[group] holds each row's newest.
  cache: list[dict[str, jax.Array]]  # Per layer {"prefix_k", "prefix_v": GxKxLxH, "k", "v": BxKxNxH} (`Cache`).
  prefix_pos_GxL: jax.Array  # int32 rotary positions of each group's prompt slots (-1: padding).
  gen_pos_BxN: jax.Array  # int32 rotary positions of each row's generated slots.
  step_G: jax.Array  # int32: generated slot of each group's newest token (not in the cache yet).
  length_B: jax.Array  # int32: tokens generated so far, up to and including the end id / stop sequence.
  done_B: jax.Array  # bool: ended, out of budget, or holding no sample.
  prompt_B: jax.Array  # int32: the prompt index of the sample in each row (seeds its randomness).
  sample_B: jax.Array  # int32: the sample's index among its prompt's samples.
  logprobs_BxN: jax.Array | None = None  # float32 log-probability of each token under the strategy's policy.


def _constrain_batch(x: jax.Array) -> jax.Array:
  """Splits the leading axis over the mesh's batch axes (as the model's activations are)."""
  return nn.with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1))


def _layer_axes(x: jax.Array) -> tuple[Any, ...]:
  """Index of all layers: none in a per-layer cache array (4-D), the leading one in a stacked (scan_layers) one."""
  return (slice(None),) * (x.ndim - 4)


def _constrained(state: SlotState) -> SlotState:
  cache = [{name: nn.with_logical_constraint(
      x, ("layers",) * (x.ndim - 4) + ("batch", "act_kv_heads", "cache_length", "head_dim"))
            for name, x in layer.items()} for layer in state.cache]
  fields = {f: _constrain_batch(getattr(state, f)) for f in ("tokens_BxN", "prefix_pos_GxL", "gen_pos_BxN", "step_G",
                                                              "length_B", "done_B", "prompt_B", "sample_B")}
  if state.logprobs_BxN is not None:
    fields["logprobs_BxN"] = _constrain_batch(state.logprobs_BxN)
  return state.replace(cache=cache, **fields)


@functools.partial(jax.jit, static_argnames=("cfg", "groups", "group_rows", "prompt_len", "max_new_tokens",
                                             "pad_id", "with_logprobs"))
def init_state(*, cfg: ModelConfig, groups: int, group_rows: int, prompt_len: int, max_new_tokens: int, pad_id: int,
               with_logprobs: bool) -> SlotState:
  """Empty slots: every row done and holding no sample."""
  B, N = groups * group_rows, max_new_tokens
  return _constrained(SlotState(
      tokens_BxN=jnp.full((B, N), pad_id, jnp.int32),
      cache=init_sampling_cache(cfg, groups, prompt_len, B, N),
      prefix_pos_GxL=jnp.full((groups, prompt_len), -1, jnp.int32),
      gen_pos_BxN=jnp.zeros((B, N), jnp.int32), step_G=jnp.zeros((groups,), jnp.int32),
      length_B=jnp.zeros((B,), jnp.int32), done_B=jnp.ones((B,), bool), prompt_B=jnp.zeros((B,), jnp.int32),
      sample_B=jnp.zeros((B,), jnp.int32),
      logprobs_BxN=jnp.zeros((B, N), jnp.float32) if with_logprobs else None))


def _row_keys(rng: jax.Array, prompt_B: jax.Array, sample_B: jax.Array, slot_B: jax.Array) -> jax.Array:
  """The key of each row's token at generated slot `slot_B`: fold_in(fold_in(fold_in(rng, prompt), sample), slot)."""
  fold = lambda p, s, t: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, p), s), t)
  return jax.vmap(fold)(prompt_B, sample_B, slot_B)


def _draw(strategy: Strategy, logits_BxV: jax.Array, keys_B: jax.Array) -> jax.Array:
  """One token per row, each with its own key (so a row's draw does not depend on the other rows)."""
  return jax.vmap(lambda logits_V, key: strategy.next_tokens(logits_V[None], key)[0])(logits_BxV, keys_B)


def _stop_hits(tokens_BxN: jax.Array, slot_B: jax.Array, stop_sequences) -> jax.Array:
  """Whether the tokens ending at each row's generated slot `slot_B` spell one of `stop_sequences`."""
  hit_B = jnp.zeros(slot_B.shape, bool)
  for seq in stop_sequences:
    m = len(seq)
    index_Bxm = slot_B[:, None] - m + 1 + jnp.arange(m)[None, :]
    window_Bxm = jnp.take_along_axis(tokens_BxN, jnp.maximum(index_Bxm, 0), axis=1)
    hit_B = hit_B | (jnp.all(window_Bxm == jnp.asarray(seq, jnp.int32), axis=1) & (slot_B - m + 1 >= 0))
  return hit_B


@functools.partial(jax.jit, donate_argnames="state",
                   static_argnames=("cfg", "strategy", "eos_id", "pad_id", "stop_sequences", "with_logprobs",
                                    "weight_quant"))
def insert(params: Any, state: SlotState, prompt_RxL: jax.Array, pad_R: jax.Array, group_R: jax.Array,
           prompt_R: jax.Array, first_sample_R: jax.Array, count_R: jax.Array, rng: jax.Array, *, cfg: ModelConfig,
           strategy: Strategy, eos_id: int, pad_id: int, stop_sequences: tuple[tuple[int, ...], ...],
           with_logprobs: bool, weight_quant: str = "none") -> SlotState:
  """Starts work items in groups `group_R` (an index of G or more: filler, dropped).

  Item r is samples [first_sample_R[r], first_sample_R[r] + count_R[r]) of prompt prompt_R[r] (left-padded in
  prompt_RxL by pad_R[r] slots); rows of its group past count_R[r] hold no sample. The prefill writes each item's
  prompt keys and values once, into its group's prefix slots; its rows draw their first token.
  """
  G, L = state.prefix_pos_GxL.shape
  B, N = state.tokens_BxN.shape
  g = B // G
  R = prompt_RxL.shape[0]
  positions_RxL = jnp.maximum(jnp.arange(L)[None, :] - pad_R[:, None], 0)
  prefix_pos_RxL = jnp.where(jnp.arange(L)[None, :] >= pad_R[:, None], positions_RxL, -1).astype(jnp.int32)
  empty = init_sampling_cache(cfg, R, L, R, 1)
  x_RxLxD, written = quantization.model(cfg, weight_quant).apply(
      {"params": params}, prompt_RxL, positions_RxL, SampleKeys(prefix_pos_PxL=prefix_pos_RxL), empty, 0, hidden=True)
  logits_RxV = output_logits(cfg, params, x_RxLxD[:, -1:])[:, 0]

  cache = [{**layer, **{name: layer[name].at[(*_layer_axes(layer[name]), group_R)].set(new[name], mode="drop")
                        for name in ("prefix_k", "prefix_v")}}
           for layer, new in zip(state.cache, written)]
  rows_Rg = (group_R[:, None] * g + jnp.arange(g)[None, :]).reshape(-1)  # Filler groups' rows are >= B: dropped.
  sample_Rg = (first_sample_R[:, None] + jnp.arange(g)[None, :]).reshape(-1).astype(jnp.int32)
  live_Rg = (jnp.arange(g)[None, :] < count_R[:, None]).reshape(-1)
  prompt_Rg = jnp.repeat(prompt_R, g).astype(jnp.int32)
  logits_RgxV = jnp.repeat(logits_RxV, g, axis=0)
  first_Rg = _draw(strategy, logits_RgxV, _row_keys(rng, prompt_Rg, sample_Rg, jnp.zeros_like(prompt_Rg)))
  tokens_RgxN = jnp.full((R * g, N), pad_id, jnp.int32).at[:, 0].set(first_Rg)
  ended_Rg = (first_Rg == eos_id) | _stop_hits(tokens_RgxN, jnp.zeros_like(first_Rg), stop_sequences) | (N == 1)
  gen_pos_RgxN = (jnp.repeat(L - pad_R, g)[:, None] + jnp.arange(N)[None, :]).astype(jnp.int32)
  put = lambda x, value: x.at[rows_Rg].set(value, mode="drop")
  logprobs_BxN = state.logprobs_BxN
  if with_logprobs:
    first_logp_Rg = strategy.log_probs(logits_RgxV, first_Rg)
    logprobs_BxN = put(logprobs_BxN, jnp.zeros((R * g, N), jnp.float32).at[:, 0].set(first_logp_Rg))
  return _constrained(state.replace(
      tokens_BxN=put(state.tokens_BxN, tokens_RgxN), cache=cache,
      prefix_pos_GxL=state.prefix_pos_GxL.at[group_R].set(prefix_pos_RxL, mode="drop"),
      gen_pos_BxN=put(state.gen_pos_BxN, gen_pos_RgxN),
      step_G=state.step_G.at[group_R].set(0, mode="drop"),
      length_B=put(state.length_B, live_Rg.astype(jnp.int32)), done_B=put(state.done_B, ~live_Rg | ended_Rg),
      prompt_B=put(state.prompt_B, prompt_Rg), sample_B=put(state.sample_B, sample_Rg), logprobs_BxN=logprobs_BxN))


def _groups_done(done_B: jax.Array, groups: int) -> jax.Array:
  return jnp.all(done_B.reshape(groups, -1), axis=1)


@functools.partial(jax.jit, donate_argnames="state",
                   static_argnames=("cfg", "strategy", "eos_id", "stop_sequences", "chunk_steps", "attend_len",
                                    "weight_quant"))
def decode_chunk(params: Any, state: SlotState, rng: jax.Array, exit_done: jax.Array, *, cfg: ModelConfig,
                 strategy: Strategy, eos_id: int, stop_sequences: tuple[tuple[int, ...], ...], chunk_steps: int,
                 attend_len: int, weight_quant: str = "none") -> SlotState:
  """Up to `chunk_steps` decode steps of every group that is not done; stops early once `exit_done` groups are done.

  `attend_len` (static) must cover every group's generated slot at the chunk's end.
  """
  G = state.step_G.shape[0]
  B, N = state.tokens_BxN.shape
  g = B // G

  def body(carry):
    i, s = carry
    alive_G = ~_groups_done(s.done_B, G)
    step_B = jnp.repeat(s.step_G, g)
    token_B = jnp.take_along_axis(s.tokens_BxN, step_B[:, None], axis=1)[:, 0]
    positions_Bx1 = jnp.take_along_axis(s.gen_pos_BxN, step_B[:, None], axis=1)
    keys = SampleKeys(prefix_pos_PxL=s.prefix_pos_GxL, gen_pos_BxN=s.gen_pos_BxN)
    logits_Bx1xV, cache = quantization.model(cfg, weight_quant).apply(
        {"params": params}, token_B[:, None], positions_Bx1, keys, s.cache, step_B, attend_len=attend_len)
    logits_BxV = logits_Bx1xV[:, 0]
    next_slot_B = step_B + 1
    next_B = _draw(strategy, logits_BxV, _row_keys(rng, s.prompt_B, s.sample_B, next_slot_B))
    rows_B = jnp.arange(B)
    tokens_BxN = s.tokens_BxN.at[rows_B, next_slot_B].set(next_B, mode="drop")  # A done group at N - 1: dropped.
    hit_B = (next_B == eos_id) | _stop_hits(tokens_BxN, jnp.minimum(next_slot_B, N - 1), stop_sequences)
    logprobs_BxN = s.logprobs_BxN
    if logprobs_BxN is not None:
      logprobs_BxN = logprobs_BxN.at[rows_B, next_slot_B].set(strategy.log_probs(logits_BxV, next_B), mode="drop")
    step_G = jnp.where(alive_G, s.step_G + 1, s.step_G)
    out_of_budget_B = jnp.repeat(step_G >= N - 1, g)
    return i + 1, s.replace(tokens_BxN=tokens_BxN, cache=cache, step_G=step_G,
                            length_B=s.length_B + (~s.done_B).astype(jnp.int32),
                            done_B=s.done_B | hit_B | out_of_budget_B, logprobs_BxN=logprobs_BxN)

  def cond(carry):
    i, s = carry
    return (i < chunk_steps) & (jnp.sum(_groups_done(s.done_B, G)) < exit_done)

  _, state = jax.lax.while_loop(cond, body, (jnp.asarray(0, jnp.int32), state))
  return _constrained(state)


def iter_sampled(params: Any, prompt_ids: Sequence[Sequence[int]], *, cfg: ModelConfig, mesh: Mesh,
                 prompt_len: int, slots: int, slot_group: int, chunk_steps: int, segment_ends: Sequence[int],
                 num_samples: int, strategy: Strategy, max_new_tokens: int, seed: int, eos_id: int, pad_id: int,
                 stop_sequences: tuple[tuple[int, ...], ...], with_logprobs: bool, weight_quant: str = "none"
                 ) -> Iterator[tuple[list[int], list[list[tuple[tuple[int, ...], tuple[float, ...] | None]]]]]:
  """Yields (prompt indices, per prompt its `num_samples` (token ids, log-probabilities)) as prompts complete.

  `params` are on the mesh in the sampling dtype (`quantization.quantize`'s with `weight_quant`); prompts are
  left-padded to `prompt_len`; `slots` rows (rounded down to whole groups of `slot_group` rows, and up to the
  mesh's batch shards) decode at once.
  """
  n, N = num_samples, max_new_tokens
  g = max(1, min(slot_group or n, n))
  blocks = -(-n // g)
  items = collections.deque((p, b * g, min(g, n - b * g)) for p in range(len(prompt_ids)) for b in range(blocks))
  shards = sharding.batch_divisor(mesh)
  G = max(1, min(slots // g, len(items)))
  G = -(-G // shards) * shards
  rng = jax.random.key(seed)
  static = dict(cfg=cfg, strategy=strategy, eos_id=eos_id, stop_sequences=stop_sequences, weight_quant=weight_quant)
  with sharding.use_mesh(mesh):
    state = init_state(cfg=cfg, groups=G, group_rows=g, prompt_len=prompt_len, max_new_tokens=N, pad_id=pad_id,
                       with_logprobs=with_logprobs)
  held: list[tuple[int, int, int] | None] = [None] * G  # The work item of each group.
  step_G = np.zeros((G,), np.int64)  # Host copy, as of the last chunk.
  results: dict[int, list[Any]] = {}
  ready: list[int] = []

  while True:
    free = [k for k in range(G) if held[k] is None]
    fill = [(k, items.popleft()) for k in free[:len(items)]]
    if fill:
      R = min(G, -(-(1 << (len(fill) - 1).bit_length()) // shards) * shards)  # A power of two: few compiles.
      prompt_RxL = np.full((R, prompt_len), pad_id, np.int32)
      pad_R = np.full((R,), prompt_len - 1, np.int32)  # Filler items: a single pad token, into no group.
      group_R, prompt_R = np.full((R,), G, np.int32), np.zeros((R,), np.int32)
      first_R, count_R = np.zeros((R,), np.int32), np.zeros((R,), np.int32)
      for r, (k, (p, first, count)) in enumerate(fill):
        ids = prompt_ids[p]
        prompt_RxL[r, prompt_len - len(ids):] = ids
        pad_R[r], group_R[r], prompt_R[r], first_R[r], count_R[r] = prompt_len - len(ids), k, p, first, count
        held[k], step_G[k] = (p, first, count), 0
      arrays = sharding.shard_batch((prompt_RxL, pad_R, group_R, prompt_R, first_R, count_R), mesh)
      with sharding.use_mesh(mesh):
        state = insert(params, state, *arrays, rng, pad_id=pad_id, with_logprobs=with_logprobs, **static)
    for p in ready:  # Handed back while the device works on the slots just (re)filled.
      yield [p], [results.pop(p)]
    ready = []
    if all(h is None for h in held):
      return
    idle = sum(h is None for h in held)
    exit_done = min(G, idle + max(1, G // 4)) if items else G
    furthest = max(int(step_G[k]) for k in range(G) if held[k] is not None) + chunk_steps
    attend_len = next((e for e in segment_ends if e >= min(furthest + 1, N)), N)
    with sharding.use_mesh(mesh):
      state = decode_chunk(params, state, rng, jnp.asarray(exit_done, jnp.int32), chunk_steps=chunk_steps,
                           attend_len=attend_len, **static)
    done_B, step_G = distributed.global_to_host((state.done_B, state.step_G))
    step_G = np.array(step_G)
    finished = [k for k in range(G) if held[k] is not None and done_B[k * g:(k + 1) * g].all()]
    if not finished:
      continue
    fetched = distributed.global_to_host((state.tokens_BxN, state.length_B, state.logprobs_BxN))
    tokens_BxN, length_B, logprobs_BxN = (None if x is None else np.array(x) for x in fetched)
    for k in finished:
      p, first, count = held[k]
      held[k] = None
      out = results.setdefault(p, [None] * n)
      for j in range(count):
        b, length = k * g + j, int(length_B[k * g + j])
        logp = tuple(logprobs_BxN[b, :length].tolist()) if with_logprobs else None
        out[first + j] = (tuple(tokens_BxN[b, :length].tolist()), logp)
      if all(o is not None for o in out):
        ready.append(p)
