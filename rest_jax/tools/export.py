"""Exports a rest_jax checkpoint (e.g. a self-trained iterate) as a Hugging Face checkpoint.

  python -m rest_jax.tools.export --checkpoint=runs/x/checkpoints/rest_em/iteration_3 \\
      --base=/path/to/hf/base_model --output=/path/to/exported

`--base` is the Hugging Face directory the run started from: its config.json (checked to describe the checkpoint's
model) and tokenizer files are written next to the checkpoint's weights. transformers then loads `--output`.
"""

import os
import shutil

from absl import app, flags, logging

from rest_jax import checkpoints
from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig
from rest_jax.models import hf

_COPIED_FROM_BASE = ("generation_config.json", "special_tokens_map.json", "chat_template.jinja")

def export(checkpoint: str, base: str, output: str, max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes the checkpoint at `checkpoint` as a Hugging Face checkpoint at `output`; returns the files written."""
  if os.path.exists(output) and os.listdir(output):
    raise ValueError(f"--output={output} exists and is not empty")
  cfg = ModelConfig.from_dict(checkpoints.load_metadata(checkpoint)["model_config"])
  hf.check_expresses(hf.read_config(base), cfg)  # Before reading any weights.
  mesh = sharding.make_mesh()
  params, _ = checkpoints.load(checkpoint, shardings=sharding.param_shardings(cfg, mesh))
  files = hf.save(hf.with_params(base, cfg, params, mesh), output, max_shard_bytes=max_shard_bytes)
  for name in _COPIED_FROM_BASE:  # Generation defaults (e.g. several end ids) and tokenizer extras, unchanged.
    if os.path.isfile(os.path.join(base, name)) and name not in files:
      shutil.copy(os.path.join(base, name), os.path.join(output, name))
      files.append(name)
  return files


def _define_flags() -> None:
  # Defined only when run as a program: importing `export` (tests, notebooks) leaves absl's global flags alone, where
  # other tools define --output too.
  flags.DEFINE_string("checkpoint", None, "rest_jax (Orbax) checkpoint directory.", required=True)
  flags.DEFINE_string("base", None, "Hugging Face checkpoint the model was trained from.", required=True)
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
