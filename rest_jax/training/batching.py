"""Tokenised training examples, packed into fixed-length rows so little compute is spent on padding.

A row holds several examples back to back; `segment_ids` (0 = padding) keep their attention apart and `positions`
restart at 0 for each. Only completion tokens (and the closing EOS) carry loss, weighted by the example's reward.

Shape letters: A gradient-accumulation micro-batches, B rows per micro-batch, T row length.
"""

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from rest_jax import tokenizers
from rest_jax.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class Example:
  prompt_ids: tuple[int, ...]  # BOS (unless the tokenizer adds none) + prompt tokens.
  completion_ids: tuple[int, ...]  # Completion tokens + EOS.
  weight: float = 1.0  # Reward: scales this example's token losses.
  # (key, one value per completion token) pairs, each packed as a float32 array `key` onto the targets the values
  # belong to (0 elsewhere): e.g. GRPO's sampling log-probs.
  token_values: tuple[tuple[str, tuple[float, ...]], ...] = ()

  def __post_init__(self):
    for key, values in self.token_values:
      if len(values) != len(self.completion_ids):
        raise ValueError(f"Example.token_values[{key!r}] has {len(values)} values for {len(self.completion_ids)} "
                         "completion tokens")

  def __len__(self) -> int:  # Input tokens of this example in a row (the last token is only a target).
    return len(self.prompt_ids) + len(self.completion_ids) - 1


def make_examples(tokenizer: Tokenizer, prompts: Sequence[str], completions: Sequence[str],
                  weights: Sequence[float] | None = None) -> list[Example]:
  if len(prompts) != len(completions) or (weights is not None and len(weights) != len(prompts)):
    raise ValueError(f"make_examples: {len(prompts)} prompts, {len(completions)} completions and "
                     f"{None if weights is None else len(weights)} weights must have the same length")
  weights = [1.0] * len(prompts) if weights is None else weights
  return [
      Example((*tokenizers.prefix_ids(tokenizer), *tokenizer.encode(p)), (*tokenizer.encode(c), tokenizer.eos_id),
              float(w))
      for p, c, w in zip(prompts, completions, weights)
  ]


def pack(examples: Sequence[Example], seq_len: int, order: np.ndarray, *, open_rows: int = 8) -> dict[str, np.ndarray]:
  """Packs `examples` (taken in `order`) into rows of `seq_len` tokens with a first-fit over a few open rows.

  The examples' `token_values` keys (the same for all) become float32 arrays too.
  """
  value_keys = [key for key, _ in examples[order[0]].token_values] if len(order) else []
  rows: list[list[Example]] = []
  free: list[int] = []
  open_ids: list[int] = []
  for i in order:
    ex = examples[i]
    if [key for key, _ in ex.token_values] != value_keys:
      raise ValueError(f"training example {i} has token_values {[k for k, _ in ex.token_values]}, example "
                       f"{order[0]} has {value_keys}: all must have the same keys")
    if len(ex) > seq_len:
      raise ValueError(f"training example {i} has {len(ex) + 1} tokens, more than train.seq_len + 1 = {seq_len + 1}")
    target = next((r for r in open_ids if free[r] >= len(ex)), None)
    if target is None:
      if len(open_ids) == open_rows:  # Close the fullest open row.
        open_ids.remove(min(open_ids, key=lambda r: free[r]))
      rows.append([])
      free.append(seq_len)
      target = len(rows) - 1
      open_ids.append(target)
    rows[target].append(ex)
    free[target] -= len(ex)

  n = len(rows)
  out = {
      "tokens": np.zeros((n, seq_len), np.int32),
      "targets": np.zeros((n, seq_len), np.int32),
      "weights": np.zeros((n, seq_len), np.float32),
      "loss_mask": np.zeros((n, seq_len), bool),
      "segment_ids": np.zeros((n, seq_len), np.int32),
      "positions": np.zeros((n, seq_len), np.int32),
      **{key: np.zeros((n, seq_len), np.float32) for key in value_keys},
  }
  for r, row in enumerate(rows):
    start = 0
    for seg, ex in enumerate(row, start=1):
      seq = np.asarray(ex.prompt_ids + ex.completion_ids, np.int32)
      m = len(seq) - 1
      span = slice(start, start + m)
      out["tokens"][r, span] = seq[:-1]
      out["targets"][r, span] = seq[1:]
      completion = np.arange(m) >= len(ex.prompt_ids) - 1  # Targets that are completion tokens.
      out["loss_mask"][r, span] = completion
      out["weights"][r, span] = np.where(completion, ex.weight, 0.0)
      out["segment_ids"][r, span] = seg
      out["positions"][r, span] = np.arange(m)
      for key, values in ex.token_values:  # Completion token j is the target at slot len(prompt) - 1 + j.
        out[key][r, start + len(ex.prompt_ids) - 1:start + m] = values
      start += m
  return out


def epoch_batches(examples: Sequence[Example], *, seq_len: int, batch_rows: int, micro_batches: int,
                  rng: np.random.Generator) -> Iterator[dict[str, np.ndarray]]:
  """One shuffled epoch as [A, B, T] batches; the last partial batch is filled with empty (all padding) rows."""
  packed = pack(examples, seq_len, rng.permutation(len(examples)))
  rows = packed["tokens"].shape[0]
  rows_per_step = batch_rows * micro_batches
  perm = rng.permutation(rows)
  for start in range(0, rows, rows_per_step):
    idx = perm[start:start + rows_per_step]
    batch = {k: np.zeros((rows_per_step,) + v.shape[1:], v.dtype) for k, v in packed.items()}
    for k, v in packed.items():
      batch[k][:len(idx)] = v[idx]
    yield {k: v.reshape(micro_batches, batch_rows, seq_len) for k, v in batch.items()}


def steps_per_epoch(examples: Sequence[Example], *, seq_len: int, batch_rows: int, micro_batches: int) -> int:
  rows = pack(examples, seq_len, np.arange(len(examples)))["tokens"].shape[0]
  return -(-rows // (batch_rows * micro_batches))
