"""The fixtures are faithful: arithmetic and answers check out, reference code passes its tests, layouts match."""

import contextlib
import io
import json
import os
import re
import sys

import pytest

from rest_jax.data import fixtures


def _read_jsonl(file):
  with open(file, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _last_boxed(text):
  """Contents of the last \\boxed{...}, braces matched."""
  start = text.rindex("\\boxed{") + len("\\boxed{")
  depth = 1
  for i in range(start, len(text)):
    depth += {"{": 1, "}": -1}.get(text[i], 0)
    if depth == 0:
      return text[start:i]
  raise AssertionError(f"unbalanced \\boxed in {text!r}")


def test_gsm8k_calculator_notes_are_right_and_the_answer_is_the_last_result(tmp_path):
  path = fixtures.write("gsm8k", tmp_path)
  assert sorted(os.listdir(path)) == ["test.jsonl", "train.jsonl"]
  for split in ("train", "test"):
    rows = _read_jsonl(os.path.join(path, f"{split}.jsonl"))
    assert 4 <= len(rows) <= 10
    for row in rows:
      assert set(row) == {"question", "answer"}
      notes = re.findall(r"<<([^=<>]+)=([^<>]+)>>", row["answer"])
      assert notes, row["answer"]
      for expression, value in notes:
        assert eval(expression) == pytest.approx(float(value)), (expression, value)  # pylint: disable=eval-used
      final = re.fullmatch(r"(?s).*\n#### (-?[\d.]+)", row["answer"]).group(1)
      assert float(final) == float(notes[-1][1])


def test_math_files_are_upstream_json_with_a_boxed_answer(tmp_path):
  root = fixtures.write("math", tmp_path)
  subjects = {"algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
              "prealgebra", "precalculus"}
  for split in ("train", "test"):
    split_dir = os.path.join(root, "MATH", split)
    assert set(os.listdir(split_dir)) <= subjects
    files = [os.path.join(split_dir, subject, f) for subject in os.listdir(split_dir)
             for f in os.listdir(os.path.join(split_dir, subject))]
    assert 4 <= len(files) <= 10
    for file in files:
      assert re.fullmatch(r"\d+\.json", os.path.basename(file))
      with open(file, encoding="utf-8") as f:
        problem = json.load(f)
      assert list(problem) == ["problem", "level", "type", "solution"]
      assert re.fullmatch(r"Level [1-5?]", problem["level"])
      assert problem["type"] == {"counting_and_probability": "Counting & Probability",
                                 "intermediate_algebra": "Intermediate Algebra",
                                 "number_theory": "Number Theory"}.get(os.path.basename(os.path.dirname(file)),
                                                                       os.path.basename(os.path.dirname(file)).title())
      assert _last_boxed(problem["solution"])


def test_math500_answers_are_the_boxed_answers(tmp_path):
  rows = _read_jsonl(fixtures.write("math500", tmp_path))
  assert 4 <= len(rows) <= 10
  for row in rows:
    assert list(row) == ["problem", "solution", "answer", "subject", "level", "unique_id"]
    assert _last_boxed(row["solution"]) == row["answer"]
    assert isinstance(row["level"], int) and 1 <= row["level"] <= 5
    subject_folder = row["subject"].lower().replace(" ", "_").replace("&", "and")
    assert re.fullmatch(rf"test/{subject_folder}/\d+\.json", row["unique_id"])


def _run_mbpp(code, tests, setup=""):
  namespace = {}
  exec(setup + "\n" + code.replace("\r\n", "\n") + "\n" + "\n".join(tests), namespace)  # pylint: disable=exec-used


def test_mbpp_code_passes_its_tests(tmp_path):
  rows = _read_jsonl(os.path.join(fixtures.write("mbpp", tmp_path), "mbpp.jsonl"))
  assert len(rows) >= 4 * 3
  for row in rows:
    assert list(row) == ["text", "code", "task_id", "test_setup_code", "test_list", "challenge_test_list"]
    _run_mbpp(row["code"], row["test_list"] + row["challenge_test_list"], row["test_setup_code"])
    with pytest.raises(AssertionError):  # The tests do test something.
      _run_mbpp(row["code"], [re.sub(r"==\s*(.*)$", r"== [\1]", row["test_list"][0])])


def test_mbpp_sanitized_code_passes_its_tests(tmp_path):
  with open(fixtures.write("mbpp_sanitized", tmp_path), encoding="utf-8") as f:
    items = json.load(f)
  for item in items:
    assert list(item) == ["source_file", "task_id", "prompt", "code", "test_imports", "test_list"]
    assert "\r\n" not in item["code"]
    _run_mbpp(item["code"], item["test_list"], "\n".join(item["test_imports"]))


def _run_stdin(code, stdin, monkeypatch):
  monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(code, {"__name__": "__main__"})  # pylint: disable=exec-used
  return out.getvalue()


def _run_call(code, fn_name, args):
  namespace = {}
  exec(code, namespace)  # pylint: disable=exec-used
  fn = getattr(namespace["Solution"](), fn_name) if "class Solution" in code else namespace[fn_name]
  return fn(*args)


def test_apps_has_stdin_and_call_based_problems_whose_solutions_pass(monkeypatch):
  kinds = set()
  for split, problems in fixtures.apps_problems().items():
    assert len(problems) >= 4
    for problem in problems:
      io_spec = problem["input_output"]
      if io_spec is None:
        continue
      assert problem["solutions"], problem["problem_id"]
      kinds.add((split, "call" if "fn_name" in io_spec else "stdin"))
      for solution in problem["solutions"]:
        for case_input, expected in zip(io_spec["inputs"], io_spec["outputs"], strict=True):
          if "fn_name" in io_spec:
            got = _run_call(solution, io_spec["fn_name"], case_input)
            # APPS's checker also accepts an output wrapped in a one-element list.
            assert got == expected or (isinstance(expected, list) and len(expected) == 1 and got == expected[0])
          else:
            assert _run_stdin(solution, case_input, monkeypatch) == expected
  assert kinds == {("train", "stdin"), ("train", "call"), ("test", "stdin"), ("test", "call")}


def test_apps_layouts_on_disk(tmp_path):
  tree = fixtures.write("apps", tmp_path)
  assert sorted(os.listdir(tree)) == ["test", "train"]
  assert sorted(os.listdir(os.path.join(tree, "train"))) == ["0000", "0001", "0002", "0003"]
  assert sorted(os.listdir(os.path.join(tree, "train", "0001"))) == ["input_output.json", "metadata.json",
                                                                     "question.txt", "solutions.json",
                                                                     "starter_code.py"]
  assert sorted(os.listdir(os.path.join(tree, "train", "0002"))) == ["metadata.json", "question.txt"]
  with open(os.path.join(tree, "train", "0000", "metadata.json"), encoding="utf-8") as f:
    assert json.load(f) == {"difficulty": "introductory", "url": "https://codeforces.com/problemset/problem/1003/A"}
  rows = _read_jsonl(os.path.join(fixtures.write("apps", tmp_path, layout="jsonl"), "train.jsonl"))
  assert list(rows[0]) == ["problem_id", "question", "solutions", "input_output", "difficulty", "url", "starter_code"]
  assert isinstance(rows[0]["solutions"], str) and json.loads(rows[1]["input_output"])["fn_name"] == "maxProfit"
  assert rows[2]["solutions"] == rows[2]["input_output"] == ""


def test_write_rejects_unknown_names_and_layouts(tmp_path):
  with pytest.raises(ValueError, match="no fixture for data set 'gsm9k'; fixtures: apps, gsm8k"):
    fixtures.write("gsm9k", tmp_path)
  with pytest.raises(ValueError, match=r"apps fixture: layout must be one of \('tree', 'jsonl'\), got 'zip'"):
    fixtures.write("apps", tmp_path, layout="zip")
  with pytest.raises(ValueError, match="gsm8k fixture: layout must be one of"):
    fixtures.write("gsm8k", tmp_path, layout="jsonl")
