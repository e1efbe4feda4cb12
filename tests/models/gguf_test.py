"""GGUF loading: dequantization per type, the llama.cpp q/k permutation, and SmolLM2-135M-Instruct (Q4_1) against
transformers loading the same file (logits, greedy generation, tokenizer, chat template)."""

import os
import time

import jax
import numpy as np
import pytest

import gguf
import torch
import transformers

from rest_jax import errors
from rest_jax.model import sharding
from rest_jax.model.transformer import Transformer, causal_mask
from rest_jax.models import gguf as gguf_loader
from rest_jax import tokenizers
from rest_jax.sampling import Greedy, Sampler, SamplerConfig
from tests.helpers import SMOLLM2_MISSING, smollm2_gguf_path

Q = gguf.GGMLQuantizationType


SMOLLM2 = smollm2_gguf_path()
_NO_SMOLLM2 = SMOLLM2_MISSING


def _write_gguf(path, tensors: dict[str, tuple[np.ndarray, "Q | None"]], arch: str = "llama"):
  writer = gguf.GGUFWriter(path, arch)
  for name, (data, raw_dtype) in tensors.items():
    writer.add_tensor(name, data, raw_dtype=raw_dtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return {t.name: t for t in gguf.GGUFReader(path).tensors}


# Worst-case error of quantize -> dequantize, per block, from each format's rounding rule (plus fp16 scale rounding).
def _q8_0_bound(b):
  return np.abs(b).max(-1, keepdims=True) / 127 * (0.5 + 127 * 2.0 ** -11)  # Half a step, plus fp16 rounding of d.


def _q4_0_bound(b):
  return np.abs(b).max(-1, keepdims=True) / 8 * 1.01  # The extreme opposite the scale's sign clips by one step.


def _q4_1_bound(b):
  return (b.max(-1, keepdims=True) - b.min(-1, keepdims=True)) / 15 * 0.51 + np.abs(b).max(-1, keepdims=True) * 1e-3


@pytest.mark.parametrize("qtype, bound", [
    (Q.F32, lambda b: 0.0),
    (Q.F16, lambda b: np.abs(b) * 2.0 ** -11),
    (Q.BF16, lambda b: np.abs(b) * 2.0 ** -8),
    (Q.Q8_0, _q8_0_bound),
    (Q.Q4_0, _q4_0_bound),
    (Q.Q4_1, _q4_1_bound),
])
def test_dequantize_inverts_quantize(tmp_path, qtype, bound):
  values_OxI = np.random.default_rng(0).normal(size=(6, 256)).astype(np.float32) * 3
  packed = gguf.quants.quantize(values_OxI, qtype)
  raw_dtype = None if qtype in (Q.F32, Q.F16) else qtype
  tensor = _write_gguf(tmp_path / "t.gguf", {"w": (packed, raw_dtype)})["w"]
  assert tensor.tensor_type == qtype
  got_OxI = gguf_loader.dequantize(tensor)
  assert got_OxI.shape == (6, 256) and got_OxI.dtype == np.float32
  blocks = values_OxI.reshape(-1, 32)
  err = np.abs(got_OxI - values_OxI).reshape(-1, 32)
  assert np.all(err <= bound(blocks)), (qtype.name, float(err.max()))


def _f16_bytes(x):
  return np.asarray(x, np.float16).reshape(-1, 1).view(np.uint8)


def test_legacy_blocks_built_by_hand(tmp_path):
  """Q8_0 / Q4_0 / Q4_1 blocks assembled from ggml's block layout decode to the values the layout defines."""
  rng = np.random.default_rng(1)
  nib_Bx32 = rng.integers(0, 16, size=(4, 32)).astype(np.uint8)
  # Element j < 16 is the low nibble of byte j, element j + 16 its high nibble.
  qs_Bx16 = nib_Bx32[:, :16] | (nib_Bx32[:, 16:] << 4)
  d_B = np.array([0.5, -0.25, 2.0, 0.125], np.float32)
  m_B = np.array([-1.0, 3.0, 0.0, -0.5], np.float32)
  q8_Bx32 = rng.integers(-128, 128, size=(4, 32)).astype(np.int8)
  tensors = _write_gguf(tmp_path / "hand.gguf", {
      "q8_0": (np.concatenate([_f16_bytes(d_B), q8_Bx32.view(np.uint8)], 1).reshape(2, 68), Q.Q8_0),
      "q4_0": (np.concatenate([_f16_bytes(d_B), qs_Bx16], 1).reshape(2, 36), Q.Q4_0),
      "q4_1": (np.concatenate([_f16_bytes(d_B), _f16_bytes(m_B), qs_Bx16], 1).reshape(2, 40), Q.Q4_1),
  })
  expected = {
      "q8_0": d_B[:, None] * q8_Bx32,
      "q4_0": d_B[:, None] * (nib_Bx32.astype(np.float32) - 8),
      "q4_1": d_B[:, None] * nib_Bx32 + m_B[:, None],
  }
  for name, want_Bx32 in expected.items():
    np.testing.assert_array_equal(gguf_loader.dequantize(tensors[name]), want_Bx32.reshape(2, 64), err_msg=name)


def _scale_min_k4(j, scales):
  """ggml-quants.c `get_scale_min_k4`."""
  if j < 4:
    return scales[j] & 63, scales[j + 4] & 63
  return (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4)


def _reference_q4_k(block):
  """ggml-quants.c `dequantize_row_q4_K` for one 144-byte block, scalar as in C."""
  d, dmin = block[0:4].view(np.float16).astype(np.float32)
  scales, qs = block[4:16].astype(int), block[16:144].astype(int)
  out = []
  for j in range(4):
    sc1, m1 = _scale_min_k4(2 * j, scales)
    sc2, m2 = _scale_min_k4(2 * j + 1, scales)
    q = qs[32 * j:32 * j + 32]
    out += [d * sc1 * (x & 0xF) - dmin * m1 for x in q] + [d * sc2 * (x >> 4) - dmin * m2 for x in q]
  return np.array(out, np.float32)


def _reference_q6_k(block):
  """ggml-quants.c `dequantize_row_q6_K` for one 210-byte block, scalar as in C."""
  ql, qh = block[0:128].astype(int), block[128:192].astype(int)
  sc = block[192:208].view(np.int8).astype(int)
  d = float(block[208:210].view(np.float16)[0])
  y = np.zeros(256, np.float32)
  for n in range(2):
    l_, h_, s_ = ql[64 * n:], qh[32 * n:], sc[8 * n:]
    for l in range(32):
      i = l // 16
      q1 = ((l_[l] & 0xF) | (((h_[l] >> 0) & 3) << 4)) - 32
      q2 = ((l_[l + 32] & 0xF) | (((h_[l] >> 2) & 3) << 4)) - 32
      q3 = ((l_[l] >> 4) | (((h_[l] >> 4) & 3) << 4)) - 32
      q4 = ((l_[l + 32] >> 4) | (((h_[l] >> 6) & 3) << 4)) - 32
      for k, (s, q) in enumerate(((s_[i], q1), (s_[i + 2], q2), (s_[i + 4], q3), (s_[i + 6], q4))):
        y[128 * n + l + 32 * k] = d * s * q
  return y


def test_k_quants_match_ggml_reference(tmp_path):
  """Q4_K / Q6_K blocks of random bytes (sane fp16 scales) decode as ggml's C reference loop does."""
  rng = np.random.default_rng(2)
  q4k_Bx144 = rng.integers(0, 256, size=(4, 144)).astype(np.uint8)
  q4k_Bx144[:, 0:4] = _f16_bytes(rng.uniform(0.01, 0.1, size=(8,))).reshape(4, 4)
  q6k_Bx210 = rng.integers(0, 256, size=(4, 210)).astype(np.uint8)
  q6k_Bx210[:, 208:210] = _f16_bytes(rng.uniform(-0.1, 0.1, size=(4,))).reshape(4, 2)
  tensors = _write_gguf(tmp_path / "k.gguf", {
      "q4_k": (q4k_Bx144.reshape(2, 288), Q.Q4_K), "q6_k": (q6k_Bx210.reshape(2, 420), Q.Q6_K)})
  for name, blocks, reference in (("q4_k", q4k_Bx144, _reference_q4_k), ("q6_k", q6k_Bx210, _reference_q6_k)):
    want = np.stack([reference(b) for b in blocks]).reshape(2, 512)
    np.testing.assert_allclose(gguf_loader.dequantize(tensors[name]), want, rtol=1e-6, atol=1e-6, err_msg=name)


def _llama_cpp_permute(w, n_head, n_head_kv=None):
  """convert_hf_to_gguf.py `LlamaModel.permute`, verbatim in numpy."""
  if n_head_kv is not None and n_head != n_head_kv:
    n_head = n_head_kv
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("heads, head_dim, cols", [(9, 64, 5), (3, 8, 7), (4, 16, None)])
def test_unpermute_inverts_llama_cpp_permute(heads, head_dim, cols):
  shape = (heads * head_dim,) + ((cols,) if cols else ())
  w = np.random.default_rng(3).normal(size=shape)
  permuted = _llama_cpp_permute(w, heads)
  assert not np.array_equal(permuted, w)
  np.testing.assert_array_equal(gguf_loader.unpermute_rope_rows(permuted, heads), w)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="general.architecture='gemma'"):
    gguf_loader.config_from_metadata({"general.architecture": "gemma"}, {})
  with pytest.raises(ValueError, match="llama.embedding_length"):
    gguf_loader.config_from_metadata({"general.architecture": "llama"}, {"token_embd.weight": (10, 4)})
  with pytest.raises(FileNotFoundError):
    gguf_loader.load_gguf("/nonexistent/model.gguf")


