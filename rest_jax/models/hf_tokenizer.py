"""A `Tokenizer` (rest_jax.tokenizers) over a Hugging Face `tokenizer.json`, with its special ids and chat template.

Special tokens come from `tokenizer_config.json` (then `special_tokens_map.json`), then from the model's
`config.json` ids. `add_bos` says whether the model expects a BOS before a prompt: `tokenizer_config.json`'s
`add_bos_token` where it says so, else whether the tokenizer's own post-processor adds one (Llama and Gemma do,
Qwen2 and SmolLM2 do not).
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import tokenizers

_TOKENIZER_FILE = "tokenizer.json"
_CONFIG_FILE = "tokenizer_config.json"
_SPECIAL_MAP_FILE = "special_tokens_map.json"
_TEMPLATE_FILE = "chat_template.jinja"


class HFTokenizer:
  """Text <-> ids with a `tokenizers.Tokenizer`; `encode` adds no special tokens, `decode` drops pad/BOS/EOS."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, *, bos_id: int, eos_id: int, pad_id: int, add_bos: bool,
               tokenizer_config: dict[str, Any] | None = None, chat_template: str | None = None):
    self.tokenizer = tokenizer
    self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
    self.bos_id, self.eos_id, self.pad_id, self.add_bos = bos_id, eos_id, pad_id, add_bos
    self.tokenizer_config = dict(tokenizer_config or {})
    self.chat_template = chat_template
    self._skipped_ids = frozenset((bos_id, eos_id, pad_id))

  @classmethod
  def from_directory(cls, directory: str, model_config: dict[str, Any] | None = None) -> "HFTokenizer":
    """Reads `tokenizer.json` and its configuration files from a Hugging Face checkpoint directory."""
    path = os.path.join(directory, _TOKENIZER_FILE)
    if not os.path.isfile(path):
      raise ValueError(f"{directory} has no {_TOKENIZER_FILE}")
    tokenizer = tokenizers.Tokenizer.from_file(path)
    config = _read_json(os.path.join(directory, _CONFIG_FILE))
    special_map = _read_json(os.path.join(directory, _SPECIAL_MAP_FILE))
    model_config = model_config or {}

    def special_id(kind: str) -> int | None:
      for source in (config, special_map):
        token = source.get(f"{kind}_token")
        if isinstance(token, dict):
          token = token.get("content")
        if token is not None and tokenizer.token_to_id(token) is not None:
          return tokenizer.token_to_id(token)
      value = model_config.get(f"{kind}_token_id")
      return value[0] if isinstance(value, list) and value else value

    eos_id = special_id("eos")
    if eos_id is None:
      raise ValueError(f"{directory}: no eos token in {_CONFIG_FILE}, {_SPECIAL_MAP_FILE} or config.json")
    bos_id = special_id("bos")
    # Tokenizers without a BOS (Qwen2) never get one prepended; the id only has to be a valid one.
    add_bos = bos_id is not None and config.get(
        "add_bos_token", tokenizer.encode("a", add_special_tokens=True).ids[:1] == [bos_id])
    pad_id = special_id("pad")
    template = config.get("chat_template")
    template_path = os.path.join(directory, _TEMPLATE_FILE)
    if template is None and os.path.isfile(template_path):
      with open(template_path) as f:
        template = f.read()
    if isinstance(template, list):  # Named templates: [{"name": "default", "template": ...}, ...].
      template = {t["name"]: t["template"] for t in template}.get("default")
    return cls(tokenizer, bos_id=eos_id if bos_id is None else bos_id, eos_id=eos_id,
               pad_id=eos_id if pad_id is None else pad_id, add_bos=bool(add_bos), tokenizer_config=config,
               chat_template=template)

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    kept = []
    for token_id in ids:
      token_id = int(token_id)
      if not 0 <= token_id < self.vocab_size:
        raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
      if token_id not in self._skipped_ids:
        kept.append(token_id)
    return self.tokenizer.decode(kept, skip_special_tokens=False)

  def prompt_ids(self, text: str) -> list[int]:
    """The ids the model is fed for `text`: BOS first where the model expects one."""
    return ([self.bos_id] if self.add_bos else []) + self.encode(text)

  def apply_chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Renders `messages` ([{"role": "user", "content": ...}, ...]) with the model's chat template, as
    transformers does (sandboxed jinja2, trimmed blocks); the text already holds any BOS the template writes."""
    if self.chat_template is None:
      raise ValueError("this tokenizer has no chat_template (tokenizer_config.json / chat_template.jinja)")
    import jinja2.sandbox  # pylint: disable=g-import-not-at-top  (only chat models need it)

    def raise_exception(message):
      raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    specials = {}
    for key, value in self.tokenizer_config.items():
      if key.endswith("_token") and isinstance(value, (str, dict)):
        specials[key] = value.get("content") if isinstance(value, dict) else value
    return env.from_string(self.chat_template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt, **specials)

  def save(self, directory: str) -> list[str]:
    """Writes `tokenizer.json` and `tokenizer_config.json` (with the chat template) into `directory`."""
    self.tokenizer.save(os.path.join(directory, _TOKENIZER_FILE))
    config = dict(self.tokenizer_config)
    config.setdefault("eos_token", self.tokenizer.id_to_token(self.eos_id))
    if self.chat_template is not None:
      config["chat_template"] = self.chat_template
    with open(os.path.join(directory, _CONFIG_FILE), "w") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)
    return [_TOKENIZER_FILE, _CONFIG_FILE]

  def __repr__(self) -> str:
    return f"HFTokenizer(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id})"


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)
