"""Decode-step time of a LoRA-adapted SmolLM2-135M: merged weights against the adapters applied on the fly.

The sampler decodes with the merged model (`lora.merge`); this measures what applying the adapters on the fly (qwix
intercepting every adapted projection, over the float32 base or an int8 one) would cost instead. One jitted decode
step: `--rows` sequences, one new token each, over a `--cache` slot sampling cache; best of `--steps`.

  python benchmarks/lora_decode.py --rows=8 --cache=256 --rank=16
"""

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from _common import best_seconds, load_smollm2
from rest_jax.model.transformer import SampleKeys, Transformer, init_sampling_cache
from rest_jax.training import lora


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=8)
  parser.add_argument("--cache", type=int, default=256)
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  _, mesh, lm = load_smollm2()
  cfg = dataclasses.replace(lm.config, dtype="float32")
  # The sampler's cache: half the slots a prompt's, half generated; the step writes the middle generated slot.
  L = N = args.cache // 2
  tokens_BxT = jnp.ones((args.rows, 1), jnp.int32)
  positions_BxT = jnp.full((args.rows, 1), L + N // 2, jnp.int32)
  keys = SampleKeys(prefix_pos_PxL=jnp.broadcast_to(jnp.arange(L), (args.rows, L)),
                    gen_pos_BxN=jnp.broadcast_to(L + jnp.arange(N), (args.rows, N)))
  cache = init_sampling_cache(cfg, args.rows, L, args.rows, N)
  rs = np.random.default_rng(0)

  def step_time(module, params) -> float:
    step = jax.jit(lambda p, c: module.apply({"params": p}, tokens_BxT, positions_BxT, keys, c, N // 2)[0])
    return best_seconds(lambda: step(params, cache), args.steps, warmup=True)

  print(f"SmolLM2-135M decode step, {args.rows} rows x 1 token, {args.cache}-slot cache, LoRA rank {args.rank} on "
        "q k v o gate up down; best of", args.steps)
  print("| model | ms per decode step |\n|---|---:|")
  print(f"| base (no adapters) | {1e3 * step_time(Transformer(cfg), lm.params):.1f} |", flush=True)
  for quant in ("none", "int8"):
    c = lora.LoraConfig(rank=args.rank, base_quant=quant)
    adapters = jax.tree.map(lambda x: 0.01 * rs.normal(size=x.shape).astype(np.float32),
                            lora.init_adapters(cfg, c, mesh, jax.random.key(0)))
    base = lora.quantize_base(cfg, c, lm.params, mesh)
    merged = lora.merge(cfg, c, base, adapters, mesh)
    label = "float32 base" if quant == "none" else "int8 base"
    print(f"| merged ({label}) | {1e3 * step_time(Transformer(cfg), merged):.1f} |", flush=True)
    print(f"| adapters on the fly ({label}) | {1e3 * step_time(lora.model(cfg, c), lora.combine(base, adapters)):.1f} "
          "|", flush=True)


if __name__ == "__main__":
  main()
