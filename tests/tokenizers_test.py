"""Tests for the tokenizer interface and the shipped SentencePiece model."""

import pytest

from rest_jax import tokenizers
from rest_jax.tasks import arithmetic
from rest_jax.tools import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
  return tokenizers.load(tokenizers.default_tokenizer_path())


@pytest.fixture(scope="module")
def task_texts():
  """(prompt, worked solution) of every split, transfer-length ones included."""
  task = arithmetic.get_task(
      seed=7, num_human=100, num_train=300, num_val=50, num_test=100,
      num_transfer=200,
  )
  return [
      (p.prompt, arithmetic.worked_solution(p.prompt))
      for problems in task.splits.values()
      for p in problems
  ]


def test_special_ids_and_small_vocabulary(tokenizer):
  assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
  assert tokenizer.id_to_piece(3) == "<unk>"
  assert 40 <= tokenizer.vocab_size <= 100


def test_round_trip_is_exact_on_task_text(tokenizer, task_texts):
  operator_counts = {p.count("+") + p.count("-") for p, _ in task_texts}
  assert operator_counts == {1, 2, 3, 4, 5}
  for prompt, solution in task_texts:
    for text in (prompt, solution, prompt + solution):
      assert tokenizer.decode(tokenizer.encode(text)) == text


def test_prompt_and_completion_encoded_apart_concatenate(tokenizer, task_texts):
  for prompt, solution in task_texts:
    ids = tokenizer.encode(prompt) + tokenizer.encode(solution)
    assert tokenizer.decode(ids) == prompt + solution
    # As the trainer and sampler see it: BOS, prompt, completion, EOS, padding.
    framed = [tokenizer.bos_id] + ids + [tokenizer.eos_id, tokenizer.pad_id]
    assert tokenizer.decode(framed) == prompt + solution


def test_no_dummy_whitespace_is_added(tokenizer):
  assert tokenizer.decode(tokenizer.encode("12")) == "12"
  assert tokenizer.decode(tokenizer.encode(" 12  \n")) == " 12  \n"
  assert tokenizer.encode("Answer: 5") == (
      tokenizer.encode("Answer:") + tokenizer.encode(" 5")
  )


def test_every_digit_is_its_own_token(tokenizer, task_texts):
  digit_ids = {}
  for digit in "0123456789":
    ids = tokenizer.encode(digit)
    assert len(ids) == 1
    digit_ids[ids[0]] = digit
  for token_id in range(tokenizer.vocab_size):
    piece = tokenizer.id_to_piece(token_id)
    assert not any(c.isdigit() for c in piece) or token_id in digit_ids, piece
  for prompt, solution in task_texts[:50]:
    text = prompt + solution
    digits = [digit_ids[i] for i in tokenizer.encode(text) if i in digit_ids]
    assert "".join(digits) == "".join(c for c in text if c.isdigit())


def test_newline_and_words_are_single_tokens(tokenizer):
  for text in ("\n", "Compute", "Answer"):
    assert len(tokenizer.encode(text)) == 1, text


def test_decode_rejects_ids_outside_the_vocabulary(tokenizer):
  with pytest.raises(ValueError, match="token id 56|outside the vocabulary"):
    tokenizer.decode([tokenizer.vocab_size])
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tokenizer.decode([-1])


def test_load_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown tokenizer file type: .*json"):
    tokenizers.load(str(tmp_path / "vocab.json"))
  with pytest.raises(FileNotFoundError, match="missing.model"):
    tokenizers.load(str(tmp_path / "missing.model"))


def test_shipped_model_is_what_the_training_tool_writes(tmp_path):
  output = tmp_path / "sub" / "retrained.model"
  train_tokenizer.train(train_tokenizer.arithmetic_corpus(seed=0), str(output))
  with open(tokenizers.default_tokenizer_path(), "rb") as f:
    shipped = f.read()
  assert output.read_bytes() == shipped, (
      "the shipped tokenizer is stale; rerun python -m"
      " rest_jax.tools.train_tokenizer"
      " --output=rest_jax/assets/arithmetic_sp.model"
  )
