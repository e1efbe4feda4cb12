"""rest_jax.models.lm and hf_tokenizer: greedy generation equals transformers' `generate` token for token on every
architecture (sliding windows included: prompt + generation is longer than the window), text and chat templates go
through the tokenizer as transformers does, and generation stops at any of the model's end ids."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from tokenizers import processors

from rest_jax.model import sharding
from rest_jax.models import load_pretrained
from rest_jax.models.hf_tokenizer import HFTokenizer
from tests.models.hf_test import ARCHITECTURES, BOS, EOS, VOCAB, word_tokenizer, write_checkpoint

NEW_TOKENS = 10


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh(data=2, devices=jax.devices()[:2])


def torch_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
  """transformers' greedy continuation of one prompt, without the end id."""
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False)
  new = out[0, len(prompt_ids):].tolist()
  return new[:new.index(EOS)] if EOS in new else new


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_greedy_generation_matches_transformers(arch, tmp_path, mesh):
  model = write_checkpoint(tmp_path, arch, seed=5)
  lm = load_pretrained(str(tmp_path), mesh=mesh)
  rs = np.random.default_rng(0)
  # Different lengths: the sampler left-pads the shorter prompt, which must not change its continuation.
  prompts = [rs.integers(3, VOCAB, size=n).tolist() for n in (3, 7, 5)]
  ours = lm.generate_ids(prompts, NEW_TOKENS)
  reference = [torch_greedy(model, p, NEW_TOKENS) for p in prompts]
  print(f"{arch}: {ours}")
  assert ours == reference
  assert any(len(ids) > 4 for ids in ours)  # Long enough to pass the sliding windows (4) in the prompt + output.


def test_generate_text_and_chat_round_trip_through_the_tokenizer(tmp_path, mesh):
  model = write_checkpoint(tmp_path, "llama", seed=1)
  template = ("{{ bos_token }}{% for m in messages %}w10 {{ m['content'] }} {% endfor %}"
              "{% if add_generation_prompt %}w11{% endif %}")
  _tokenizer_dir(tmp_path, {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "chat_template": template})
  lm = load_pretrained(str(tmp_path), mesh=mesh)
  assert lm.prompt_ids("w5 w6 w7") == [BOS, 5, 6, 7]  # tokenizer_config.json says add_bos_token.
  chat_ids = transformers.AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(
      [{"role": "user", "content": "w5 w6"}], add_generation_prompt=True, return_dict=True)["input_ids"]
  assert lm.prompt_ids("w5 w6", chat=True) == chat_ids == [BOS, 10, 5, 6, 11]
  texts = lm.generate(["w5 w6 w7", "w5 w6"], NEW_TOKENS, chat=False)
  [chat_text] = lm.generate(["w5 w6"], NEW_TOKENS, chat=True)
  for text, ids in zip(texts + [chat_text], [[BOS, 5, 6, 7], [BOS, 5, 6], chat_ids]):
    assert text == " ".join(f"w{i}" for i in torch_greedy(model, ids, NEW_TOKENS))


def test_end_ids_stop_generation_and_sampling_is_seeded(tmp_path, mesh):
  write_checkpoint(tmp_path, "qwen2", seed=2)
  lm = load_pretrained(str(tmp_path), mesh=mesh)
  prompt = [[5, 6, 7, 8]]
  [greedy] = lm.generate_ids(prompt, NEW_TOKENS)
  lm.eos_ids = (EOS, greedy[3])  # A second end id (as instruct models have) ends the output where it first occurs.
  assert lm.generate_ids(prompt, NEW_TOKENS) == [greedy[:greedy.index(greedy[3])]]
  lm.eos_ids = (EOS,)
  sample = lambda seed: lm.generate_ids(prompt * 4, NEW_TOKENS, temperature=1.0, top_k=50, seed=seed)
  first = sample(0)
  assert first == sample(0) and first != sample(1)
  assert lm.generate_ids(prompt, NEW_TOKENS, temperature=1.0, top_k=1) == [greedy]


def _tokenizer_dir(directory, tokenizer_config, tokenizer=None):
  os.makedirs(directory, exist_ok=True)
  (tokenizer or word_tokenizer()).save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({**tokenizer_config, "tokenizer_class": "PreTrainedTokenizerFast"}, f)
  return str(directory)


def test_chat_template_renders_like_transformers(tmp_path):
  template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}w10 {% else %}w11 {% endif %}"
              "{{ m['content'] }} {{ eos_token }}{% endfor %}{% if add_generation_prompt %}w11 {% endif %}")
  directory = _tokenizer_dir(tmp_path, {"bos_token": "<s>", "eos_token": "</s>", "chat_template": template})
  ours, theirs = HFTokenizer.from_directory(directory), transformers.AutoTokenizer.from_pretrained(directory)
  messages = [{"role": "user", "content": "w20 w21"}, {"role": "assistant", "content": "w22"},
              {"role": "user", "content": "w23"}]
  text = ours.apply_chat_template(messages)
  assert text == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  assert ours.encode(text) == theirs.apply_chat_template(messages, add_generation_prompt=True, return_dict=True
                                                         )["input_ids"]
  assert ours.encode(text)[:3] == [BOS, 10, 20]  # Specials inside the text are matched, and no BOS is added twice.


def test_special_ids_and_bos_detection(tmp_path):
  with_bos = word_tokenizer()
  with_bos.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
  tok = HFTokenizer.from_directory(_tokenizer_dir(tmp_path / "a", {"bos_token": "<s>", "eos_token": "</s>"}, with_bos))
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (BOS, EOS, EOS, True)  # No pad token: EOS pads.
  # Qwen2-like: no BOS anywhere, ids only in config.json.
  tok = HFTokenizer.from_directory(_tokenizer_dir(tmp_path / "b", {"bos_token": None}), {"eos_token_id": [EOS, 7],
                                                                                          "pad_token_id": 0})
  assert (tok.eos_id, tok.pad_id, tok.add_bos) == (EOS, 0, False)
  assert tok.decode([5, EOS, 0, 6]) == "w5 w6"  # End and pad ids are dropped.
  with pytest.raises(ValueError, match="no eos token"):
    HFTokenizer.from_directory(_tokenizer_dir(tmp_path / "c", {}))
