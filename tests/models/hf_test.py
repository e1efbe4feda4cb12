"""rest_jax.models.hf against transformers: tiny random checkpoints of every supported architecture, written by
transformers' own `save_pretrained`, must give the PyTorch model's logits; export must round-trip through
`AutoModelForCausalLM.from_pretrained`.

Every weight, norm scales and biases included, is drawn at random, so a swapped or mistransposed tensor changes the
logits. Sequences are longer than the sliding windows.
"""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
import tokenizers
import torch
import transformers
from tokenizers import models as tok_models
from tokenizers import pre_tokenizers

from rest_jax import checkpoints
from rest_jax import errors
from rest_jax import experiment
from rest_jax.model import sharding
from rest_jax.models import hf, load_pretrained, save_pretrained
from rest_jax.models.lm import LM
from rest_jax.tools import export

VOCAB, PAD, BOS, EOS = 128, 0, 1, 2
SEQ = 12  # Longer than every sliding window below.
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6,
               pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)

# name -> (transformers config class, overrides of _COMMON).
ARCHITECTURES = {
    "llama": (transformers.LlamaConfig, dict(tie_word_embeddings=False)),
    "llama_tied_mha": (transformers.LlamaConfig, dict(tie_word_embeddings=True, num_key_value_heads=4)),  # SmolLM2.
    "llama3_rope": (transformers.LlamaConfig, dict(rope_parameters=dict(
        rope_type="llama3", rope_theta=10_000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32))),
    "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=False)),
    "qwen2_window": (transformers.Qwen2Config, dict(tie_word_embeddings=True, use_sliding_window=True,
                                                    sliding_window=4, max_window_layers=1)),
    "mistral": (transformers.MistralConfig, dict(sliding_window=4)),
    "gemma": (transformers.GemmaConfig, dict(num_key_value_heads=1, head_dim=24)),
    "gemma2": (transformers.Gemma2Config, dict(sliding_window=4, query_pre_attn_scalar=24,
                                               attn_logit_softcapping=2.0, final_logit_softcapping=3.0)),
}


def word_tokenizer() -> tokenizers.Tokenizer:
  """Words "w4".."w127" plus specials: text round-trips, so ids can be compared through strings too."""
  vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
  tok = tokenizers.Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(["<pad>", "<s>", "</s>"])
  return tok


def randomize_(model: torch.nn.Module, seed: int) -> None:
  """Replaces every parameter with noise (norm scales near their identity), so each mapping error shows."""
  gen = torch.Generator().manual_seed(seed)
  gemma = model.config.model_type.startswith("gemma")
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if "norm" in name:
        p.copy_((0.0 if gemma else 1.0) + 0.2 * noise)
      elif gemma and "embed_tokens" in name:
        # Gemma multiplies embeddings by sqrt(64) = 8: smaller ones keep the layers' share of the residual stream,
        # so greedy outputs do not just repeat their input.
        p.copy_(0.03 * noise)
      else:
        p.copy_(0.15 * noise)


def write_checkpoint(directory, arch: str, seed: int = 0, **save_kwargs) -> torch.nn.Module:
  """A random transformers model of `arch`, saved with its tokenizer files in `directory`; returns it (eval)."""
  config_cls, overrides = ARCHITECTURES[arch]
  config = config_cls(**{**_COMMON, **overrides})
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  randomize_(model, seed)
  model.save_pretrained(directory, **save_kwargs)
  word_tokenizer().save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": True,
               "tokenizer_class": "PreTrainedTokenizerFast"}, f)
  return model


def torch_logits(model: torch.nn.Module, tokens_BxT: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.as_tensor(tokens_BxT, dtype=torch.long)).logits.numpy()


def assert_logits_match(ours_BxTxV, reference_BxTxV, label: str) -> None:
  ours_BxTxV = np.asarray(ours_BxTxV)
  diff = float(np.max(np.abs(ours_BxTxV - reference_BxTxV)))
  scale = float(np.max(np.abs(reference_BxTxV)))
  print(f"{label}: max |logits diff| = {diff:.3g} (max |logit| = {scale:.3g})")
  assert diff <= 1e-4 * scale, f"{label}: logits differ by {diff} (max |logit| {scale})"


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh(data=2, devices=jax.devices()[:2])


