"""Executes colabs/*.ipynb with a real kernel, as a reader would from the colabs/ folder."""

import ast
import importlib.util
import pathlib
import re

import nbclient
import nbformat
import pytest

from rest_jax import checkpoints
from rest_jax import selection

_REPO = pathlib.Path(__file__).resolve().parents[1]
_COLABS = _REPO / "colabs"
_CELL_TIMEOUT_S = 600  # The M-step cell compiles and trains; the machine may be shared.


def _smoke_config():
  spec = importlib.util.spec_from_file_location("default_config", _REPO / "configs" / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("smoke")


def _text(outputs) -> str:
  parts = []
  for output in outputs:
    if output.output_type == "stream":
      parts.append(output.text)
    elif output.output_type in ("execute_result", "display_data"):
      parts.append(output.data.get("text/plain", ""))
  return "".join(parts)


def _first_code_cell() -> nbformat.NotebookNode:
  """The notebook's first code cell (the one that locates the repository) alone."""
  notebook = nbformat.read(_COLABS / "quickstart.ipynb", as_version=4)
  notebook.cells = [next(cell for cell in notebook.cells if cell.cell_type == "code")]
  return notebook


@pytest.mark.parametrize("path", sorted(_COLABS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_saved_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert (cell.outputs, cell.execution_count) == ([], None), cell.source[:80]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
  """The executed notebook and the temporary directory its kernel used (the notebook's workdir goes there)."""
  notebook = nbformat.read(_COLABS / "quickstart.ipynb", as_version=4)
  tmp = tmp_path_factory.mktemp("kernel_tmp")
  # cwd colabs/: the notebook must find the repository root on its own.
  client = nbclient.NotebookClient(notebook, timeout=_CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(_COLABS)}})
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("TMPDIR", str(tmp))  # The kernel inherits it.
    client.execute()  # Raises CellExecutionError, with the cell and its traceback, if a cell fails.
  return notebook, tmp


def test_quickstart_runs_one_iteration_and_reports_pass_at_1(quickstart):
  notebook, tmp = quickstart
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert all(o.output_type != "error" for cell in code for o in cell.outputs)
  text = "\n".join(_text(cell.outputs) for cell in code)

  assert f"repository root: {_REPO}" in text
  match = re.search(r"test pass@1: (\{.*\})", text)
  assert match, text[-2000:]
  pass_at_1 = ast.literal_eval(match[1])
  assert set(pass_at_1) == {"base", "ReST-EM iteration 1"}
  assert all(0.0 <= v <= 1.0 for v in pass_at_1.values())

  stats = ast.literal_eval(re.search(r"(\{'generated'.*\})", text)[1])
  smoke = _smoke_config()
  assert stats["generated"] == smoke.task.kwargs.num_train * smoke.rest.samples_per_problem
  assert 0 < stats["kept"] <= stats["rewarded"]
  shown = re.findall(r"--- (\S+), reward (\S+)", text)
  assert len(shown) == min(3, stats["kept"]) and all(float(reward) > 0 for _, reward in shown)
  plots = [o for cell in code for o in cell.outputs if o.output_type == "display_data" and "image/png" in o.data]
  assert len(plots) == 1
  # The rewards section: equivalent math answers pass, a wrong one fails; the sandboxed program that is right passes,
  # the wrong one and the always-equal object fail.
  assert "[1.0, 1.0, 0.0]\n[1.0, 0.0, 0.0]" in _text(code[-1].outputs)

  # The stages left their artifacts in the notebook's workdir, where a rerun of the cells would reuse them.
  workdir = pathlib.Path(re.search(r"workdir: (\S+)", text)[1])
  assert workdir.parent == tmp
  kept = [s for s in selection.read_jsonl(workdir / "samples" / "rest_em" / "iteration_1.jsonl.gz") if s.kept]
  assert len(kept) == stats["kept"]
  assert checkpoints.IterationCheckpoints(workdir / "checkpoints").load_metadata("rest_em", 1)["examples"] == len(kept)


@pytest.mark.parametrize("where", ["root", "subfolder"])
def test_quickstart_finds_the_repository_from_anywhere_inside_it(where):
  cwd = _REPO if where == "root" else _REPO / "rest_jax" / "assets"
  notebook = _first_code_cell()
  nbclient.NotebookClient(notebook, timeout=60, kernel_name="python3",
                          resources={"metadata": {"path": str(cwd)}}).execute()
  assert f"repository root: {_REPO}" in _text(notebook.cells[0].outputs)


def test_quickstart_outside_a_checkout_without_a_repository_url_says_what_to_set(tmp_path, monkeypatch):
  monkeypatch.delenv("REST_JAX_REPO", raising=False)
  notebook = _first_code_cell()
  client = nbclient.NotebookClient(notebook, timeout=60, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  with pytest.raises(nbclient.exceptions.CellExecutionError, match="no rest_jax checkout in .* set REST_JAX_REPO"):
    client.execute()


def test_quickstart_outside_a_checkout_clones_and_installs_rest_jax(tmp_path, monkeypatch):
  """As in Colab: no checkout around the notebook, so the first cell clones REST_JAX_REPO and pip-installs it.

  The clone comes from this checkout's git repository and pip installs into a scratch target with no index and no
  dependencies, so nothing is downloaded and the environment running the tests is left as it was.
  """
  clone, target = tmp_path / "clone", tmp_path / "site"
  for name, value in {"REST_JAX_REPO": str(_REPO), "REST_JAX_CLONE_DIR": str(clone), "PIP_TARGET": str(target),
                      "PIP_NO_DEPS": "1", "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0"}.items():
    monkeypatch.setenv(name, value)
  (tmp_path / "colab").mkdir()
  notebook = _first_code_cell()
  nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path / "colab")}}).execute()
  assert f"repository root: {clone}" in _text(notebook.cells[0].outputs)
  assert (clone / "configs" / "default.py").is_file()
  installed = target / "rest_jax"
  assert (installed / "__init__.py").is_file() and (installed / "assets" / "arithmetic_sp.model").is_file()
