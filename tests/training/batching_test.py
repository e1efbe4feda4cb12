"""Behaviour tests for rest_jax.training.batching: what a packed row holds, and that epochs see every example once."""

import collections

import numpy as np
import pytest

from rest_jax.training import batching
from rest_jax.training.batching import Example
from tests.helpers import CharTokenizer

TOK = CharTokenizer()


def _examples(n: int = 23, seed: int = 0) -> list[Example]:
  rs = np.random.default_rng(seed)
  prompts = ["".join(rs.choice(list("0123456789+"), size=rs.integers(1, 9))) for _ in range(n)]
  completions = ["".join(rs.choice(list("0123456789"), size=rs.integers(0, 6))) for _ in range(n)]
  weights = rs.uniform(0.1, 2.0, size=n).round(3).tolist()
  return batching.make_examples(TOK, prompts, completions, weights)


def _segments(packed: dict[str, np.ndarray]):
  """Yields (row, slice, segment id) for every segment of every row."""
  for r, seg_T in enumerate(packed["segment_ids"]):
    for seg in np.unique(seg_T[seg_T > 0]):
      where = np.flatnonzero(seg_T == seg)
      assert np.array_equal(where, np.arange(where[0], where[-1] + 1)), "a segment must be contiguous"
      yield r, slice(where[0], where[-1] + 1), seg


def _unpack(packed) -> list[tuple[tuple[int, ...], tuple[int, ...], float]]:
  """Recovers (prompt_ids, completion_ids, weight) of every segment from the packed arrays alone."""
  out = []
  for r, span, _ in _segments(packed):
    tokens, targets = packed["tokens"][r, span], packed["targets"][r, span]
    assert np.array_equal(tokens[1:], targets[:-1]), "targets are the tokens shifted by one"
    seq = np.r_[tokens, targets[-1:]]
    mask = packed["loss_mask"][r, span]
    first = int(np.argmax(mask)) if mask.any() else len(mask)
    assert mask[first:].all() and not mask[:first].any(), "the loss covers one final stretch of targets"
    weights = packed["weights"][r, span]
    assert np.all(weights[~mask] == 0)
    assert len(set(weights[mask].tolist())) <= 1, "one weight per example"
    weight = float(weights[mask][0]) if mask.any() else 0.0
    out.append((tuple(seq[:first + 1].tolist()), tuple(seq[first + 1:].tolist()), weight))
  return out


def _as_tuples(examples):
  return [(ex.prompt_ids, ex.completion_ids, np.float32(ex.weight).item()) for ex in examples]


def test_make_examples_adds_bos_and_eos_and_keeps_weights():
  (ex,) = batching.make_examples(TOK, ["1+2="], ["3"], [0.5])
  assert ex.prompt_ids == (TOK.bos_id, *TOK.encode("1+2="))
  assert ex.completion_ids == (*TOK.encode("3"), TOK.eos_id)
  assert ex.weight == 0.5
  assert len(ex) == 5 + 2 - 1
  assert batching.make_examples(TOK, ["a"], ["b"])[0].weight == 1.0
  with pytest.raises(ValueError, match="same length"):
    batching.make_examples(TOK, ["a", "b"], ["c"])
  with pytest.raises(ValueError, match="same length"):
    batching.make_examples(TOK, ["a"], ["c"], [1.0, 2.0])


def test_pack_keeps_every_example_exactly_once_with_its_loss_on_the_completion():
  examples = _examples()
  packed = batching.pack(examples, 16, np.random.default_rng(1).permutation(len(examples)))
  assert collections.Counter(_unpack(packed)) == collections.Counter(_as_tuples(examples))
  for k in ("tokens", "targets", "weights", "loss_mask", "segment_ids", "positions"):
    assert packed[k].shape == packed["tokens"].shape and packed[k].shape[1] == 16


