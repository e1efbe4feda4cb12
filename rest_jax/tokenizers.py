"""Tokenizers: the interface the sampler and trainer use, and SentencePiece.

The shipped tokenizer (`default_tokenizer_path`) is a SentencePiece model
trained by `rest_jax.tools.train_tokenizer` on arithmetic task text. It
round-trips task text exactly, prompt and completion encoded separately and
concatenated included, and gives every digit its own token.
"""

from collections.abc import Sequence
import os
from typing import Protocol

import sentencepiece as spm

_DEFAULT_MODEL = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "assets", "arithmetic_sp.model"
)


class Tokenizer(Protocol):
  """Text <-> token ids, with the special ids the sampler and trainer need."""

  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int
  # Whether sequences start with BOS. Tokenizers without the attribute do; chat models whose template already
  # starts every prompt with its own marker (SmolLM2: add_bos_token=False) set it to False.
  add_bos: bool

  def encode(self, text: str) -> list[int]:
    """Returns the ids of `text`, with no BOS or EOS added."""
    ...

  def decode(self, ids: Sequence[int]) -> str:
    """Returns the text of all `ids`, skipping pad, BOS and EOS ids."""
    ...


class SentencePieceTokenizer:
  """A `Tokenizer` backed by a SentencePiece model file."""

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"SentencePiece model not found: {path}")
    self._processor = spm.SentencePieceProcessor(model_file=path)
    self.path = path
    self.vocab_size: int = self._processor.get_piece_size()
    self.pad_id: int = self._processor.pad_id()
    self.bos_id: int = self._processor.bos_id()
    self.eos_id: int = self._processor.eos_id()
    # SentencePiece reports a disabled special token as -1; the sampler and
    # trainer index embeddings with these ids, so each must exist.
    for name in ("pad_id", "bos_id", "eos_id"):
      if getattr(self, name) < 0:
        raise ValueError(f"SentencePiece model {path} has no {name}")
    self._skipped_ids = frozenset((self.pad_id, self.bos_id, self.eos_id))

  def encode(self, text: str) -> list[int]:
    return self._processor.encode(text, out_type=int)

  def decode(self, ids: Sequence[int]) -> str:
    kept_ids = []
    for token_id in ids:
      token_id = int(token_id)
      if not 0 <= token_id < self.vocab_size:
        raise ValueError(
            f"token id {token_id} is outside the vocabulary [0,"
            f" {self.vocab_size})"
        )
      if token_id not in self._skipped_ids:
        kept_ids.append(token_id)
    return self._processor.decode(kept_ids)

  def id_to_piece(self, token_id: int) -> str:
    """Returns the piece of `token_id`, e.g. "7" or "Answer", for inspection."""
    return self._processor.id_to_piece(token_id)

  def __repr__(self) -> str:
    return (
        f"SentencePieceTokenizer({self.path!r}, vocab_size={self.vocab_size})"
    )


def prefix_ids(tokenizer: Tokenizer) -> list[int]:
  """The ids every sequence starts with: [BOS], unless the tokenizer says it adds none."""
  return [tokenizer.bos_id] if getattr(tokenizer, "add_bos", True) else []


def load(path: str) -> Tokenizer:
  """Loads the tokenizer at `path`, by suffix: ".model" is SentencePiece."""
  if path.endswith(".model"):
    return SentencePieceTokenizer(path)
  raise ValueError(
      f"unknown tokenizer file type: {path} (expected a SentencePiece .model)"
  )


# The shipped SentencePiece model of each embedded task (rest_jax.tools.train_tokenizer); other tasks use the
# arithmetic one unless the config names a tokenizer.
_TASK_MODELS = {"list_programs": "list_programs_sp.model"}


def default_tokenizer_path(task: str = "arithmetic") -> str:
  """Returns the path of the shipped SentencePiece model for embedded task `task`."""
  if task in _TASK_MODELS:
    return os.path.join(os.path.dirname(_DEFAULT_MODEL), _TASK_MODELS[task])
  return _DEFAULT_MODEL
