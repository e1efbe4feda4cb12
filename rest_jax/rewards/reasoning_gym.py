"""Reward "reasoning_gym": a reasoning-gym data set's own `score_answer` on the answer a completion gives.

The completion states its answer as reasoning-gym's prompts ask, between <answer> and </answer> (the last such pair
counts). Fields, per problem:

  dataset  the reasoning-gym data set name, e.g. "chain_sum";
  config   `dataset_config`'s JSON string: the data set's config, with its seed and size;
  index    the problem's index in that data set.

The reward rebuilds the data set from (dataset, config) and regenerates entry `index`, so `score_answer` sees the
entry exactly as generated (metadata with tuples and the like does not survive JSON). Both are cached. An `answer`
field, when present, must equal the regenerated entry's answer: a mismatch means the data set did not regenerate
the problem that was asked, and raises rather than grading against the wrong entry. Scores are the data set's: 1.0
for a correct answer, partial credit in [0, 1) where the data set gives it, 0.0 for no answer.
"""

from collections.abc import Mapping, Sequence
import copy
import functools
import json
from typing import Any

from rest_jax.rewards import registry


def names() -> list[str]:
  """The data sets reasoning-gym can build, sorted ("composite" needs other data sets' configs and is left out)."""
  from reasoning_gym import factory  # pylint: disable=g-import-not-at-top  (importing reasoning-gym takes ~1.6 s)

  return sorted(name for name in factory.DATASETS if name != "composite")


def dataset_config(name: str, config: Mapping[str, Any] | None, *, seed: int, size: int) -> str:
  """The canonical JSON string of data set `name`'s config: `config` plus `seed` and `size`.

  Raises:
    ValueError: An unknown data set, a config that sets seed or size itself, or one that is not JSON.
  """
  if name not in names():
    raise ValueError(f"unknown reasoning-gym data set {name!r}; known data sets: {', '.join(names())}")
  config = dict(config or {})
  for key in ("seed", "size"):
    if key in config:
      raise ValueError(f"reasoning_gym: config must not set {key!r}; the task sets it per split")
  try:
    return json.dumps({**config, "seed": seed, "size": size}, sort_keys=True)
  except TypeError as e:
    raise ValueError(f"reasoning_gym: config of {name!r} must hold JSON values only: {e}") from None


@functools.lru_cache(maxsize=64)
def build_dataset(name: str, config: str) -> Any:
  """Data set `name` built from its config's JSON string (see `dataset_config`)."""
  if name not in names():
    raise ValueError(f"unknown reasoning-gym data set {name!r}; known data sets: {', '.join(names())}")
  try:
    import reasoning_gym  # pylint: disable=g-import-not-at-top  (slow; only reasoning-gym tasks need it)

    return reasoning_gym.create_dataset(name, **json.loads(config))
  except (TypeError, AssertionError, ValueError) as e:
    raise ValueError(f"reasoning_gym: bad config for {name!r} ({config}): {e!r}") from None


@functools.lru_cache(maxsize=1 << 16)
def _cached_entry(name: str, config: str, index: int) -> dict[str, Any]:
  return build_dataset(name, config)[index]


def entry(name: str, config: str, index: int) -> dict[str, Any]:
  """Entry `index` of the data set, a copy that the caller may change."""
  return copy.deepcopy(_cached_entry(name, config, int(index)))


def extract_answer(completion: str) -> str | None:
  """The stripped text between the last <answer> and </answer>; None if there is none or it is empty."""
  from reasoning_gym import utils  # pylint: disable=g-import-not-at-top

  answer = utils.extract_answer(completion)
  return answer or None


def answer_text(answer: Any) -> str:
  """An entry's gold answer as the `answer` field holds it: "" when the data set has none."""
  return "" if answer is None else str(answer)


def score(name: str, config: str, index: int, completion: str) -> float:
  """The data set's score of the answer in `completion`; 0.0 when its scorer fails on that answer."""
  ds = build_dataset(name, config)
  try:
    return float(ds.score_answer(extract_answer(completion), entry(name, config, index)))
  except Exception:  # pylint: disable=broad-except  (scorers may raise on malformed model output: that scores 0)
    return 0.0


@registry.register("reasoning_gym")
def reasoning_gym_reward(prompts: Sequence[str], completions: Sequence[str], *, dataset: Sequence[str],
                         config: Sequence[str], index: Sequence[int], answer: Sequence[str] | None = None,
                         **unused_fields: Sequence[Any]) -> list[float]:
  """Scores each completion with its data set's `score_answer`; see the module docstring for the fields."""
  del prompts, unused_fields
  if answer is not None:
    for name, cfg, i, expected in zip(dataset, config, index, answer):
      actual = answer_text(entry(name, cfg, i)["answer"])
      if actual != expected:
        raise ValueError(f"reasoning_gym: {name} entry {i} ({cfg}) regenerated with answer {actual!r}, but the "
                         f"problem's answer is {expected!r}; the data set's generation is not deterministic")
  return [score(name, cfg, i, c) for c, name, cfg, i in zip(completions, dataset, config, index)]
