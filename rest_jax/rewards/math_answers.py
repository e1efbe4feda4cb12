"""Final answers of MATH and GSM8K completions: reading them, writing them in one canonical form, checking them.

The string functions are cheap and linear in the length of the text; `rest_jax.rewards.math` re-exports them and
owns the rewards and the pool of worker processes that run `serve_checks` (math-verify, i.e. sympy). This module
needs only the standard library, so that a worker can run it by path without importing the rest of rest_jax.

  extract_answer("... so $x = \\boxed{\\dfrac{1}{2}}$.")          -> "\\dfrac{1}{2}"
  extract_gsm8k_answer("... 16 - 3 - 4 = 9 eggs.\\n#### 1,200")   -> "1200"
  gsm8k_reference("She sold 48/2 = <<48/2=24>>24 clips ... #### 72") -> "72"
  normalize_answer("\\dfrac{1}{2}") == normalize_answer("1/2") == normalize_answer("0.50") == "0.5"

Conventions of `normalize_answer` (equal strings are scored equivalent without asking sympy):
  * a percent sign, a degree sign, a dollar sign and trailing unit words are dropped: "50\\%" -> "50",
    "90^\\circ" -> "90", "\\$18.90" -> "18.9", "5\\text{ cm}" -> "5", "12 square feet" -> "12";
  * "1,000" (thousands groups, no space after the comma) is a number, "1, 000" and "1,2" are lists, written "1, 2";
  * "x = 3" and "x \\in [1, 2]" are their right-hand sides; "\\{1, 2\\}" is the list "1, 2";
  * "(C)", "\\text{(C)}" and "\\textbf{(C)}" are the choice "C"; a word of 3+ letters is lower case ("Even"), but
    not an all-capital name ("ABC");
  * a mixed number "2\\frac{1}{2}" is 5/2 (MATH writes mixed numbers that way), not 2 * 1/2; "0.\\overline{3}" is 1/3;
  * "2 \\text{ and } 3" and "2 or 3" are the list "2, 3";
  * degree signs are dropped unless a trigonometric function is present ("\\sin 30^\\circ");
  * rationals are written "-3", "0.25" (when the decimal expansion ends) or "1/3".
"""

import decimal
import fractions
import logging
import os
import re
import signal

# `__name__` under which a worker process runs this file (by path, see `serve_checks` and the end of this file).
WORKER_RUN_NAME = "__math_verify_worker__"
# Answers longer than this are not canonicalised as numbers (int() of a 10,000-digit string raises in Python 3.11+).
_MAX_NUMBER_DIGITS = 60
# Where a final-answer marker was found, how far past it the answer may run.
_MAX_ANSWER_SPAN = 2000
# Truncated completions can leave several unclosed boxes; only this many of the last ones are tried.
_MAX_BOX_TRIES = 4

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_SYNONYMS = {"\u2212": "-", "\u2013": "-", "\u221e": "\\infty", "\u03c0": "\\pi", "\u00b0": "^\\circ",
             "\u00d7": "\\times", "\u2264": "\\le", "\u2265": "\\ge", "\u00a0": " ", "\u2205": "\\emptyset",
             "\\varnothing": "\\emptyset", "\\dfrac": "\\frac", "\\tfrac": "\\frac", "\\dbinom": "\\binom",
             "\\tbinom": "\\binom", "{bmatrix}": "{pmatrix}", "{,}": ","}
_SPACING_RE = re.compile(r"(?<!\\)\\[!,;:>]|\\(?:displaystyle|textstyle)(?![a-zA-Z])")
_WIDE_SPACE_RE = re.compile(r"\\q?quad(?![a-zA-Z])|(?<!\\)\\ |~")
_DELIMITER_SIZE_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])\.?")
_DEGREES_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|(?<=\d)\s*\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])|"
                         r"\s*degrees?$")
_TRIGONOMETRY_RE = re.compile(r"\\(?:arc)?(?:sin|cos|tan|cot|sec|csc)(?![a-zA-Z])")
# "2 \text{ and } 3", "2 and 3", "2 \text{ or } 3" list their answers like "2, 3".
_CONJUNCTION_RE = re.compile(r"\s*(?:\\(?:text|mbox)\s*\{\s*(?:and|or)\s*\}|,?\s+(?:and|or)\s+)\s*")
_PERCENT_RE = re.compile(r"\\?%|\s*percent$")
_TEXT_COMMAND = r"\\(?:text|textbf|textit|textrm|textnormal|mbox|mathrm|mathbf|mathit|mathsf)"
_TEXT_RE = re.compile(_TEXT_COMMAND + r"\s*\{([^{}]*)\}")
# A trailing unit after a value: "5\text{ cm}", "4 \mbox{ sq. units}^2", "18 dollars", "12 square feet".
_TEXT_UNIT_RE = re.compile(r"(?:\\(?:text|textrm|textnormal|mbox)\s*\{\s*[a-zA-Z]|"  # "\mathrm{i}" is no unit.
                           r"\\math(?:rm|bf|it|sf)\s*\{(?:\s+[a-zA-Z]|[a-zA-Z]{2}))"
                           r"[a-zA-Z. ]*\}\s*(?:\^\s*\{?[23]\}?)?\s*$")
