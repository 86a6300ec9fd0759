"""Offline text: the pretraining corpus, assembled at run time from text that ships with Python itself.

Sources (PSF-licensed, installed with every CPython, nothing downloaded):
  * ``pydoc_data.topics``: the language reference topics that ``help()`` shows;
  * docstrings of standard-library modules (functions, classes and methods), split into paragraphs.

Docstrings of the modules used by the downstream task (``tasks.DOC_MODULES``) are left out entirely, and any
paragraph that contains text the task shows the model, or that is part of a task module's docstrings, is
dropped: no fine-tuning input, train or held-out, is seen in pretraining.
The text differs a little between Python versions: ``corpus_info()`` records the version, size and SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from functools import lru_cache

import numpy as np

from .tokenizer import encode

# Standard-library modules whose docstrings join the pretraining corpus. Pure-Python, present on 3.10-3.12 and
# importable without side effects or a display. Missing ones are skipped (and listed in corpus_info()).
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


def _quiet_import(name):
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except Exception:  # a module this Python lacks or cannot import here
            return None


def docstring_paragraphs(module_name: str, min_chars: int = 40) -> list[str]:
    """Paragraphs of the docstrings of a module, its public classes and functions, and their methods.

    Only objects defined in the module itself (or its submodules) count. Whitespace is normalised to single
    spaces; order is the module's own definition order, so the result is deterministic for a Python version.
    """
    module = _quiet_import(module_name)
    if module is None:
        return []
    root = module_name.split(".")[0]
    seen, out = set(), []

    def visit(obj, depth):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
        if doc:
            for para in inspect.cleandoc(doc).split("\n\n"):
                para = " ".join(para.split())
                if len(para) >= min_chars:
                    out.append(para)
        if depth < 2 and (inspect.isclass(obj) or inspect.ismodule(obj)):
            for name, value in list(vars(obj).items()):
                if name.startswith("_") or inspect.ismodule(value):
                    continue
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                owner = getattr(value, "__module__", None) or ""
                if (inspect.isclass(value) or inspect.isroutine(value)) and owner.split(".")[0] == root:
                    visit(value, depth + 1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reading some attributes warns (typing.io, typing.re)
        visit(module, 0)
    return out


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
            i = max(0, _bisect_right(starts, at) - 1)
            hit[i] = True
            at = blob.find(text, at + 1)
    task_blob = sep.join(task_paragraphs)
    return [h or part in task_blob for h, part in zip(hit, parts)]


def _bisect_right(a, x):
    import bisect

    return bisect.bisect_right(a, x)


@lru_cache(maxsize=1)
def _corpus() -> tuple[str, tuple[str, ...], int]:
    from .tasks import DOC_MODULES, _doc_examples, doc_task_paragraphs

    import pydoc_data.topics

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
    kept = [p for p, d in zip(parts, drop) if not d]
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
