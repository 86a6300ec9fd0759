"""The API reference, docs/api.md, generated from the package itself: every public name, its signature and
the first paragraph of its docstring.

    python -m minilora.apidoc --write     # regenerate docs/api.md
    python -m minilora.apidoc --check     # exit status 1 (and a diff) when docs/api.md is out of date

The public names of a module are its ``__all__`` where it has one, else the names its own source defines at the
top level (functions, classes, assignments) that do not start with an underscore. Modules whose name starts
with an underscore are left out. A name a module re-exports from another documented module is listed with a
link to the entry where it is defined.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path

from .checkpoint import atomic_write_bytes

PACKAGE = "minilora"
API_PATH = Path(__file__).resolve().parent.parent / "docs" / "api.md"
REGENERATE = "python -m minilora.apidoc --write"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # "<function f at 0x7f..>": differs between runs


def module_names(package: str = PACKAGE) -> list[str]:
    """The package and every module below it whose name has no part starting with an underscore, sorted."""
    root = importlib.import_module(package)
    found = [package] + [info.name for info in pkgutil.walk_packages(root.__path__, package + ".")]
    return sorted(name for name in found if not any(part.startswith("_") for part in name.split(".")))


def public_names(module) -> list[str]:
    """``module.__all__`` if it has one, else the public top-level names its own source defines, in order."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    tree = ast.parse(inspect.getsource(module))
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return list(dict.fromkeys(n for n in names if not n.startswith("_")))


def github_anchor(heading: str) -> str:
    """The #fragment GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip())  # inline-code and emphasis marks
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def first_paragraph(obj) -> str:
    """The first paragraph of obj's docstring on one line, or a note that there is none."""
    doc = inspect.getdoc(obj)
    if not doc:
        return "*(no docstring)*"
    return " ".join(line.strip() for line in doc.strip().split("\n\n")[0].splitlines())


class _Source(str):
    """An annotation kept as source text (``from __future__ import annotations``), shown without quotes."""

    def __repr__(self) -> str:
        return str(self)


def signature(obj) -> str | None:
    """str(inspect.signature(obj)), annotations as written and no memory addresses; None where Python has none."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    bare = lambda a: _Source(a) if isinstance(a, str) else a
    sig = sig.replace(parameters=[p.replace(annotation=bare(p.annotation)) for p in sig.parameters.values()],
                      return_annotation=bare(sig.return_annotation))
    return _ADDRESS.sub("", str(sig))


def render_value(value) -> str:
    """A constant: its repr when short and stable, else its type (and a dict's keys)."""
    if isinstance(value, dict):
        return f"`dict` with keys {', '.join(f'`{k!r}`' for k in value)}"
    if isinstance(value, (set, frozenset)) and len(repr(sorted(value, key=repr))) <= 100:
        return f"`{type(value).__name__}` of " + ", ".join(f"`{v!r}`" for v in sorted(value, key=repr))
    if isinstance(value, (bool, int, float, str, tuple, type(None))) and len(repr(value)) <= 100:
        return f"`{value!r}`"
    return f"`{type(value).__name__}`"


def render_callable(qualified: str, name: str, obj, level: str = "###") -> list[str]:
    """A function's or class's entry: heading, signature, first paragraph (and a class's own members)."""
    sig = signature(obj)
    kind = "class " if inspect.isclass(obj) else ""
    lines = [f"{level} `{qualified}`", "", f"{kind}`{name}{sig or ''}`", "", first_paragraph(obj), ""]
    if inspect.isclass(obj):
        lines += render_members(obj)
    return lines


def render_members(cls) -> list[str]:
    """The public methods and properties a class defines itself (not inherited), one bullet each."""
    items = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            items.append(f"- `{name}` (property): {first_paragraph(member)}")
        elif isinstance(member, (staticmethod, classmethod)) or inspect.isfunction(member):
            func = getattr(cls, name)
            items.append(f"- `{name}{signature(func) or ''}`: {first_paragraph(func)}")
    return items + [""] if items else []


def render_module(modname: str, documented: dict[str, list[str]]) -> list[str]:
    """One module's section: its docstring's first paragraph, then each public name."""
    module = importlib.import_module(modname)
    lines = [f"## `{modname}`", "", first_paragraph(module), ""]
    links, entries = [], []
    for name in documented[modname]:
        if not hasattr(module, name):
            raise AttributeError(f"{modname}.__all__ names {name!r}, which the module does not define")
        obj = getattr(module, name)
        home = home_of(obj, name, modname, documented)
        if home is not None:
            links.append(f"- `{name}`: see [`{home}`](#{github_anchor(f'`{home}`')})")
        elif callable(obj):
            entries += render_callable(f"{modname}.{name}", name, obj)
        else:
            entries += [f"### `{modname}.{name}`", "", render_value(obj), ""]
    return lines + (links + [""] if links else []) + entries


def home_of(obj, name: str, modname: str, documented: dict[str, list[str]]) -> str | None:
    """Where a re-exported name is documented (a module's section, or the defining module's entry), else None."""
    if inspect.ismodule(obj):
        return obj.__name__ if obj.__name__ in documented else None
    home = getattr(obj, "__module__", None)
    if home and home != modname and name in documented.get(home, ()):
        return f"{home}.{name}"
    return None


def generate(package: str = PACKAGE) -> str:
    """The whole of docs/api.md, as text."""
    modules = module_names(package)
    documented = {m: public_names(importlib.import_module(m)) for m in modules}
    head = [
        "# API reference", "",
        f"Every public name of `{package}`, with its signature and the first paragraph of its docstring. "
        "Generated from the package: do not edit by hand; after changing the package run", "",
        "```bash", REGENERATE, "```", "",
        "A test (`tests/test_docs.py`) fails when this page differs from what the package gives. The public "
        "names of a module are its `__all__`, or else the top-level names its source defines that do not "
        "start with an underscore.", "",
        "Modules:", "",
    ]
    head += [f"- [`{m}`](#{github_anchor(f'`{m}`')})" for m in modules] + [""]
    body: list[str] = []
    for m in modules:
        body += render_module(m, documented)
    return "\n".join(head + body).rstrip("\n") + "\n"


def check(path: Path | None = None) -> str | None:
    """None when ``path`` (default: this checkout's docs/api.md) holds what generate() gives now, else a message
    with a diff and the fix. (A default of API_PATH would print this checkout's absolute path into api.md.)"""
    path = API_PATH if path is None else Path(path)
    want = generate()
    have = path.read_text(encoding="utf-8") if path.exists() else ""
    if have == want:
        return None
    diff = difflib.unified_diff(have.splitlines(), want.splitlines(), str(path), "generated now", lineterm="", n=1)
    shown = list(diff)[:60]
    return (f"{path} is out of date with the package's public names and signatures. Regenerate it with\n"
            f"    {REGENERATE}\n(from the repository root), review the diff and commit it.\n" + "\n".join(shown))


def main(argv=None) -> int:
    """``python -m minilora.apidoc --write | --check``: regenerate docs/api.md, or say whether it is current."""
    parser = argparse.ArgumentParser(prog="python -m minilora.apidoc", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help=f"write {API_PATH.name}")
    group.add_argument("--check", action="store_true", help="exit 1 when it is out of date")
    args = parser.parse_args(argv)
    if args.write:
        atomic_write_bytes(API_PATH, generate().encode("utf-8"))
        print(f"wrote {API_PATH}")
        return 0
    problem = check()
    print(problem or f"{API_PATH} is up to date")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
