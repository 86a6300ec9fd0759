"""The exercise notebooks: they run top to bottom with the blanks unfilled (every check prints "not implemented
yet" instead of crashing), and with the solutions put in the blanks every check passes and every later cell
works. Their blanks have the solutions' signatures.

notebooks/exercises/ is outside test_notebooks.py's glob (notebooks/[0-9][0-9]_*.ipynb), so it is run here.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest

from minilora.exercises import EXERCISES

HERE = Path(__file__).parent.parent / "notebooks" / "exercises"
NOTEBOOKS = sorted(HERE.glob("*.ipynb"))
SOLUTIONS = sorted((HERE / "solutions").glob("*.py"))
nbformat = pytest.importorskip("nbformat")


def code_cells(path):
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def defined(source) -> set[str]:
    return {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}


def is_blank(source) -> bool:
    return "raise NotImplementedError" in source


def solution_for(cell) -> Path:
    names = defined(cell)
    matches = [p for p in SOLUTIONS if names <= defined(p.read_text())]
    assert matches, f"no solution defines {sorted(names)}"
    return matches[0]


def test_the_exercise_notebooks_are_there_and_check_every_exercise():
    assert len(NOTEBOOKS) == 8, [p.name for p in NOTEBOOKS]
    checked = {m for p in NOTEBOOKS for cell in code_cells(p) for m in re.findall(r'print\(check\("(\w+)"', cell)}
    assert checked == set(EXERCISES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_blanks_have_the_solutions_signatures(path):
    blanks = [c for c in code_cells(path) if is_blank(c)]
    assert blanks, "a student notebook has something to fill in"
    for cell in blanks:
        mine = {n.name: [a.arg for a in n.args.args] for n in ast.parse(cell).body if isinstance(n, ast.FunctionDef)}
        theirs = {n.name: [a.arg for a in n.args.args] for n in ast.parse(solution_for(cell).read_text()).body
                  if isinstance(n, ast.FunctionDef)}
        for name, args in mine.items():
            assert theirs[name] == args, (path.name, name)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_runs_top_to_bottom_with_the_blanks_unfilled(path, tmp_path):
    nbclient = pytest.importorskip("nbclient")
    work = tmp_path / path.name
    shutil.copy(path, work)
    nb = nbformat.read(work, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on any error
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    n_checks = sum(len(re.findall(r'print\(check\("', c.source)) for c in nb.cells if c.cell_type == "code")
    assert printed.count("not implemented yet") == n_checks, printed
    assert "Traceback" not in printed


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_with_the_solutions_every_check_passes(path, tmp_path, monkeypatch):
    """The code cells, blanks replaced by the solution files, executed in order in one namespace."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for cell in code_cells(path):
            exec(compile(solution_for(cell).read_text() if is_blank(cell) else cell, path.name, "exec"), namespace)
    printed = out.getvalue()
    n_checks = sum(len(re.findall(r'print\(check\("', c)) for c in code_cells(path))
    assert len(re.findall(r"^\w+: passed, ", printed, flags=re.M)) == n_checks, printed
    assert "Fill in" not in printed and "not finished" not in printed, printed
