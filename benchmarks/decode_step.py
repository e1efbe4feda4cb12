"""Where one decode step's time goes: rest_jax's sampler on SmolLM2-135M-Instruct against this machine's own limits.

Measured in the same run: the matmul rate (a float32 4096^3 matmul) and the memory bandwidth (a reduction over
1 GiB). Then, for each batch, one decode step of the sampler (`sampler.decode_step`, jitted on its own, the caches
donated so they update in place as in the decode loop) and its parts, each jitted and timed alone:

  matmuls    every weight matrix of the step (q, k, v, o, gate, up, down per layer, and the output head) times the
             step's B rows: the step's FLOPs and its weight bytes;
  attention  every layer's `_cached_attention` at that step (the prompt's slots and the filled generated ones);
  sampling   `Sampling(temperature=0.7, top_k=40).next_tokens` on the step's B x V logits;
  rest       step - matmuls - attention: norms, rotary embeddings, the embedding lookup, fusion boundaries;
  loop       (decode loop time per token) - step - sampling: what the `while_loop` and its carry cost per step.

Achieved rates are FLOP/s (2 x rows x weights) and bytes/s (weights + the key/value slots read) over the step time,
as fractions of the rates measured above. Prints a markdown table and one JSON line.

  python benchmarks/decode_step.py --batches=1,64,256
"""

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from _common import best_seconds, load_smollm2
from rest_jax.model import transformer
from rest_jax.sampling import Sampling
from rest_jax.sampling import sampler

PROMPT_LEN, NEW_TOKENS = 32, 128


_best = functools.partial(best_seconds, warmup=True)  # Every part is timed after one call that compiles it.