def _export_gguf(model, arch: str, path) -> None:
  """Writes a transformers Llama / Qwen2 model as llama.cpp's converter does: its names, q/k rows permuted for
  Llama, matrices in F16 (the model's weights are already fp16-representable) and norms in F32."""
  c = model.config
  writer = gguf.GGUFWriter(path, arch)
  writer.add_block_count(c.num_hidden_layers)
  writer.add_context_length(c.max_position_embeddings)
  writer.add_embedding_length(c.hidden_size)
  writer.add_feed_forward_length(c.intermediate_size)
  writer.add_head_count(c.num_attention_heads)
  writer.add_head_count_kv(c.num_key_value_heads)
  writer.add_key_length(c.head_dim)
  writer.add_value_length(c.head_dim)
  writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  writer.add_tokenizer_model("gpt2")
  writer.add_token_list(["<|endoftext|>"] + [f"t{i}" for i in range(1, c.vocab_size)])
  writer.add_token_types([3] + [1] * (c.vocab_size - 1))
  writer.add_bos_token_id(0)
  writer.add_eos_token_id(0)
  names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
  for key, value in model.state_dict().items():
    w = value.numpy()
    if key == "model.embed_tokens.weight":
      name = "token_embd.weight"
    elif key == "model.norm.weight":
      name = "output_norm.weight"
    elif key == "lm_head.weight":
      if c.tie_word_embeddings:
        continue
      name = "output.weight"
    else:
      _, _, layer, *module, kind = key.split(".")
      name = f"blk.{layer}.{names['.'.join(module)]}.{kind}"
      if arch == "llama" and module[-1] in ("q_proj", "k_proj"):
        w = _llama_cpp_permute(w, c.num_attention_heads, c.num_key_value_heads if module[-1] == "k_proj" else None)
    writer.add_tensor(name, w.astype(np.float16 if w.ndim == 2 else np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.mark.parametrize("arch, heads, kv_heads, tied", [
    ("llama", 4, 2, False),  # Untied lm_head, GQA, head_dim * heads != embed_dim.
    ("llama", 4, 4, True),
    ("qwen2", 4, 1, False),  # q/k/v biases, no permutation.
])
def test_architectures_match_the_model_they_were_exported_from(tmp_path, arch, heads, kv_heads, tied):
  config_class, model_class = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
  torch.manual_seed(0)
  config = config_class(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=16,
                        max_position_embeddings=64, rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied)
  model = model_class(config).eval()
  with torch.no_grad():
    for p in model.parameters():  # Random norms and biases too, so a misplaced one shows; fp16-exact for export.
      p.copy_((torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == 32 else 0.0)).half().float())
  _export_gguf(model, arch, tmp_path / "tiny.gguf")

  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  cfg, params, _, _ = gguf_loader.load_gguf(str(tmp_path / "tiny.gguf"), mesh=mesh)
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.tied_embeddings, cfg.qkv_bias) == (
      heads, kv_heads, 16, tied, arch == "qwen2")
  tokens_2xT = np.random.default_rng(4).integers(0, 96, size=(2, 11)).astype(np.int32)
  positions_2xT = np.broadcast_to(np.arange(11, dtype=np.int32), (2, 11))
  logits_2xTxV, _ = Transformer(cfg).apply({"params": params}, tokens_2xT, positions_2xT,
                                           causal_mask(np.ones_like(tokens_2xT)))
  with torch.no_grad():
    want_2xTxV = model(torch.tensor(tokens_2xT, dtype=torch.long)).logits.numpy()
  max_diff, scale = float(np.abs(np.asarray(logits_2xTxV) - want_2xTxV).max()), float(np.abs(want_2xTxV).max())
  print(f"{arch} N={heads} K={kv_heads} tied={tied}: max |diff| {max_diff:.1e}, logit scale {scale:.1f}")
  assert max_diff <= 1e-4 * scale