def random_tokens(seed: int, batch: int = 2) -> np.ndarray:
  return np.random.default_rng(seed).integers(3, VOCAB, size=(batch, SEQ), dtype=np.int32)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_logits_match_transformers(arch, tmp_path, mesh):
  model = write_checkpoint(tmp_path, arch)
  lm = load_pretrained(str(tmp_path), mesh=mesh)
  tokens_BxT = random_tokens(1)
  assert_logits_match(lm.logits(tokens_BxT), torch_logits(model, tokens_BxT), arch)


def test_config_mapping_reads_each_architecture_feature(tmp_path):
  configs = {arch: hf.config_from_hf(cls(**{**_COMMON, **over}).to_dict())
             for arch, (cls, over) in ARCHITECTURES.items()}
  assert not configs["llama"].tied_embeddings and configs["llama_tied_mha"].tied_embeddings
  assert configs["llama_tied_mha"].num_kv_heads == 4 and configs["llama"].num_kv_heads == 2
  assert configs["llama3_rope"].rope_scaling == (8.0, 1.0, 4.0, 32.0)
  assert configs["qwen2"].qkv_bias and configs["qwen2"].sliding_window is None
  assert (configs["qwen2_window"].sliding_window, configs["qwen2_window"].sliding_window_layers) == (4, (1,))
  assert (configs["mistral"].sliding_window, configs["mistral"].sliding_window_layers) == (4, None)
  gemma, gemma2 = configs["gemma"], configs["gemma2"]
  assert gemma.norm_plus_one and gemma.scale_embeddings and gemma.activation == "gelu" and gemma.head_dim == 24
  assert gemma2.post_norms and gemma2.sliding_window_layers == (0,) and gemma2.query_scale == 24 ** -0.5
  assert (gemma2.attn_logits_softcap, gemma2.final_logits_softcap) == (2.0, 3.0)
  for arch, cfg in configs.items():  # Each ModelConfig maps back to a config.json that describes it.
    model_type = ARCHITECTURES[arch][0].model_type
    assert hf.config_from_hf(hf.config_to_hf(cfg, model_type)) == cfg


def test_sharded_checkpoint_with_index(tmp_path, mesh):
  model = write_checkpoint(tmp_path, "qwen2", max_shard_size="20KB")
  assert os.path.isfile(tmp_path / "model.safetensors.index.json")
  assert len(list(tmp_path.glob("*.safetensors"))) > 2
  tokens_BxT = random_tokens(2)
  assert_logits_match(load_pretrained(str(tmp_path), mesh=mesh).logits(tokens_BxT), torch_logits(model, tokens_BxT),
                      "qwen2 from shards")


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_export_round_trip_through_transformers(arch, tmp_path, mesh):
  """A changed (as if fine-tuned) model, exported, gives rest_jax's logits in transformers."""
  write_checkpoint(tmp_path / "source", arch)
  lm = load_pretrained(str(tmp_path / "source"), mesh=mesh)
  keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(lm.params))))
  lm.params = jax.tree.map(lambda w: w + 0.05 * jax.random.normal(next(keys), w.shape, w.dtype), lm.params)
  files = save_pretrained(lm, str(tmp_path / "export"), max_shard_bytes=50_000)  # Shards and an index, too.
  assert "model.safetensors.index.json" in files and "tokenizer.json" in files
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
  tokens_BxT = random_tokens(3)
  assert_logits_match(lm.logits(tokens_BxT), torch_logits(reloaded, tokens_BxT), f"{arch} exported")
  reloaded_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
  assert reloaded_tok("w5 w9", add_special_tokens=False).input_ids == [5, 9]


