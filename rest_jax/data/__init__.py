"""Data sets from local copies of their upstream files, as TFDS ArrayRecord builds read without TensorFlow.

  records = rest_jax.data.load("gsm8k", "/data/grade-school-math/grade_school_math/data")
  records["train"][0]  # {"id": "train/00000", "question": "Natalia sold clips to ...", "answer": "... #### 72"}

`names()` lists the data sets; `rest_jax.data.readers` documents the path each takes; `rest_jax.data.fixtures`
writes small copies in the upstream formats for tests and smoke runs. TensorFlow Datasets is imported on the first
`load`, not with this package.
"""

import os
from typing import Any

from rest_jax.data.readers import names


def load(name: str, path: str | os.PathLike[str], *, data_dir: str | None = None) -> dict[str, list[dict[str, Any]]]:
  """Loads data set `name` from its upstream files under `path`.

  The first load of given files builds them into ArrayRecord files cached under
  `<data_dir>/<name>/<fingerprint of the files>/`; later loads of the same files read that build, and changed files
  get a new build. The files under `path` are only read.

  Args:
    name: One of `names()`: "apps", "gsm8k", "math", "math500", "mbpp", "mbpp_sanitized".
    path: Where the upstream files are (see `rest_jax.data.readers`), or "fixture:" for the project's small fixture
      of the data set in its upstream format (`rest_jax.data.fixtures`; for smoke runs of real-data configs).
    data_dir: Cache root; defaults to `$REST_JAX_DATA_DIR`, else `~/.cache/rest_jax/tfds`.

  Returns:
    Split name -> records: dicts with the upstream field names and values (str, int, list of str; fields upstream
    stores as JSON strings stay strings) plus a stable "id" such as "train/00042" or "test/algebra/1234". Records
    are sorted by id, digit runs by value.

  Raises:
    ValueError: An unknown name, a missing file (the message says what to put where) or a malformed one (the message
      names the file, the line for JSONL, and the field).
  """
  from rest_jax.data import builders  # pylint: disable=g-import-not-at-top  (imports TensorFlow Datasets: slow)

  return builders.load(name, os.fspath(path), data_dir=data_dir)


__all__ = ["load", "names"]
