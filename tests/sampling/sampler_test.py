"""Behaviour tests for rest_jax.sampling.sampler: the KV-cache decode loop against a naive full recompute.

Two models are used: random weights (for the cache arithmetic) and a hand-built "bigram" model whose next token is a
fixed function of the current token (so EOS, budgets and stop strings happen exactly where the test puts them).
Every distinct static setting compiles the decode loop anew, so the tests share a few settings on purpose.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rest_jax.model import sharding
from rest_jax.model.transformer import Transformer, causal_mask
from rest_jax.sampling import Greedy, Sampler, SamplerConfig, Sampling, sample_tokens
from rest_jax.sampling import sampler as sampler_lib
from tests.helpers import CharTokenizer, tiny_config

TOK = CharTokenizer(alphabet="abcdefghijklmnopqrstuvwxyz .")  # 32 ids: divisible by the tensor axis.
CFG = tiny_config(vocab_size=TOK.vocab_size, num_layers=1, tied_embeddings=False)
WINDOW_CFG = dataclasses.replace(CFG, sliding_window=3)
N = 8  # max_new_tokens everywhere.
L = 8  # Prompt bucket of the direct `sample_tokens` calls.
NAIVE_LEN = L + N  # Row length of the naive recompute.
SAMPLER_CONFIG = SamplerConfig(batch_rows=4, prompt_buckets=(8, 16))
STOP = "cd"  # The direct calls always run with this stop sequence; prompts below decide whether it is hit.
# The test's own reference forward is tiny: LLVM optimisation would cost more compile time than it saves.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}

ID = {c: TOK.encode(c)[0] for c in TOK.alphabet}


def _param_shapes(cfg):
  tokens_1x1 = jnp.zeros((1, 1), jnp.int32)
  init = lambda rng: Transformer(cfg).init(rng, tokens_1x1, tokens_1x1, jnp.ones((1, 1, 1), bool))["params"]
  return nn.unbox(jax.eval_shape(init, jax.random.key(0)))


def _random_params(cfg, seed: int = 0):
  rs = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: 1.0 + 0.1 * rs.normal(size=s.shape).astype(np.float32) if path[-1].key == "scale" else
      0.3 * rs.normal(size=s.shape).astype(np.float32), _param_shapes(cfg))


# Bigram chains: a b c d e EOS; f g h ... o; x EOS. Everything else (EOS included) leads to "z".
NEXT = {ID[c]: ID[n] for c, n in zip("abcdfghijklmnz", "bcdeghijklmnoz")}
NEXT.update({ID["e"]: TOK.eos_id, ID["x"]: TOK.eos_id})


def _bigram_params():
  """Attention and MLP outputs are zero, so the logits depend on the current token only: argmax = NEXT[token].

  The same weights serve CFG and WINDOW_CFG (the window changes no shapes and the attention output is zero anyway).
  """
  params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), _param_shapes(CFG))
  params = jax.tree_util.tree_map_with_path(lambda path, x: x + 1.0 if path[-1].key == "scale" else x, params)
  params["embed"]["embedding"] = np.eye(TOK.vocab_size, CFG.embed_dim, dtype=np.float32)
  head_DxV = np.zeros((CFG.embed_dim, TOK.vocab_size), np.float32)
  for i in range(TOK.vocab_size):
    head_DxV[i, NEXT.get(i, ID["z"])] = 1.0
  params["lm_head"]["kernel"] = head_DxV
  return params


_RECORDED: list[np.ndarray] = []  # Logits the decode loop handed to the strategy, in execution order.


@dataclasses.dataclass(frozen=True)
class _RecordingGreedy:
  """Greedy that also copies each step's logits to the host, so they can be compared with a full forward."""

  def next_tokens(self, logits_BxV, rng):
    jax.debug.callback(lambda x: _RECORDED.append(np.asarray(x)), logits_BxV, ordered=True)
    return Greedy().next_tokens(logits_BxV, rng)


def _encode(prompt: str) -> list[int]:
  return [TOK.bos_id] + TOK.encode(prompt)


