"""TFDS builders over local upstream files, written as ArrayRecord and read back without TensorFlow.

`load(name, path)` finds the upstream files (`readers.locate`), fingerprints them, and reads the ArrayRecord build
cached under `<data_dir>/<name>/<fingerprint>/`, building it first if there is none. Builds are published atomically:
a build is written into a fresh `.tmp-*` folder next to its final place and renamed there when complete, under a
per-fingerprint file lock, so a concurrent load waits for it (or, without locking, one of two finished builds wins)
and an interrupted one leaves only a `.tmp-*` folder that the next build of that fingerprint removes. Source files
are only ever read. Builds of other fingerprints (older versions of the files) stay until deleted by hand.

The fingerprint covers the data set name, the builder version, the file names relative to the source folder and
their contents when all files together are small (at most `CONTENT_HASH_MAX_BYTES`), else each file's absolute path,
size and modification time.
"""

from collections.abc import Iterator
import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from rest_jax.data import readers

CONTENT_HASH_MAX_BYTES = 64 << 20
_FINGERPRINT_FORMAT = 1  # Bump when the fingerprint's recipe changes.


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes the records of a `readers.Source` as they are; the features follow the source's schema."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Upstream fields plus a stable id."}
  HOMEPAGE = ""

  def __init__(self, *, source: readers.Source, **kwargs: Any):
    if source.name != self.name:
      raise ValueError(f"builder {self.name!r} got the files of {source.name!r}")
    self._source = source
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    features = tfds.features.FeaturesDict({field: _feature(kind) for field, kind in self._source.schema.items()})
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features, homepage=self.HOMEPAGE,
                                 disable_shuffling=True)

  def _log_download_bytes(self) -> None:  # tfds prints the temporary build folder: log the cache entry instead.
    logging.info("Building %s from %s", self.name, self._source.root)

  def _log_download_done(self) -> None:
    pass

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
    del dl_manager  # Everything is local.
    splits = {}
    for split, read in self._source.readers.items():
      records = read()
      first = next(records, None)
      if first is not None:  # tfds cannot write an empty split; `read` returns [] for it.
        splits[split] = self._generate_examples(itertools.chain([first], records))
    if not splits:
      raise ValueError(f"{self.name}: no records in {', '.join(self._source.files)}")
    return splits

  def _generate_examples(self, records: Iterator[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for record in records:
      yield record["id"], record


class Gsm8k(_Builder, skip_registration=True):
  """GSM8K grade-school math word problems; answers hold <<a*b=c>> calculator notes and end with "#### <n>"."""

  name = "gsm8k"
  HOMEPAGE = "https://github.com/openai/grade-school-math"


class Math(_Builder, skip_registration=True):
  """Hendrycks MATH competition problems with worked solutions ending in \\boxed{...}; ids "test/algebra/1234"."""

  name = "math"
  HOMEPAGE = "https://github.com/hendrycks/math"


class Math500(_Builder, skip_registration=True):
  """MATH-500: the 500 MATH test problems of "Let's Verify Step by Step", with their final answers."""

  name = "math500"
  HOMEPAGE = "https://huggingface.co/datasets/HuggingFaceH4/MATH-500"


class Mbpp(_Builder, skip_registration=True):
  """MBPP (mbpp.jsonl): prompt 1-10, test 11-510, validation 511-600, train 601-974 by task_id."""

  name = "mbpp"
  HOMEPAGE = "https://github.com/google-research/google-research/tree/master/mbpp"


class MbppSanitized(_Builder, skip_registration=True):
  """MBPP's hand-verified subset (sanitized-mbpp.json), split by task_id as MBPP is."""

  name = "mbpp_sanitized"
  HOMEPAGE = "https://github.com/google-research/google-research/tree/master/mbpp"


class Apps(_Builder, skip_registration=True):
  """APPS coding problems in the codeparrot/apps schema; solutions and input_output are JSON strings ("" if absent)."""

  name = "apps"
  HOMEPAGE = "https://github.com/hendrycks/apps"


BUILDERS: dict[str, type[_Builder]] = {cls.name: cls for cls in (Gsm8k, Math, Math500, Mbpp, MbppSanitized, Apps)}


def default_data_dir() -> str:
  """`$REST_JAX_DATA_DIR`, else `~/.cache/rest_jax/tfds`."""
  return os.path.expanduser(os.environ.get("REST_JAX_DATA_DIR") or os.path.join("~", ".cache", "rest_jax", "tfds"))


def fingerprint(source: readers.Source) -> str:
  """Key of the build of `source`'s files (see the module docstring); 20 hex digits."""
  digest = hashlib.blake2b(digest_size=10)
  stats = [os.stat(file) for file in source.files]
  by_content = sum(stat.st_size for stat in stats) <= CONTENT_HASH_MAX_BYTES
  header = [_FINGERPRINT_FORMAT, source.name, str(BUILDERS[source.name].VERSION), by_content]
  digest.update(json.dumps(header).encode())
  for file, stat in zip(source.files, stats, strict=True):
    if by_content:
      digest.update(json.dumps([os.path.relpath(file, source.root), stat.st_size]).encode())
      with open(file, "rb") as f:
        digest.update(f.read())
    else:
      digest.update(json.dumps([file, stat.st_size, stat.st_mtime_ns]).encode())
  return digest.hexdigest()


def build(source: readers.Source, data_dir: str) -> str:
  """Builds `source` under `data_dir` unless its build is there already.

  Args:
    source: Located upstream files.
    data_dir: Cache root.

  Returns:
    The tfds data dir of the complete build: `<data_dir>/<name>/<fingerprint>`.

  Raises:
    ValueError: A malformed source file, or the files changed while they were read.
  """
  key = fingerprint(source)
  parent = os.path.join(data_dir, source.name)
  final = os.path.join(parent, key)
  if os.path.isdir(final):
    logging.info("Reusing the %s build %s of %s", source.name, final, source.root)
    return final
  os.makedirs(parent, exist_ok=True)
  with _locked(os.path.join(parent, f".{key}.lock")):
    if os.path.isdir(final):  # Built by someone else while we waited.
      return final
    for stale in os.listdir(parent):  # Left by interrupted builds: nobody else builds this key while we hold its lock.
      if stale.startswith(f".tmp-{key}-"):
        shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=parent)
    try:
      builder = BUILDERS[source.name](source=source, data_dir=tmp, file_format="array_record")
      with _progress_bars(_show_progress()):
        builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"),
                                     download_config=tfds.download.DownloadConfig(try_download_gcs=False))
      shutil.rmtree(os.path.join(tmp, "downloads"), ignore_errors=True)  # Empty: nothing is downloaded.
      if fingerprint(source) != key:
        raise ValueError(f"{source.name}: files under {source.root} changed while they were being read; load again")
      with open(os.path.join(tmp, "source.json"), "w", encoding="utf-8") as f:
        json.dump({"name": source.name, "root": source.root, "files": len(source.files), "built": time.time()}, f)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    try:
      os.rename(tmp, final)
    except OSError:
      shutil.rmtree(tmp, ignore_errors=True)
      if not os.path.isdir(final):
        raise
      # Else an identical build won an unlocked race: use it.
  return final


