"""Few-shot exemplars and prompt templates of the papers whose evaluations the tasks reproduce.

A few-shot prompt is the exemplars, each rendered as `template.format(**fields) + completion + delimiter`, followed
by the query rendered with the same template; the model continues it. A completion here is exactly the text a model
should write after the prompt, so the "human" split's solutions (the SFT data) are formatted like the exemplars'.

  MATH   Minerva 4-shot (Lewkowycz et al. 2022, appendix D.2), as in lm-evaluation-harness `minerva_math`:
           "Problem:\n{problem}\n\nSolution:\n" + solution ending in
           "Final Answer: The final answer is $X$. I hope it is correct."
  GSM8K  chain-of-thought 8-shot (Wei et al. 2022, table 20): "Q: {question}\nA:" + " ... The answer is X."
  MBPP   3-shot with task ids 2, 3, 4 (Austin et al. 2021):
           "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:"
           "\n\n{tests}\n[BEGIN]\n" + code + "\n[DONE]"
  APPS   the APPS paper's format (Hendrycks et al. 2021, `generate_gpt_codes.py`):
           "\nQUESTION:\n{question}{starter_code}\n{call_format}\nANSWER:\n" + code

Deliberate deviations from the copies in circulation: the Minerva exemplar with an `align*` block has the LaTeX line
break `\\` (lm-evaluation-harness's Python string lost one backslash), and the MBPP exemplars' code has "\n" line
endings where the upstream file has "\r\n" (the task's human solutions are normalised the same way).

The module also holds the deterministic problem selection (`take`, `hold_out`) that every data-set task shares.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from typing import Any
import zlib

import numpy as np

MATH_TEMPLATE = "Problem:\n{problem}\n\nSolution:\n"
MATH_DELIMITER = "\n\n"
GSM8K_TEMPLATE = "Q: {question}\nA:"
GSM8K_DELIMITER = "\n\n"
MBPP_TEMPLATE = (
    "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n"
    "{tests}\n[BEGIN]\n"
)
MBPP_END = "[DONE]"
MBPP_DELIMITER = MBPP_END + "\n"
APPS_TEMPLATE = "\nQUESTION:\n{question}{starter_code}\n{call_format}\nANSWER:\n"
APPS_DELIMITER = "\n"
APPS_STANDARD_INPUT = "Use Standard Input format"
APPS_CALL_BASED = "Use Call-Based format"


def normalize_newlines(text: str) -> str:
  """"\r\n" and "\r" line endings become "\n"."""
  return text.replace("\r\n", "\n").replace("\r", "\n")


def minerva_final_answer(answer: str) -> str:
  """The sentence that ends every Minerva-style solution; answer-extraction keys on it."""
  return f"Final Answer: The final answer is ${answer}$. I hope it is correct."


def gsm8k_final_answer(answer: str) -> str:
  """The sentence that ends every chain-of-thought GSM8K answer."""
  return f"The answer is {answer}."


@dataclasses.dataclass(frozen=True)
class Exemplar:
  """One few-shot exemplar.

  Attributes:
    fields: The template's fields, e.g. {"problem": ...}.
    completion: What the model should write after the rendered template.
  """

  fields: Mapping[str, str]
  completion: str


def _minerva(problem: str, solution: str, answer: str) -> Exemplar:
  return Exemplar({"problem": problem}, f"{solution}\n{minerva_final_answer(answer)}")


# Lewkowycz et al. 2022, appendix D.2; the stray "}" and the double space of the first problem are in the original.
MINERVA_MATH_EXEMPLARS = (
    _minerva(
        r"Find the domain of the expression  $\frac{\sqrt{x-2}}{\sqrt{5-x}}$.}",
        r"The expressions inside each square root must be non-negative. Therefore, $x-2 \ge 0$, so $x\ge2$, and "
        r"$5 - x \ge 0$, so $x \le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. "
        r"Therefore, the domain of the expression is $\boxed{[2,5)}$.",
        "[2,5)"),
    _minerva(
        r"If $\det \mathbf{A} = 2$ and $\det \mathbf{B} = 12,$ then find $\det (\mathbf{A} \mathbf{B}).$",
        r"We have that $\det (\mathbf{A} \mathbf{B}) = (\det \mathbf{A})(\det \mathbf{B}) = (2)(12) = \boxed{24}.$",
        "24"),
    _minerva(
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many times "
        "must Terrell lift them in order to lift the same total weight?",
        r"If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\cdot 12\cdot20=480$ pounds of "
        r"weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of "
        r"$2\cdot15\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:" "\n"
        r"\begin{align*}" "\n"
        r"30n&=480\\" "\n"
        r"\Rightarrow\qquad n&=480/30=\boxed{16}" "\n"
        r"\end{align*}",
        "16"),
    _minerva(
        "If the system of equations\n\n"
        r"\begin{align*}" "\n"
        r"6x-4y&=a,\\" "\n"
        r"6y-9x &=b." "\n"
        r"\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero," "\n"
        r"find $\frac{a}{b},$ assuming $b$ is nonzero.",
        r"If we multiply the first equation by $-\frac{3}{2}$, we obtain" "\n\n"
        r"$$6y-9x=-\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have" "\n\n"
        r"$$-\frac{3}{2}a=b\Rightarrow\frac{a}{b}=\boxed{-\frac{2}{3}}.$$",
        r"-\frac{2}{3}"),
)


def _cot(question: str, reasoning: str, answer: str) -> Exemplar:
  return Exemplar({"question": question}, f" {reasoning} {gsm8k_final_answer(answer)}")


# Wei et al. 2022, table 20.
GSM8K_COT_EXEMPLARS = (
    _cot("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
         "there will be 21 trees. How many trees did the grove workers plant today?",
         "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
         "been 21 - 15 = 6.", "6"),
    _cot("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
         "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5.", "5"),
    _cot("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
         "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
         "they had 74 - 35 = 39.", "39"),
    _cot("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
         "Jason give to Denny?",
         "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8.",
         "8"),
    _cot("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
         "now?",
         "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9.",
         "9"),
    _cot("There were nine computers in the server room. Five more computers were installed each day, from monday to "
         "thursday. How many computers are now in the server room?",
         "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
         "computers were added. 9 + 20 is 29.", "29"),
    _cot("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
         "balls did he have at the end of wednesday?",
         "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
         "he had 35 - 2 = 33 golf balls.", "33"),
    _cot("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
         "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
         "left. 23 - 15 is 8.", "8"),
)


@dataclasses.dataclass(frozen=True)
class MbppRecord:
  """The parts of an MBPP record that a prompt shows."""

  task_id: int
  text: str
  code: str
  test_list: tuple[str, ...]


# MBPP's "prompt" split, task ids 2, 3, 4, the exemplars of Austin et al. 2021; trailing spaces as upstream.
MBPP_EXEMPLARS = (
    MbppRecord(
        2, "Write a function to find the similar elements from the given two tuple lists.",
        "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res) ",
        ("assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
         "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
         "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)")),
    MbppRecord(
        3, "Write a python function to identify non-prime numbers.",
        "import math\ndef is_not_prime(n):\n    result = False\n    for i in range(2,int(math.sqrt(n)) + 1):\n"
        "        if n % i == 0:\n            result = True\n    return result",
        ("assert is_not_prime(2) == False", "assert is_not_prime(10) == True", "assert is_not_prime(35) == True")),
    MbppRecord(
        4, "Write a function to find the largest integers from a given list of numbers using heap queue algorithm.",
        "import heapq as hq\ndef heap_queue_largest(nums,n):\n  largest_nums = hq.nlargest(n, nums)\n"
        "  return largest_nums",
        ("assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
         "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
         "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]")),
)


def mbpp_fields(text: str, test_list: Sequence[str]) -> dict[str, str]:
  """The MBPP template's fields: the task and its tests, one per line."""
  return {"text": text, "tests": "\n".join(test_list)}


