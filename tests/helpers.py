"""Small shared test utilities: a character tokenizer and a tiny model config."""

from collections.abc import Sequence

from rest_jax.model import ModelConfig


class CharTokenizer:
  """One token per character of a fixed alphabet; ids 0-3 are pad, bos, eos, unk."""

  pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

  def __init__(self, alphabet: str = "0123456789+-=:. \nACDEIMNOPQRSTUWabcdefghijklmnopqrstuvwxyz?"):
    self.alphabet = alphabet
    self.vocab_size = 4 + len(alphabet)

  def encode(self, text: str) -> list[int]:
    return [4 + self.alphabet.index(c) if c in self.alphabet else self.unk_id for c in text]

  def decode(self, ids: Sequence[int]) -> str:
    return "".join(self.alphabet[i - 4] for i in ids if i >= 4)


def tiny_config(vocab_size: int = 64, **overrides) -> ModelConfig:
  kw = dict(vocab_size=vocab_size, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
  kw.update(overrides)
  return ModelConfig(**kw)