def _direct(params, prompts, attend_buckets=(64,)):
  """sample_tokens on left-padded prompts -> (tokens_PxN, length_P, logits per step [N][P, V]).

  Always with WINDOW_CFG, the recording greedy strategy and the STOP sequence: one compiled decode loop (one segment,
  since N < 64, unless `attend_buckets` say otherwise).
  """
  prompt_PxL = np.full((len(prompts), L), TOK.pad_id, np.int32)
  pad_P = np.zeros(len(prompts), np.int32)
  for p, prompt in enumerate(prompts):
    ids = _encode(prompt)
    prompt_PxL[p, L - len(ids):], pad_P[p] = ids, L - len(ids)
  _RECORDED.clear()
  tokens_PxN, length_P = sample_tokens(
      params, prompt_PxL, pad_P, jax.random.key(0), cfg=WINDOW_CFG, strategy=_RecordingGreedy(), num_samples=1,
      max_new_tokens=N, eos_id=TOK.eos_id, pad_id=TOK.pad_id, stop_sequences=(tuple(TOK.encode(STOP)),),
      attend_buckets=attend_buckets)
  jax.effects_barrier()
  return np.asarray(tokens_PxN), np.asarray(length_P), list(_RECORDED)


@functools.partial(jax.jit, static_argnames="cfg", compiler_options=_FAST_COMPILE)
def _full_logits(params, tokens_1xT, length, cfg):
  """Logits of a right-padded row whose first `length` tokens are real: a plain full forward, no cache."""
  segments_1xT = (jnp.arange(tokens_1xT.shape[1]) < length).astype(jnp.int32)[None]
  logits_1xTxV, _ = Transformer(cfg).apply({"params": params}, tokens_1xT, jnp.arange(tokens_1xT.shape[1])[None],
                                           causal_mask(segments_1xT))
  return logits_1xTxV[0]


def _naive_greedy(params, prompt: str, cfg, stop: str = ""):
  """Greedy by recomputing the full forward every step -> (new tokens up to EOS / stop, logits of each step)."""
  seq, new, step_logits = _encode(prompt), [], []
  stop_ids = TOK.encode(stop)
  for _ in range(N):
    row = np.zeros((1, NAIVE_LEN), np.int32)
    row[0, :len(seq)] = seq
    logits_V = np.asarray(_full_logits(params, row, len(seq), cfg))[len(seq) - 1]
    top2 = np.sort(logits_V)[-2:]
    assert top2[1] - top2[0] > 1e-3, "a near tie would make the greedy comparison meaningless"
    token = int(logits_V.argmax())
    seq, new = seq + [token], new + [token]
    step_logits.append(logits_V)
    if token == TOK.eos_id or (stop_ids and new[-len(stop_ids):] == stop_ids):
      break
  return new, step_logits


def _text(new_ids: list[int]) -> str:
  return TOK.decode([t for t in new_ids if t != TOK.eos_id])


@pytest.fixture(scope="module")
def random_params():
  return _random_params(CFG, seed=0)


@pytest.fixture(scope="module")
def bigram_params():
  return _bigram_params()


@pytest.fixture(scope="module")
def sampler():
  return Sampler(CFG, TOK, sharding.make_mesh(devices=jax.devices()[:1]), SAMPLER_CONFIG)


RANDOM_PROMPTS = ["ab", "abcdefg", "q", "xyz"]  # 3, 8 (no padding), 2 and 4 tokens with BOS.


def test_greedy_decode_equals_naive_full_recompute():
  # With a sliding window, so the window's mask is checked against the left-padded cache layout as well (full
  # attention is compared with the naive recompute through the Sampler below).
  params = _random_params(WINDOW_CFG, seed=1)
  tokens_PxN, length_P, recorded = _direct(params, RANDOM_PROMPTS)
  for p, prompt in enumerate(RANDOM_PROMPTS):
    expected, naive_logits = _naive_greedy(params, prompt, WINDOW_CFG, stop=STOP)
    assert length_P[p] == len(expected)
    assert tokens_PxN[p, :length_P[p]].tolist() == expected
    assert np.all(tokens_PxN[p, length_P[p]:] == TOK.pad_id)
    # The logits the cached decode used at each step equal the full forward's at that position.
    np.testing.assert_allclose(np.stack([step[p] for step in recorded[:len(expected)]]), np.stack(naive_logits),
                               atol=1e-4)
  assert length_P.max() == N  # At least one prompt ran the whole budget: every decode step was compared.


