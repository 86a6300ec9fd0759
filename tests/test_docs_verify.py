"""docs/verify.md: its Python code runs (in order, in one namespace, in a temporary folder) when torch is
installed, the outputs it shows are what the code prints, and its relative links resolve."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOC = Path(__file__).parent.parent / "docs" / "verify.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_code_blocks_run(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="torch is not installed (the 'parity' extra)")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for code in blocks("python"):
            exec(compile(code, str(DOC), "exec"), namespace)
    printed = out.getvalue()
    assert (tmp_path / "golden" / "index.json").is_file()
    shown = blocks("text")
    assert printed.startswith(shown[0].splitlines()[0])  # "check_lora_linear: passed, 19 of 19 checks"
    masked = mask_errors(printed)
    for line in shown[0].splitlines() + shown[1].splitlines():
        if line.strip() != "...":
            assert mask_errors(line) in masked, line


def mask_errors(text: str) -> str:
    """The report with its measured errors blanked: rounding differs between BLAS builds, the rest must not."""
    return re.sub(r"max abs err \S+, rel \S+", "max abs err *, rel *", text)


def test_python_blocks_are_there():
    assert len(blocks("python")) >= 6
    assert "minilora golden golden/" in blocks("bash")[0]


def test_relative_links_resolve():
    for target in re.findall(r"\]\((\.\.?/[^)#]+)", DOC.read_text()):
        assert (DOC.parent / target).exists(), target
