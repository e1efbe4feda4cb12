"""ReST-EM on the embedded program-synthesis task, scored by running the programs in the sandbox. Runs on a CPU.

  python -m rest_jax.main --config=configs/code_default.py --workdir=runs/code
  python -m rest_jax.main --config=configs/code_default.py:smoke --workdir=/tmp/code_smoke   # a minute; tests

The task (rest_jax/tasks/list_programs.py): the prompt is a signature whose docstring describes a pipeline over a
list of integers in English ("keep the odd numbers, multiply each by 3, return the sum"), and the model writes the
body of `solve`. The `humaneval` reward runs prompt + completion in the sandbox (bubblewrap) against hidden inputs, so any
program with the right behaviour is rewarded. The base model (rest_jax/assets/list_programs_base, made by
`python -m rest_jax.tools.pretrain_base --config=configs/code_default.py --output=rest_jax/assets/list_programs_base`)
has seen only the human-written programs of the "human" split.

Arguments after the colon select a mode: "" (the full experiment, ~12 minutes on 2 CPU cores), "smoke" (tiny sizes,
for the tests).
"""


import ml_collections

from rest_jax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  mode = config_files.mode(arg, __file__, ("full", "smoke"))
  c = config_files.sibling(__file__, "default")
  c.title = "ReST-EM on embedded program synthesis (sandboxed execution reward)"

  c.task = ml_collections.ConfigDict()
  c.task.name = "list_programs"
  c.task.kwargs = ml_collections.ConfigDict(dict(
      seed=0,
      num_human=160,  # Problems with a human-written program: the base model's and SFT's data.
      num_train=1500,  # Description-only problems that ReST-EM self-trains on.
      num_val=150,  # Early stopping of the M-step (greedy pass@1).
      num_test=400,  # Held-out evaluation.
      num_transfer=200,  # Longer pipelines (4 transformations) than any training problem.
      min_transforms=1, max_transforms=3, transfer_transforms=4,
      num_tests=6,  # Hidden inputs per problem; the first is the empty list.
      max_list_len=8,
  ))

  c.pretrain.train.update(num_epochs=300.0, seq_len=160, eval_every=50)
  c.sampler.prompt_buckets = (32, 48, 64)
  c.sampler.max_new_tokens = 96
  c.sampler.reward_workers = 2

  c.rest.num_iterations = 3
  c.rest.samples_per_problem = 8
  c.rest.cap = 4
  c.train.update(seq_len=160)
  c.eval.train_subset = 200
  c.eval.val_size = 150

  if mode == "smoke":
    config_files.sibling_module(__file__, "default").smoke(c)
    c.sampler.max_new_tokens = 64  # A program's body is longer than an arithmetic answer.
  return c