def test_decode_segments_that_attend_to_fewer_slots_give_the_same_tokens_and_logits():
  params = _random_params(WINDOW_CFG, seed=1)
  assert sampler_lib.segment_ends(N, (2, 5, 64)) == (2, 5, N)
  tokens_PxN, length_P, recorded = _direct(params, RANDOM_PROMPTS)
  seg_tokens_PxN, seg_length_P, seg_recorded = _direct(params, RANDOM_PROMPTS, attend_buckets=(2, 5))
  np.testing.assert_array_equal(seg_tokens_PxN, tokens_PxN)
  np.testing.assert_array_equal(seg_length_P, length_P)
  assert len(seg_recorded) == len(recorded) == N
  np.testing.assert_allclose(np.stack(seg_recorded), np.stack(recorded), atol=1e-6)


def test_eos_ends_a_row_and_everything_after_it_is_padding(bigram_params):
  tokens_PxN, length_P, _ = _direct(bigram_params, ["c", "x", "f", "e"])
  eos, pad = TOK.eos_id, TOK.pad_id
  expected = [
      [ID["d"], ID["e"], eos] + [pad] * 5,  # "cd" straddles the prompt: not a stop.
      [eos] + [pad] * 7,
      [ID[c] for c in "ghijklmn"],  # The budget ends the row.
      [eos] + [pad] * 7,
  ]
  np.testing.assert_array_equal(tokens_PxN, expected)
  np.testing.assert_array_equal(length_P, [3, 1, 8, 1])


def test_a_stop_sequence_ends_decoding_on_the_device(bigram_params):
  b, c, d, pad = ID["b"], ID["c"], ID["d"], TOK.pad_id
  tokens_PxN, length_P, _ = _direct(bigram_params, ["a", "f", "xa", "b"])
  np.testing.assert_array_equal(tokens_PxN[[0, 2, 3]], [[b, c, d] + [pad] * 5] * 2 + [[c, d] + [pad] * 6])
  assert length_P.tolist() == [3, 8, 3, 2]
  _, length_P, recorded = _direct(bigram_params, ["a", "x", "b", "x"])
  assert length_P.tolist() == [3, 1, 2, 1]
  assert len(recorded) == 3  # The loop stopped once every row was done, not at the budget.


def test_sampler_text_equals_naive_greedy(sampler, random_params):
  prompts = RANDOM_PROMPTS + ["hello", "abc"]  # Two calls of 4 rows; the second has 2 filler rows.
  texts = sampler.sample(random_params, prompts, num_samples=1, strategy=Greedy(), max_new_tokens=N, seed=0)
  expected = [[_text(_naive_greedy(random_params, p, CFG)[0])] for p in prompts]
  assert texts == expected
  assert sum(len(t[0]) for t in texts) > 20  # Real text was generated and compared.


def test_sampler_stops_at_eos_and_drops_it(sampler, bigram_params):
  texts = sampler.sample(bigram_params, ["a", "f", "x", "c"], num_samples=1, strategy=Greedy(), max_new_tokens=N,
                         seed=0)
  assert texts == [["bcde"], ["ghijklmn"], [""], ["de"]]


def test_stop_strings_truncate_the_text_and_greedy_samples_are_identical(sampler, bigram_params, random_params):
  prompts = ["a", "f", "c", "ab"]
  kw = dict(num_samples=3, strategy=Greedy(), max_new_tokens=N, seed=0)
  no_stop = sampler.sample(bigram_params, prompts, **dict(kw, num_samples=1))
  stopped = sampler.sample(bigram_params, prompts, stop_strings=(STOP,), **kw)
  # "a" -> "bcde" is cut before "cd"; "c" -> "de" has "cd" only across the prompt boundary; "ab" -> "cde" -> "".
  assert stopped == [["b"] * 3, ["ghijklmn"] * 3, ["de"] * 3, [""] * 3]
  for (full,), samples in zip(no_stop, stopped):
    assert samples == [full.split(STOP)[0]] * 3 and all(STOP not in s for s in samples)
  # With random weights as well, the n greedy samples of a prompt are the single greedy sample.
  random_single = sampler.sample(random_params, prompts, **dict(kw, num_samples=1))
  random_stopped = sampler.sample(random_params, prompts, stop_strings=(STOP,), **kw)
  assert random_stopped == [[t.split(STOP)[0]] * 3 for (t,) in random_single]


