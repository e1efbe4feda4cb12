"""The tokenizer stored inside a GGUF file, rebuilt with the `tokenizers` library, and its chat template.

A GGUF file carries its vocabulary as metadata: `tokenizer.ggml.tokens` (id -> piece), `tokenizer.ggml.merges`
(BPE merge rules, "left right"), `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`: 1 normal, 3 control,
4 user-defined, ...), the special ids, the pre-tokenizer name (`tokenizer.ggml.pre`) and `tokenizer.chat_template`.
Byte-level BPE (`tokenizer.ggml.model == "gpt2"`: SmolLM2, Llama 3, Qwen2) is supported.

`GGUFTokenizer.save` writes it as Hugging Face tokenizer files (`tokenizer.json`, `tokenizer_config.json`,
`special_tokens_map.json`), so an exported model's `transformers.AutoTokenizer` gives the same ids and chat prompts.
"""

from collections.abc import Mapping, Sequence
import json
import os
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

_CONTROL, _USER_DEFINED = 3, 4

# The regular expressions llama.cpp splits text with before BPE (`llama-vocab.cpp`), by `tokenizer.ggml.pre`; they
# are the ones in the models' own `tokenizer.json` files.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
  if pre in ("default", "gpt-2"):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre == "smollm":
    # SmolLM's tokenizer.json: every digit is its own pre-token, then GPT-2's byte-level split.
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
  if pre in ("llama-bpe", "llama3"):
    return _split_then_bytes(_LLAMA3_SPLIT)
  if pre == "qwen2":
    return _split_then_bytes(_QWEN2_SPLIT)
  raise ValueError(f"tokenizer.ggml.pre={pre!r} is not supported; supported: default, gpt-2, smollm, llama-bpe, qwen2")


class GGUFTokenizer:
  """A rest_jax `Tokenizer` (see `rest_jax.tokenizers`) built from a GGUF file's vocabulary."""

  def __init__(self, metadata: Mapping[str, Any]):
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
      raise ValueError(f"tokenizer.ggml.model={model!r} is not supported; only byte-level BPE ('gpt2') is")
    pieces: list[str] = list(metadata["tokenizer.ggml.tokens"])
    types: list[int] = list(metadata.get("tokenizer.ggml.token_type", [1] * len(pieces)))
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    self.vocab_size: int = len(pieces)
    self.bos_id: int = self._special_id(metadata, "bos")
    self.eos_id: int = self._special_id(metadata, "eos")
    # Without a padding token the sampler pads with EOS, which it masks anyway.
    self.pad_id: int = self._special_id(metadata, "padding", default=self.eos_id)
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    self.unk_id: int | None = None if unk_id is None else self._special_id(metadata, "unknown")

    bpe = models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=merges, fuse_unk=False)
    self._tokenizer = tokenizers.Tokenizer(bpe)
    self._tokenizer.pre_tokenizer = _pre_tokenizer(metadata.get("tokenizer.ggml.pre", "default"))
    self._tokenizer.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, ...) are matched whole in text and dropped by `decode`; user-defined ones are
    # matched whole but kept.
    self._tokenizer.add_special_tokens([
        tokenizers.AddedToken(p, special=True, normalized=False) for p, t in zip(pieces, types) if t == _CONTROL])
    self._tokenizer.add_tokens([
        tokenizers.AddedToken(p, special=False, normalized=False) for p, t in zip(pieces, types)
        if t == _USER_DEFINED])
    self.chat_template: str | None = metadata.get("tokenizer.chat_template")
    self.add_bos: bool = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
    self.add_eos: bool = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    context_length = metadata.get(f"{metadata.get('general.architecture')}.context_length")
    self.model_max_length: int | None = None if context_length is None else int(context_length)

  def _special_id(self, metadata: Mapping[str, Any], name: str, default: int | None = None) -> int:
    token_id = metadata.get(f"tokenizer.ggml.{name}_token_id", default)
    if token_id is None or not 0 <= int(token_id) < self.vocab_size:
      raise ValueError(f"tokenizer.ggml.{name}_token_id={token_id} is missing or outside the vocabulary "
                       f"[0, {self.vocab_size})")
    return int(token_id)

  def encode(self, text: str) -> list[int]:
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    for token_id in ids:
      if not 0 <= token_id < self.vocab_size:
        raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
    return self._tokenizer.decode(ids, skip_special_tokens=True)

  def id_to_piece(self, token_id: int) -> str:
    """The vocabulary entry of `token_id` (byte-level form, e.g. "Ġhello"), for inspection."""
    return self._tokenizer.id_to_token(token_id)

  def apply_chat_template(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """Renders `messages` ([{"role": ..., "content": ...}]) with the file's template, as transformers does."""
    if self.chat_template is None:
      raise ValueError("this GGUF file has no tokenizer.chat_template")
    try:
      import jinja2.sandbox  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("apply_chat_template needs jinja2 (pip install jinja2)") from e

    def raise_exception(message):
      raise ValueError(f"chat template: {message}")

    # The environment transformers renders chat templates in, so both give the same text.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)
    return env.from_string(self.chat_template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt,
        bos_token=self.id_to_piece(self.bos_id), eos_token=self.id_to_piece(self.eos_id))

  def save(self, directory: str) -> list[str]:
    """Writes Hugging Face tokenizer files to `directory` (created if needed); returns their names.

    `transformers.AutoTokenizer.from_pretrained(directory)` then encodes, decodes and renders chat prompts as this
    tokenizer does; `add_special_tokens=True` there adds BOS / EOS exactly where the GGUF file asks for them.
    """
    os.makedirs(directory, exist_ok=True)
    tokenizer = tokenizers.Tokenizer.from_str(self._tokenizer.to_str())  # A copy: the post-processor is export-only.
    bos, eos = self.id_to_piece(self.bos_id), self.id_to_piece(self.eos_id)
    if self.add_bos or self.add_eos:  # For users of tokenizer.json alone; transformers follows `add_*_token` below.
      wrap = lambda seq, type_id: ([f"{bos}:{type_id}"] * self.add_bos + [f"{seq}:{type_id}"]
                                   + [f"{eos}:{type_id}"] * self.add_eos)
      used = {bos: self.bos_id} if self.add_bos else {}
      used.update({eos: self.eos_id} if self.add_eos else {})
      tokenizer.post_processor = processors.TemplateProcessing(
          single=wrap("$A", 0), pair=wrap("$A", 0) + wrap("$B", 1), special_tokens=list(used.items()))
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    special = {"bos_token": bos, "eos_token": eos, "pad_token": self.id_to_piece(self.pad_id)}
    if self.unk_id is not None:
      special["unk_token"] = self.id_to_piece(self.unk_id)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # Loads tokenizer.json as is; model classes rebuild their own.
        **special,
        "add_bos_token": self.add_bos,
        "add_eos_token": self.add_eos,
        "clean_up_tokenization_spaces": False,  # `decode` keeps spaces before punctuation, as this tokenizer does.
    }
    if self.model_max_length is not None:
      config["model_max_length"] = self.model_max_length
    if self.chat_template is not None:
      config["chat_template"] = self.chat_template
    files = {"tokenizer_config.json": config, "special_tokens_map.json": special}
    for name, content in files.items():
      with open(os.path.join(directory, name), "w") as f:
        json.dump(content, f, indent=2, ensure_ascii=False)
    return ["tokenizer.json", *files]

  def __repr__(self) -> str:
    return f"GGUFTokenizer(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id})"
