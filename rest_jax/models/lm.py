"""`LM`: a pretrained model's config, params and tokenizer, with logits and generation for tests and notebooks.

Generation runs the project's sampler (`Sampler.iter_sample_ids`: prompt buckets, prefill, KV cache, while_loop
decode) on token ids `LM` builds itself, so that chat prompts (whose template writes any BOS) and several end ids
(Llama 3 instruct) work.

Shape letters: B rows, T tokens, V vocabulary, P prompts, L prompt bucket, N new tokens.
"""

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rest_jax import errors
from rest_jax import tokenizers
from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig, Transformer, causal_mask
from rest_jax.sampling import sampler, strategies
from rest_jax.tokenizers import Tokenizer

_MIN_BUCKET = 16  # Prompts are left-padded to a power of two at least this long, so few lengths compile.


@dataclasses.dataclass
class LM:
  """A language model ready to use: `params` are placed on `mesh` with the model's sharding rules."""

  config: ModelConfig
  params: Any
  tokenizer: Tokenizer | None
  mesh: Mesh
  model_type: str  # Hugging Face architecture name, e.g. "llama"; export writes it.
  # Generation ends at any of these (instruct models have several, e.g. Llama 3). Empty for a checkpoint that names
  # none (no tokenizer files, no eos_token_id): its logits work, generation asks for one (`require_eos_ids`).
  eos_ids: tuple[int, ...]
  pad_id: int
  hf_config: dict[str, Any] | None = None  # The source config.json, written back on export.
  source: str | None = None  # The directory or file it was loaded from, named in errors.

  def require_eos_ids(self, needed_for: str = "generation") -> tuple[int, ...]:
    """`eos_ids`, or a one-line error saying where to add one when the checkpoint names none."""
    if self.eos_ids:
      return self.eos_ids
    where = self.source or "the checkpoint"
    raise errors.UserError(
        f"{where}: no end-of-sequence id, which {needed_for} needs: add \"eos_token_id\" to "
        f"{os.path.join(where, 'config.json') if self.source else 'its config.json'} (or generation_config.json), "
        f"or the tokenizer files (tokenizer.json, tokenizer_config.json)")

  def logits(self, token_ids_BxT: Any) -> jax.Array:
    """float32 logits_BxTxV of whole sequences (causal attention, positions from 0, no padding)."""
    tokens_BxT = np.asarray(token_ids_BxT, np.int32)
    if tokens_BxT.ndim != 2:
      raise ValueError(f"token_ids_BxT must be 2-D, got shape {tokens_BxT.shape}")
    B = tokens_BxT.shape[0]
    rows = -(-B // sharding.batch_divisor(self.mesh)) * sharding.batch_divisor(self.mesh)
    padded_BxT = np.concatenate([tokens_BxT, np.zeros((rows - B, tokens_BxT.shape[1]), np.int32)])
    with sharding.use_mesh(self.mesh):
      logits_BxTxV = _forward(self.params, sharding.shard_batch(padded_BxT, self.mesh), cfg=self.config)
    return logits_BxTxV[:B]

  def generate_ids(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, *, temperature: float = 0.0,
                   top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> list[list[int]]:
    """Continues each id sequence as given (no BOS added); the ending id, if reached, is not returned."""
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompt_ids:
      return []
    longest, buckets = max(len(p) for p in prompt_ids), [_MIN_BUCKET]
    while buckets[-1] < longest:
      buckets.append(2 * buckets[-1])
    # One call for all prompts of a bucket, as a notebook user expects of a single generate().
    gen = sampler.Sampler(self.config, None, self.mesh,
                          sampler.SamplerConfig(batch_rows=len(prompt_ids), prompt_buckets=tuple(buckets)),
                          end_ids=self.require_eos_ids(), pad_id=self.pad_id)
    out: list[list[int]] = [[] for _ in prompt_ids]
    for idx, rows in gen.iter_sample_ids(self.params, prompt_ids, num_samples=1,
                                         strategy=strategies.make(temperature, top_k, top_p),
                                         max_new_tokens=max_new_tokens, seed=seed):
      for i, (ids,) in zip(idx, rows):
        out[i] = ids
    return out

  def generate(self, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, seed: int = 0, *, chat: bool = False
               ) -> list[str]:
    """Completions of `prompts` (greedy at temperature 0). `chat`: each prompt is a user message, wrapped in the
    tokenizer's chat template with the assistant turn opened."""
    if self.tokenizer is None:
      raise ValueError("this LM has no tokenizer; use generate_ids")
    prompt_ids = [self.prompt_ids(p, chat=chat) for p in prompts]
    completions = self.generate_ids(prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                    seed=seed)
    return [self.tokenizer.decode(ids) for ids in completions]

  def prompt_ids(self, prompt: str, *, chat: bool = False) -> list[int]:
    """The ids fed to the model for `prompt`: BOS where the model expects one, or the chat template's rendering."""
    tok = self.tokenizer
    if chat:
      if not hasattr(tok, "apply_chat_template"):
        raise ValueError(f"{type(tok).__name__} has no chat template")
      return tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True))
    return tokenizers.prefix_ids(tok) + tok.encode(prompt)


@functools.partial(jax.jit, static_argnames="cfg")
def _forward(params: Any, tokens_BxT: jax.Array, *, cfg: ModelConfig) -> jax.Array:
  B, T = tokens_BxT.shape
  positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  mask_BxTxT = causal_mask(jnp.ones((B, T), jnp.int32))
  logits_BxTxV, _ = Transformer(cfg).apply({"params": params}, tokens_BxT, positions_BxT, mask_BxTxT)
  return logits_BxTxV