def test_sampling_is_determined_by_the_seed(sampler, random_params):
  kw = dict(num_samples=3, strategy=Sampling(temperature=1.0), max_new_tokens=N)
  prompts = ["ab", "q"]
  a = sampler.sample(random_params, prompts, seed=0, **kw)
  assert a == sampler.sample(random_params, prompts, seed=0, **kw)
  assert a != sampler.sample(random_params, prompts, seed=1, **kw)
  assert any(len(set(samples)) > 1 for samples in a)  # The samples of one prompt are drawn independently.


@pytest.mark.parametrize("mesh_shape", [(4, 1, 2), (8, 1, 1)], ids=["data4_tensor2", "data8"])
def test_sharded_sampling_gives_the_single_device_tokens(sampler, random_params, mesh_shape):
  prompts = ["ab", "abcdefg", "q", "xyz", "hello"]
  kw = dict(num_samples=1, strategy=Greedy(), max_new_tokens=N, seed=0)
  expected = sampler.sample(random_params, prompts, **kw)
  mesh_sampler = Sampler(CFG, TOK, sharding.make_mesh(*mesh_shape), SAMPLER_CONFIG)
  assert mesh_sampler.sample(random_params, prompts, **kw) == expected


def test_a_prompt_longer_than_the_largest_bucket_is_rejected(sampler, random_params):
  with pytest.raises(ValueError, match="prompt 1 has 17 tokens.*16"):
    sampler.sample(random_params, ["ab", "a" * 16], num_samples=1, strategy=Greedy(), max_new_tokens=N, seed=0)


def test_prompt_bucket_plus_new_tokens_beyond_max_total_len_is_rejected(sampler, random_params):
  limited = Sampler(CFG, TOK, sharding.make_mesh(devices=jax.devices()[:1]),
                    dataclasses.replace(SAMPLER_CONFIG, max_total_len=16))
  kw = dict(num_samples=1, strategy=Greedy(), max_new_tokens=N, seed=0)
  # 11 tokens go to the 16 bucket: 16 + 8 > 16.
  with pytest.raises(ValueError, match=r"prompt bucket 16 \+ max_new_tokens 8 exceeds .* 16 \(sampler.max_total_len\)"):
    limited.sample(random_params, ["ab", "a" * 10], **kw)
  assert limited.sample(random_params, ["ab"], **kw) == sampler.sample(random_params, ["ab"], **kw)  # 8 + 8 fits.


@pytest.mark.parametrize("max_total_len", [None, 64])
def test_no_prompts_give_no_completions(random_params, max_total_len):
  empty_ok = Sampler(CFG, TOK, sharding.make_mesh(devices=jax.devices()[:1]),
                     dataclasses.replace(SAMPLER_CONFIG, max_total_len=max_total_len))
  assert empty_ok.sample(random_params, [], num_samples=2, strategy=Greedy(), max_new_tokens=N, seed=0) == []


@pytest.mark.parametrize("num_samples, max_new_tokens", [(0, 4), (1, 0)])
def test_bad_counts_are_rejected(sampler, random_params, num_samples, max_new_tokens):
  with pytest.raises(ValueError, match="num_samples and max_new_tokens"):
    sampler.sample(random_params, ["a"], num_samples=num_samples, strategy=Greedy(), max_new_tokens=max_new_tokens,
                   seed=0)


def test_every_end_id_ends_a_row_and_is_dropped(bigram_params):
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  prompts = ["a", "f", "x", "c"]
  kw = dict(num_samples=2, strategy=Greedy(), max_new_tokens=N, seed=0)
  # "h" as a second end id (an instruct model's end of turn) stops "f" -> "g"; EOS still stops "a" -> "bcde".
  for end_ids in [(TOK.eos_id, ID["h"]), (ID["h"], TOK.eos_id)]:
    two_ends = Sampler(CFG, TOK, mesh, SAMPLER_CONFIG, end_ids=end_ids)
    assert two_ends.sample(bigram_params, prompts, **kw) == [["bcde"] * 2, ["g"] * 2, [""] * 2, ["de"] * 2]


