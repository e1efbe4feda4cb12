"""Behaviour tests for continuous batching (`SamplerConfig(schedule="continuous")`, rest_jax.sampling.continuous).

Against the static sampler, one prompt at a time: the same greedy tokens (random weights, the hand-built bigram model
whose end ids and stop sequences fall where the test puts them, and the shipped arithmetic base); for sampling, the
same distribution, and tokens that do not depend on how prompts fall into slots. Slots refill: a short completion
comes back before a long one that started first.
"""

import dataclasses
import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from rest_jax import experiment
from rest_jax.model import sharding
from rest_jax.sampling import Greedy, Sampler, SamplerConfig, Sampling
from rest_jax.sampling import continuous
from tests.sampling.sampler_test import CFG, N, NAIVE_LEN, STOP, TOK, _full_logits
from tests.sampling.sampler_test import bigram_params, random_params  # noqa: F401  (fixtures)

ROOT = pathlib.Path(__file__).resolve().parents[2]
ONE = sharding.make_mesh(devices=jax.devices()[:1])
STATIC = SamplerConfig(batch_rows=4, prompt_buckets=(8, 16))
CONTINUOUS = dataclasses.replace(STATIC, schedule="continuous", chunk_steps=3)
PROMPTS = ["ab", "abcdefg", "q", "xyz", "hello", "a", "f", "x"]


def _sample(config, params, prompts, mesh=ONE, **kw):
  kw = dict(dict(num_samples=1, strategy=Greedy(), max_new_tokens=N, seed=0), **kw)
  return Sampler(CFG, TOK, mesh, config).sample(params, prompts, **kw)


def _one_at_a_time(params, prompts, **kw):
  return [_sample(STATIC, params, [p], **kw)[0] for p in prompts]


def test_greedy_equals_the_static_sampler_one_prompt_at_a_time(random_params, bigram_params):
  for params in (random_params, bigram_params):
    expected = _one_at_a_time(params, PROMPTS)
    assert _sample(CONTINUOUS, params, PROMPTS) == expected
    # Groups of one row, 2 slots, chunks of one step: the same tokens.
    narrow = dataclasses.replace(CONTINUOUS, batch_rows=2, chunk_steps=1)
    assert _sample(narrow, params, PROMPTS) == expected
  # Several greedy samples per prompt, split over groups of 2 rows: each the single greedy one.
  split = dataclasses.replace(CONTINUOUS, slot_group=2)
  assert _sample(split, random_params, PROMPTS[:4], num_samples=3) == [s * 3 for s in _one_at_a_time(
      random_params, PROMPTS[:4])]


def test_end_ids_stop_sequences_and_the_budget_end_a_row_at_the_right_token(bigram_params):
  # Bigram chains: a -> b c d e EOS; f -> g h ... (past the budget); x -> EOS.
  assert _sample(CONTINUOUS, bigram_params, ["a", "f", "x", "c"]) == [["bcde"], ["ghijklmn"], [""], ["de"]]
  assert (_sample(CONTINUOUS, bigram_params, ["a", "f", "c", "ab"], stop_strings=(STOP,))
          == [["b"], ["ghijklmn"], ["de"], [""]])
  sampler = Sampler(CFG, TOK, ONE, CONTINUOUS)
  got = {}
  for idx, rows in sampler.iter_sampled(bigram_params, [[TOK.bos_id] + TOK.encode(p) for p in ["a", "f", "x"]],
                                        num_samples=1, strategy=Greedy(), max_new_tokens=N, seed=0,
                                        stop_sequences=[TOK.encode(STOP)]):
    got.update({i: r[0] for i, r in zip(idx, rows)})
  # "a": stopped by "cd", which is kept; "f": all N tokens of the budget; "x": its end id, kept in `ids` only.
  assert got[0].ids == tuple(TOK.encode("bcd")) and not got[0].ended
  assert len(got[1].ids) == N and not got[1].ended
  assert got[2].ids == (TOK.eos_id,) and got[2].ended and got[2].content_ids == ()


def test_a_freed_slot_takes_the_next_prompt_and_a_short_completion_returns_first(bigram_params, monkeypatch):
  inserts = []
  original = continuous.insert
  monkeypatch.setattr(continuous, "insert", lambda *a, **k: inserts.append(1) or original(*a, **k))
  sampler = Sampler(CFG, TOK, ONE, dataclasses.replace(CONTINUOUS, batch_rows=2, chunk_steps=1))
  prompts = ["f", "a", "x", "x", "c"]  # One long completion (to the budget), then short ones.
  order = [i for idx, _ in sampler.iter_samples(bigram_params, prompts, num_samples=1, strategy=Greedy(),
                                                 max_new_tokens=N, seed=0) for i in idx]
  assert sorted(order) == list(range(5))
  assert order[-1] == 0  # The long one, started first, comes back last: the other slot served the rest meanwhile.
  assert len(inserts) >= 4  # The first fill, then refills of the freed slot as each short completion ended.


