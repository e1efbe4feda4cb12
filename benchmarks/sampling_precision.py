"""What sampling in bfloat16 costs: greedy agreement and test pass@1 against float32 on the shipped tasks.

For each config, the shipped base greedily completes every test problem twice, with `sampler.dtype` float32 and
bfloat16 (weights, compute and KV cache; the M-step's float32 weights are untouched), and this prints the fraction of
identical completions, the mean fraction of each float32 completion before the first differing token, both pass@1
and both wall times (each side's first call compiles its decode loop).

  python benchmarks/sampling_precision.py configs/default.py configs/code_default.py
"""

import argparse
import dataclasses
import importlib.util
import tempfile
import time

import numpy as np

from rest_jax import experiment, generation
from rest_jax.sampling import Sampler
from rest_jax.sampling.strategies import Greedy


def _config(path: str):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(None)


def _agreement(a, b) -> tuple[float, float]:
  """(fraction of identical completions, mean fraction of each `a` completion before its first differing token)."""
  same = np.mean([x.ids == y.ids for x, y in zip(a, b)])
  prefix = [next((i for i, (u, v) in enumerate(zip(x.ids, y.ids)) if u != v), min(len(x.ids), len(y.ids)))
            / max(len(x.ids), 1) for x, y in zip(a, b)]
  return float(same), float(np.mean(prefix))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("configs", nargs="+")
  parser.add_argument("--split", default="test")
  args = parser.parse_args()
  for path in args.configs:
    config = _config(path)
    exp = experiment.Experiment.create(config, tempfile.mkdtemp())
    problems = exp.task.splits[args.split]
    scored, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
      sampler = Sampler(exp.cfg, exp.sampler.tokenizer, exp.mesh, dataclasses.replace(exp.sampler.config, dtype=dtype),
                        end_ids=exp.sampler.end_ids)
      start = time.perf_counter()
      scored[dtype] = generation.generate_and_score(
          sampler, exp.base_params, problems, reward=exp.task.reward, num_samples=1, strategy=Greedy(),
          max_new_tokens=config.sampler.max_new_tokens, seed=0, stop_strings=exp.task.stop_strings, workers=2)
      seconds[dtype] = time.perf_counter() - start
    same, prefix = _agreement(*([row[0] for row in scored[d].sampled] for d in ("float32", "bfloat16")))
    print(f"{path}: {len(problems)} {args.split} problems | identical greedy completions {same:.3f} | "
          f"f32 tokens before divergence {prefix:.3f} | pass@1 float32 {scored['float32'].rewards.mean():.3f} "
          f"bfloat16 {scored['bfloat16'].rewards.mean():.3f} | wall s float32 {seconds['float32']:.1f} "
          f"bfloat16 {seconds['bfloat16']:.1f}", flush=True)


if __name__ == "__main__":
  main()
