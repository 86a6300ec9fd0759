"""docs/: every ```python block runs, every relative link and #anchor resolves, and docs/api.md is what the
package's public names and signatures give now.

docs/verify.md's blocks need torch and run in tests/test_docs_verify.py; its links are checked here too.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import re
from pathlib import Path

import pytest

from minilora import apidoc

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS.glob("*.md"))
RUN_ELSEWHERE = {"verify.md"}  # tests/test_docs_verify.py runs its blocks (they need torch)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
# Pages other branches are writing: a link to one passes while it is absent, and is checked once it exists.
PENDING: dict = {}  # docs pages linked before they exist (none now): name -> why
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def python_blocks(page: Path) -> list[str]:
    return [code for lang, code in FENCE.findall(page.read_text(encoding="utf-8")) if lang == "python"]


def without_code(text: str) -> str:
    """The page with fenced blocks and inline code removed: links inside code are not links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """The #fragments GitHub gives the page's headings (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if m:
            slug = apidoc.github_anchor(m.group(1))
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


@pytest.mark.parametrize("page", [p for p in PAGES if p.name not in RUN_ELSEWHERE and python_blocks(p)],
                         ids=lambda p: p.name)
def test_code_blocks_run(page, tmp_path, monkeypatch):
    """A page's blocks run in order in one namespace, in an empty temporary folder. A block whose first line is
    "# needs: a, b" runs only where those packages are installed (the parity extra); the others always run."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    skipped = []
    with contextlib.redirect_stdout(io.StringIO()):
        for i, code in enumerate(python_blocks(page)):
            missing = [m for m in needs(code) if importlib.util.find_spec(m) is None]
            if missing:
                skipped.append(f"block {i + 1} needs {', '.join(missing)}")
                continue
            exec(compile(code, f"{page.name}, python block {i + 1}", "exec"), namespace)
    if skipped:
        pytest.skip("; ".join(skipped) + " (not installed); every other block ran")


def needs(code: str) -> list[str]:
    first = code.splitlines()[0] if code.strip() else ""
    m = re.match(r"# needs: (.*)", first)
    return [name.strip() for name in m.group(1).split(",")] if m else []


def test_pages_have_code_to_run():
    """The pages meant to be tried have runnable blocks (so the test above cannot pass by finding none)."""
    with_code = {p.name for p in PAGES if python_blocks(p)}
    assert {"index.md", "getting-started.md", "architecture.md", "lora-math.md"} <= with_code, with_code


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    bad = []
    for target in LINK.findall(without_code(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() and dest.parent == DOCS and dest.name in PENDING:
            continue
        if not dest.exists():
            bad.append(f"{target}: {dest} does not exist")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            bad.append(f"{target}: no heading in {dest.name} has the anchor #{fragment}")
    assert not bad, f"{page.name}: broken links:\n" + "\n".join(bad)


def test_link_checker_sees_broken_links(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A `b` title, here\n\n[ok](#a-b-title-here) [gone](#nope) [file](missing.md)\n")
    assert anchors(page) == {"a-b-title-here"}
    targets = LINK.findall(without_code(page.read_text()))
    assert targets == ["#a-b-title-here", "#nope", "missing.md"]


@pytest.mark.parametrize("heading, anchor", [
    ("4. How \"frozen\" works", "4-how-frozen-works"),
    ("`minilora.model.forward`", "miniloramodelforward"),
    ("Initialisation of A (`LoraConfig.init`)", "initialisation-of-a-loraconfiginit"),
    ("Changing r at fixed α: one Adam step", "changing-r-at-fixed-α-one-adam-step"),
    ("snake_case_name", "snake_case_name"),
])
def test_github_anchor(heading, anchor):
    assert apidoc.github_anchor(heading) == anchor


def test_api_reference_is_current():
    problem = apidoc.check()
    assert problem is None, problem


def test_api_reference_names_every_public_name():
    """Independently of the renderer: each module's __all__ (or public definitions) appears on the page."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    sections = {part.split("`", 1)[0]: part for part in text.split("\n## `")[1:]}  # module name -> its section
    assert set(sections) == set(apidoc.module_names())
    for modname, section in sections.items():
        module = importlib.import_module(modname)
        for name in apidoc.public_names(module):
            assert f"### `{modname}.{name}`\n" in section or f"- `{name}`: see " in section, f"{modname}.{name}"


def test_api_reference_signatures():
    """The page shows inspect.signature's text (string annotations unquoted) for the main entry points."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    from minilora import combination, lora, model
    for func in (model.forward, model.transformer, lora.merge, lora.init_lora, combination.combine):
        sig = re.sub(r"(: |-> )'([^']*)'", r"\1\2", str(inspect.signature(func)))
        sig = re.sub(r" at 0x[0-9a-f]+", "", sig)  # a default's memory address
        assert f"`{func.__name__}{sig}`" in text, func.__name__


def test_api_check_names_the_command(tmp_path):
    stale = tmp_path / "api.md"
    stale.write_text("# API reference\n")
    problem = apidoc.check(stale)
    assert problem is not None and apidoc.REGENERATE in problem and "+- [`minilora`](#minilora)" in problem


def test_public_names_without_all():
    from minilora import tree
    names = apidoc.public_names(tree)
    assert "flatten" in names and not any(n.startswith("_") for n in names)
    assert "np" not in names  # imported, not defined


def test_needs_line():
    assert needs("# needs: torch, peft\nimport torch\n") == ["torch", "peft"]
    assert needs("import numpy\n") == [] and needs("") == []
