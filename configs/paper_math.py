"""The paper's MATH experiment (Singh et al. 2023, sec. 5): ReST-EM on Hendrycks MATH, transfer to GSM8K.

  python -m rest_jax.main --config=configs/paper_math.py --workdir=runs/math_gemma2b
  python -m rest_jax.main --config=configs/paper_math.py:gemma7b --workdir=runs/math_gemma7b
  python -m rest_jax.main --config=configs/paper_math.py:llama3_8b --workdir=runs/math_llama3_8b
  python -m rest_jax.main --config=configs/paper_math.py:fixture --workdir=/tmp/math_fixture   # a CPU check, ~1 min

Paths: the data set and checkpoint paths below (task.kwargs.*path, MODELS[...]["checkpoint"]) are where the files
are expected; point them elsewhere with flags, e.g. --config.task.kwargs.path=/data/MATH --config.task.kwargs.gsm8k_path=/data/gsm8k --config.base.checkpoint=/ckpt/gemma-2b.
On a TPU pod slice every worker runs the same command with --distributed (launch/tpu_pod.sh); on one GPU host,
launch/gpu_host.sh. Data: the Hendrycks MATH release tree (MATH/train, MATH/test) and GSM8K's train/test.jsonl at the
paths given (see rest_jax/data); the base: a Hugging Face checkpoint directory (config.json, safetensors, tokenizer).

The paper's settings: 32 samples per training problem at temperature 0.7, top-k 40; at most 10 correct solutions
kept per problem; 3 iterations, each fine-tuning the *base* model on the latest E-step's samples; prompts are
Minerva's 4-shot prompt; test: greedy pass@1 on MATH test and GSM8K test (transfer), pass@k and maj@k at
temperature 1.0, top-p 0.95.

Arguments after the colon select a mode: "" (Gemma 2B on a TPU v5e-16; also "gemma2b"), "gemma7b" (Gemma 7B on a TPU v4-32),
"llama3_8b" (Llama 3 8B on one 8-GPU H100/H200 host), "fixture" (the project's MATH and GSM8K fixtures and the
shipped small model: checks the whole pipeline on a CPU in a minute).

Memory arithmetic (full fine-tuning; float32 params and AdamW moments, bfloat16 compute; P = parameters). Training
holds params 4P + grads 4P + Adam m, v 8P = 16P bytes, sharded over the fsdp axis (replicated over data). Sampling
holds only the params (4P over fsdp) and the KV cache of one sampler call: rows x (prompt bucket + new tokens) x
layers x 2 x kv_heads x head_dim x 2 bytes, rows sharded over data x fsdp. The two stages never overlap.
  gemma2b   P = 2.51e9, mesh data 2 x fsdp 8 on a v5e-16 (16 GB HBM per chip): training 40 GB / 8 = 5.0 GB per chip;
            sampling 1.3 GB of params + KV (MQA: 1 kv head x 256 x 18 layers = 18 KiB per token; 1024 rows x 2048
            tokens = 38 GB) / 16 = 2.4 GB per chip.
  gemma7b   P = 8.54e9, mesh fsdp 16 on a v4-32 (16 chips, 32 GB each): training 137 GB / 16 = 8.5 GB per chip;
            sampling 2.1 GB of params + KV (16 kv heads x 256 x 28 layers = 448 KiB per token; 256 rows x 2048
            tokens = 235 GB) / 16 = 14.7 GB per chip.
  llama3_8b P = 8.03e9, mesh fsdp 8 on one 8-GPU H100/H200 host (80 / 141 GB each): training 128 GB / 8 = 16 GB per
            GPU; sampling 4 GB of params + KV (8 kv heads x 128 x 32 layers = 128 KiB per token; 512 rows x 2048
            tokens = 137 GB) / 8 = 17 GB per GPU.
The loss, remat and LoRA (train rows per chip per micro-batch r: gemma2b 64 / 16 = 4, gemma7b 64 / 4 / 16 = 1,
llama3_8b 64 / 4 / 8 = 2; T = 2560). The plain loss holds float32 logits r x T x V x 4 bytes (and as much again for
their gradient): gemma2b 10.5 GB, gemma7b 2.6 GB, llama3_8b 2.6 GB per chip (V 256000, 256000, 128256), which is
too much beside gemma2b's 5.0 GB of train state on a 16 GB chip: add --config.train.loss_chunk_size=256 (1.0 GB;
0.26 GB for the others).
--config.train.remat=full keeps one bfloat16 residual per block, r x T x D x 2 x layers: 0.76 GB, 0.44 GB, 1.3 GB per
chip, instead of every block's activations. --config.train.lora_rank=16 trains adapters only: the train state is the
frozen float32 base, 4P over fsdp (1.3 GB, 2.1 GB, 4.0 GB per chip, against 16P's 5.0, 8.5 and 16 GB) plus adapters
and their moments (well under 1% of P); with train.lora_base_quant=int8 the base is about 1P (0.31, 0.53, 1.0 GB).
"""