# SmolLM2-135M-Instruct against transformers loading the same file.

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Ünïcödé and emoji 🙂: 12 + 30 =",
]
TOKENIZER_STRINGS = PROMPTS + [
    "Hello world 12345 x1y22z",
    "  leading spaces\n\n\ttabs and\r\nCRLF   trailing   ",
    "日本語のテキストと한국어, Ελληνικά, русский",
    "<|im_start|>user\nWhat is 7*6?<|im_end|>\n<|im_start|>assistant\n",
    "it's they'll I'M don't — “quotes” …",
]
MESSAGES = [{"role": "user", "content": "Tom has 5 apples and buys 19 more. How many apples does he have?"}]


@pytest.fixture(scope="module")
def smollm2():
  if SMOLLM2 is None:
    pytest.fail(_NO_SMOLLM2)
  mesh = sharding.make_mesh(devices=jax.devices()[:1])  # One device: replicated compute on 8 host devices is slower.
  start = time.perf_counter()
  cfg, params, tokenizer, metadata = gguf_loader.load_gguf(SMOLLM2, mesh=mesh)
  print(f"load_gguf: {time.perf_counter() - start:.1f}s")
  return cfg, params, tokenizer, metadata, mesh


@pytest.fixture(scope="module")
def reference():
  if SMOLLM2 is None:
    pytest.fail(_NO_SMOLLM2)
  directory, name = os.path.split(SMOLLM2)
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
  return torch, model, tokenizer