_MATH_WORDS = r"(?:pi|sqrt|log|ln|exp|sin|cos|tan|cot|sec|csc|and|or|to|times|cdot|mod|choose|over)\b"
_WORD_UNIT_RE = re.compile(r"^([-+]?[\d.,]*\d)\s+(?!" + _MATH_WORDS + r")[a-zA-Z]{2,}\.?(?:\s+[a-zA-Z]+\.?){0,2}\s*"
                           r"(?:\^\s*\{?[23]\}?)?$")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# Spaces matter only between a command and a letter ("\pi r") and between two digits ("1 2" is not "12").
_WHITESPACE_RE = re.compile(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])|(?<=\d)(\s+)(?=\d)|\s+")
_ASSIGNMENT_RE = re.compile(r"^(?:[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?|\\[a-zA-Z]+)(?:=|\\in(?![a-zA-Z]))")
_CHOICE_RE = re.compile(r"^\(?([A-Z])\)$|^\(([A-Z])\)?$")
_SET_RE = re.compile(r"^\\\{(.*)\\\}$")
_FRAC_FIXES = (
    (re.compile(r"\\frac(\d)(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac(\d)\{"), r"\\frac{\1}{"),
    (re.compile(r"\\frac\{([^{}]*)\}(\w)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\sqrt(\d)"), r"\\sqrt{\1}"),
    (re.compile(r"([\^_])\{(\w)\}"), r"\1\2"),
)
_DECIMAL_RE = re.compile(r"([-+]?)(\d+(?:\.\d*)?|\.\d+)")
_FRACTION_RE = re.compile(r"([-+]?)(\d+)/(\d+)")
_LATEX_FRACTION_RE = re.compile(r"([-+]?)\\frac\{([-+]?)(\d+)\}\{([-+]?)(\d+)\}")
_MIXED_NUMBER_RE = re.compile(r"([-+]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")
_REPEATING_DECIMAL_RE = re.compile(r"([-+]?)(\d*)\.(\d*)\\overline\{(\d+)\}")

_GSM8K_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?![\w])|"
                              r"(?<![\w.])[-+]?\.\d+(?![\w])", re.ASCII)
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_MINERVA_MARK_RE = re.compile(r"final answer is(?![a-z])", re.IGNORECASE)
_ANSWER_MARK_RE = re.compile(r"final answer\s*:|answer is(?![a-z])", re.IGNORECASE)
_ANSWER_IS_RE = re.compile(r"answer is(?![a-z])", re.IGNORECASE)
_HOPE_RE = re.compile(r"\.?\s*I hope it is correct", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)|\n")


def extract_answer(completion: str) -> str | None:
  """The final answer written in a MATH / Minerva style completion, as written; None if there is none.

  The last complete `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) wins; else the answer of Minerva's "Final
  Answer: The final answer is X. I hope it is correct."; else the X of the last "The answer is X".

  Args:
    completion: the model's text.

  Returns:
    The answer without its box, math delimiters and trailing period, e.g. "\\frac{1}{2}"; None when the completion
    marks no final answer or marks an empty one.
  """
  _check_text("completion", completion)
  boxed = _last_boxed(completion)
  if boxed is not None:
    return _strip_answer(boxed)
  rest = _after_last(_MINERVA_MARK_RE, completion)
  if rest is not None:
    hope = _HOPE_RE.search(rest)
    return _strip_answer(_first_math_or_sentence(rest[:hope.start()] if hope else rest, whole_line=bool(hope)))
  rest = _after_last(_ANSWER_MARK_RE, completion)
  return None if rest is None else _strip_answer(_first_math_or_sentence(rest, whole_line=False))


