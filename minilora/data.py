"""Offline text: the pretraining corpus, assembled at run time from text that ships with Python itself.

Sources (PSF-licensed, installed with every CPython, nothing downloaded):
  * ``pydoc_data.topics``: the language reference topics that ``help()`` shows;
  * docstrings of standard-library modules (functions, classes and methods), split into paragraphs, read from
    the modules' source files (never imported).

Docstrings of the modules used by the downstream task (``tasks.DOC_MODULES``) are left out entirely, and any
paragraph that contains text the task shows the model, or that is part of a task module's docstrings, is
dropped: no fine-tuning input, train or held-out, is seen in pretraining.
The text differs a little between Python versions: ``corpus_info()`` records the version, size and SHA-256.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

import numpy as np

from .tokenizer import encode

# Standard-library modules whose docstrings join the pretraining corpus, read from their source files. Modules
# written in C have no source here and contribute nothing (corpus_info() lists them).
CORPUS_MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "bz2", "calendar", "cmd", "collections", "colorsys",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "dis", "email", "enum",
    "filecmp", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib",
    "heapq", "hmac", "html", "http", "imaplib", "io", "ipaddress", "itertools", "locale", "lzma", "mailbox",
    "mimetypes", "netrc", "operator", "optparse", "os", "pathlib", "pickle", "platform", "plistlib", "poplib",
    "pprint", "queue", "quopri", "random", "re", "reprlib", "sched", "secrets", "selectors", "shelve", "shlex",
    "shutil", "smtplib", "socket", "socketserver", "string", "struct", "subprocess", "symtable", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "token", "tokenize", "trace", "traceback", "types",
    "urllib", "uuid", "warnings", "wave", "weakref", "xml", "zipfile", "zipimport", "zoneinfo",
)


def _source_files(module_name: str) -> list[Path]:
    """The .py files of a standard-library module or package (tests excluded), in sorted order.

    Looked up in the standard library's folder by name: nothing is imported, and modules that CPython freezes
    into the interpreter (os, codecs, ... on 3.11+) are still found through their source files.
    """
    stdlib = Path(sysconfig.get_path("stdlib"))
    package = stdlib / module_name
    if (package / "__init__.py").is_file():
        files = sorted(package.rglob("*.py"))
        return [f for f in files if not {"test", "tests", "idle_test"} & set(f.relative_to(package).parts[:-1])]
    single = stdlib / f"{module_name}.py"
    return [single] if single.is_file() else []  # no file: written in C, nothing to read


def docstring_paragraphs(module_name: str, min_chars: int = 40) -> list[str]:
    """Paragraphs of the docstrings in a module's source: the module, its public classes and functions, and
    their methods (names without a leading underscore, and __init__).

    Read from the source files with ``ast``, never by importing: the result depends only on the Python version,
    not on what the running process has imported or patched (a Jupyter kernel patches asyncio, for one).
    Whitespace is normalised to single spaces; the order is the files' order, then the source order.
    """
    return list(_docstring_paragraphs(module_name, min_chars))


@lru_cache(maxsize=None)
def _docstring_paragraphs(module_name: str, min_chars: int) -> tuple[str, ...]:
    """Parsed once per process and module (the corpus and the task both read the task modules)."""
    out = []

    def add(doc):
        if doc:
            for para in doc.split("\n\n"):
                para = " ".join(para.split())
                if len(para) >= min_chars:
                    out.append(para)

    def visit(node, depth):
        for child in node.body:
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if child.name.startswith("_") and child.name != "__init__":
                    continue
                add(ast.get_docstring(child))
                if depth < 1 and isinstance(child, ast.ClassDef):
                    visit(child, depth + 1)

    for path in _source_files(module_name):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        add(ast.get_docstring(tree))
        visit(tree, 0)
    return tuple(out)


def _overlaps_task(parts: list[str], task_paragraphs: list[str], shown: list[str]) -> list[bool]:
    """For each corpus part: does it contain a text the task shows the model, or lie inside a task paragraph?"""
    sep = "\x00"
    blob = sep.join(parts)
    starts, pos = [], 0
    for part in parts:
        starts.append(pos)
        pos += len(part) + 1
    hit = [False] * len(parts)
    for text in set(shown):  # where each shown text occurs in the corpus
        at = blob.find(text)
        while at != -1:
            i = max(0, bisect.bisect_right(starts, at) - 1)
            hit[i] = True
            at = blob.find(text, at + 1)
    task_blob = sep.join(task_paragraphs)
    return [h or part in task_blob for h, part in zip(hit, parts, strict=True)]


@lru_cache(maxsize=1)
def _corpus() -> tuple[str, tuple[str, ...], int]:
    import pydoc_data.topics

    from .tasks import DOC_MODULES, _doc_examples, doc_task_paragraphs

    parts = []
    for key in sorted(pydoc_data.topics.topics):
        parts.extend(p.strip() for p in pydoc_data.topics.topics[key].split("\n\n") if p.strip())
    missing = []
    for name in CORPUS_MODULES:
        if name in DOC_MODULES:
            continue
        paragraphs = docstring_paragraphs(name)
        if not paragraphs:
            missing.append(name)
        parts.extend(paragraphs)
    # Keep the downstream task out: drop every part that contains text the task shows the model, or that is
    # itself a piece of one of the task modules' docstrings.
    drop = _overlaps_task(parts, doc_task_paragraphs(), [text for text, _ in _doc_examples()])
    kept = [p for p, d in zip(parts, drop, strict=True) if not d]
    return "\n\n".join(kept) + "\n", tuple(missing), len(parts) - len(kept)


def pretraining_text() -> str:
    """The whole pretraining corpus as one string (about 0.8 MB; corpus_info() has the exact size and hash)."""
    return _corpus()[0]


def corpus_info() -> dict:
    """Where the corpus came from and what it was, to record next to a checkpoint."""
    text, missing, n_dropped = _corpus()
    raw = text.encode("utf-8")
    return {
        "sources": "pydoc_data.topics + standard-library docstrings (PSF license, shipped with CPython)",
        "python_version": ".".join(map(str, sys.version_info[:3])),
        "n_bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "modules_without_text": list(missing),
        "paragraphs_dropped_for_overlap_with_the_task": n_dropped,
    }


def split_tokens(tokens: np.ndarray, held_out_fraction: float = 0.05):
    """(train, held_out): the last fraction of the token stream is held out (no overlap, deterministic)."""
    n_held = max(1, int(len(tokens) * held_out_fraction))
    return tokens[:-n_held], tokens[-n_held:]


def pretraining_tokens(held_out_fraction: float = 0.05):
    """(train, held_out) int32 token streams of the corpus."""
    return split_tokens(encode(pretraining_text()), held_out_fraction)


def sample_windows(tokens: np.ndarray, batch_size: int, length: int, rng: np.random.Generator):
    """A batch of random windows: x (batch, length) and y = x shifted by one (next-token targets)."""
    if len(tokens) < length + 1:
        raise ValueError(f"token stream of {len(tokens)} is shorter than a window of {length + 1}")
    starts = rng.integers(0, len(tokens) - length - 1, size=batch_size)
    idx = starts[:, None] + np.arange(length + 1)[None, :]  # (batch, length + 1)
    window = tokens[idx]
    return window[:, :-1], window[:, 1:]  # (batch, length) each
