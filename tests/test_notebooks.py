"""Every teaching notebook runs top to bottom: its asserted claims are tests.

The notebooks are committed with their outputs (so they read well on GitHub, in full mode); here they are
re-executed from scratch in a fresh kernel, in a temporary copy and in reduced mode, so the committed files are
never rewritten by a test run.
"""

import shutil
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_nine_notebooks():
    assert len(NOTEBOOKS) == 9, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    # The reduced mode of every experiment (minilora.experiments): the same code as the committed full runs, on
    # budgets that keep all nine notebooks to a few minutes. The kernel inherits the environment.
    monkeypatch.setenv("MINILORA_MODE", "reduced")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    work = tmp_path / path.name
    shutil.copy(path, work)
    nb = nbformat.read(work, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "import minilora" in source or "from minilora" in source, "a notebook imports from the package"
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