def extract_gsm8k_answer(completion: str) -> str | None:
  """The final answer of a GSM8K style completion; None if it holds no number and marks no answer.

  "#### X" wins, else "The answer is X", else the last `\\boxed{X}`, else the last number in the text (the standard
  GSM8K fallback). Where the marked answer holds a number, that number is returned without currency signs,
  thousands commas or units ("#### $1,200." -> "1200"); after an "=" the number after the last "=" is taken.
  """
  _check_text("completion", completion)
  start = completion.rfind("####")
  if start >= 0:
    return _gsm8k_value(completion[start + 4:start + 4 + _MAX_ANSWER_SPAN].split("\n", 1)[0])
  rest = _after_last(_ANSWER_IS_RE, completion)
  if rest is not None:
    return _gsm8k_value(_first_math_or_sentence(rest, whole_line=False))
  boxed = _last_boxed(completion)
  if boxed is not None:
    return _gsm8k_value(boxed)
  numbers = _GSM8K_NUMBER_RE.findall(completion)
  return numbers[-1].replace(",", "").lstrip("+") if numbers else None


def gsm8k_reference(answer_field: str) -> str:
  """The final answer of a GSM8K `answer` field, the text after its "####", without commas ("1,200" -> "1200")."""
  _check_text("GSM8K answer field", answer_field)
  if "####" not in answer_field:
    raise ValueError(f"a GSM8K answer field ends in '#### <answer>', got {_preview(answer_field)}")
  answer = answer_field.rsplit("####", 1)[1].strip().replace(",", "")
  if not answer:
    raise ValueError(f"the GSM8K answer field has nothing after '####': {_preview(answer_field)}")
  return answer


def normalize_answer(answer: str) -> str:
  """The canonical string of a final answer, for majority voting and as the cheap first equivalence check.

  Equal outputs mean equivalent answers (see the module docstring for the conventions); different outputs may still
  be equivalent ("x^2+2x+1" and "(x+1)^2"), which `rest_jax.rewards.math.is_equivalent` decides with sympy.
  """
  _check_text("answer", answer)
  text = answer.strip()
  for synonym, replacement in _SYNONYMS.items():
    text = text.replace(synonym, replacement)
  text = _strip_wrappers(text)
  text = _SPACING_RE.sub("", text)
  text = _WIDE_SPACE_RE.sub(" ", text)
  text = _DELIMITER_SIZE_RE.sub("", text)
  text = text.replace("\\$", "").replace("$", "")
  if not _TRIGONOMETRY_RE.search(text):  # In "\sin 30^\circ" the degree sign matters.
    text = _DEGREES_RE.sub("", text).strip()
  text = _CONJUNCTION_RE.sub(",", text)
  text = _PERCENT_RE.sub("", text).strip().rstrip(".").strip()
  unit = _TEXT_UNIT_RE.search(text)
  if unit and re.search(r"\d", text[:unit.start()]) and not re.search(_TEXT_COMMAND, text[:unit.start()]):
    text = text[:unit.start()]
  for _ in range(4):
    text, count = _TEXT_RE.subn(r"\1", text)
    if not count:
      break
  text = text.strip().rstrip(".").strip()
  text = _WORD_UNIT_RE.sub(r"\1", text)
  if _THOUSANDS_RE.fullmatch(text):
    text = text.replace(",", "")
  text = _WHITESPACE_RE.sub(lambda m: m.group(1) + " " if m.group(1) else (" " if m.group(2) else ""), text)
  # A comma left here separates items; the space keeps "10, 200" from being read as ten thousand two hundred.
  text = text.replace(",", ", ").rstrip(".").lstrip("+")
  if text.count("=") <= 1:
    text = _ASSIGNMENT_RE.sub("", text, count=1)
  choice = _CHOICE_RE.fullmatch(text)
  if choice:
    text = choice.group(1) or choice.group(2)
  if len(text) >= 3 and text.isalpha() and text.isascii() and not text.isupper():  # A word: "Even", "\text{Monday}".
    text = text.lower()
  set_match = _SET_RE.fullmatch(text)
  if set_match and "\\{" not in set_match.group(1):
    text = set_match.group(1)
  for pattern, replacement in _FRAC_FIXES:
    text = pattern.sub(replacement, text)
  if text in ("+\\infty", "\\infty", "inf", "infinity"):
    text = "\\infty"
  number = _rational_literal(text)
  return _format_rational(number[0]) if number is not None else text


def parse_rational(normalized: str) -> tuple[fractions.Fraction, int | None] | None:
  """(value, decimal places) of a `normalize_answer` output that is a rational number, else None.

  The decimal places are those written ("0.25" -> 2, "-3" -> 0); None for a fraction ("1/3").
  """
  return _rational_literal(normalized)


def _check_text(what: str, value: object) -> None:
  if not isinstance(value, str):
    raise TypeError(f"{what} must be a str, got {type(value).__name__}: {_preview(value)}")


def _preview(value: object) -> str:
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


