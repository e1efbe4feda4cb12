"""rest_jax.config_check: every shipped config passes; every rule refuses a bad value in one line naming the field."""

import re

import ml_collections
import pytest

from rest_jax import algorithms
from rest_jax import config_check
from rest_jax import config_files
from rest_jax import errors
from rest_jax.tasks import registry as task_registry
from rest_jax.training import loss as loss_lib
from tests import configs_test

_DEFAULT = configs_test._REPO / "configs" / "default.py"


def _smoke(**overrides) -> ml_collections.ConfigDict:
  config = config_files.load(_DEFAULT, "smoke")
  for path, value in overrides.items():
    node = config
    *parents, leaf = path.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


def _fails(config, pattern: str) -> str:
  with pytest.raises(errors.UsageError, match=pattern) as error:
    config_check.validate(config)
  assert "\n" not in str(error.value)
  return str(error.value)


@pytest.mark.parametrize("path, mode", configs_test._CASES)
def test_every_shipped_config_and_mode_validates(path, mode):
  config_check.validate(config_files.load(path, mode or None))


def _bad_values(rule: config_check.Rule) -> list:
  """Values that break `rule`: a wrong type, and where it has one, a value beyond its range or outside its choices;
  for a rule over a tuple, each such element in a tuple, a bare element, and () where it must not be empty."""
  items = [1 if str in rule.types or bool in rule.types else "x"]
  if rule.low is not None:
    items.append(rule.low - 1)
  if rule.high is not None:
    items.append(rule.high + 1)
  if rule.choices is not None:
    items.append("no_such_choice")
  if rule.also is not None:
    items.append(0)
  if not rule.each:
    return items
  return [(item,) for item in items] + [items[0]] + ([()] if rule.nonempty else [])


_RULE_CASES = [pytest.param(field, value, id=f"{field}={value!r}")
               for field, rule in config_check.RULES.items() for value in _bad_values(rule)]


@pytest.mark.parametrize("field, value", _RULE_CASES)
def test_every_rule_refuses_a_bad_value(field, value):
  config = _smoke()
  *parents, leaf = field.split(".")
  node = config
  for name in parents:
    node = node[name]
  with node.ignore_type():
    node[leaf] = value
  _fails(config, rf"^config {re.escape(field)}=")


@pytest.mark.parametrize("overrides, message", [
    ({"rest.cap": -1}, r"^config rest\.cap=-1: must be >= 1$"),
    ({"rest.top_p": 0.0}, r"^config rest\.top_p=0\.0: must be in \(0, 1\]$"),
    ({"train.b2": 1.0}, r"^config train\.b2=1\.0: must be in \[0, 1\)$"),
    ({"train.learning_rate": float("nan")}, r"^config train\.learning_rate=nan: must be finite$"),
    ({"train.loss": "weighted_nl"}, r"^config train\.loss='weighted_nl': must be one of 'weighted_nll' \(did you "
                                    r"mean 'weighted_nll'\?\)$"),
    ({"task.name": "arithmetc"}, r"must be one of .*'arithmetic'.* \(did you mean 'arithmetic'\?\)$"),
    ({"task.kwargs.reward": "arithmetic_step"}, r"^config task\.kwargs\.reward='arithmetic_step': must be one of "
                                                r".*\(did you mean 'arithmetic_steps'\?\)$"),
    ({"eval.ks": (2, 8)}, r"^config eval\.ks=\(2, 8\): pass@k and maj@k need k <= eval\.num_samples=4$"),
    ({"eval.sampled_splits": ("val",)}, r"^config eval\.sampled_splits=\('val',\): names \['val'\], not in "),
    ({"mesh.fsdp": -1}, r"^config mesh: at most one of mesh\.data, mesh\.fsdp, mesh\.tensor may be -1$"),
    ({"rest.num_iterations": True}, r"^config rest\.num_iterations=True: must be int, not bool$"),
    ({"sampler.weight_quant": "int3"}, r"^config sampler\.weight_quant='int3': must be one of 'none', 'int8', "
                                       r"'int4' \(did you mean 'int8'\?\)$"),
])
def test_messages_name_the_field_the_value_and_the_fix(overrides, message):
  _fails(_smoke(**overrides), message)


def test_a_mistyped_field_in_a_config_file_gets_the_nearest_name():
  config = _smoke()
  config.rest.capp = 3
  _fails(config, r"^config rest\.capp: no such field \(did you mean 'rest\.cap'\?\)$")


def test_a_missing_field_is_named():
  config = _smoke()
  del config.eval["val_size"]
  _fails(config, r"^config eval\.val_size: missing")


def test_a_task_argument_the_factory_does_not_take_is_named():
  config = _smoke()
  config.task.kwargs.num_trian = 3
  _fails(config, r"^config task\.kwargs\.num_trian: task 'arithmetic' takes no argument 'num_trian' \(did you mean "
                 r"'num_train'\?\)$")


def test_a_bad_transfer_task_is_named():
  config = _smoke()
  config.task.transfer = ml_collections.ConfigDict({"other": {"name": "nope", "kwargs": {}}})
  _fails(config, r"^config task\.transfer\.other\.name='nope': must be one of ")


def test_new_registrations_are_accepted_with_no_edit(monkeypatch):
  monkeypatch.setitem(loss_lib.LOSSES, "my_loss", loss_lib.weighted_nll)
  monkeypatch.setitem(algorithms._REGISTRY, "my_algorithm", algorithms.get("rest_em"))
  monkeypatch.setitem(task_registry._REGISTRY, "my_task", lambda size=1: None)
  config = _smoke(**{"train.loss": "my_loss", "rest.algorithm": "my_algorithm", "task.name": "my_task"})
  config.task.kwargs = ml_collections.ConfigDict({"size": 3})
  config_check.validate(config)
