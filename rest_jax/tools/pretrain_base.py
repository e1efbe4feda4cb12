"""Trains the base model of an embedded task from scratch on its human-written solutions.

  python -m rest_jax.tools.pretrain_base --config=configs/default.py --output=rest_jax/assets/arithmetic_base
  python -m rest_jax.tools.pretrain_base --config=configs/default.py:base_small \
      --output=rest_jax/assets/arithmetic_base_small   # and :base_large (configs/default.py lists the sizes)

The checkpoint keeps the validation-best step (greedy pass@1 on the val split) and records how it was made, and in
how long (`wall_s`: from building the task to the end of training, on whatever machine ran it).
"""

import json
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from rest_jax import checkpoints, generation, tasks, tokenizers
from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig, param_count
from rest_jax.sampling import Sampler, SamplerConfig, strategies
from rest_jax.training import TrainConfig, make_examples, train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config with a `pretrain` block.")
_OUTPUT = flags.DEFINE_string("output", None, "Checkpoint directory to write.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing checkpoint at --output.")


def pretrain(config, output: str, overwrite: bool = False) -> dict:
  t0 = time.time()
  task = tasks.from_config(config.task)
  tokenizer = tokenizers.load(config.base.tokenizer or tokenizers.default_tokenizer_path(config.task.name))
  cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **config.pretrain.model.to_dict())
  mesh = sharding.make_mesh(**config.mesh.to_dict())
  params = sharding.init_params(cfg, mesh, jax.random.key(config.seed))
  logging.info("base model: %d parameters", param_count(params))
  human = list(task.split("human"))
  examples = make_examples(tokenizer, [p.prompt for p in human], [p.solution for p in human])
  sampler = Sampler(cfg, tokenizer, mesh, SamplerConfig(batch_rows=config.sampler.batch_rows,
                                                        prompt_buckets=tuple(config.sampler.prompt_buckets)))
  val = list(task.split("val"))[:config.eval.val_size]

  def val_fn(p):
    scored = generation.generate_and_score(sampler, p, val, reward=task.reward, num_samples=1,
                                           strategy=strategies.Greedy(), max_new_tokens=config.sampler.max_new_tokens,
                                           seed=0, desc="val")
    return float((scored.rewards[:, 0] >= 1).mean())

  train_config = TrainConfig(**{**config.train.to_dict(), **config.pretrain.train.to_dict(), "seed": config.seed})
  result = train(params, examples, cfg=cfg, config=train_config, mesh=mesh, val_fn=val_fn, desc="pretrain")
  metadata = {"model_config": cfg.to_dict(), "made_by": "rest_jax.tools.pretrain_base",
              "task": config.task.to_dict(), "pretrain": config.pretrain.to_dict(), "best_step": result.best_step,
              "best_val_pass@1": result.best_val, "steps": result.steps, "history": result.history,
              "wall_s": time.time() - t0}
  checkpoints.save(output, result.params, metadata=json.loads(json.dumps(metadata, default=list)),
                   overwrite=overwrite)
  return metadata


def main(argv):
  del argv
  meta = pretrain(_CONFIG.value, _OUTPUT.value, _OVERWRITE.value)
  logging.info("wrote %s: best val pass@1 %.3f at step %d", _OUTPUT.value, meta["best_val_pass@1"], meta["best_step"])


if __name__ == "__main__":
  app.run(main)
