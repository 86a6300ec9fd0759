"""What both foreign-file readers do first: read a JSON config, and read tensors refusing NaN/inf."""

from __future__ import annotations

import json
from pathlib import Path

from ..validate import check_finite
from .safetensors_raw import read_tensors

NONFINITE_HINT = "pass allow_nonfinite=True to load it anyway (for inspecting a broken file)"


def read_json(path: Path):
    """The JSON value in the file; FileNotFoundError or ValueError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} has no {path.name}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def read_finite_tensors(path: Path, allow_nonfinite: bool) -> tuple[dict, dict, dict]:
    """read_tensors(path), refusing (naming the tensor) NaN/inf unless allow_nonfinite."""
    arrays, dtypes, metadata = read_tensors(path)
    if not allow_nonfinite:
        check_finite(arrays, str(path), NONFINITE_HINT)
    return arrays, dtypes, metadata


def take_tensor(arrays: dict, key: str, shape: tuple, where: str, name: str | None = None, why: str = ""):
    """Pop arrays[key], a float tensor of this shape, or ValueError naming it (as ``name``, default key)."""
    name = name or key
    if key not in arrays:
        raise ValueError(f"{where}: tensor {name} is missing{why}")
    a = arrays.pop(key)
    if a.shape != shape:
        raise ValueError(f"{where}: tensor {name} has shape {a.shape}, expected {shape}{why}")
    if a.dtype.kind != "f":
        raise ValueError(f"{where}: tensor {name} has dtype {a.dtype}, expected a float")
    return a