def read(source: readers.Source, build_dir: str) -> dict[str, list[dict[str, Any]]]:
  """Reads a complete build of `source` back: split -> records as plain Python values, sorted by id."""
  builder = BUILDERS[source.name](source=source, data_dir=build_dir)
  decoders = {field: _decoder(kind) for field, kind in source.schema.items()}
  splits = {split: [] for split in source.readers}
  for split, data_source in builder.as_data_source().items():
    rows = data_source.__getitems__(range(len(data_source))) if len(data_source) else []
    records = [{field: decoders[field](row[field]) for field in decoders} for row in rows]
    splits[split] = sorted(records, key=lambda record: _natural_key(record["id"]))
  return {split: splits[split] for split in source.readers}


FIXTURE_PATH = "fixture:"


def load(name: str, path: str, *, data_dir: str | None = None) -> dict[str, list[dict[str, Any]]]:
  """See `rest_jax.data.load`."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
  if path == FIXTURE_PATH:
    path = _fixture_source(name, data_dir)
  source = readers.locate(name, path)
  return read(source, build(source, data_dir))


def _fixture_source(name: str, data_dir: str) -> str:
  """The project's small fixture of `name` (for smoke runs of real-data configs), written once under `data_dir`."""
  from rest_jax.data import fixtures  # pylint: disable=g-import-not-at-top  (only smoke runs need it)

  root = os.path.join(data_dir, "fixtures", name)
  done = os.path.join(root, ".path")
  if not os.path.exists(done):
    os.makedirs(os.path.dirname(root), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(root))
    relative = os.path.relpath(fixtures.write(name, staging), staging)
    with open(os.path.join(staging, ".path"), "w") as f:
      f.write(relative)
    try:
      os.rename(staging, root)
    except OSError:  # Another process wrote it first: theirs is identical.
      shutil.rmtree(staging, ignore_errors=True)
  with open(done) as f:
    return os.path.join(root, f.read())


def _feature(kind: Any) -> tfds.features.FeatureConnector:
  if kind == list[str]:
    return tfds.features.Sequence(tfds.features.Text())
  return {str: tfds.features.Text(), int: tfds.features.Scalar(np.int64)}[kind]


def _decoder(kind: Any):
  if kind == list[str]:
    return lambda values: [value.decode("utf-8") for value in values]
  return {str: lambda value: value.decode("utf-8"), int: int}[kind]


def _natural_key(text: str) -> tuple[Any, ...]:
  """Sort key that orders digit runs by value: "test/algebra/2" before "test/algebra/10"."""
  return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _show_progress() -> bool:
  """Progress bars as `rest_jax.reporting.progress` shows them: REST_JAX_PROGRESS=1/0 forces, else on a TTY only."""
  setting = os.environ.get("REST_JAX_PROGRESS", "")
  return setting == "1" or (not setting and getattr(sys.stderr, "isatty", lambda: False)())


@contextlib.contextmanager
def _progress_bars(enable: bool) -> Iterator[None]:
  """tfds's progress bars on or off for this block; tfds keeps the setting in a module global, restored after."""
  previous = getattr(tfds.core.utils.tqdm_utils, "_active", True)
  tfds.display_progress_bar(enable)
  try:
    yield
  finally:
    tfds.display_progress_bar(previous)


@contextlib.contextmanager
def _locked(lock_file: str) -> Iterator[None]:
  """Exclusive lock on `lock_file` for this block (a no-op where fcntl is missing: then renames settle races)."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield
    return
  with open(lock_file, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
