r"""ReST-EM on the embedded arithmetic task, with the project's own small base model. Runs on a laptop CPU.

  python -m rest_jax.main --config=configs/default.py --workdir=runs/demo
  python -m rest_jax.main --config=configs/default.py:smoke --workdir=/tmp/smoke      # seconds; used by the tests
  python -m rest_jax.main --config=configs/default.py --config.rest.num_iterations=2 --workdir=runs/two

Arguments after the colon select a mode: "" (the full demo), "smoke" (tiny sizes), "rest" (the original ReST of
Gulcehre et al.: Improve steps with rising reward thresholds on a scalar reward), "scalar" (ReST-EM weighting the
loss by the partial-credit reward), "grpo" (online RL, GRPO-style, at ReST-EM's sampling budget per iteration:
rest_jax/algorithms/grpo.py), "grpo_smoke" (its tiny version), "star" (STaR with rationalisation:
rest_jax/algorithms/star.py), "star_smoke" (its tiny version), "adaptive" (ReST-EM with the adaptive E-step: the same
sampling budget in 4 rounds, a problem stops at `cap` distinct rewarded samples, at most 32 per problem),
"base_small" (the full demo from the shipped 64k-parameter base), "base_large" (from the 1M-parameter one; the default
is the 250k-parameter base): a study of ReST-EM's gain by model size.

The shipped bases differ only in width (4 layers each, the same human-written solutions, tokenizer and recipe):

  python -m rest_jax.tools.pretrain_base --config=configs/default.py --output=rest_jax/assets/arithmetic_base
  python -m rest_jax.tools.pretrain_base --config=configs/default.py:base_small \
      --output=rest_jax/assets/arithmetic_base_small
  python -m rest_jax.tools.pretrain_base --config=configs/default.py:base_large \
      --output=rest_jax/assets/arithmetic_base_large
  python -m rest_jax.main --config=configs/default.py:base_small --workdir=runs/base_small
"""

import pathlib

import ml_collections

import rest_jax
from rest_jax import config_files

