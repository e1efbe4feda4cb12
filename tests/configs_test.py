"""Loads every shipped configs/*.py in every mode its docstring lists and builds what the experiment builds from it."""

import ast
import importlib.util
import pathlib
import re
import shlex

import jax
import ml_collections
import pytest


from rest_jax import algorithms
from rest_jax import experiment
from rest_jax import main
from rest_jax import rewards
from rest_jax import tasks
from rest_jax import tokenizers
from rest_jax.model import sharding
from rest_jax.model.transformer import ModelConfig
from rest_jax.sampling import SamplerConfig, strategies
from rest_jax.training import TrainConfig, make_examples

_REPO = pathlib.Path(__file__).resolve().parents[1]
_CONFIG_FILES = sorted((_REPO / "configs").glob("*.py"))


def _docstring(path: pathlib.Path) -> str:
  return ast.get_docstring(ast.parse(path.read_text())) or ""


def _modes(path: pathlib.Path) -> list[str]:
  """The modes listed after "select a mode:" in the docstring, up to the end of that paragraph; else [""]."""
  match = re.search(r"select a mode:(.*?)(?:\n\s*\n|\Z)", _docstring(path), re.DOTALL)
  return re.findall(r'"([^"]*)"\s*\(', match[1]) if match else [""]


def _launch_commands(path: pathlib.Path) -> list[list[str]]:
  """The `python -m rest_jax.main ...` lines of the docstring, as argv (without the trailing comment)."""
  return [shlex.split(line.split("#")[0])[3:] for line in _docstring(path).splitlines()
          if line.strip().startswith("python -m rest_jax.main")]


