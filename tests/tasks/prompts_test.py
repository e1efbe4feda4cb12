"""The few-shot prompts are the papers' own, character for character, and problem selection is deterministic."""

import re

import pytest

from rest_jax.data import fixtures
from rest_jax import data
from rest_jax.tasks import code_tasks
from rest_jax.tasks import gsm8k
from rest_jax.tasks import hendrycks_math
from rest_jax.tasks import prompts


def test_minerva_prompt_is_the_papers():
  prompt = hendrycks_math.prompt("What is $1+1$?")
  assert prompt.startswith(
      "Problem:\nFind the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.}\n\nSolution:\n"
      "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and "
      "$5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. "
      "Therefore, the domain of the expression is $\\boxed{[2,5)}$.\n"
      "Final Answer: The final answer is $[2,5)$. I hope it is correct.\n\nProblem:\nIf $\\det \\mathbf{A} = 2$")
  assert ("we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n"
          "\\end{align*}\nFinal Answer: The final answer is $16$. I hope it is correct.\n\n") in prompt
  assert prompt.endswith(
      "$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\n"
      "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.\n\n"
      "Problem:\nWhat is $1+1$?\n\nSolution:\n")
  assert prompt.count("Problem:\n") == 5 and prompt.count("I hope it is correct.") == 4


def test_minerva_exemplars_box_the_answer_they_state():
  for shot in prompts.MINERVA_MATH_EXEMPLARS:
    stated = re.search(r"The final answer is \$(.*)\$\. I hope it is correct\.$", shot.completion).group(1)
    assert hendrycks_math.last_boxed(shot.completion) == stated


def test_gsm8k_prompt_is_wei_et_al_8_shot():
  prompt = gsm8k.prompt("How many?")
  assert prompt.startswith(
      "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
      "there will be 21 trees. How many trees did the grove workers plant today?\nA: There are 15 trees originally. "
      "Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6."
      "\n\nQ: If there are 3 cars")
  assert ("Q: Olivia has $23. She bought five bagels for $3 each. How much money does she have left?\nA: Olivia had "
          "23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. "
          "23 - 15 is 8. The answer is 8.\n\nQ: How many?\nA:") in prompt
  assert prompt.count("\nA: ") == 8
  answers = [re.search(r"The answer is (\d+)\.$", s.completion).group(1) for s in prompts.GSM8K_COT_EXEMPLARS]
  assert answers == ["6", "5", "39", "8", "9", "29", "33", "8"]


def test_mbpp_prompt_is_austin_et_al_3_shot():
  prompt = code_tasks.mbpp_prompt("Write a function to add.", ["assert add(1, 2) == 3", "assert add(0, 0) == 0"])
  assert prompt.startswith(
      "You are an expert Python programmer, and here is your task: Write a function to find the similar elements "
      "from the given two tuple lists. Your code should pass these tests:\n\n"
      "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
      "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
      "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n[BEGIN]\n"
      "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n"
      "  return (res) \n[DONE]\nYou are an expert Python programmer")
  assert prompt.endswith(
      "  return largest_nums\n[DONE]\nYou are an expert Python programmer, and here is your task: Write a function "
      "to add. Your code should pass these tests:\n\nassert add(1, 2) == 3\nassert add(0, 0) == 0\n[BEGIN]\n")
  assert prompt.count("[BEGIN]") == 4 and prompt.count("[DONE]") == 3


def test_mbpp_exemplars_are_the_upstream_records_and_pass_their_tests(tmp_path):
  upstream = {r["task_id"]: r for r in data.load("mbpp", fixtures.write("mbpp", tmp_path),
                                                 data_dir=str(tmp_path / "cache"))["prompt"]}
  assert [r.task_id for r in prompts.MBPP_EXEMPLARS] == [2, 3, 4]
  for record in prompts.MBPP_EXEMPLARS:
    assert record.text == upstream[record.task_id]["text"]
    assert list(record.test_list) == upstream[record.task_id]["test_list"]
    assert record.code == upstream[record.task_id]["code"].replace("\r\n", "\n")
    namespace = {}
    exec(record.code + "\n" + "\n".join(record.test_list), namespace)  # Our own constants: trusted code.


def test_apps_prompt_is_the_apps_papers_format():
  standard = prompts.render(prompts.APPS_TEMPLATE, prompts.apps_fields("Read n, print n.", "", call_based=False))
  assert standard == "\nQUESTION:\nRead n, print n.\nUse Standard Input format\nANSWER:\n"
  call = prompts.render(prompts.APPS_TEMPLATE,
                        prompts.apps_fields("Return n.", "def f(n):\n\t", call_based=True))
  assert call == "\nQUESTION:\nReturn n.\ndef f(n):\n\t\nUse Call-Based format\nANSWER:\n"


def test_shots_and_templates_are_configurable():
  assert gsm8k.prompt("How many?", num_shots=0) == "Q: How many?\nA:"
  assert gsm8k.prompt("How many?", num_shots=1).count("Q: ") == 2
  custom = hendrycks_math.prompt("2+2?", num_shots=1, template="Question: {problem}\nAnswer: ")
  assert custom.startswith("Question: Find the domain") and custom.endswith("\n\nQuestion: 2+2?\nAnswer: ")
  with pytest.raises(ValueError, match="names a field"):
    prompts.render("{question} {nope}", {"question": "q"})
  with pytest.raises(ValueError, match="num_shots"):
    prompts.check_num_shots("gsm8k", 9, 8)
  with pytest.raises(ValueError, match="template"):
    prompts.check_template("math", "{question}", ["problem"])


def test_stop_strings_follow_the_format():
  assert prompts.stop_after(prompts.MATH_DELIMITER, prompts.MATH_TEMPLATE) == "\n\nProblem:"
  assert prompts.stop_after(prompts.GSM8K_DELIMITER, prompts.GSM8K_TEMPLATE) == "\n\nQ:"


def test_take_and_hold_out_are_deterministic_and_nested():
  records = list(range(100))
  rest, held = prompts.hold_out(records, 10, seed=0, salt="x")
  assert len(held) == 10 and sorted(rest + held) == records and rest == sorted(rest) and held == sorted(held)
  assert prompts.hold_out(records, 10, seed=0, salt="x") == (rest, held)
  assert prompts.hold_out(records, 10, seed=1, salt="x")[1] != held
  assert prompts.hold_out(records, 10, seed=0, salt="y")[1] != held
  small, large = prompts.take(records, 5, seed=3, salt="t"), prompts.take(records, 20, seed=3, salt="t")
  assert len(small) == 5 and set(small) <= set(large) and small == sorted(small)
  assert prompts.take(records, None, seed=3, salt="t") == records == prompts.take(records, 1000, seed=3, salt="t")
  with pytest.raises(ValueError, match="num_val"):
    prompts.check_sizes("gsm8k", num_val=-1)


def test_choose_splits_holds_val_out_of_human_and_train():
  train, test = list(range(100)), list(range(100, 150))
  chosen = prompts.choose_splits("t", train, test, num_human=20, num_train=None, num_val=10, num_test=5, seed=3,
                                 has_solution=lambda r: r % 2 == 0)
  assert len(chosen["val"]) == 10 and len(chosen["human"]) == 20 and len(chosen["test"]) == 5
  assert not set(chosen["val"]) & (set(chosen["human"]) | set(chosen["train"]))
  assert sorted(chosen["train"] + chosen["val"]) == train
  assert all(r % 2 == 0 for r in chosen["human"])
  assert chosen == prompts.choose_splits("t", train, test, num_human=20, num_train=None, num_val=10, num_test=5,
                                         seed=3, has_solution=lambda r: r % 2 == 0)
