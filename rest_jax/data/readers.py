"""Readers of the upstream files of each data set: find them under a path, check them, yield records.

Pure Python (no TensorFlow Datasets): `builders.py` turns a `Source` into an ArrayRecord build. Every record gets a
stable `id` (upstream order or upstream file name) and keeps the upstream field names and value types; fields that
upstream stores as JSON strings (APPS `solutions`, `input_output`) stay strings.

Data sets and the path each takes:
  gsm8k           directory with train.jsonl, test.jsonl (openai/grade-school-math, grade_school_math/data/).
  math            Hendrycks MATH: the MATH/ directory (train/<subject>/<n>.json, test/...) or its parent.
  math500         HuggingFaceH4/MATH-500 test.jsonl, or its directory.
  mbpp            google-research mbpp.jsonl, or its directory; given sanitized-mbpp.json (or a directory holding only
                  that file) it reads the sanitized release, as `mbpp_sanitized` does.
  mbpp_sanitized  sanitized-mbpp.json, or its directory.
  apps            hendrycks/apps: the release tree (APPS/train/<nnnn>/question.txt, ...) or the JSONL form
                  (train.jsonl, test.jsonl as in codeparrot/apps); APPS/ or its parent.
"""

from collections.abc import Callable, Iterator, Mapping
import dataclasses
import functools
import json
import os
from typing import Any

# Field types: str, int, or list[str].
Schema = Mapping[str, Any]
_MBPP_SPLITS = (("prompt", 1, 10), ("test", 11, 510), ("validation", 511, 600), ("train", 601, 974))


@dataclasses.dataclass(frozen=True)
class Source:
  """The upstream files of one data set found under a user's path.

  Attributes:
    name: Data set (and builder) name, e.g. "mbpp_sanitized" also when `load("mbpp", ...)` found the sanitized file.
    root: Directory the files were found in.
    files: Every file the readers open, sorted; fingerprinted to key the cache.
    schema: Field name -> type (str, int or list[str]) of every record, including "id".
    readers: Split name -> function yielding that split's records.
  """

  name: str
  root: str
  files: tuple[str, ...]
  schema: Schema
  readers: Mapping[str, Callable[[], Iterator[dict[str, Any]]]]


def names() -> list[str]:
  """Names of the data sets `locate` knows."""
  return sorted(_LOCATORS)


def locate(name: str, path: str) -> Source:
  """Finds data set `name` under `path`.

  Args:
    name: One of `names()`.
    path: Where the user put the upstream files (see the module docstring).

  Returns:
    The files and readers; nothing is read yet beyond directory listings.

  Raises:
    ValueError: Unknown name, or a missing file (naming the file and what to put where).
  """
  if name not in _LOCATORS:
    raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(names())}")
  return _LOCATORS[name](os.path.abspath(os.path.expanduser(os.fspath(path))))


def split_of_mbpp_task(task_id: int) -> str | None:
  """MBPP paper's split of a task id: prompt 1-10, test 11-510, validation 511-600, train 601-974; else None."""
  for split, first, last in _MBPP_SPLITS:
    if first <= task_id <= last:
      return split
  return None


def _missing(name: str, file: str, what: str, where: str) -> ValueError:
  return ValueError(f"{name}: {file} not found; put {what} in {where}")


def _type_name(kind: Any) -> str:
  return "a list of strings" if kind == list[str] else {str: "a string", int: "an integer"}[kind]


def _checked(name: str, where: str, obj: Any, fields: Schema) -> dict[str, Any]:
  """The `fields` of JSON object `obj`, type-checked; `where` names the file (and line) in errors."""
  if not isinstance(obj, dict):
    raise ValueError(f"{name}: {where}: expected a JSON object, got {type(obj).__name__}")
  record = {}
  for field, kind in fields.items():
    if field not in obj:
      raise ValueError(f"{name}: {where}: missing field {field!r}")
    value = obj[field]
    if kind == list[str]:
      ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
      ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
      raise ValueError(f"{name}: {where}: field {field!r} must be {_type_name(kind)}, got {json.dumps(value)[:80]}")
    record[field] = value
  return record


def _check_json_string(name: str, where: str, field: str, text: str) -> None:
  """Raises if `text` (a JSON-valued string field) is neither empty nor valid JSON."""
  if text:
    try:
      json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"{name}: {where}: field {field!r} is not valid JSON ({e.msg})") from None


