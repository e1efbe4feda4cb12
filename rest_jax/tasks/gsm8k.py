"""GSM8K (Cobbe et al. 2021) with the 8-shot chain-of-thought prompt of Wei et al. 2022.

  prompt:     8 exemplars, then "Q: Natalia sold clips to 48 of her friends in April, ...\nA:"
  completion: " Natalia sold 48/2 = 24 clips in May. ... The answer is 72."

Splits: "human" (training problems with the upstream solution rewritten in the exemplars' format: calculator
annotations "<<48/2=24>>" removed, lines joined by spaces, ending "The answer is 72."), "train" (the same training
problems without solutions, for ReST-EM), "val" (`num_val` training problems held out of both, for early stopping)
and "test" (the upstream test set). The reward is "gsm8k"; its field `answer` is the upstream answer string
("... #### 72"). `extract_answer` gives the completion's numeric answer for majority voting.
"""

import re

from rest_jax import data
from rest_jax.rewards import math as math_rewards
from rest_jax.tasks import base
from rest_jax.tasks import prompts
from rest_jax.tasks import registry

_CALCULATOR_RE = re.compile(r"<<[^>]*>>")


def human_solution(answer: str) -> str:
  """The completion that writes an upstream GSM8K answer in the chain-of-thought exemplars' format.

  Args:
    answer: The upstream answer field, worked steps then "#### 72".

  Returns:
    E.g. " Natalia sold 48/2 = 24 clips in May. ... The answer is 72."
  """
  reasoning = _CALCULATOR_RE.sub("", answer.split("####")[0])
  steps = " ".join(line.strip() for line in reasoning.splitlines() if line.strip())
  final = prompts.gsm8k_final_answer(math_rewards.gsm8k_reference(answer))
  return f" {steps} {final}" if steps else f" {final}"


def prompt(question: str, *, num_shots: int = 8, template: str = prompts.GSM8K_TEMPLATE) -> str:
  """The few-shot prompt for `question`; `template` formats {question} for the exemplars and the query alike."""
  return prompts.render(template, {"question": question}, prompts.GSM8K_COT_EXEMPLARS[:num_shots],
                        prompts.GSM8K_DELIMITER)


@registry.register("gsm8k")
def get_task(*, path: str, data_dir: str | None = None, num_shots: int = 8, template: str = prompts.GSM8K_TEMPLATE,
             num_human: int | None = None, num_train: int | None = None, num_val: int = 500,
             num_test: int | None = None, seed: int = 0) -> base.Task:
  """Builds the GSM8K task.

  Args:
    path: Directory with the upstream train.jsonl and test.jsonl (see `rest_jax.data`).
    data_dir: Cache of the data builds (see `rest_jax.data.load`).
    num_shots: Exemplars in each prompt, 0 to 8 (the first `num_shots` of Wei et al.'s eight).
    template: Formats "{question}" into the query and the exemplars; a custom one changes both.
    num_human: Training problems with solutions (None: all that are not held out for "val").
    num_train: Training problems for self-training (None: all that are not held out).
    num_val: Training problems held out for early stopping.
    num_test: Test problems (None: all 1319).
    seed: Seed of the held-out choice and of the subsets that the caps take.

  Returns:
    The task with splits "human", "train", "val" and "test".
  """
  prompts.check_num_shots("gsm8k", num_shots, len(prompts.GSM8K_COT_EXEMPLARS))
  prompts.check_template("gsm8k", template, ["question"])
  prompts.check_sizes("gsm8k", num_human=num_human, num_train=num_train, num_val=num_val, num_test=num_test)
  records = data.load("gsm8k", path, data_dir=data_dir)
  chosen = prompts.choose_splits("gsm8k", records["train"], records["test"], num_human=num_human,
                                 num_train=num_train, num_val=num_val, num_test=num_test, seed=seed)
  splits = {
      split: tuple(base.Problem(id=f"{split}/{r['id']}", prompt=prompt(r["question"], num_shots=num_shots,
                                                                        template=template),
                                fields={"answer": r["answer"]},
                                solution=human_solution(r["answer"]) if split == "human" else None)
                   for r in rs)
      for split, rs in chosen.items()
  }
  return base.Task(name="gsm8k", reward="gsm8k", splits=splits, extract_answer=math_rewards.extract_gsm8k_answer,
                   stop_strings=(prompts.stop_after(prompts.GSM8K_DELIMITER, template),))
