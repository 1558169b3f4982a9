"""The notebooks in notebooks/ run top to bottom (tiny settings), and are committed without outputs.

Each notebook runs in a fresh python3 kernel (nbclient) in a temporary working directory, on the
session's prepared Fashion-MNIST data dir ($TFDS_DATA_DIR), with MMDIFF_NOTEBOOK_QUICK=1 (the
notebooks' smallest settings) and MMDIFF_REPO pointing at this checkout (so their install cell
skips the install).
"""

from __future__ import annotations

import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_quickstart.ipynb", "02_any_subset_conditioning.ipynb", "03_the_math.ipynb",
            "04_scaling_out.ipynb"]
CELL_TIMEOUT_S = 300  # compile time dominates on CPU; a whole notebook takes about a minute


def test_the_notebooks_are_all_there():
  assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_in_colab_and_installs_from_one_repository(path, monkeypatch):
  monkeypatch.syspath_prepend(str(ROOT / "notebooks"))
  import nbutils  # pylint: disable=g-import-not-at-top
  notebook = nbformat.read(path, as_version=4)
  assert notebook.cells[0].source.splitlines()[0] == nbutils.colab_badge(path.name), (
      f"{path.name}: run `python3 notebooks/nbutils.py` to write its Colab link")
  first_code = next(c for c in notebook.cells if c.cell_type == "code")
  assert first_code.source == nbutils.install_cell(), (
      f"{path.name}: run `python3 notebooks/nbutils.py` to write its install cell")
  assert f"github.com/{nbutils.REPOSITORY}.git" in first_code.source
  assert f"github/{nbutils.REPOSITORY}/blob/" in notebook.cells[0].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  for i, cell in enumerate(notebook.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them before committing"
      assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert "attachments" not in cell or not cell.attachments, f"{path.name} cell {i}: attachment"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, data_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  monkeypatch.setenv("MMDIFF_NOTEBOOK_QUICK", "1")
  monkeypatch.setenv("MMDIFF_REPO", str(ROOT))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  notebook = nbformat.read(path, as_version=4)
  client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  start = time.perf_counter()
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
  print(f"{path.name}: {time.perf_counter() - start:.1f} s")
  errors = [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if output.output_type == "error"]
  assert not errors