# The bases of the model-size study, beside the shipped medium one (embed 64, head_dim 16, mlp 256: 250k parameters):
# mode -> (asset under rest_jax/assets, the width its `pretrain.model` takes). Depth, heads, data and the training
# recipe are the medium's: learning rate 3e-3 trains the 1M model without diverging (val pass@1 0.855).
BASE_SIZES = {
    "base_small": ("arithmetic_base_small", dict(embed_dim=32, head_dim=8, mlp_dim=128)),  # 64k parameters.
    "base_large": ("arithmetic_base_large", dict(embed_dim=128, head_dim=32, mlp_dim=512)),  # 991k parameters.
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  mode = config_files.mode(arg, __file__, ("full", "smoke", "rest", "scalar", "grpo", "grpo_smoke", "star", "star_smoke",
                                             "adaptive", *BASE_SIZES))
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.title = "ReST-EM on embedded multi-step arithmetic"

  # The task: problems, rewards and the human-written solutions (rest_jax/tasks/arithmetic.py).
  c.task = ml_collections.ConfigDict()
  c.task.name = "arithmetic"
  c.task.kwargs = ml_collections.ConfigDict(dict(
      seed=0,
      num_human=800,  # Problems with human-written worked solutions: the base model's and SFT's data.
      num_train=2000,  # Answer-only problems that ReST-EM self-trains on.
      num_val=200,  # Early stopping of the M-step (greedy pass@1).
      num_test=500,  # Held-out evaluation.
      num_transfer=300,  # A harder distribution than test: only the longest problems.
      min_operands=3, max_operands=5, max_operand=9, max_total=99,
      transfer_min_operands=5, transfer_max_operands=5,  # The hardest length: see the README on transfer.
      # "arithmetic": binary, the derivation is verified; "arithmetic_answer": binary, final answer only (lucky
      # guesses pass); "arithmetic_steps": scalar partial credit for correct steps.
      reward="arithmetic",
  ))

  # The base model: a rest_jax checkpoint directory ("" = the shipped one for this task), a Hugging Face checkpoint
  # directory (config.json + safetensors + tokenizer files) or a .gguf file.
  c.base = ml_collections.ConfigDict()
  c.base.checkpoint = ""
  c.base.tokenizer = ""  # rest_jax checkpoints only: "" = the shipped SentencePiece model.
  c.base.chat = False  # Render every prompt as a user turn with the model's chat template (instruct models).
  c.base.dtype = "float32"  # Hugging Face / GGUF checkpoints: parameter and compute dtype.

  # How the shipped base model was made (python -m rest_jax.tools.pretrain_base): trained from scratch on the human-
  # written solutions only, as the paper's base model has seen only a small set of human solutions.
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.model = ml_collections.ConfigDict(dict(
      num_layers=4, embed_dim=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=256, activation="silu",
      tied_embeddings=True, dtype="float32"))
  c.pretrain.train = ml_collections.ConfigDict(dict(
      learning_rate=3e-3, warmup_steps=20, num_epochs=50.0, seq_len=128, batch_rows=32, eval_every=50, patience=0))

  # Mesh: data x fsdp x tensor; -1 takes the remaining devices.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  c.sampler = ml_collections.ConfigDict()
  c.sampler.batch_rows = 512  # Rows (prompts x samples) decoded per device call.
  c.sampler.prompt_buckets = (16, 32, 64, 128)
  c.sampler.max_new_tokens = 80
  c.sampler.reward_workers = 2  # Host threads scoring completions while the device decodes.
  c.sampler.dtype = ""  # Sampling compute, weight and KV-cache dtype: "" (the model's own), "bfloat16", "float32".
  # Weight-only quantised sampling: "none", "int8" or "int4" projection kernels (the M-step keeps float32 weights).
  c.sampler.weight_quant = "none"
  # "static": a batch decodes until its longest row ends; "continuous": batch_rows decode slots, a finished group's
  # slots take the next waiting prompt (other random draws than static's, the same distribution).
  c.sampler.schedule = "static"
  c.sampler.slot_group = 0  # continuous: samples of a prompt sharing one group of slots and prompt copy (0: all).
  c.sampler.chunk_steps = 16  # continuous: most decode steps between host checks for finished groups.
  c.sampler.scan_layers = False  # Blocks under one scan: compile time flat in depth (benchmarks/compile_time.py).

  # The EM loop.
  c.rest = ml_collections.ConfigDict()
  c.rest.algorithm = "rest_em"  # "rest_em" (Singh et al. 2023) or "rest" (Gulcehre et al. 2023).
  c.rest.num_iterations = 3
  c.rest.samples_per_problem = 8  # E-step samples per training problem (paper: 32 MATH, 64 APPS).
  c.rest.temperature = 0.7  # Paper: 0.7.
  c.rest.top_k = 40  # Paper: 40.
  c.rest.top_p = 1.0
  c.rest.cap = 4  # Kept samples per problem at most (paper: 10).
  c.rest.reward_threshold = 0.0  # A sample is rewarded when reward > threshold.
  c.rest.restart_from_base = True  # ReST-EM: every M-step starts from the base; False continues the last iterate.
  c.rest.sampler_checkpoint = ""  # Distillation: if set, this checkpoint's model samples in every E-step.
  # Original ReST only: Improve steps per Grow step, with rising thresholds, continuing from the previous model.
  c.rest.improve_thresholds = (0.0, 0.5, 0.9)
  c.rest.mix_human = True  # Original ReST: human-written solutions mixed into every Improve step.
  c.rest.sft_human_baseline = True  # Also train and evaluate SFT on the human-written solutions.
  # The E-step's budget is num_train x samples_per_problem. rounds = 1: every problem draws samples_per_problem (the
  # paper). rounds > 1, adaptive: sampled in rounds; a problem stops once it has `cap` distinct rewarded samples, and
  # the budget it no longer needs goes to the unsolved ones, up to max_samples_per_problem (0: no maximum).
  c.rest.estep = ml_collections.ConfigDict(dict(rounds=1, max_samples_per_problem=0))

  # The M-step (rest_jax/training/finetune.py: TrainConfig).
  c.train = ml_collections.ConfigDict(dict(
      learning_rate=3e-3, lr_schedule="cosine", warmup_steps=10, end_lr_factor=0.1, weight_decay=0.01,
      b1=0.9, b2=0.98, grad_clip=1.0, seq_len=128, batch_rows=32, micro_batches=1, num_epochs=8.0, max_steps=0,
      eval_every=25, patience=4, loss="weighted_nll", seed=0))
  # Memory options of the M-step; they change memory and speed, not results (benchmarks/train_step_throughput.py).
  c.train.loss_chunk_size = 0  # Cross-entropy over chunks of this many positions, no B x T x V logits (0 = plain).
  c.train.remat = "none"  # Per-block gradient checkpointing: "none", "full", "dots_saveable", ...
  c.train.scan_layers = False  # Blocks under one scan: compile time flat in depth; not with lora_base_quant.
  # LoRA (rest_jax/training/lora.py): only low-rank adapters are trained, over the frozen base; every M-step gets
  # fresh adapters, and the iteration checkpoint holds the merged model (the adapters are saved beside it).
  c.train.lora_rank = 0  # 0 = full fine-tuning.
  c.train.lora_alpha = 16.0  # The adapters' update is scaled by lora_alpha / lora_rank.
  c.train.lora_modules = ("q", "k", "v", "o", "gate", "up", "down")  # Adapted projections of every layer.
  c.train.lora_base_quant = "none"  # "int8" / "int4": the frozen base held and multiplied quantised (QLoRA).

  c.eval = ml_collections.ConfigDict()
  c.eval.splits = ("test", "transfer", "train")  # Evaluated after every iteration ("train" on a subset).
  c.eval.train_subset = 300  # Problems of the train split used for its (overfitting) evaluation.
  c.eval.sampled_splits = ("test",)  # Splits that also get pass@K / maj@K.
  c.eval.num_samples = 8
  c.eval.ks = (4, 8)
  c.eval.temperature = 1.0  # Paper: pass@K at temperature 1.0 ...
  c.eval.top_p = 0.95  # ... with nucleus 0.95.
  c.eval.val_size = 200  # Val problems used for early stopping.

  # Reporting: metrics.jsonl, TensorBoard and report.md are always written; Weights & Biases is optional.
  c.report = ml_collections.ConfigDict()
  c.report.wandb = False  # Also log every TensorBoard scalar to W&B (needs `pip install 'rest_jax[wandb]'`).
  c.report.wandb_project = "rest_jax"  # W&B project; each method is one run, grouped by the workdir's name.
  c.report.wandb_entity = ""  # W&B entity (user or team); "" = your default.
  c.report.wandb_mode = "offline"  # "offline" (WORKDIR/wandb/, no network; `wandb sync` later), "online", "disabled".

  if mode in ("smoke", "grpo_smoke", "star_smoke"):
    smoke(c)
  if mode in ("star", "star_smoke"):
    c.rest.algorithm = "star"
    c.star = ml_collections.ConfigDict(dict(
        hint=" The answer is {answer}.",  # Before the prompt's trailing newline: "Compute 3+4. The answer is 7.\n".
        answer_field="answer",  # The problem field the hint gives away.
        rationalization_samples=c.rest.samples_per_problem))
  if mode in ("grpo", "grpo_smoke"):
    grpo(c)
  if mode == "grpo_smoke":  # Every path of the update: two batches, a second (off-policy) pass, the KL term.
    c.grpo.update(prompts_per_batch=12, batches_per_iteration=2, updates_per_batch=2, kl_coef=0.05)
  elif mode == "rest":
    c.rest.algorithm = "rest"
    c.task.kwargs.reward = "arithmetic_steps"
    c.rest.num_iterations = 2
  elif mode == "adaptive":
    c.rest.estep.update(rounds=4, max_samples_per_problem=32)
  elif mode == "scalar":
    c.task.kwargs.reward = "arithmetic_steps"
  elif mode in BASE_SIZES:
    asset, width = BASE_SIZES[mode]
    c.base.checkpoint = str(pathlib.Path(rest_jax.__file__).parent / "assets" / asset)
    c.pretrain.model.update(width)
  return c


def grpo(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Online RL instead of ReST-EM: each iteration samples as many completions as a ReST-EM E-step (train problems x
  rest.samples_per_problem), in batches of prompts_per_batch x samples_per_prompt, each followed by updates."""
  c.rest.algorithm = "grpo"
  c.rest.sft_human_baseline = False
  samples = c.task.kwargs.num_train * c.rest.samples_per_problem
  c.grpo = ml_collections.ConfigDict(dict(
      prompts_per_batch=min(64, c.task.kwargs.num_train),
      samples_per_prompt=c.rest.samples_per_problem,  # The group of each prompt.
      batches_per_iteration=1,  # Set below: ReST-EM's E-step budget.
      updates_per_batch=1,  # > 1: the later passes are off-policy and the clipping matters.
      learning_rate=3e-5,  # Test pass@1 after one iteration, 1000 problems: 0.616; 5e-5 0.600, 1e-4 0.588, 3e-4 0.388.
      temperature=1.0,  # Sampling at the policy itself: its log-probabilities are the ratio's denominator.
      clip_eps=0.2, clip_eps_high=0.0,  # 0: the same as clip_eps.
      kl_coef=0.0,  # > 0: a k3 KL penalty to the base per token.
      advantage_norm="std", loss_norm="token"))
  c.grpo.batches_per_iteration = max(1, samples // (c.grpo.prompts_per_batch * c.grpo.samples_per_prompt))
  return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks an experiment to a whole run in about a minute, for the tests (configs built on this one use it too)."""
  c.task.kwargs.update(num_human=16, num_train=24, num_val=8, num_test=16, num_transfer=8)
  c.rest.num_iterations = 2
  c.rest.samples_per_problem = 4
  c.rest.cap = 2
  c.sampler.batch_rows = 64
  c.sampler.max_new_tokens = 48
  c.train.update(max_steps=4, eval_every=2, batch_rows=8, patience=0)
  c.eval.update(train_subset=8, num_samples=4, ks=(2, 4), val_size=8)
  return c