def test_smollm2_config_and_metadata(smollm2):
  cfg, params, tokenizer, metadata, _ = smollm2
  assert (cfg.vocab_size, cfg.num_layers, cfg.embed_dim, cfg.mlp_dim) == (49152, 30, 576, 1536)
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (9, 3, 64)
  assert cfg.rope_theta == 100_000.0 and cfg.norm_eps == pytest.approx(1e-5) and cfg.tied_embeddings
  assert "lm_head" not in params and params["layer_0"]["attn"]["q"]["kernel"].shape == (576, 9, 64)
  assert metadata["llama.context_length"] == 8192 and "tokenizer.ggml.tokens" not in metadata
  assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (49152, 1, 2, 2)


def test_smollm2_logits_match_transformers(smollm2, reference):
  cfg, params, tokenizer, _, _ = smollm2
  torch, model, _ = reference
  texts = PROMPTS + [tokenizer.apply_chat_template(MESSAGES)]
  encoded = [tokenizer.encode(text) for text in texts]
  # One right-padded batch, one compilation: causal attention keeps the padding out of the real positions.
  T = max(map(len, encoded))
  tokens_BxT = np.full((len(texts), T), tokenizer.pad_id, np.int32)
  segment_ids_BxT = np.zeros((len(texts), T), np.int32)
  for row, ids in enumerate(encoded):
    tokens_BxT[row, :len(ids)], segment_ids_BxT[row, :len(ids)] = ids, 1
  positions_BxT = np.broadcast_to(np.arange(T, dtype=np.int32), tokens_BxT.shape)
  logits_BxTxV, _ = jax.jit(Transformer(cfg).apply)(
      {"params": params}, tokens_BxT, positions_BxT, causal_mask(segment_ids_BxT))
  for row, ids in enumerate(encoded):
    with torch.no_grad():
      want_1xTxV = model(torch.tensor([ids])).logits.numpy()
    got_1xTxV = np.asarray(logits_BxTxV[row:row + 1, :len(ids)])
    max_diff, scale = float(np.abs(got_1xTxV - want_1xTxV).max()), float(np.abs(want_1xTxV).max())
    print(f"SmolLM2 GGUF logits, {len(ids)} tokens: max |diff| {max_diff:.2e}, logit scale {scale:.1f}, "
          f"relative {max_diff / scale:.1e}")
    assert max_diff <= 1e-4 * scale, (texts[row], max_diff, scale)