import pathlib

import ml_collections

from rest_jax import config_files

# The model of each mode, in one place: its checkpoint, the mesh it was sized for, and the per-call batch sizes.
MODELS = {
    "gemma2b": dict(checkpoint="/models/gemma-2b", mesh=dict(data=2, fsdp=8, tensor=1), sample_rows=1024,
                    train_rows=64, micro_batches=1),
    "gemma7b": dict(checkpoint="/models/gemma-7b", mesh=dict(data=1, fsdp=16, tensor=1), sample_rows=256,
                    train_rows=64, micro_batches=4),
    "llama3_8b": dict(checkpoint="/models/Meta-Llama-3-8B", mesh=dict(data=1, fsdp=8, tensor=1), sample_rows=512,
                      train_rows=64, micro_batches=4),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  mode = config_files.mode(arg, __file__, (*MODELS, "fixture"))
  c = config_files.sibling(__file__, "default")
  c.title = f"ReST-EM on Hendrycks MATH ({mode}), transfer to GSM8K"
  del c.pretrain  # The base is a real pretrained model.

  c.task.name = "math"
  c.task.kwargs = ml_collections.ConfigDict(dict(
      path="/data/MATH",  # The Hendrycks MATH tree (MATH/train/<subject>/<n>.json ...).
      gsm8k_path="/data/gsm8k",  # GSM8K train.jsonl / test.jsonl: the transfer split "gsm8k".
      num_shots=4,  # Minerva's 4-shot prompt.
      num_val=500,  # Training problems held out for early stopping.
      seed=0,
  ))

  c.base.checkpoint = MODELS.get(mode, MODELS["gemma2b"])["checkpoint"]
  c.base.chat = False  # Pretrained (not instruct) models with few-shot prompts, as in the paper.
  c.base.dtype = "bfloat16"

  c.rest.algorithm = "rest_em"
  c.rest.num_iterations = 3  # Paper: 3 for MATH.
  c.rest.samples_per_problem = 32  # Paper: 32 for MATH.
  c.rest.temperature = 0.7
  c.rest.top_k = 40
  c.rest.top_p = 1.0
  c.rest.cap = 10  # Paper: at most 10 correct solutions per problem.
  c.rest.restart_from_base = True  # Paper: every iteration fine-tunes the base model.
  c.rest.sft_human_baseline = True  # The comparison the paper makes: SFT on the human-written solutions.

  c.sampler.prompt_buckets = (1024, 1536, 2048)  # Minerva's 4-shot prompt is ~900 tokens before the problem.
  c.sampler.max_new_tokens = 512
  c.sampler.reward_workers = 8

  c.train.update(learning_rate=1e-5, lr_schedule="cosine", warmup_steps=50, end_lr_factor=0.1, weight_decay=0.0,
                 b1=0.9, b2=0.95, grad_clip=1.0, seq_len=2560, batch_rows=64, num_epochs=2.0, max_steps=0,
                 eval_every=200, patience=3)

  c.eval.splits = ("test", "gsm8k", "train")
  c.eval.sampled_splits = ("test", "gsm8k")
  c.eval.num_samples = 32
  c.eval.ks = (4, 16, 32)
  c.eval.temperature = 1.0
  c.eval.top_p = 0.95
  c.eval.train_subset = 1000
  c.eval.val_size = 500

  if mode in MODELS:
    model = MODELS[mode]
    c.mesh = ml_collections.ConfigDict(model["mesh"])
    c.sampler.batch_rows = model["sample_rows"]
    c.train.update(batch_rows=model["train_rows"], micro_batches=model["micro_batches"])
  else:  # "fixture": the pipeline end to end on the project's fixtures, with the shipped small model.
    c.task.kwargs.update(path="fixture:", gsm8k_path="fixture:", num_shots=0, num_val=2)
    c.base.checkpoint = str(pathlib.Path(__file__).resolve().parents[1] / "rest_jax" / "assets" / "arithmetic_base")
    c.base.dtype = "float32"
    c.rest.update(num_iterations=1, samples_per_problem=2, cap=1)
    c.sampler.update(batch_rows=32, prompt_buckets=(256, 512), max_new_tokens=16, reward_workers=2)
    c.train.update(learning_rate=1e-3, warmup_steps=1, seq_len=768, batch_rows=8, max_steps=2, eval_every=1,
                   patience=0, b2=0.98)
    c.eval.update(num_samples=2, ks=(2,), train_subset=2, val_size=2)
  return c