def _between_digits(match: re.Match[str]) -> bool:
  start, end = match.span()
  return start > 0 and end < len(match.string) and match.string[start - 1].isdigit() and match.string[end].isdigit()


def _matching_brace(text: str, open_index: int) -> int | None:
  """Index of the "}" closing the "{" at `open_index` ("\\{" and "\\}" are literal braces); None if unclosed."""
  depth = 0
  index = open_index
  while index < len(text):
    char = text[index]
    if char == "\\":
      index += 2
      continue
    if char == "{":
      depth += 1
    elif char == "}":
      depth -= 1
      if depth == 0:
        return index
    index += 1
  return None


def _box_contents(text: str, command_end: int) -> str | None:
  """What the box command ending at `command_end` holds: "{...}" with nested braces, or "\\boxed 5" up to "$"."""
  index = command_end
  while index < len(text) and text[index] in " \t":
    index += 1
  if index < len(text) and text[index] == "{":
    close = _matching_brace(text, index)
    return None if close is None else text[index + 1:close]
  if index == command_end:
    return None
  return re.split(r"[$\n]", text[index:index + _MAX_ANSWER_SPAN], maxsplit=1)[0]


def _last_boxed(text: str) -> str | None:
  for match in list(_BOX_RE.finditer(text))[::-1][:_MAX_BOX_TRIES]:
    contents = _box_contents(text, match.end())
    if contents is not None:
      return contents
  return None


def _strip_wrappers(text: str) -> str:
  """Removes math delimiters and a box around the whole answer: "$\\boxed{5}$" -> "5"."""
  for _ in range(4):
    before = text = text.strip()
    for left, right in _MATH_DELIMITERS:
      if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
        text = text[len(left):len(text) - len(right)].strip()
        break
    box = _BOX_RE.match(text)
    if box:
      brace = box.end() + len(text[box.end():]) - len(text[box.end():].lstrip(" \t"))
      if brace < len(text) and text[brace] == "{" and _matching_brace(text, brace) == len(text) - 1:
        text = text[brace + 1:-1]
    if text == before:
      break
  return text


def _closing(text: str, right: str, start: int) -> int:
  """Index of the first `right` at or after `start` that is not escaped ("\\$" is a dollar sign); -1 if none."""
  index = text.find(right, start)
  while index > 0 and text[index - 1] == "\\" and right.startswith("$"):
    index = text.find(right, index + 1)
  return index


def _first_math_or_sentence(text: str, whole_line: bool) -> str:
  """The answer at the start of `text`: a "$...$" / "\\(...\\)" / "\\[...\\]" span, else the line or sentence."""
  text = text.lstrip(" \t:*")
  for left, right in _MATH_DELIMITERS:
    if text.startswith(left):
      end = _closing(text, right, len(left))
      if end >= 0:
        return text[len(left):end]
  line = text.split("\n", 1)[0]
  if whole_line:
    return line
  end = _SENTENCE_END_RE.search(line)
  return line[:end.start()] if end else line


def _after_last(marker: re.Pattern[str], text: str) -> str | None:
  """The text after the last match of `marker` (at most `_MAX_ANSWER_SPAN` characters); None if there is none."""
  last = None
  for last in marker.finditer(text):
    pass
  return None if last is None else text[last.end():last.end() + _MAX_ANSWER_SPAN]


def _strip_answer(answer: str) -> str | None:
  answer = _strip_wrappers(answer.strip().strip("*").strip())
  answer = answer.rstrip(" .").strip()
  return answer or None


def _gsm8k_value(text: str) -> str | None:
  """The number in a marked GSM8K answer ("$1,200.", "18 dollars", "3 * 6 = 18"), else the text itself."""
  text = _strip_wrappers(text.strip().strip("*").strip())
  text = text.rsplit("=", 1)[-1]
  number = _GSM8K_NUMBER_RE.search(text.replace("\\$", " ").replace("$", " "))
  if number is not None:
    return number.group(0).replace(",", "").lstrip("+")
  text = text.strip().rstrip(".").strip()
  return text or None