def test_smollm2_greedy_generation_matches_transformers(smollm2, reference):
  cfg, params, tokenizer, _, mesh = smollm2
  torch, model, _ = reference
  prompts = [tokenizer.apply_chat_template(MESSAGES), "The capital of France is"]
  sampler = Sampler(cfg, tokenizer, mesh, SamplerConfig(batch_rows=len(prompts), prompt_buckets=(64,)))
  got = sampler.sample(params, prompts, num_samples=1, strategy=Greedy(), max_new_tokens=20, seed=0)
  for prompt, (text,) in zip(prompts, got):
    # The sampler starts prompts with BOS only where the tokenizer asks for it (SmolLM2 does not); transformers gets
    # exactly the same ids.
    ids_1xT = torch.tensor([tokenizers.prefix_ids(tokenizer) + tokenizer.encode(prompt)])
    with torch.no_grad():
      out = model.generate(ids_1xT, attention_mask=torch.ones_like(ids_1xT), max_new_tokens=20, do_sample=False,
                           eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    new_ids = out[0, ids_1xT.shape[1]:].tolist()
    if tokenizer.eos_id in new_ids:
      new_ids = new_ids[:new_ids.index(tokenizer.eos_id)]
    assert len(new_ids) >= 5
    print(f"greedy: {text!r}")
    assert text == tokenizer.decode(new_ids), prompt


def test_smollm2_tokenizer_matches_transformers(smollm2, reference):
  tokenizer = smollm2[2]
  reference_tokenizer = reference[2]
  for text in TOKENIZER_STRINGS:
    ids = tokenizer.encode(text)
    assert ids == reference_tokenizer.encode(text, add_special_tokens=False), text
    assert tokenizer.decode(ids) == reference_tokenizer.decode(ids, skip_special_tokens=True), text
    if "<|" not in text:
      assert tokenizer.decode(ids) == text
  assert tokenizer.encode("<|im_start|>user") == [1, 4093]
  assert tokenizer.decode([1, 4093, 2]) == "user"
  assert tokenizer.encode("12345") == [tokenizer.encode(d)[0] for d in "12345"]  # SmolLM2 splits digits.
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tokenizer.decode([49152])


def test_smollm2_chat_template_matches_transformers(smollm2, reference):
  tokenizer = smollm2[2]
  reference_tokenizer = reference[2]
  conversation = [{"role": "system", "content": "Be brief."}] + MESSAGES + [{"role": "assistant", "content": "24"}]
  for messages in (MESSAGES, conversation):
    for add_generation_prompt in (True, False):
      want = reference_tokenizer.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=add_generation_prompt)
      assert tokenizer.apply_chat_template(messages, add_generation_prompt) == want
  assert tokenizer.apply_chat_template(MESSAGES).endswith("<|im_start|>assistant\n")


def test_a_truncated_or_foreign_file_is_named_in_one_line(tmp_path):
  whole = tmp_path / "whole.gguf"
  _write_gguf(str(whole), {"token_embd.weight": (np.ones((64, 32), np.float32), None),
                           "output_norm.weight": (np.ones(32, np.float32), None)})
  data = whole.read_bytes()
  assert len(gguf_loader.open_reader(str(whole)).tensors) == 2
  # Cut inside the header, inside the tensor table, inside the tensor data, and one byte short.
  for size in (4, 30, len(data) // 3, len(data) - 200, len(data) - 1):
    cut = tmp_path / f"cut_{size}.gguf"
    cut.write_bytes(data[:size])
    for read in (gguf_loader.open_reader, gguf_loader.load_gguf):
      with pytest.raises(errors.UserError, match=rf"^{cut}: truncated or damaged GGUF file \({size:,} bytes"):
        read(str(cut))
  foreign = tmp_path / "model.gguf"
  foreign.write_bytes(b"PK\x03\x04" + data[4:])
  with pytest.raises(errors.UserError, match=rf"^{foreign}: not a GGUF file \(it starts with b'PK"):
    gguf_loader.load_gguf(str(foreign))
  with pytest.raises(errors.UserError) as raised:
    gguf_loader.load_gguf(str(tmp_path / f"cut_{len(data) // 3}.gguf"))
  assert "\n" not in errors.one_line(raised.value)
