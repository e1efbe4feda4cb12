r"""Trains the SentencePiece tokenizers shipped for the embedded tasks.

  python -m rest_jax.tools.train_tokenizer \
      --output=rest_jax/assets/arithmetic_sp.model
  python -m rest_jax.tools.train_tokenizer --task_config=configs/code_default.py \
      --task_config.task.kwargs.num_human=300 --vocab_size=256 \
      --output=rest_jax/assets/list_programs_sp.model

(The program-synthesis tokenizer was trained on the task text with 300 worked
solutions; the shipped base model then saw only the 160 of configs/code_default.py.)

Without --task_config the corpus is the default arithmetic task; with it, every
problem of the config's task (prompt, plus the worked solution where the split
has one).

Training is deterministic: the corpus is every split of the default arithmetic
task (transfer-length problems included), each problem written out as prompt
plus worked solution, fed in order on one thread, and the model is built in
memory, so rerunning the command writes the same bytes. The settings make the
tokenizer round-trip task text exactly (identity normalisation, no dummy
prefix, spaces kept, "\n" a piece of its own) and give each digit its own
token, so the model works digit by digit.
"""

from collections.abc import Iterable
import io
import os

from absl import app
from absl import flags
from ml_collections import config_flags
import sentencepiece as spm

from rest_jax import tasks
from rest_jax.tasks import arithmetic

# The arithmetic corpus runs out of merges at 56 pieces ("Compute", "Answer"
# and their prefixes); with hard_vocab_limit off, training stops there.
DEFAULT_VOCAB_SIZE = 64
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

_OUTPUT = flags.DEFINE_string("output", None, "Where to write the .model file.")
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", DEFAULT_VOCAB_SIZE, "Most pieces, special ones included."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the arithmetic task corpus.")
_CONFIG = config_flags.DEFINE_config_file(
    "task_config", None, "Experiment config whose task is the corpus (default: the arithmetic task)."
)


def arithmetic_corpus(seed: int = 0) -> list[str]:
  """Prompt + worked solution of each problem of the default arithmetic task."""
  task = arithmetic.get_task(seed=seed)
  return [
      problem.prompt + arithmetic.worked_solution(problem.prompt)
      for problems in task.splits.values()
      for problem in problems
  ]


def task_corpus(task: tasks.Task) -> list[str]:
  """Prompt (+ worked solution where there is one) of each problem of `task`."""
  return [
      problem.prompt + (problem.solution or "")
      for problems in task.splits.values()
      for problem in problems
  ]


def train(
    texts: Iterable[str],
    output_path: str,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> None:
  """Trains a SentencePiece BPE model on `texts`, writes it to `output_path`."""
  model = io.BytesIO()
  # Written to memory rather than under a model_prefix: the trainer records
  # the prefix in the model, and a temporary path would make every run's file
  # differ.
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts),
      model_writer=model,
      model_type="bpe",
      vocab_size=vocab_size,
      # Fewer pieces than asked is fine: the corpus has few words to merge.
      hard_vocab_limit=False,
      character_coverage=1.0,
      byte_fallback=False,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      split_digits=True,
      user_defined_symbols=["\n"],
      pad_id=PAD_ID,
      bos_id=BOS_ID,
      eos_id=EOS_ID,
      unk_id=UNK_ID,
      input_sentence_size=0,
      shuffle_input_sentence=False,
      num_threads=1,
      minloglevel=2,
  )
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  with open(output_path, "wb") as f:
    f.write(model.getvalue())


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    corpus = arithmetic_corpus(_SEED.value)
  else:
    task_config = _CONFIG.value.task
    corpus = task_corpus(tasks.get(task_config.name, **task_config.kwargs.to_dict()))
  train(
      corpus,
      _OUTPUT.value,
      vocab_size=_VOCAB_SIZE.value,
  )


if __name__ == "__main__":
  flags.mark_flag_as_required("output")
  app.run(main)
