"""`rest_jax.data.load` over the fixtures: the records of each data set, the build cache, errors, no TensorFlow."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from rest_jax import data
from rest_jax.data import builders
from rest_jax.data import fixtures
from rest_jax.data import readers

_REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path):
  return str(tmp_path / "cache")


@pytest.fixture
def build_count(monkeypatch):
  """Counts builds (tfds asks for split generators only when it writes a build)."""
  calls = []
  original = builders._Builder._split_generators

  def counting(self, dl_manager):
    calls.append(self.name)
    return original(self, dl_manager)

  monkeypatch.setattr(builders._Builder, "_split_generators", counting)
  return calls


def _write_jsonl(file, rows):
  os.makedirs(os.path.dirname(file), exist_ok=True)
  with open(file, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _builds(cache_dir, name):
  """Complete cache entries of data set `name`."""
  folder = os.path.join(cache_dir, name)
  return sorted(e for e in os.listdir(folder) if not e.startswith(".")) if os.path.isdir(folder) else []


def _tree_state(root):
  """Every file under `root` with its size, mtime and bytes."""
  state = {}
  for folder, _, files in os.walk(root):
    for name in files:
      file = os.path.join(folder, name)
      stat = os.stat(file)
      with open(file, "rb") as f:
        state[file] = (stat.st_size, stat.st_mtime_ns, f.read())
  return state


def test_names_and_fixtures_cover_the_same_data_sets():
  assert data.names() == ["apps", "gsm8k", "math", "math500", "mbpp", "mbpp_sanitized"]
  assert fixtures.names() == data.names()


def test_gsm8k(tmp_path, cache):
  splits = data.load("gsm8k", fixtures.write("gsm8k", tmp_path), data_dir=cache)
  assert list(splits) == ["train", "test"]
  assert [r["id"] for r in splits["train"]] == [f"train/{i:05d}" for i in range(5)]
  assert [r["id"] for r in splits["test"]] == [f"test/{i:05d}" for i in range(4)]
  first = splits["train"][0]
  assert set(first) == {"id", "question", "answer"}
  assert first["question"].startswith("Natalia sold clips to 48 of her friends in April")
  assert first["answer"] == ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 "
                             "clips altogether in April and May.\n#### 72")
  assert splits["test"][0]["question"].startswith("Janet’s ducks")  # Non-ASCII, as upstream.
  assert "crème brûlée" in splits["train"][4]["question"] and "€<<24*3=72>>72" in splits["train"][4]["answer"]


def test_gsm8k_path_may_be_one_of_its_files(tmp_path, cache):
  path = fixtures.write("gsm8k", tmp_path)
  assert data.load("gsm8k", os.path.join(path, "train.jsonl"), data_dir=cache) == data.load("gsm8k", path,
                                                                                            data_dir=cache)


def test_math_ids_sort_by_number_and_the_MATH_folder_or_its_parent_works(tmp_path, cache):
  parent = fixtures.write("math", tmp_path)
  splits = data.load("math", parent, data_dir=cache)
  assert [r["id"] for r in splits["train"]] == ["train/algebra/2", "train/algebra/10",
                                                "train/counting_and_probability/1034", "train/geometry/77",
                                                "train/number_theory/416"]
  assert [r["id"] for r in splits["test"]] == ["test/algebra/1234", "test/intermediate_algebra/58",
                                               "test/number_theory/572", "test/precalculus/807"]
  by_id = {r["id"]: r for records in splits.values() for r in records}
  assert by_id["train/counting_and_probability/1034"]["type"] == "Counting & Probability"
  assert by_id["train/geometry/77"]["level"] == "Level ?"
  assert by_id["test/precalculus/807"]["solution"].startswith("We have that\n\\[\\begin{pmatrix}")
  assert by_id["test/algebra/1234"]["solution"].endswith(r"=\boxed{\frac{14}{3}}$")
  assert set(by_id["test/algebra/1234"]) == {"id", "problem", "level", "type", "solution"}
  assert data.load("math", os.path.join(parent, "MATH"), data_dir=cache) == splits


def test_math500(tmp_path, cache):
  file = fixtures.write("math500", tmp_path)
  splits = data.load("math500", file, data_dir=cache)
  assert list(splits) == ["test"] and len(splits["test"]) == 5
  first = splits["test"][0]
  assert first["id"] == "test/00000" and first["unique_id"] == "test/precalculus/807.json"
  assert first["level"] == 2 and isinstance(first["level"], int)
  assert first["answer"] == r"\left( 3, \frac{\pi}{2} \right)" and first["subject"] == "Precalculus"
  assert [r["level"] for r in splits["test"]] == [2, 3, 3, 3, 5]
  assert data.load("math500", os.path.dirname(file), data_dir=cache) == splits


def test_mbpp_splits_follow_the_paper(tmp_path, cache):
  splits = data.load("mbpp", fixtures.write("mbpp", tmp_path), data_dir=cache)
  assert {split: [r["task_id"] for r in records] for split, records in splits.items()} == {
      "prompt": [1, 2, 3, 4], "test": [11, 12, 14, 17, 510], "validation": [511, 557, 566, 600],
      "train": [602, 603, 604, 974]}
  record = splits["test"][0]
  assert set(record) == {"id", "task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list"}
  assert record["id"] == "test/011"
  assert record["test_list"] == ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"',
                                 'assert remove_Occ("PHP","P") == "H"']
  assert record["challenge_test_list"][1] == 'assert remove_Occ("","l") == ""'
  assert "\r\n" in record["code"]  # Upstream's Windows line ends survive.
  assert splits["prompt"][0]["challenge_test_list"] == []


@pytest.mark.parametrize("task_id,split", [(0, None), (1, "prompt"), (10, "prompt"), (11, "test"), (510, "test"),
                                           (511, "validation"), (600, "validation"), (601, "train"),
                                           (974, "train"), (975, None)])
def test_mbpp_split_of_task(task_id, split):
  assert readers.split_of_mbpp_task(task_id) == split


def test_mbpp_boundary_task_ids_land_in_their_splits(tmp_path, cache):
  rows = [dict(task_id=t, text=f"task {t}", code="", test_list=[], test_setup_code="", challenge_test_list=[])
          for t in (974, 1, 10, 11, 510, 511, 600, 601)]
  _write_jsonl(str(tmp_path / "mbpp.jsonl"), rows)
  splits = data.load("mbpp", str(tmp_path), data_dir=cache)
  assert {s: [r["task_id"] for r in records] for s, records in splits.items()} == {
      "prompt": [1, 10], "test": [11, 510], "validation": [511, 600], "train": [601, 974]}
  _write_jsonl(str(tmp_path / "mbpp.jsonl"), rows + [dict(rows[0], task_id=975)])
  with pytest.raises(ValueError, match=r"mbpp: .*mbpp.jsonl line 9: task_id 975 is outside MBPP's 1-974"):
    data.load("mbpp", str(tmp_path), data_dir=cache)


def test_mbpp_sanitized_by_name_or_by_file_name(tmp_path, cache):
  file = fixtures.write("mbpp_sanitized", tmp_path)
  splits = data.load("mbpp_sanitized", file, data_dir=cache)
  assert {split: [r["task_id"] for r in records] for split, records in splits.items()} == {
      "prompt": [2, 3, 4], "test": [11, 12, 14, 17], "validation": [557, 566, 600], "train": [602, 604, 974]}
  record = splits["prompt"][1]
  assert set(record) == {"id", "source_file", "task_id", "prompt", "code", "test_imports", "test_list"}
  assert record["test_imports"] == ["import math"] and record["code"].startswith("import math\ndef is_not_prime")
  assert data.load("mbpp", file, data_dir=cache) == splits  # Detected by its file name...
  assert data.load("mbpp", os.path.dirname(file), data_dir=cache) == splits  # ...or as the folder's only MBPP file.
  fixtures.write("mbpp", tmp_path)  # Now the folder also holds mbpp.jsonl, which `mbpp` prefers.
  assert "text" in data.load("mbpp", os.path.dirname(file), data_dir=cache)["test"][0]


def test_apps_both_layouts_give_the_same_records(tmp_path, cache):
  tree = data.load("apps", fixtures.write("apps", tmp_path / "a"), data_dir=cache)
  jsonl = data.load("apps", fixtures.write("apps", tmp_path / "b", layout="jsonl"), data_dir=cache)
  assert tree == jsonl
  assert data.load("apps", str(tmp_path / "a"), data_dir=cache) == tree  # The parent of APPS/ works too.
  assert [r["id"] for r in tree["train"]] == ["train/0000", "train/0001", "train/0002", "train/0003"]
  expected = fixtures.apps_problems()
  for split, records in tree.items():
    assert [r["problem_id"] for r in records] == [p["problem_id"] for p in expected[split]]
    for record, problem in zip(records, expected[split], strict=True):
      assert set(record) == {"id", "problem_id", "question", "solutions", "input_output", "difficulty", "url",
                             "starter_code"}
      for field in ("solutions", "input_output"):  # JSON strings, "" when upstream has no file.
        assert isinstance(record[field], str)
        assert (json.loads(record[field]) if record[field] else None) == problem[field]
      for field in ("question", "difficulty", "url", "starter_code"):
        assert record[field] == problem[field]
  call_based = json.loads(tree["train"][1]["input_output"])
  assert call_based["fn_name"] == "maxProfit" and tree["train"][1]["starter_code"].startswith("class Solution:")
  assert "fn_name" not in json.loads(tree["train"][0]["input_output"])
  assert "— the number of coins" in tree["train"][0]["question"]


def test_unicode_and_json_strings_round_trip(tmp_path, cache):
  texts = ["naïve café — 東京 🚀 שלום", "line\u2028separator and NBSP\u00a0", "combining e\u0301 and tab\t", "",
           "\\boxed{x}"]
  io_json = json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"], "fn_name": "añadir"}, ensure_ascii=False)
  rows = [dict(problem_id=i, question=text, solutions=json.dumps([text]), input_output=io_json, difficulty="interview",
               url="", starter_code=text) for i, text in enumerate(texts)]
  _write_jsonl(str(tmp_path / "train.jsonl"), rows)
  _write_jsonl(str(tmp_path / "test.jsonl"), rows[:1])
  splits = data.load("apps", str(tmp_path), data_dir=cache)
  for record, row in zip(splits["train"], rows, strict=True):
    assert {k: v for k, v in record.items() if k != "id"} == row  # Byte-for-byte, JSON strings untouched.
  assert json.loads(splits["train"][0]["solutions"]) == [texts[0]]


def test_second_load_reuses_the_build(tmp_path, cache, build_count):
  path = fixtures.write("gsm8k", tmp_path)
  first = data.load("gsm8k", path, data_dir=cache)
  [key] = _builds(cache, "gsm8k")
  record_files = sorted((tmp_path / "cache" / "gsm8k" / key / "gsm8k" / "1.0.0").glob("*.array_record*"))
  assert len(record_files) == 2
  mtimes = [f.stat().st_mtime_ns for f in record_files]
  assert data.load("gsm8k", path, data_dir=cache) == first
  assert build_count == ["gsm8k"]
  assert _builds(cache, "gsm8k") == [key] and [f.stat().st_mtime_ns for f in record_files] == mtimes


def test_changed_source_rebuilds(tmp_path, cache, build_count):
  path = fixtures.write("gsm8k", tmp_path)
  before = data.load("gsm8k", path, data_dir=cache)
  with open(os.path.join(path, "test.jsonl"), "a", encoding="utf-8") as f:
    f.write(json.dumps({"question": "What is 2+2?", "answer": "2+2=<<2+2=4>>4\n#### 4"}) + "\n")
  after = data.load("gsm8k", path, data_dir=cache)
  assert after["train"] == before["train"]
  assert after["test"][:-1] == before["test"] and after["test"][-1]["question"] == "What is 2+2?"
  assert build_count == ["gsm8k", "gsm8k"] and len(_builds(cache, "gsm8k")) == 2


def test_fingerprint_by_content_for_small_trees_and_by_stat_for_large(tmp_path, monkeypatch):
  path = fixtures.write("gsm8k", tmp_path / "a")
  key = builders.fingerprint(readers.locate("gsm8k", path))
  train = os.path.join(path, "train.jsonl")
  os.utime(train, ns=(1, 1))
  assert builders.fingerprint(readers.locate("gsm8k", path)) == key  # A touch is no change...
  assert builders.fingerprint(readers.locate("gsm8k", fixtures.write("gsm8k", tmp_path / "b"))) == key  # ...nor a copy.
  with open(train, encoding="utf-8") as f:
    text = f.read()
  with open(train, "w", encoding="utf-8") as f:
    f.write(text.replace("#### 72", "#### 73", 1))  # Same size, same mtime, new content.
  os.utime(train, ns=(1, 1))
  assert builders.fingerprint(readers.locate("gsm8k", path)) != key
  with open(train, "w", encoding="utf-8") as f:
    f.write(text)
  os.utime(train, ns=(1, 1))
  monkeypatch.setattr(builders, "CONTENT_HASH_MAX_BYTES", 0)
  by_stat = builders.fingerprint(readers.locate("gsm8k", path))
  assert by_stat != key and builders.fingerprint(readers.locate("gsm8k", path)) == by_stat
  os.utime(train, ns=(2, 2))
  assert builders.fingerprint(readers.locate("gsm8k", path)) != by_stat


def test_rebuild_when_a_large_tree_is_touched(tmp_path, cache, build_count, monkeypatch):
  monkeypatch.setattr(builders, "CONTENT_HASH_MAX_BYTES", 0)
  path = fixtures.write("apps", tmp_path)
  data.load("apps", path, data_dir=cache)
  data.load("apps", path, data_dir=cache)
  assert build_count == ["apps"]
  question = os.path.join(path, "test", "0001", "question.txt")
  with open(question, "a", encoding="utf-8") as f:
    f.write("\n\nNote: n fits in 32 bits.")
  assert data.load("apps", path, data_dir=cache)["test"][1]["question"].endswith("fits in 32 bits.")
  assert build_count == ["apps", "apps"]


def test_source_files_are_only_read(tmp_path, cache, monkeypatch):
  for name in data.names():
    fixtures.write(name, tmp_path / "src")
  fixtures.write("apps", tmp_path / "src_jsonl", layout="jsonl")
  before = _tree_state(tmp_path / "src"), _tree_state(tmp_path / "src_jsonl")
  for name in data.names():
    data.load(name, _path_of(name, tmp_path / "src"), data_dir=cache)
  data.load("apps", str(tmp_path / "src_jsonl" / "apps"), data_dir=cache)
  monkeypatch.setattr(builders, "CONTENT_HASH_MAX_BYTES", 0)
  data.load("math", str(tmp_path / "src"), data_dir=cache)
  assert (_tree_state(tmp_path / "src"), _tree_state(tmp_path / "src_jsonl")) == before


def _path_of(name, root):
  return {"apps": root / "APPS", "gsm8k": root / "grade_school_math" / "data", "math": root,
          "math500": root / "MATH-500" / "test.jsonl", "mbpp": root / "mbpp" / "mbpp.jsonl",
          "mbpp_sanitized": root / "mbpp" / "sanitized-mbpp.json"}[name]


def test_interrupted_build_leaves_no_entry_and_the_next_load_builds(tmp_path, cache, monkeypatch):
  path = fixtures.write("math", tmp_path)
  original = readers.locate

  def interrupted(name, path):
    source = original(name, path)

    def read_then_stop():
      yield from list(source.readers["train"]())[:2]
      raise KeyboardInterrupt

    return readers.Source(source.name, source.root, source.files, source.schema,
                          {**source.readers, "train": read_then_stop})

  monkeypatch.setattr(readers, "locate", interrupted)
  with pytest.raises(KeyboardInterrupt):
    data.load("math", path, data_dir=cache)
  assert [e for e in os.listdir(os.path.join(cache, "math")) if not e.endswith(".lock")] == []
  monkeypatch.setattr(readers, "locate", original)
  key = builders.fingerprint(readers.locate("math", path))
  stale = os.path.join(cache, "math", f".tmp-{key}-killed")  # As a killed process leaves it.
  os.makedirs(os.path.join(stale, "math", "1.0.0"))
  assert len(data.load("math", path, data_dir=cache)["train"]) == 5
  assert _builds(cache, "math") == [key] and not os.path.exists(stale)


def test_concurrent_loads_build_once(tmp_path, cache):
  path = fixtures.write("mbpp", tmp_path)
  script = textwrap.dedent(f"""
      import sys, time
      from rest_jax.data import builders
      original = builders._Builder._split_generators
      def slow(self, dl_manager):
        print("building", flush=True)
        time.sleep(1.0)  # Long enough for the other process to reach the lock.
        return original(self, dl_manager)
      builders._Builder._split_generators = slow
      from rest_jax import data
      splits = data.load("mbpp", {path!r}, data_dir={cache!r})
      print(sorted((s, len(r)) for s, r in splits.items()))
  """)
  env = dict(os.environ, PYTHONPATH=str(_REPO), REST_JAX_PROGRESS="0")
  procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env) for _ in range(2)]
  outputs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
  lines = [out.splitlines() for out, _ in outputs]
  assert sum(out.count("building") for out in lines) == 1
  assert lines[0][-1] == lines[1][-1] == "[('prompt', 4), ('test', 5), ('train', 4), ('validation', 4)]"
  assert len(_builds(cache, "mbpp")) == 1
  assert not [e for e in os.listdir(os.path.join(cache, "mbpp")) if e.startswith(".tmp-")]


def test_default_data_dir(tmp_path, monkeypatch):
  path = fixtures.write("math500", tmp_path / "src")
  monkeypatch.setenv("REST_JAX_DATA_DIR", str(tmp_path / "env_cache"))
  data.load("math500", path)
  assert len(_builds(str(tmp_path / "env_cache"), "math500")) == 1
  monkeypatch.delenv("REST_JAX_DATA_DIR")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert builders.default_data_dir() == str(tmp_path / "home" / ".cache" / "rest_jax" / "tfds")


# Errors.

@pytest.mark.parametrize("name,missing,hint", [
    ("gsm8k", "train.jsonl", "put train.jsonl and test.jsonl from github.com/openai/grade-school-math "
                             "(grade_school_math/data/) in {path}"),
    ("math", "train", "put the train/ and test/ folders of Hendrycks MATH"),
    ("math500", "test.jsonl", "put test.jsonl from huggingface.co/datasets/HuggingFaceH4/MATH-500 in {path}"),
    ("mbpp", "mbpp.jsonl", "put mbpp.jsonl (or sanitized-mbpp.json) from github.com/google-research/google-research"),
    ("mbpp_sanitized", "sanitized-mbpp.json", "put sanitized-mbpp.json from"),
    ("apps", "train", "put the train/ and test/ folders of the APPS release"),
])
def test_missing_files_say_what_to_put_where(tmp_path, cache, name, missing, hint):
  path = str(tmp_path / "nothing_here")
  with pytest.raises(ValueError) as error:
    data.load(name, path, data_dir=cache)
  message = str(error.value)
  assert message.startswith(f"{name}: {os.path.join(path, missing)} not found; ")
  assert hint.format(path=path) in message
  assert not os.path.exists(cache)


def test_gsm8k_missing_test_file_message_is_exact(tmp_path, cache):
  os.remove(os.path.join(path := fixtures.write("gsm8k", tmp_path), "test.jsonl"))
  with pytest.raises(ValueError) as error:
    data.load("gsm8k", path, data_dir=cache)
  assert str(error.value) == (f"gsm8k: {path}/test.jsonl not found; put train.jsonl and test.jsonl from "
                              f"github.com/openai/grade-school-math (grade_school_math/data/) in {path}")


def test_apps_with_one_split_missing(tmp_path, cache):
  path = fixtures.write("apps", tmp_path, layout="jsonl")
  os.remove(os.path.join(path, "test.jsonl"))
  with pytest.raises(ValueError, match=f"apps: {path}/test.jsonl not found; put .*codeparrot/apps"):
    data.load("apps", path, data_dir=cache)


def test_unknown_name_lists_known_names(cache):
  with pytest.raises(ValueError, match="unknown data set 'gsm9k'; known data sets: apps, gsm8k, math, math500, mbpp"):
    data.load("gsm9k", "/tmp", data_dir=cache)


def _corrupt_line(file, lineno, text):
  with open(file, encoding="utf-8") as f:
    lines = f.read().splitlines(keepends=True)
  lines[lineno - 1] = text + "\n"
  with open(file, "w", encoding="utf-8") as f:
    f.writelines(lines)


@pytest.mark.parametrize("line,message", [
    ('{"question": "How many?", "answer": ', r"line 3: invalid JSON \(Expecting value at column \d+\)"),
    ('{"question": "How many?"}', "line 3: missing field 'answer'"),
    ('{"question": "How many?", "answer": 12}', "line 3: field 'answer' must be a string, got 12"),
    ('["How many?", "12"]', "line 3: expected a JSON object, got list"),
])
def test_malformed_jsonl_names_file_line_and_field(tmp_path, cache, line, message):
  path = fixtures.write("gsm8k", tmp_path)
  train = os.path.join(path, "train.jsonl")
  _corrupt_line(train, 3, line)
  with pytest.raises(ValueError, match=f"^gsm8k: {train} {message}"):
    data.load("gsm8k", path, data_dir=cache)
  assert _builds(cache, "gsm8k") == []
  fixtures.write("gsm8k", tmp_path)  # Fixed: it builds now.
  assert len(data.load("gsm8k", path, data_dir=cache)["train"]) == 5


def test_malformed_json_files_name_file_and_field(tmp_path, cache):
  root = fixtures.write("math", tmp_path)
  file = os.path.join(root, "MATH", "test", "number_theory", "572.json")
  with open(file, "w", encoding="utf-8") as f:
    json.dump({"problem": "What is 1+1?", "level": "Level 1", "type": "Prealgebra"}, f)
  with pytest.raises(ValueError, match=f"^math: {file}: missing field 'solution'$"):
    data.load("math", root, data_dir=cache)
  with open(file, "w", encoding="utf-8") as f:
    f.write('{"problem": "What is 1+1?",')
  with pytest.raises(ValueError, match=f"^math: {file}: invalid JSON"):
    data.load("math", root, data_dir=cache)

  math500 = fixtures.write("math500", tmp_path)
  _corrupt_line(math500, 2, json.dumps({"problem": "p", "solution": "s", "answer": "a", "subject": "Algebra",
                                        "level": "3", "unique_id": "test/algebra/1.json"}))
  with pytest.raises(ValueError, match=f"^math500: {math500} line 2: field 'level' must be an integer, got \"3\""):
    data.load("math500", math500, data_dir=cache)

  sanitized = fixtures.write("mbpp_sanitized", tmp_path)
  with open(sanitized, encoding="utf-8") as f:
    items = json.load(f)
  items[4]["test_list"] = "assert f(1) == 1"
  with open(sanitized, "w", encoding="utf-8") as f:
    json.dump(items, f)
  with pytest.raises(ValueError, match=f"^mbpp_sanitized: {sanitized} item 4: field 'test_list' must be a list of"):
    data.load("mbpp_sanitized", sanitized, data_dir=cache)


def test_malformed_apps_files(tmp_path, cache):
  tree = fixtures.write("apps", tmp_path)
  solutions = os.path.join(tree, "test", "0002", "solutions.json")
  with open(solutions, "w", encoding="utf-8") as f:
    f.write('["print(1)", ')
  with pytest.raises(ValueError, match=f"^apps: {solutions}: invalid JSON"):
    data.load("apps", tree, data_dir=cache)
  os.remove(solutions)
  io_file = os.path.join(tree, "test", "0001", "input_output.json")
  with open(io_file, "w", encoding="utf-8") as f:
    json.dump({"fn_name": "powers_of_two", "inputs": [[0]]}, f)
  with pytest.raises(ValueError, match=f"^apps: {io_file}: missing field 'outputs'$"):
    data.load("apps", tree, data_dir=cache)
  os.remove(io_file)
  os.remove(os.path.join(tree, "test", "0002", "metadata.json"))
  with pytest.raises(ValueError, match=f"^apps: {tree}/test/0002/metadata.json not found"):
    data.load("apps", tree, data_dir=cache)

  jsonl = fixtures.write("apps", tmp_path, layout="jsonl")
  train = os.path.join(jsonl, "train.jsonl")
  with open(train, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  rows[1]["input_output"] = '{"fn_name": "maxProfit", "inputs": [[[7, 1'
  _write_jsonl(train, rows)
  with pytest.raises(ValueError, match=f"^apps: {train} line 2: field 'input_output' is not valid JSON"):
    data.load("apps", jsonl, data_dir=cache)


def test_tensorflow_is_never_imported(tmp_path):
  """With a (fake) TensorFlow importable, loading every data set must not import it; nor may `import rest_jax.data`
  import TensorFlow Datasets."""
  fake = tmp_path / "fake_site" / "tensorflow"
  fake.mkdir(parents=True)
  marker = tmp_path / "tensorflow_was_imported"
  (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('fake TensorFlow')\n")
  script = textwrap.dedent(f"""
      import sys
      import rest_jax.data as data
      from rest_jax.data import fixtures
      assert "tensorflow_datasets" not in sys.modules, "import rest_jax.data imported tensorflow_datasets"
      for name in data.names():
        data.load(name, fixtures.write(name, {str(tmp_path / "src")!r}), data_dir={str(tmp_path / "cache")!r})
      print("tf" if "tensorflow" in sys.modules else "no tf", "tensorflow_datasets" in sys.modules)
  """)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "fake_site"), str(_REPO)]), REST_JAX_PROGRESS="0")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ["no", "tf", "True"]
  assert not marker.exists()


def test_fixture_path_loads_the_projects_fixture(tmp_path):
  from rest_jax import data  # pylint: disable=g-import-not-at-top
  from rest_jax.data import fixtures  # pylint: disable=g-import-not-at-top

  via_scheme = data.load("gsm8k", "fixture:", data_dir=str(tmp_path / "cache"))
  direct = data.load("gsm8k", fixtures.write("gsm8k", tmp_path / "written"), data_dir=str(tmp_path / "cache2"))
  assert via_scheme == direct and via_scheme["test"]
  # Written once: a second load reuses the same files.
  assert data.load("gsm8k", "fixture:", data_dir=str(tmp_path / "cache")) == via_scheme
  assert sorted(p.name for p in (tmp_path / "cache" / "fixtures").iterdir()) == ["gsm8k"]