def test_token_ids_in_and_out_without_a_tokenizer(sampler, bigram_params, random_params):
  ids_only = Sampler(CFG, None, sharding.make_mesh(devices=jax.devices()[:1]), SAMPLER_CONFIG,
                     end_ids=(TOK.eos_id,), pad_id=TOK.pad_id)
  prompts = ["a", "f", "abcdefg", "q"]
  kw = dict(num_samples=2, strategy=Greedy(), max_new_tokens=N, seed=0)
  for params in (random_params, bigram_params):
    by_prompt = {}
    for idx, rows in ids_only.iter_sample_ids(params, [_encode(p) for p in prompts], **kw):
      by_prompt.update(zip(idx, rows))
    assert [[TOK.decode(ids) for ids in by_prompt[i]] for i in range(len(prompts))] == sampler.sample(
        params, prompts, **kw)
  # The end id is dropped; a row that ran out of budget keeps all N tokens.
  assert by_prompt[0] == [[ID[c] for c in "bcde"]] * 2 and by_prompt[1] == [[ID[c] for c in "ghijklmn"]] * 2
  with pytest.raises(ValueError, match="no tokenizer; use iter_sample_ids"):
    ids_only.sample(random_params, ["a"], **kw)
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    list(ids_only.iter_sample_ids(random_params, [[TOK.bos_id], []], **kw))
  with pytest.raises(ValueError, match="without a tokenizer needs end_ids and pad_id"):
    Sampler(CFG, None, sharding.make_mesh(devices=jax.devices()[:1]), SAMPLER_CONFIG, end_ids=(TOK.eos_id,))


def test_logprobs_are_the_sampled_tokens_log_softmax_at_the_temperature_and_change_no_token(sampler, random_params):
  """The sampling policy's log-probabilities (what online RL's importance ratio needs), checked against a full
  forward of each sampled row; asking for them leaves the tokens of a seed unchanged."""
  temperature, prompts = 0.7, ["ab", "q", "xyz"]
  kw = dict(num_samples=2, strategy=Sampling(temperature=temperature, top_k=5), max_new_tokens=N, seed=3)
  encoded = [_encode(p) for p in prompts]
  with_logp = [row for _, rows in sampler.iter_sampled(random_params, encoded, with_logprobs=True, **kw)
               for row in rows]
  plain = [row for _, rows in sampler.iter_sampled(random_params, encoded, **kw) for row in rows]
  assert [[c.ids for c in row] for row in with_logp] == [[c.ids for c in row] for row in plain]
  assert all(c.logprobs is None for row in plain for c in row)
  checked = 0
  for ids, row in zip(encoded, with_logp):
    for c in row:
      assert len(c.logprobs) == len(c.ids) and c.ended == (c.ids[-1] == TOK.eos_id)
      seq = np.zeros((1, NAIVE_LEN), np.int32)
      seq[0, :len(ids) + len(c.ids)] = list(ids) + list(c.ids)
      logits_TxV = np.asarray(_full_logits(random_params, seq, len(ids) + len(c.ids), CFG), np.float64)
      for t, token in enumerate(c.ids):
        scaled_V = logits_TxV[len(ids) + t - 1] / temperature
        expected = scaled_V[token] - np.log(np.sum(np.exp(scaled_V - scaled_V.max()))) - scaled_V.max()
        np.testing.assert_allclose(c.logprobs[t], expected, atol=2e-5)
        checked += 1
  assert checked > 20
  # Text completions carry the same ids and log-probabilities.
  texts = [row for _, rows in sampler.iter_completions(random_params, prompts, with_logprobs=True, **kw)
           for row in rows]
  assert [[(c.ids, c.logprobs) for c in row] for row in texts] == [[(c.ids, c.logprobs) for c in row]
                                                                    for row in with_logp]
  assert [[c.text for c in row] for row in texts] == sampler.sample(random_params, prompts, **kw)


def test_float32_sampling_dtype_is_bit_identical_and_bfloat16_caches_in_bfloat16(sampler, random_params):
  prompts = ["ab", "abcdefg", "q", "xyz"]
  kw = dict(num_samples=1, strategy=Greedy(), max_new_tokens=N, seed=0)
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  f32 = Sampler(CFG, TOK, mesh, dataclasses.replace(SAMPLER_CONFIG, dtype="float32"))
  assert f32.sample(random_params, prompts, **kw) == sampler.sample(random_params, prompts, **kw)
  bf16 = Sampler(CFG, TOK, mesh, dataclasses.replace(SAMPLER_CONFIG, dtype="bfloat16"))
  assert bf16._sample_cfg.dtype == "bfloat16"
  cache = jax.eval_shape(lambda: sampler_lib.init_sampling_cache(bf16._sample_cfg, 1, L, 1, N))
  assert all(x.dtype == jnp.bfloat16 for layer in cache for x in layer.values())
  with pytest.raises(ValueError, match="sampler.dtype"):
    SamplerConfig(dtype="int4")
