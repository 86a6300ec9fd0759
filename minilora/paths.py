"""The paths a command reads and writes, checked before any work starts, so that a run never ends by losing its
result or a user's file.

``check_inputs`` refuses a missing input, or a folder given where a file is read. ``check_outputs`` takes every
path a command will write (the files and the records or metrics written next to them) and the paths it reads,
and refuses, before the first training step:

* two outputs that are the same file (``pretrain --out model.json`` would write its JSON record over the
  parameters), or an output that is one of the inputs;
* an output that exists, unless overwriting was asked for (a path that the run itself continues, such as the
  training state it resumes from, may exist);
* a folder where a file is expected, a file where a folder is expected, a folder that cannot be written.
"""

from __future__ import annotations

import os
from pathlib import Path


def _same_file_key(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path))


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_outputs(outputs: dict, inputs: dict | None = None, *, overwrite: bool = False, may_exist=(),
                  hint: str = "pass --overwrite to replace it") -> None:
    """Raise before any work if the run could not write ``outputs`` safely.

    outputs: {description: path} of everything the run writes ("--out (the parameters)": ...); inputs:
    {description: path or None} of what it reads; may_exist: outputs that the run continues and may replace
    (a resumed training state). ``hint`` ends the message for an existing output.
    Raises ValueError (collisions), FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError;
    every message names the path and what it is for."""
    seen = {}
    may = {_same_file_key(Path(p)) for p in may_exist if p is not None}
    readers = {_same_file_key(Path(p)): what for what, p in (inputs or {}).items() if p is not None}
    for what, path in outputs.items():
        path = Path(path)
        key = _same_file_key(path)
        if key in seen:
            raise ValueError(f"{what} and {seen[key]} are the same file ({path}): one would overwrite the other; "
                             "give them different paths")
        seen[key] = what
        if key in readers and key not in may:
            raise ValueError(f"{what} ({path}) is also {readers[key]}: it would be overwritten while it is still "
                             "needed; write the output elsewhere")
        _check_writable(what, path, overwrite or key in may, hint)


def _check_writable(what: str, path: Path, replace_ok: bool, hint: str) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{what}: {path} is a directory, but a file is written there")
    if path.exists() and not replace_ok:
        raise FileExistsError(f"{what}: {path} exists; {hint}")
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise NotADirectoryError(f"{what}: cannot create {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{what}: cannot write {path}: the folder {folder} is not writable")


def check_inputs(inputs: dict) -> None:
    """Each {description: path} (None = not given) must be an existing file: FileNotFoundError or
    IsADirectoryError naming what it is for otherwise."""
    for what, path in inputs.items():
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{what}: {path} is a directory, but a file is read there")
        if not path.is_file():
            raise FileNotFoundError(f"{what}: {path} does not exist")