def test_pack_row_layout_on_a_hand_written_example():
  a = Example(prompt_ids=(1, 10, 11), completion_ids=(20, 2), weight=0.5)  # 4 input tokens.
  b = Example(prompt_ids=(1, 12), completion_ids=(21, 22, 2), weight=2.0)  # 4 input tokens.
  packed = batching.pack([a, b], 10, np.array([0, 1]))
  np.testing.assert_array_equal(packed["tokens"], [[1, 10, 11, 20, 1, 12, 21, 22, 0, 0]])
  np.testing.assert_array_equal(packed["targets"], [[10, 11, 20, 2, 12, 21, 22, 2, 0, 0]])
  np.testing.assert_array_equal(packed["segment_ids"], [[1, 1, 1, 1, 2, 2, 2, 2, 0, 0]])
  np.testing.assert_array_equal(packed["positions"], [[0, 1, 2, 3, 0, 1, 2, 3, 0, 0]])
  np.testing.assert_array_equal(packed["loss_mask"], [[0, 0, 1, 1, 0, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(packed["weights"], [[0, 0, 0.5, 0.5, 0, 2, 2, 2, 0, 0]])


def test_pack_positions_restart_and_padding_is_inert():
  examples = _examples(seed=2)
  packed = batching.pack(examples, 16, np.arange(len(examples)))
  for r, span, _ in _segments(packed):
    np.testing.assert_array_equal(packed["positions"][r, span], np.arange(span.stop - span.start))
  pad = packed["segment_ids"] == 0
  assert pad.any()
  for k in ("tokens", "targets", "weights", "loss_mask", "positions"):
    assert not packed[k][pad].any()


def test_pack_uses_the_given_order():
  examples = _examples(n=6)
  packed = batching.pack(examples, 64, np.array([5, 4, 3, 2, 1, 0]))  # All six fit in one row.
  assert packed["tokens"].shape[0] == 1
  assert [u[0] for u in _unpack(packed)] == [ex.prompt_ids for ex in examples[::-1]]


def test_pack_fills_rows_far_better_than_one_example_per_row():
  examples = _examples(n=60, seed=3)
  packed = batching.pack(examples, 32, np.arange(len(examples)))
  rows = packed["tokens"].shape[0]
  tokens = sum(len(ex) for ex in examples)
  assert rows < len(examples) / 2
  assert tokens / (rows * 32) > 0.8  # First fit over open rows leaves little padding.
  assert packed["segment_ids"].astype(bool).sum() == tokens


def test_an_example_of_exactly_seq_len_fits_and_a_longer_one_is_rejected():
  fits = Example(prompt_ids=(1, 5, 6), completion_ids=(7, 8, 2))  # 5 input tokens.
  assert batching.pack([fits], 5, np.array([0]))["segment_ids"].all()
  with pytest.raises(ValueError, match="training example 1 has 6 tokens.*seq_len"):
    batching.pack([fits, fits], 4, np.array([1, 0]))


def test_epoch_batches_have_shape_AxBxT_and_see_every_example_once():
  examples = _examples(n=40, seed=4)
  kw = dict(seq_len=24, batch_rows=2, micro_batches=3)
  batches = list(batching.epoch_batches(examples, rng=np.random.default_rng(0), **kw))
  assert len(batches) == batching.steps_per_epoch(examples, **kw)
  for batch in batches:
    for k, v in batch.items():
      assert v.shape == (3, 2, 24), k
  rows = {k: np.concatenate([b[k].reshape(-1, 24) for b in batches]) for k in batches[0]}
  assert collections.Counter(_unpack(rows)) == collections.Counter(_as_tuples(examples))
  # Only the last step is padded, and only with fewer than one step of empty rows.
  assert all(b["segment_ids"].any(axis=-1).all() for b in batches[:-1])
  assert 0 < batches[-1]["segment_ids"].any(axis=-1).sum() <= 6


def test_epoch_batches_shuffle_between_epochs():
  examples = _examples(n=40, seed=5)
  rng = np.random.default_rng(0)
  kw = dict(seq_len=24, batch_rows=2, micro_batches=1)
  first, second = (np.concatenate([b["tokens"] for b in batching.epoch_batches(examples, rng=rng, **kw)])
                   for _ in range(2))
  assert not np.array_equal(first, second)


def test_token_values_land_on_the_completion_targets_and_must_share_keys():
  a = Example((1, 5), (6, 2), token_values=(("v", (0.5, 0.25)),))  # Targets 5 | 6 2.
  b = Example((1,), (7, 8, 2), token_values=(("v", (1.0, 2.0, 3.0)),))  # Targets | 7 8 2.
  packed = batching.pack([a, b], 8, np.array([0, 1]))
  assert packed["v"].dtype == np.float32
  np.testing.assert_array_equal(packed["targets"][0, :5], [5, 6, 2, 7, 8])
  np.testing.assert_array_equal(packed["v"][0], [0, 0.5, 0.25, 1, 2, 3, 0, 0])
  assert "v" not in batching.pack([Example((1,), (7, 2))], 8, np.array([0]))
  with pytest.raises(ValueError, match="2 values for 1 completion tokens"):
    Example((1,), (2,), token_values=(("v", (1.0, 2.0)),))
  with pytest.raises(ValueError, match="same keys"):
    batching.pack([a, Example((1,), (7, 2))], 8, np.array([0, 1]))