def machine_rates(repeats: int) -> tuple[float, float]:
  """(float32 matmul FLOP/s, memory bytes/s) of this machine, now."""
  a = jnp.ones((4096, 4096), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  flops = 2 * 4096 ** 3 / _best(lambda: matmul(a), repeats)
  big = jnp.ones((2 ** 28,), jnp.float32)  # 1 GiB.
  total = jax.jit(jnp.sum)
  return flops, big.nbytes / _best(lambda: total(big), repeats)


def _weight_matrices(cfg, params) -> list[jax.Array]:
  """Every matrix a decode step multiplies its rows by, as in x out."""
  mats = []
  for i in range(cfg.num_layers):
    layer = params[f"layer_{i}"]
    for name in ("q", "k", "v"):
      kernel = layer["attn"][name]["kernel"]
      mats.append(kernel.reshape(kernel.shape[0], -1))
    kernel = layer["attn"]["o"]["kernel"]
    mats.append(kernel.reshape(-1, kernel.shape[-1]))
    mats += [layer["mlp"][name]["kernel"] for name in ("gate", "up", "down")]
  mats.append(params["embed"]["embedding"].T if cfg.tied_embeddings else params["lm_head"]["kernel"])
  return mats


def measure_batch(lm, rows: int, samples: int, repeats: int) -> dict[str, float]:
  cfg, params = lm.config, lm.params
  prompts = rows // samples
  rng = np.random.default_rng(0)
  prompt_PxL = rng.integers(100, cfg.vocab_size - 100, size=(prompts, PROMPT_LEN)).astype(np.int32)
  pad_P = np.zeros((prompts,), np.int32)
  step = NEW_TOKENS // 2  # Mid-decode: half the generated slots filled, attending to the segment up to NEW_TOKENS.
  _, cache, keys = jax.jit(sampler.prefill, static_argnames=("cfg", "rows", "max_new_tokens"))(
      params, prompt_PxL, pad_P, cfg=cfg, rows=rows, max_new_tokens=NEW_TOKENS)
  token_B = jnp.asarray(rng.integers(100, 1000, size=(rows,)), jnp.int32)
  step_fn = jax.jit(functools.partial(sampler.decode_step, cfg=cfg), donate_argnums=(3,))
  state = {"cache": cache}

  def one_step():
    logits, state["cache"] = step_fn(params, token_B, jnp.int32(step), state["cache"], keys)
    return logits

  step_s = _best(one_step, repeats)

  mats = _weight_matrices(cfg, params)
  inputs = {n: jnp.asarray(rng.normal(size=(rows, n)), jnp.float32) for n in {int(m.shape[0]) for m in mats}}
  matmuls = jax.jit(lambda inputs, mats: [inputs[int(m.shape[0])] @ m for m in mats])
  matmul_s = _best(lambda: matmuls(inputs, mats), repeats)

  N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  q_Bx1xNxH = jnp.ones((rows, 1, N, H), jnp.float32)
  kv_Bx1xKxH = jnp.ones((rows, 1, K, H), jnp.float32)
  positions_Bx1 = keys.gen_pos_BxN[:, step:step + 1]

  @functools.partial(jax.jit, donate_argnums=(0,))
  def attention(cache):
    outs, new = [], []
    for layer in range(cfg.num_layers):
      window = cfg.sliding_window if cfg.uses_window(layer) else None
      out, c = transformer._cached_attention(  # pylint: disable=protected-access
          cfg, q_Bx1xNxH, kv_Bx1xKxH, kv_Bx1xKxH, positions_Bx1, keys, cache[layer], jnp.int32(step), None, window)
      outs.append(out)
      new.append(c)
    return outs, new

  def attend():
    out, state["cache"] = attention(state["cache"])
    return out

  attention_s = _best(attend, repeats)

  logits_BxV = jnp.asarray(rng.normal(size=(rows, cfg.vocab_size)), jnp.float32)
  strategy = Sampling(temperature=0.7, top_k=40)
  pick = jax.jit(strategy.next_tokens)
  sampling_s = _best(lambda: pick(logits_BxV, jax.random.key(0)), repeats)

  # The whole decode loop, per token: two budgets, so the prefill and the fixed costs cancel.
  kw = dict(cfg=cfg, strategy=strategy, num_samples=samples, eos_id=-1, pad_id=0)
  loop = {n: _best(lambda n=n: sampler.sample_tokens(params, prompt_PxL, pad_P, jax.random.key(0), max_new_tokens=n,
                                                     **kw), max(1, repeats // 2))
          for n in (NEW_TOKENS // 2, NEW_TOKENS)}
  loop_per_token_s = (loop[NEW_TOKENS] - loop[NEW_TOKENS // 2]) / (NEW_TOKENS // 2)

  weights = sum(int(m.size) for m in mats)
  kv_bytes = 2 * cfg.num_layers * K * H * 4 * (prompts * PROMPT_LEN + rows * NEW_TOKENS)
  return dict(rows=rows, samples=samples, step_ms=1e3 * step_s, matmul_ms=1e3 * matmul_s,
              attention_ms=1e3 * attention_s, sampling_ms=1e3 * sampling_s,
              rest_ms=1e3 * (step_s - matmul_s - attention_s),
              loop_ms=1e3 * (loop_per_token_s - step_s - sampling_s), loop_tokens_per_s=rows / loop_per_token_s,
              step_flops=2 * rows * weights / step_s, step_bytes=(4 * weights + kv_bytes) / step_s,
              matmul_flops=2 * rows * weights / matmul_s)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="1,64,256", help="decode rows, comma-separated")
  parser.add_argument("--samples", type=int, default=1, help="samples per prompt (rows share a prompt's cache)")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  _, _, lm = load_smollm2()
  peak_flops, bandwidth = machine_rates(args.repeats)
  print(f"machine: {peak_flops / 1e9:.0f} GFLOP/s float32 matmul, {bandwidth / 1e9:.1f} GB/s read; "
        f"SmolLM2-135M float32, prompt {PROMPT_LEN}, step {NEW_TOKENS // 2} of {NEW_TOKENS}, "
        f"{args.samples} sample(s) per prompt\n")
  print("| rows | step ms | matmuls ms | attention ms | sampling ms | rest ms | loop ms | step GFLOP/s (of peak) "
        "| step GB/s (of bandwidth) | decode loop tokens/s |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  results = []
  for rows in (int(b) for b in args.batches.split(",")):
    r = measure_batch(lm, rows, args.samples, args.repeats)
    results.append(r)
    print(f"| {rows} | {r['step_ms']:.1f} | {r['matmul_ms']:.1f} | {r['attention_ms']:.1f} | {r['sampling_ms']:.1f} "
          f"| {r['rest_ms']:.1f} | {r['loop_ms']:.1f} | {r['step_flops'] / 1e9:.0f} "
          f"({r['step_flops'] / peak_flops:.2f}) | {r['step_bytes'] / 1e9:.1f} ({r['step_bytes'] / bandwidth:.2f}) "
          f"| {r['loop_tokens_per_s']:.0f} |", flush=True)
  print(json.dumps({"peak_flops": peak_flops, "bandwidth": bandwidth, "results": results}))


if __name__ == "__main__":
  main()