def mbpp_completion(code: str) -> str:
  """The completion for MBPP code: the program with "\n" line endings, up to the "[DONE]" marker."""
  return normalize_newlines(code) + "\n"


MBPP_EXEMPLAR_SHOTS = tuple(Exemplar(mbpp_fields(r.text, r.test_list), mbpp_completion(r.code))
                            for r in MBPP_EXEMPLARS)


def apps_fields(question: str, starter_code: str, call_based: bool) -> dict[str, str]:
  """The APPS template's fields; starter code, when given, follows the question on a line of its own."""
  return {"question": question, "starter_code": f"\n{starter_code}" if starter_code else "",
          "call_format": APPS_CALL_BASED if call_based else APPS_STANDARD_INPUT}


def render(template: str, query: Mapping[str, Any], shots: Sequence[Exemplar] = (), delimiter: str = "") -> str:
  """A few-shot prompt: each shot's rendered template, completion and delimiter, then the rendered query.

  Args:
    template: A `str.format` template naming the fields of `query` and of every shot.
    query: The problem's fields.
    shots: Exemplars, in order.
    delimiter: Text after each exemplar's completion.

  Returns:
    The prompt, which ends where the model's completion starts.
  """
  try:
    parts = [template.format(**shot.fields) + shot.completion + delimiter for shot in shots]
    parts.append(template.format(**query))
  except (KeyError, IndexError) as e:
    raise ValueError(f"prompt template {template!r} names a field that is not one of "
                     f"{sorted(query)}: {e}") from None
  return "".join(parts)