def test_sampled_tokens_do_not_depend_on_slots_groups_or_chunks(random_params):
  kw = dict(num_samples=4, strategy=Sampling(temperature=1.0, top_k=20), seed=3)
  reference = _sample(CONTINUOUS, random_params, PROMPTS, **kw)
  for change in (dict(batch_rows=16), dict(slot_group=1), dict(slot_group=3, batch_rows=6), dict(chunk_steps=8)):
    assert _sample(dataclasses.replace(CONTINUOUS, **change), random_params, PROMPTS, **kw) == reference, change
  assert reference != _sample(CONTINUOUS, random_params, PROMPTS, **dict(kw, seed=4))
  assert all(len(set(samples)) > 1 for samples in reference[:5])  # Samples of a prompt are drawn independently.


def _exact_next_probs(params, ids):
  logits_V = np.asarray(_full_logits(params, np.asarray([ids + [0] * (NAIVE_LEN - len(ids))], np.int32), len(ids),
                                     CFG))[len(ids) - 1]
  return np.exp(logits_V - logits_V.max()) / np.exp(logits_V - logits_V.max()).sum()


def test_sampling_draws_from_the_models_distribution(random_params):
  """1024 samples of one prompt: the first token's frequencies, and the second's after the most common first one,
  are the model's softmax probabilities (exact, from a full forward) up to sampling noise, as the static sampler's.
  """
  prompt, n = "ab", 1024
  prompt_ids = [TOK.bos_id] + TOK.encode(prompt)
  kw = dict(num_samples=n, strategy=Sampling(temperature=1.0), max_new_tokens=2, seed=0)
  p1 = _exact_next_probs(random_params, prompt_ids)
  for config in (STATIC, CONTINUOUS):
    rows = next(iter(Sampler(CFG, TOK, ONE, dataclasses.replace(config, batch_rows=n)).iter_sampled(
        random_params, [prompt_ids], **kw)))[1][0]
    first = np.array([r.ids[0] for r in rows])
    # Total variation of n draws against the truth: about 0.5 * sum(sqrt(2 p / (pi n))), 0.05 here.
    assert 0.5 * np.abs(np.bincount(first, minlength=TOK.vocab_size) / n - p1).sum() < 0.1, config.schedule
    top = int(np.bincount(first).argmax())
    second = np.array([r.ids[1] for r in rows if r.ids[0] == top and len(r.ids) > 1])
    p2 = _exact_next_probs(random_params, prompt_ids + [top])
    assert len(second) > 50
    tv = 0.5 * np.abs(np.bincount(second, minlength=TOK.vocab_size) / len(second) - p2).sum()
    assert tv < 0.5 * np.sqrt(2 / np.pi / len(second)) * np.sqrt(p2).sum() * 2, (config.schedule, tv)


@pytest.mark.parametrize("mesh_shape", [(4, 1, 2), (8, 1, 1)], ids=["data4_tensor2", "data8"])
def test_sharded_continuous_batching_gives_the_single_device_tokens(random_params, mesh_shape):
  config = dataclasses.replace(CONTINUOUS, batch_rows=8)
  for kw in (dict(), dict(num_samples=2, strategy=Sampling(temperature=1.0), seed=5)):
    expected = _sample(config, random_params, PROMPTS, **kw)
    assert _sample(config, random_params, PROMPTS, mesh=sharding.make_mesh(*mesh_shape), **kw) == expected


def test_logprobs_are_those_of_the_static_sampler(random_params):
  encoded = [[TOK.bos_id] + TOK.encode(p) for p in PROMPTS[:4]]
  kw = dict(num_samples=1, strategy=Greedy(), max_new_tokens=N, seed=0, with_logprobs=True)

  def collect(config):
    out = {}
    for idx, rows in Sampler(CFG, TOK, ONE, config).iter_sampled(random_params, encoded, **kw):
      out.update({i: r[0] for i, r in zip(idx, rows)})
    return [out[i] for i in range(len(encoded))]

  for s, c in zip(collect(STATIC), collect(CONTINUOUS)):
    assert s.ids == c.ids
    np.testing.assert_allclose(c.logprobs, s.logprobs, atol=1e-5)


def test_the_shipped_base_decodes_the_same_greedy_completions(tmp_path):
  spec = importlib.util.spec_from_file_location("default_config", ROOT / "configs" / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  exp = experiment.Experiment.create(module.get_config("smoke"), tmp_path)
  prompts = [p.prompt for p in exp.task.splits["test"]]
  kw = dict(num_samples=1, strategy=Greedy(), max_new_tokens=80, seed=0)
  static = Sampler(exp.cfg, exp.sampler.tokenizer, ONE, exp.sampler.config, end_ids=exp.sampler.end_ids)
  cont = Sampler(exp.cfg, exp.sampler.tokenizer, ONE,
                 dataclasses.replace(exp.sampler.config, schedule="continuous", batch_rows=8),
                 end_ids=exp.sampler.end_ids)
  assert cont.sample(exp.base_params, prompts, **kw) == static.sample(exp.base_params, prompts, **kw)


@pytest.mark.parametrize("change, message", [(dict(schedule="dynamic"), "sampler.schedule"),
                                             (dict(chunk_steps=0), "chunk_steps"), (dict(slot_group=-1), "slot_group")])
def test_bad_settings_are_rejected(change, message):
  with pytest.raises(ValueError, match=message):
    SamplerConfig(**change)