def _rational_literal(text: str) -> tuple[fractions.Fraction, bool] | None:
  """(value, decimal places or None) of an integer, a decimal, "p/q", "\\frac{p}{q}", a mixed or repeating decimal."""
  if len(text) > _MAX_NUMBER_DIGITS:
    return None
  match = _DECIMAL_RE.fullmatch(text)
  if match:
    value = fractions.Fraction(decimal.Decimal(match.group(2)))
    places = len(match.group(2).partition(".")[2])
    return (-value if match.group(1) == "-" else value), places
  match = _FRACTION_RE.fullmatch(text)
  if match and int(match.group(3)):
    value = fractions.Fraction(int(match.group(2)), int(match.group(3)))
    return (-value if match.group(1) == "-" else value), None
  match = _LATEX_FRACTION_RE.fullmatch(text)
  if match and int(match.group(5)):
    sign = -1 if [match.group(1), match.group(2), match.group(4)].count("-") % 2 else 1
    return sign * fractions.Fraction(int(match.group(3)), int(match.group(5))), None
  match = _MIXED_NUMBER_RE.fullmatch(text)
  if match and 0 < int(match.group(3)) < int(match.group(4)):
    value = int(match.group(2)) + fractions.Fraction(int(match.group(3)), int(match.group(4)))
    return (-value if match.group(1) == "-" else value), None
  match = _REPEATING_DECIMAL_RE.fullmatch(text)
  if match:  # 0.1\overline{6} = (16 - 1) / 90
    sign, whole, fixed, repeat = match.groups()
    value = int(whole or "0") + fractions.Fraction(int(fixed + repeat) - int(fixed or "0"),
                                                   (10 ** len(repeat) - 1) * 10 ** len(fixed))
    return (-value if sign == "-" else value), None
  return None


def _format_rational(value: fractions.Fraction) -> str:
  """"-3", "0.25" when the decimal expansion ends (denominator 2^a 5^b), else "1/3"."""
  if value.denominator == 1:
    return str(value.numerator)
  denominator = value.denominator
  for prime in (2, 5):
    while denominator % prime == 0:
      denominator //= prime
  if denominator != 1:
    return f"{value.numerator}/{value.denominator}"
  with decimal.localcontext() as context:
    context.prec = _MAX_NUMBER_DIGITS * 2
    return format(decimal.Decimal(value.numerator) / decimal.Decimal(value.denominator), "f")


# The checking worker: runs in its own process, one request at a time.


class _Overtime(BaseException):
  """Raised in a worker by its interval timer; a BaseException, so that math-verify's handlers let it through."""


def _raise_overtime(unused_signum, unused_frame) -> None:
  raise _Overtime()


def serve_checks(connection, memory_bytes: int, startup_timeout_s: float) -> None:
  """Worker process: answers (reference, prediction, timeout_s) requests with math-verify's verdict until None.

  A check still running after `timeout_s` is interrupted by SIGALRM (this is the worker's main thread) and scores
  False; one stuck in C code (a huge integer power) cannot be interrupted, and the parent kills the worker instead.
  """
  logging.getLogger("math_verify").setLevel(logging.ERROR)  # It warns that its own timeout is off.
  # Imported here: only workers need sympy.
  from latex2sympy2_extended.latex2sympy2 import NormalizationConfig  # pylint: disable=g-import-not-at-top
  import math_verify  # pylint: disable=g-import-not-at-top

  # math-verify's unit list strips "ab", "c", "t", ... ("3ab" would read 3); normalize_answer drops units.
  config = [math_verify.LatexExtractionConfig(normalization_config=NormalizationConfig(
      basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False))]

  def check(reference: str, prediction: str, timeout_s: float) -> bool:
    try:
      try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        gold = math_verify.parse(f"${reference}$", extraction_config=config, parsing_timeout=None)
        target = math_verify.parse(f"${prediction}$", extraction_config=config, parsing_timeout=None)
        return bool(gold and target and math_verify.verify(gold, target, timeout_seconds=None))
      finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    except (Exception, _Overtime):  # pylint: disable=broad-except  (MemoryError, RecursionError, ...: scores 0)
      return False

  signal.signal(signal.SIGALRM, _raise_overtime)
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; the worker exits when its socket closes.
  check("1", "1", startup_timeout_s)  # Loads the LaTeX parser before the first timed request.
  _limit_memory(memory_bytes)
  connection.send("ready")
  while True:
    try:
      request = connection.recv()
    except EOFError:
      return
    if request is None:
      return
    connection.send(check(*request))


def _limit_memory(memory_bytes: int) -> None:
  try:
    import resource  # pylint: disable=g-import-not-at-top  (Unix only)
    with open("/proc/self/statm") as statm:
      address_space = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = address_space + memory_bytes
    if hard != resource.RLIM_INFINITY:
      limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
  except (ImportError, OSError, ValueError):
    pass  # Not Linux: the deadline still bounds the check.


if __name__ == WORKER_RUN_NAME:  # Run by path in a worker process; `socket_fd` etc. come as its globals.
  from multiprocessing import connection as _connection  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=undefined-variable
  serve_checks(_connection.Connection(socket_fd), memory_bytes, startup_timeout_s)