def _load(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(f"configs_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _is_study(path: pathlib.Path) -> bool:
  """A study config (rest_jax/study.py) holds a `study` block around an experiment config."""
  return "study" in _load(path).get_config()


_CASES = [pytest.param(path, mode, id=f"{path.stem}:{mode}") for path in _CONFIG_FILES for mode in _modes(path)
          if not _is_study(path)]
_STUDY_CASES = [pytest.param(path, mode, id=f"{path.stem}:{mode}") for path in _CONFIG_FILES
                for mode in _modes(path) if _is_study(path)]


def test_the_shipped_configs_are_all_found():
  assert _REPO / "configs" / "default.py" in _CONFIG_FILES
  assert _modes(_REPO / "configs" / "default.py") == ["", "smoke", "rest", "scalar", "grpo", "grpo_smoke", "star",
                                                       "star_smoke", "adaptive", "base_small", "base_large"]


_DATA_PATH_FIELDS = ("path", "gsm8k_path", "math500_path")
_SHIPPED_BASE = str(_REPO / "rest_jax" / "assets" / "arithmetic_base")


def _external(config: ml_collections.ConfigDict) -> list[str]:
  """The data and checkpoint paths of a paper-scale mode that this machine lacks (no package ships them)."""
  paths = [config.task.kwargs[f] for f in _DATA_PATH_FIELDS if config.task.kwargs.get(f)]
  paths += [config.base.checkpoint] if config.base.checkpoint else []
  return [p for p in paths if p != "fixture:" and not pathlib.Path(p).exists()]


@pytest.mark.parametrize("path, mode", _CASES)
def test_config_builds_valid_objects(path, mode):
  config = _load(path).get_config(mode)
  assert isinstance(config, ml_collections.ConfigDict)
  if mode == "":  # `--config=file.py` calls get_config() with no argument.
    assert _load(path).get_config() == config

  TrainConfig(**config.train)
  external = _external(config)
  if external:
    # A paper-scale mode: real data sets and checkpoints at the user's paths. Its mesh must be one a slice provides,
    # and everything else is checked with the project's fixtures in place of the data and the shipped small model in
    # place of the checkpoint (the token-length checks below need the real tokenizer, so they are left to the run).
    assert all(config.mesh[axis] >= 1 for axis in ("data", "fsdp", "tensor")), config.mesh
    config = ml_collections.ConfigDict(config.to_dict())
    for field in _DATA_PATH_FIELDS:
      if config.task.kwargs.get(field) in external:
        config.task.kwargs[field] = "fixture:"
    if config.base.checkpoint in external:
      config.base.checkpoint = _SHIPPED_BASE
    config.base.dtype = "float32"
    config.eval.train_subset = config.eval.val_size = 1
    if "num_val" in config.task.kwargs:  # The fixtures have a handful of training problems; hold out one.
      config.task.kwargs.num_val = 1
  task = tasks.from_config(config.task)
  rewards.get(task.reward)
  for split in ("human", "train", "val", *config.eval.splits):
    assert task.split(split), split
  assert all(p.solution for p in task.split("human"))

  assert config.rest.algorithm in algorithms.names()
  assert config.rest.num_iterations >= 1 and config.rest.samples_per_problem >= 1 and config.rest.cap >= 1
  strategies.make(config.rest.temperature, config.rest.top_k, config.rest.top_p)
  strategies.make(config.eval.temperature, top_p=config.eval.top_p)
  assert set(config.eval.sampled_splits) <= set(config.eval.splits)
  assert max(config.eval.ks) <= config.eval.num_samples  # pass@k and maj@k need k <= n.
  assert config.eval.train_subset <= len(task.split("train"))
  assert config.eval.val_size <= len(task.split("val"))

  # The base model loads (a rest_jax checkpoint, a Hugging Face directory or a GGUF file) with its tokenizer.
  model_config, _, tokenizer, _ = experiment._load_base(config, sharding.make_mesh(devices=jax.devices()[:1]))
  assert tokenizer.vocab_size <= model_config.vocab_size
  if config.base.get("chat", False):
    task, tokenizer = experiment._chat_formatted(task, tokenizer)
  if not config.base.checkpoint:  # The shipped base is the model `pretrain` describes.
    assert model_config == ModelConfig(vocab_size=tokenizer.vocab_size, **config.pretrain.model)
    TrainConfig(**{**config.train, **config.pretrain.train})

  if external:
    return
  # Every prompt fits a prompt bucket, and every SFT example fits a training row, or the run fails midway.
  SamplerConfig(batch_rows=config.sampler.batch_rows, prompt_buckets=tuple(config.sampler.prompt_buckets))
  prefix = len(tokenizers.prefix_ids(tokenizer))
  longest_prompt = max(prefix + len(tokenizer.encode(p.prompt)) for split in task.splits for p in task.split(split))
  assert longest_prompt <= max(config.sampler.prompt_buckets)
  human = task.split("human")
  examples = make_examples(tokenizer, [p.prompt for p in human], [p.solution for p in human])
  assert max(len(e) for e in examples) <= config.train.seq_len


def test_the_study_configs_are_found():
  assert [p.values for p in _STUDY_CASES] == [(_REPO / "configs" / "study_default.py", ""),
                                              (_REPO / "configs" / "study_default.py", "smoke")]


@pytest.mark.parametrize("path, mode", _STUDY_CASES)
def test_study_config_validates_every_run(path, mode):
  """The whole study checks (every run's experiment config too), and each run's experiment builds its task."""
  from rest_jax import study  # pylint: disable=g-import-not-at-top

  config = _load(path).get_config(mode)
  if mode == "":
    assert _load(path).get_config() == config
  plan = study.plan(config)
  slots = plan.slots
  assert len(slots) == len(plan.arms) * len(plan.seeds) + len(plan.size_arms) * len(plan.seeds) * len(plan.sizes)
  assert {(s.arm, s.seed) for s in slots if s.size is None} == {(a.name, s) for a in plan.arms for s in plan.seeds}
  for run in plan.runs:
    task = tasks.from_config(run.config.task)
    assert set(run.config.eval.splits) <= set(task.splits)
    assert run.config.task.kwargs.seed == config.study.experiment.task.kwargs.seed  # The same problems in every run.


@pytest.mark.parametrize("path", _CONFIG_FILES, ids=lambda p: p.stem)
def test_unknown_mode_is_rejected(path):
  with pytest.raises(ValueError, match=rf"^configs/{path.name}: unknown mode 'no-such-mode'; use one of '' \("):
    _load(path).get_config("no-such-mode")




@pytest.mark.parametrize("path", _CONFIG_FILES, ids=lambda p: p.stem)
def test_docstring_launch_commands_parse(path, parse_flags):
  commands = _launch_commands(path)
  assert commands, f"{path.name}: the docstring has no `python -m rest_jax.main` launch command"
  for argv in commands:
    parse_flags(*argv)
    config_flag = next(a for a in argv if a.startswith("--config="))
    file, _, mode = config_flag.removeprefix("--config=").partition(":")
    assert (_REPO / file).resolve() == path.resolve(), argv
    assert mode in _modes(path), argv
    expected = _load(path).get_config(mode)
    for override in (a for a in argv if a.startswith("--config.")):
      name, value = override.removeprefix("--config.").split("=", 1)
      node = expected
      *parents, leaf = name.split(".")
      for part in parents:
        node = node[part]
      node[leaf] = type(node[leaf])(ast.literal_eval(value))
    assert main._CONFIG.value.to_dict() == expected.to_dict(), argv