def _read_text(name: str, file: str) -> str:
  try:
    with open(file, encoding="utf-8") as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise ValueError(f"{name}: {file}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_json(name: str, file: str) -> Any:
  try:
    return json.loads(_read_text(name, file))
  except json.JSONDecodeError as e:
    raise ValueError(f"{name}: {file}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def _read_jsonl(name: str, file: str) -> Iterator[tuple[str, Any]]:
  """Yields (where, object) for each non-blank line; `where` is "<file> line <n>"."""
  with open(file, encoding="utf-8", errors="strict") as f:
    lineno = 0
    try:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        where = f"{file} line {lineno}"
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{name}: {where}: invalid JSON ({e.msg} at column {e.colno})") from None
        yield where, obj
    except UnicodeDecodeError as e:
      raise ValueError(f"{name}: {file} line {lineno + 1}: not UTF-8 text ({e.reason})") from None


def _file_or_dir(name: str, path: str, file_name: str, what: str) -> str:
  """`path` if it is a file, else `path/file_name`, which must exist."""
  if os.path.isfile(path):
    return path
  if not os.path.isdir(path) and os.path.splitext(path)[1] in (".json", ".jsonl"):
    raise _missing(name, path, what, os.path.dirname(path))
  file = os.path.join(path, file_name)
  if not os.path.isfile(file):
    raise _missing(name, file, what, path)
  return file


# GSM8K.

_GSM8K_FIELDS = {"question": str, "answer": str}
_GSM8K_WHAT = "train.jsonl and test.jsonl from github.com/openai/grade-school-math (grade_school_math/data/)"


def _locate_gsm8k(path: str) -> Source:
  if os.path.isfile(path):  # train.jsonl or test.jsonl itself.
    path = os.path.dirname(path)
  files = {}
  for split in ("train", "test"):
    files[split] = os.path.join(path, f"{split}.jsonl")
    if not os.path.isfile(files[split]):
      raise _missing("gsm8k", files[split], _GSM8K_WHAT, path)

  def reader(split: str) -> Callable[[], Iterator[dict[str, Any]]]:
    def read() -> Iterator[dict[str, Any]]:
      for n, (where, obj) in enumerate(_read_jsonl("gsm8k", files[split])):
        yield {"id": f"{split}/{n:05d}", **_checked("gsm8k", where, obj, _GSM8K_FIELDS)}
    return read

  return Source("gsm8k", path, tuple(sorted(files.values())), {"id": str, **_GSM8K_FIELDS},
                {split: reader(split) for split in files})


# Hendrycks MATH.

_MATH_FIELDS = {"problem": str, "level": str, "type": str, "solution": str}
_MATH_WHAT = "the train/ and test/ folders of Hendrycks MATH (MATH.tar from github.com/hendrycks/math)"


def _locate_math(path: str) -> Source:
  root = next((r for r in (path, os.path.join(path, "MATH")) if os.path.isdir(os.path.join(r, "train"))
               and os.path.isdir(os.path.join(r, "test"))), None)
  if root is None:
    root = os.path.join(path, "MATH") if os.path.isdir(os.path.join(path, "MATH")) else path
    missing = next(os.path.join(root, s) for s in ("train", "test") if not os.path.isdir(os.path.join(root, s)))
    raise _missing("math", missing, _MATH_WHAT, root)
  files: dict[str, list[tuple[str, str]]] = {}  # split -> [(id, file)]
  for split in ("train", "test"):
    split_dir = os.path.join(root, split)
    files[split] = [(f"{split}/{subject}/{entry.name[:-5]}", entry.path)
                    for subject in sorted(os.listdir(split_dir)) if os.path.isdir(os.path.join(split_dir, subject))
                    for entry in os.scandir(os.path.join(split_dir, subject)) if entry.name.endswith(".json")]
    if not files[split]:
      raise ValueError(f"math: no {split}/<subject>/<n>.json files under {root}; put {_MATH_WHAT} in {root}")

  def reader(split: str) -> Callable[[], Iterator[dict[str, Any]]]:
    def read() -> Iterator[dict[str, Any]]:
      for problem_id, file in files[split]:
        yield {"id": problem_id, **_checked("math", file, _read_json("math", file), _MATH_FIELDS)}
    return read

  all_files = tuple(sorted(file for split_files in files.values() for _, file in split_files))
  return Source("math", root, all_files, {"id": str, **_MATH_FIELDS}, {split: reader(split) for split in files})


# MATH-500.

_MATH500_FIELDS = {"problem": str, "solution": str, "answer": str, "subject": str, "level": int, "unique_id": str}


def _locate_math500(path: str) -> Source:
  file = _file_or_dir("math500", path, "test.jsonl", "test.jsonl from huggingface.co/datasets/HuggingFaceH4/MATH-500")

  def read() -> Iterator[dict[str, Any]]:
    for n, (where, obj) in enumerate(_read_jsonl("math500", file)):
      yield {"id": f"test/{n:05d}", **_checked("math500", where, obj, _MATH500_FIELDS)}

  return Source("math500", os.path.dirname(file), (file,), {"id": str, **_MATH500_FIELDS}, {"test": read})


# MBPP, full and sanitized.

_MBPP_FIELDS = {"task_id": int, "text": str, "code": str, "test_list": list[str], "test_setup_code": str,
                "challenge_test_list": list[str]}
_MBPP_SANITIZED_FIELDS = {"source_file": str, "task_id": int, "prompt": str, "code": str, "test_imports": list[str],
                          "test_list": list[str]}
_MBPP_WHERE = "github.com/google-research/google-research (mbpp/)"


def _mbpp_records(name: str, items: Iterator[tuple[str, Any]], fields: Schema) -> dict[str, list[dict[str, Any]]]:
  splits: dict[str, list[dict[str, Any]]] = {split: [] for split, _, _ in _MBPP_SPLITS}
  seen: dict[int, str] = {}
  for where, obj in items:
    record = _checked(name, where, obj, fields)
    task_id = record["task_id"]
    split = split_of_mbpp_task(task_id)
    if split is None:
      raise ValueError(f"{name}: {where}: task_id {task_id} is outside MBPP's 1-974")
    if task_id in seen:
      raise ValueError(f"{name}: {where}: task_id {task_id} repeats {seen[task_id]}")
    seen[task_id] = where
    splits[split].append({"id": f"{split}/{task_id:03d}", **record})
  return splits


def _mbpp_source(name: str, file: str, fields: Schema,
                 items: Callable[[], Iterator[tuple[str, Any]]]) -> Source:
  records = functools.cache(lambda: _mbpp_records(name, items(), fields))  # One read serves all four splits.

  def reader(split: str) -> Callable[[], Iterator[dict[str, Any]]]:
    return lambda: iter(records()[split])

  return Source(name, os.path.dirname(file), (file,), {"id": str, **fields},
                {split: reader(split) for split, _, _ in _MBPP_SPLITS})


def _locate_mbpp_sanitized(path: str) -> Source:
  file = _file_or_dir("mbpp_sanitized", path, "sanitized-mbpp.json", f"sanitized-mbpp.json from {_MBPP_WHERE}")

  def items() -> Iterator[tuple[str, Any]]:
    data = _read_json("mbpp_sanitized", file)
    if not isinstance(data, list):
      raise ValueError(f"mbpp_sanitized: {file}: expected a JSON list of problems, got {type(data).__name__}")
    for i, obj in enumerate(data):
      yield f"{file} item {i}", obj

  return _mbpp_source("mbpp_sanitized", file, _MBPP_SANITIZED_FIELDS, items)


def _locate_mbpp(path: str) -> Source:
  if os.path.basename(path) == "sanitized-mbpp.json" or (
      os.path.isdir(path) and not os.path.exists(os.path.join(path, "mbpp.jsonl"))
      and os.path.isfile(os.path.join(path, "sanitized-mbpp.json"))):
    return _locate_mbpp_sanitized(path)
  file = _file_or_dir("mbpp", path, "mbpp.jsonl", f"mbpp.jsonl (or sanitized-mbpp.json) from {_MBPP_WHERE}")
  return _mbpp_source("mbpp", file, _MBPP_FIELDS, lambda: _read_jsonl("mbpp", file))


# APPS.

_APPS_FIELDS = {"problem_id": int, "question": str, "solutions": str, "input_output": str, "difficulty": str,
                "url": str, "starter_code": str}
_APPS_WHAT = ("the train/ and test/ folders of the APPS release (APPS.tar.gz from github.com/hendrycks/apps), or "
              "train.jsonl and test.jsonl from huggingface.co/datasets/codeparrot/apps,")
_APPS_TREE_FILES = ("question.txt", "solutions.json", "input_output.json", "metadata.json", "starter_code.py")


def _apps_tree_record(problem_dir: str, present: set[str]) -> dict[str, Any]:
  """One problem of the release tree in the JSONL schema; JSON files are re-serialised as codeparrot/apps did."""
  def file(name: str) -> str:
    return os.path.join(problem_dir, name)

  for required in ("question.txt", "metadata.json"):
    if required not in present:
      raise ValueError(f"apps: {file(required)} not found; every APPS problem folder has {required}")
  metadata = _read_json("apps", file("metadata.json"))
  difficulty = _checked("apps", file("metadata.json"), metadata, {"difficulty": str})["difficulty"]
  url = metadata.get("url", "")
  json_fields = {}
  for field, kind in (("solutions", list), ("input_output", dict)):
    json_file = file(f"{field}.json")
    if f"{field}.json" not in present:
      json_fields[field] = ""  # As codeparrot/apps has it.
      continue
    value = _read_json("apps", json_file)
    if not isinstance(value, kind):
      raise ValueError(f"apps: {json_file}: expected a JSON {kind.__name__}, got {type(value).__name__}")
    for key in ("inputs", "outputs") if field == "input_output" else ():
      if key not in value:
        raise ValueError(f"apps: {json_file}: missing field {key!r}")
    json_fields[field] = json.dumps(value)
  return {"problem_id": int(os.path.basename(problem_dir)), "question": _read_text("apps", file("question.txt")),
          **json_fields, "difficulty": difficulty, "url": url if isinstance(url, str) else "",
          "starter_code": _read_text("apps", file("starter_code.py")) if "starter_code.py" in present else ""}


def _locate_apps(path: str) -> Source:
  for root in (path, os.path.join(path, "APPS")):
    jsonl = {split: os.path.join(root, f"{split}.jsonl") for split in ("train", "test")}
    tree = {split: os.path.join(root, split) for split in ("train", "test")}
    if any(os.path.isfile(f) for f in jsonl.values()):
      return _apps_jsonl_source(root, jsonl)
    if any(os.path.isdir(d) for d in tree.values()):
      return _apps_tree_source(root, tree)
  raise _missing("apps", os.path.join(path, "train"), _APPS_WHAT, path)


def _apps_jsonl_source(root: str, files: dict[str, str]) -> Source:
  for file in files.values():
    if not os.path.isfile(file):
      raise _missing("apps", file, _APPS_WHAT, root)

  def reader(split: str) -> Callable[[], Iterator[dict[str, Any]]]:
    def read() -> Iterator[dict[str, Any]]:
      for where, obj in _read_jsonl("apps", files[split]):
        record = _checked("apps", where, obj, _APPS_FIELDS)
        for field in ("solutions", "input_output"):
          _check_json_string("apps", where, field, record[field])
        yield {"id": f"{split}/{record['problem_id']:04d}", **record}
    return read

  return Source("apps", root, tuple(sorted(files.values())), {"id": str, **_APPS_FIELDS},
                {split: reader(split) for split in files})


def _apps_tree_source(root: str, split_dirs: dict[str, str]) -> Source:
  problems: dict[str, list[tuple[str, set[str]]]] = {}  # split -> [(problem dir, files present)]
  for split, split_dir in split_dirs.items():
    if not os.path.isdir(split_dir):
      raise _missing("apps", split_dir, _APPS_WHAT, root)
    problems[split] = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
      if entry.is_dir() and entry.name.isdigit():
        problems[split].append((entry.path, {f for f in os.listdir(entry.path) if f in _APPS_TREE_FILES}))
    if not problems[split]:
      raise ValueError(f"apps: no problem folders (<nnnn>/question.txt) in {split_dir}; put {_APPS_WHAT} in {root}")

  def reader(split: str) -> Callable[[], Iterator[dict[str, Any]]]:
    def read() -> Iterator[dict[str, Any]]:
      for problem_dir, present in problems[split]:
        record = _apps_tree_record(problem_dir, present)
        yield {"id": f"{split}/{record['problem_id']:04d}", **record}
    return read

  files = tuple(sorted(os.path.join(d, f) for split_problems in problems.values() for d, present in split_problems
                       for f in present))
  return Source("apps", root, files, {"id": str, **_APPS_FIELDS}, {split: reader(split) for split in problems})


_LOCATORS: dict[str, Callable[[str], Source]] = {
    "apps": _locate_apps,
    "gsm8k": _locate_gsm8k,
    "math": _locate_math,
    "math500": _locate_math500,
    "mbpp": _locate_mbpp,
    "mbpp_sanitized": _locate_mbpp_sanitized,
}