def check_num_shots(task: str, num_shots: int, available: int) -> None:
  """Raises a ValueError unless 0 <= num_shots <= available."""
  if not isinstance(num_shots, int) or not 0 <= num_shots <= available:
    raise ValueError(f"{task}: num_shots must be an integer in [0, {available}], got {num_shots!r}")


def check_template(task: str, template: str, fields: Sequence[str]) -> None:
  """Raises a ValueError if `template` does not format with exactly `fields`."""
  try:
    template.format(**{f: "" for f in fields})
  except (KeyError, IndexError, ValueError) as e:
    raise ValueError(f"{task}: template {template!r} must only name the fields {list(fields)}: {e!r}") from None


def stop_after(delimiter: str, template: str) -> str:
  """The stop string that ends a completion: the delimiter plus the template's text before its first field.

  E.g. "\n\n" and "Problem:\n{problem}..." give "\n\nProblem:"; trailing whitespace is left out so that a model
  that writes the next exemplar's header with other spacing still stops.
  """
  return (delimiter + template.split("{", 1)[0]).rstrip() or delimiter


# --- Deterministic selection of problems ------------------------------------------------------------------------


def _rng(seed: int, salt: str) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(salt.encode())])


def hold_out(records: Sequence[Any], num: int, *, seed: int, salt: str) -> tuple[list[Any], list[Any]]:
  """Splits `records` into (rest, held_out), `num` records held out at random; both keep their input order.

  The held-out set depends only on the records, `num`, `seed` and `salt`.
  """
  if num > len(records):
    raise ValueError(f"cannot hold out {num} of {len(records)} records")
  chosen = set(_rng(seed, salt).permutation(len(records))[:num].tolist())
  rest = [r for i, r in enumerate(records) if i not in chosen]
  held = [r for i, r in enumerate(records) if i in chosen]
  return rest, held


def take(records: Sequence[Any], num: int | None, *, seed: int, salt: str) -> list[Any]:
  """`num` records chosen at random (all of them when `num` is None or too large), in their input order.

  A larger `num` keeps every record a smaller one chose: the choice is a prefix of one seeded permutation.
  """
  if num is None or num >= len(records):
    return list(records)
  chosen = set(_rng(seed, salt).permutation(len(records))[:num].tolist())
  return [r for i, r in enumerate(records) if i in chosen]


def choose_splits(task: str, train: Sequence[Any], test: Sequence[Any], *, num_human: int | None,
                  num_train: int | None, num_val: int, num_test: int | None, seed: int,
                  has_solution: Callable[[Any], bool] | None = None) -> dict[str, list[Any]]:
  """The "human", "train", "val" and "test" records of a data-set task, all chosen by `seed`.

  "val" is held out of `train` (at most all of it); "human" (records with a solution, where `has_solution` says
  which) and "train" are taken from the rest, so both draw from one pool that excludes the validation problems.
  """
  train, val = hold_out(train, min(num_val, len(train)), seed=seed, salt=f"{task}/val")
  human_pool = train if has_solution is None else [r for r in train if has_solution(r)]
  return {
      "human": take(human_pool, num_human, seed=seed, salt=f"{task}/human"),
      "train": take(train, num_train, seed=seed, salt=f"{task}/train"),
      "val": val,
      "test": take(test, num_test, seed=seed, salt=f"{task}/test"),
  }


def check_sizes(task: str, **sizes: int | None) -> None:
  """Raises a ValueError naming the first size that is neither None nor a non-negative integer."""
  for name, size in sizes.items():
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
      raise ValueError(f"{task}: {name} must be None (all) or a non-negative integer, got {size!r}")
