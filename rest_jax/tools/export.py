"""Exports a rest_jax checkpoint (e.g. a self-trained iterate) as a Hugging Face checkpoint.

  python -m rest_jax.tools.export --checkpoint=runs/x/checkpoints/rest_em/iteration_3 \\
      --base=/path/to/hf/base_model --output=/path/to/exported
  python -m rest_jax.tools.export --checkpoint=runs/smollm2/checkpoints/rest_em/iteration_2 \\
      --base=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf --output=/path/to/exported

`--base` is what the run started from (`base.checkpoint`), checked to describe the checkpoint's model before any
weight is read:
  * a Hugging Face directory: its config.json and tokenizer files are written next to the checkpoint's weights,
    with its generation_config.json, special_tokens_map.json and chat_template.jinja;
  * a `.gguf` file: its metadata gives config.json (the `llama` / `qwen2` architecture, context length, special ids),
    the tokenizer files (`GGUFTokenizer.save`: tokenizer.json, tokenizer_config.json with the chat template) and
    generation_config.json (the end-of-sequence ids). Its own, possibly quantized, weights are not read.
transformers then loads `--output` (`AutoModelForCausalLM.from_pretrained`, `AutoTokenizer.from_pretrained`).
"""

import json
import os
import shutil
from typing import Any

import jax
from absl import app, flags, logging
from jax.sharding import Mesh

from rest_jax import checkpoints
from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig
from rest_jax.models import hf
from rest_jax.models.lm import LM

_COPIED_FROM_BASE = ("generation_config.json", "special_tokens_map.json", "chat_template.jinja")


def export(checkpoint: str, base: str, output: str, max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes the checkpoint at `checkpoint` as a Hugging Face checkpoint at `output`; returns the files written.

  Args:
    checkpoint: a rest_jax (Orbax) checkpoint whose metadata holds its `model_config`, as the EM loop saves them.
    base: the Hugging Face directory or `.gguf` file the run started from.
    output: a new (or empty) directory.
    max_shard_bytes: the largest safetensors file; bigger models are sharded with an index.

  Raises:
    ValueError: `output` is not empty, `base` is neither a directory nor a `.gguf` file, or it describes another
      model than the checkpoint's.
  """
  if os.path.exists(output) and os.listdir(output):
    raise ValueError(f"--output={output} exists and is not empty")
  cfg = ModelConfig.from_dict(checkpoints.load_metadata(checkpoint)["model_config"])
  if base.endswith(".gguf"):
    metadata, tokenizer = _read_gguf_base(base, cfg, checkpoint)  # Before reading any weights.
    lm = _gguf_lm(metadata, tokenizer, cfg, *_load_params(checkpoint, cfg))
    files = hf.save(lm, output, max_shard_bytes=max_shard_bytes)
    # The generation defaults a Hugging Face checkpoint ships: transformers' `generate` stops at these ids.
    generation = {"bos_token_id": tokenizer.bos_id, "pad_token_id": lm.pad_id,
                  "eos_token_id": lm.eos_ids[0] if len(lm.eos_ids) == 1 else list(lm.eos_ids)}
    with open(os.path.join(output, "generation_config.json"), "w") as f:
      json.dump(generation, f, indent=2, sort_keys=True)
    return files + ["generation_config.json"]
  if not os.path.isdir(base):
    raise ValueError(f"--base={base}: expected the Hugging Face checkpoint directory or the .gguf file the run "
                     "started from")
  hf.check_expresses(hf.read_config(base), cfg)  # Before reading any weights.
  params, mesh = _load_params(checkpoint, cfg)
  files = hf.save(hf.with_params(base, cfg, params, mesh), output, max_shard_bytes=max_shard_bytes)
  for name in _COPIED_FROM_BASE:  # Generation defaults (e.g. several end ids) and tokenizer extras, unchanged.
    if os.path.isfile(os.path.join(base, name)) and name not in files:
      shutil.copy(os.path.join(base, name), os.path.join(output, name))
      files.append(name)
  return files


def _load_params(checkpoint: str, cfg: ModelConfig) -> tuple[Any, Mesh]:
  """(params, mesh) of the checkpoint, on one device: export only gathers each weight to the host, and the default
  data-parallel mesh would place one copy per device."""
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  params, _ = checkpoints.load(checkpoint, shardings=sharding.param_shardings(cfg, mesh))
  return params, mesh


def _read_gguf_base(path: str, cfg: ModelConfig, checkpoint: str) -> tuple[dict[str, Any], Any]:
  """(metadata, tokenizer) of the GGUF file at `path`; raises ValueError unless it describes `cfg` (dtypes aside)."""
  from rest_jax.models import gguf as gguf_loader  # pylint: disable=g-import-not-at-top
  from rest_jax.models.gguf_tokenizer import GGUFTokenizer  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise FileNotFoundError(f"--base={path}: no such GGUF file")
  reader = gguf_loader.open_reader(path)
  metadata = gguf_loader.read_metadata(reader)
  shapes = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
  base_cfg = gguf_loader.config_from_metadata(metadata, shapes, dtype=cfg.dtype)
  base_cfg = ModelConfig.from_dict({**base_cfg.to_dict(), "param_dtype": cfg.param_dtype})
  if base_cfg != cfg:
    diff = {k: (v, getattr(base_cfg, k)) for k, v in cfg.to_dict().items() if getattr(base_cfg, k) != v}
    raise ValueError(f"--checkpoint={checkpoint} is not a {metadata.get('general.architecture')} model of --base="
                     f"{path} ({metadata.get('general.name', 'unnamed')}): (checkpoint, base) differ in {diff}")
  return metadata, GGUFTokenizer(metadata)


def _gguf_lm(metadata: dict[str, Any], tokenizer: Any, cfg: ModelConfig, params: Any, mesh: Mesh) -> LM:
  """An LM of `params` with the GGUF base's tokenizer, end ids and a config.json built from its metadata."""
  arch = metadata["general.architecture"]  # llama.cpp's names for the supported ones are Hugging Face's.
  config = hf.config_to_hf(cfg, arch)
  config.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
  if f"{arch}.context_length" in metadata:
    config["max_position_embeddings"] = int(metadata[f"{arch}.context_length"])
  return LM(config=cfg, params=params, tokenizer=tokenizer, mesh=mesh, model_type=arch, eos_ids=(tokenizer.eos_id,),
            pad_id=tokenizer.pad_id, hf_config=config)


def _define_flags() -> None:
  # Defined only when run as a program: importing `export` (tests, notebooks) leaves absl's global flags alone, where
  # other tools define --output too.
  flags.DEFINE_string("checkpoint", None, "rest_jax (Orbax) checkpoint directory.", required=True)
  flags.DEFINE_string("base", None, "Hugging Face checkpoint directory or .gguf file the model was trained from.",
                      required=True)
  flags.DEFINE_string("output", None, "Directory to write the Hugging Face checkpoint to.", required=True)
  flags.DEFINE_integer("max_shard_mb", 5 * 1024, "Largest safetensors file, in MiB.")


def main(argv):
  del argv
  f = flags.FLAGS
  files = export(f.checkpoint, f.base, f.output, f.max_shard_mb * 2**20)
  logging.info("wrote %s: %s", f.output, ", ".join(files))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
