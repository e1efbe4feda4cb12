"""The EM loop on a Hugging Face base model with a chat template (a tiny random llama, written by transformers)."""

import importlib.util
import json
import pathlib

import ml_collections

from rest_jax import experiment, selection
from tests.models.hf_test import write_checkpoint
from tests.models.lm_test import _tokenizer_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}w10 {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}w11{% endif %}")


def test_rest_em_starts_from_a_hugging_face_checkpoint_with_its_chat_template(tmp_path):
  model_dir = tmp_path / "hf"
  write_checkpoint(model_dir, "llama")
  _tokenizer_dir(model_dir, {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": True,
                             "chat_template": TEMPLATE})
  # An instruct model ends a turn with its own id as well as EOS (as Llama 3 and Qwen do): sampling stops at both.
  end_of_turn = 12
  (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, end_of_turn]}))
  spec = importlib.util.spec_from_file_location("default_config", ROOT / "configs" / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  c.task.name = "word_problems"
  c.task.kwargs = ml_collections.ConfigDict(dict(num_human=4, num_train=4, num_val=2, num_test=4))
  c.base.checkpoint = str(model_dir)
  c.base.chat = True
  c.rest.num_iterations = 1
  c.eval.splits = ("test",)
  c.eval.train_subset = 4

  exp = experiment.Experiment.create(c, tmp_path / "run")
  assert (exp.cfg.num_layers, exp.cfg.vocab_size) == (2, 128)
  # The template writes BOS itself, so the sampler must not add another.
  assert exp.sampler.tokenizer.add_bos is False
  assert exp.sampler.end_ids == (exp.sampler.tokenizer.eos_id, end_of_turn)
  exp.log.close()

  records = experiment.run(c, tmp_path / "run")
  assert {(r["method"], r["iteration"]) for r in records} == {
      ("sft_human", 0), ("sft_human", 1), ("rest_em", 0), ("rest_em", 1)}
  samples = selection.read_jsonl(tmp_path / "run/samples/rest_em/iteration_1.jsonl.gz")
  assert len(samples) == 4 * c.rest.samples_per_problem
  assert all(s.prompt.startswith("<s>w10 ") and s.prompt.endswith(" w11") for s in samples)