def test_export_without_source_config_builds_one(tmp_path, mesh):
  """A model from elsewhere (e.g. GGUF) has no config.json: export writes one from its ModelConfig."""
  model = write_checkpoint(tmp_path / "source", "qwen2_window")
  lm = load_pretrained(str(tmp_path / "source"), mesh=mesh)
  save_pretrained(LM(config=lm.config, params=lm.params, tokenizer=lm.tokenizer, mesh=mesh, model_type="qwen2",
                     eos_ids=lm.eos_ids, pad_id=lm.pad_id), str(tmp_path / "export"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
  tokens_BxT = random_tokens(4)
  assert_logits_match(torch_logits(reloaded, tokens_BxT), torch_logits(model, tokens_BxT), "qwen2 built config")


def test_export_rejects_a_config_that_does_not_describe_the_model(tmp_path, mesh):
  write_checkpoint(tmp_path / "source", "llama")
  lm = load_pretrained(str(tmp_path / "source"), mesh=mesh)
  lm.hf_config = {**lm.hf_config, "num_key_value_heads": 4}
  with pytest.raises(ValueError, match="num_kv_heads"):
    save_pretrained(lm, str(tmp_path / "export"))
  with pytest.raises(ValueError, match="cannot express"):
    hf.config_to_hf(lm.config.__class__.from_dict({**lm.config.to_dict(), "qkv_bias": True}), "llama")


def test_unsupported_model_type_names_it_and_the_supported_list(tmp_path):
  tmp_path.joinpath("config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
  with pytest.raises(ValueError, match=r"'gpt2'.*llama, qwen2, mistral, gemma, gemma2"):
    load_pretrained(str(tmp_path))


def test_missing_config_json(tmp_path):
  with pytest.raises(ValueError, match="no config.json"):
    load_pretrained(str(tmp_path))


def test_missing_and_misshapen_weights_are_named(tmp_path, mesh):
  write_checkpoint(tmp_path, "llama")
  path = str(tmp_path / "model.safetensors")
  weights = safetensors.numpy.load_file(path)
  del weights["model.layers.1.mlp.up_proj.weight"]
  safetensors.numpy.save_file(weights, path, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"lacks 1 weights.*model\.layers\.1\.mlp\.up_proj\.weight"):
    load_pretrained(str(tmp_path), mesh=mesh)
  weights["model.layers.1.mlp.up_proj.weight"] = np.zeros((96, 32), np.float32)
  safetensors.numpy.save_file(weights, path, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"up_proj\.weight has shape \(96, 32\), config.json implies \(96, 64\)"):
    load_pretrained(str(tmp_path), mesh=mesh)


def test_unsupported_features_are_refused():
  with pytest.raises(ValueError, match="attention_bias"):
    hf.config_from_hf({**transformers.LlamaConfig(**_COMMON).to_dict(), "attention_bias": True})
  with pytest.raises(ValueError, match="'yarn'"):
    hf.config_from_hf({**transformers.LlamaConfig(**_COMMON).to_dict(),
                       "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}})


def test_export_tool_writes_an_orbax_checkpoint_as_hugging_face(tmp_path, mesh):
  write_checkpoint(tmp_path / "base", "mistral")
  lm = load_pretrained(str(tmp_path / "base"), mesh=mesh)
  tuned = jax.tree.map(lambda w: w * 1.1, lm.params)  # Stands in for a fine-tuned iterate.
  checkpoints.save(tmp_path / "iteration_1", tuned, metadata={"model_config": lm.config.to_dict(), "iteration": 1})
  files = export.export(str(tmp_path / "iteration_1"), str(tmp_path / "base"), str(tmp_path / "out"))
  assert "generation_config.json" in files  # Copied from the base, as transformers wrote it.
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
  lm.params = tuned
  tokens_BxT = random_tokens(5)
  assert_logits_match(lm.logits(tokens_BxT), torch_logits(reloaded, tokens_BxT), "mistral via export tool")
  write_checkpoint(tmp_path / "other_base", "qwen2")
  with pytest.raises(ValueError, match="cannot express"):
    export.export(str(tmp_path / "iteration_1"), str(tmp_path / "other_base"), str(tmp_path / "out2"))
  with pytest.raises(ValueError, match="not empty"):
    files = export.export(str(tmp_path / "iteration_1"), str(tmp_path / "base"), str(tmp_path / "out"))
  assert "generation_config.json" in files  # Copied from the base, as transformers wrote it.


def test_bfloat16_weights_and_tensor_parallel_placement(tmp_path):
  """bfloat16 safetensors (as most hub checkpoints are) load, sharded over a data x tensor mesh by the rules."""
  model = write_checkpoint(tmp_path / "f32", "qwen2")
  model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  word_tokenizer().save(str(tmp_path / "bf16" / "tokenizer.json"))
  mesh = sharding.make_mesh(data=2, tensor=2, devices=jax.devices()[:4])
  lm = load_pretrained(str(tmp_path / "bf16"), mesh=mesh)
  expected = sharding.param_shardings(lm.config, mesh)
  assert all(jax.tree.leaves(jax.tree.map(lambda w, s: w.sharding.is_equivalent_to(s, w.ndim), lm.params, expected)))
  assert lm.params["layer_0"]["attn"]["q"]["kernel"].sharding.spec[1] == "tensor"  # Heads split over `tensor`.
  tokens_BxT = random_tokens(6)
  # The reference reads the same bfloat16 weights into float32 (`model.to` would round its rotary table as well).
  reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
  assert_logits_match(lm.logits(tokens_BxT), torch_logits(reference, tokens_BxT), "qwen2 bf16 weights")


def test_a_checkpoint_without_tokenizer_or_end_id_loads_and_asks_for_one_only_to_generate(tmp_path, mesh):
  model = write_checkpoint(tmp_path, "llama")
  for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    (tmp_path / name).unlink(missing_ok=True)
  config = json.loads((tmp_path / "config.json").read_text())
  del config["eos_token_id"]
  (tmp_path / "config.json").write_text(json.dumps(config))
  lm = load_pretrained(str(tmp_path), mesh=mesh)
  assert lm.tokenizer is None and lm.eos_ids == () and lm.pad_id == PAD
  tokens_BxT = random_tokens(5)
  assert_logits_match(lm.logits(tokens_BxT), torch_logits(model, tokens_BxT), "llama without end id")
  fix = rf"^{tmp_path}: no end-of-sequence id, which generation needs: add \"eos_token_id\" to {tmp_path}/config.json"
  with pytest.raises(errors.UserError, match=fix):
    lm.generate_ids([[5, 6, 7]], max_new_tokens=2)
  run = ml_collections.ConfigDict({"base": {"checkpoint": str(tmp_path), "tokenizer": "", "dtype": "float32"},
                                   "task": {"name": "arithmetic"}})
  with pytest.raises(errors.UserError, match=rf"^base.checkpoint: {tmp_path} has no tokenizer files"):
    experiment._load_base(run, mesh)  # pylint: disable=protected-access
  write_checkpoint(tmp_path, "llama")  # Tokenizer files back; still no end id in any of them but the tokenizer's.
  (tmp_path / "config.json").write_text(json.dumps(config))
  (tmp_path / "generation_config.json").unlink(missing_ok=True)
  *_, eos_ids = experiment._load_base(run, mesh)  # pylint: disable=protected-access
  assert eos_ids == (EOS,)  # The tokenizer's eos_token is enough.


def test_an_index_naming_a_missing_shard_and_a_truncated_shard_are_named(tmp_path, mesh):
  write_checkpoint(tmp_path, "qwen2", max_shard_size="20KB")
  index = tmp_path / "model.safetensors.index.json"
  shards = sorted(tmp_path.glob("model-*.safetensors"))
  data = shards[1].read_bytes()
  shards[1].unlink()
  with pytest.raises(errors.UserError, match=rf"^{index} names shard {shards[1].name} \(for \d+ weights, e\.g\. "
                                             rf"model\..*\), which is not in {tmp_path}; copy"):
    load_pretrained(str(tmp_path), mesh=mesh)
  shards[1].write_bytes(data[:len(data) // 2])
  with pytest.raises(errors.UserError, match=rf"^{shards[1]}: truncated or damaged safetensors file "
                                             rf"\({len(data) // 2:,} bytes; "):
    load_pretrained(str(tmp_path), mesh=mesh)
  index.write_text("{\"weight_map\": ")
  with pytest.raises(errors.UserError, match=rf"^{index}: not a safetensors index"):
    load_pretrained(str(tmp_path), mesh=mesh)
