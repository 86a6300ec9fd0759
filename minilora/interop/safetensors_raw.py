"""Reading a safetensors file with NumPy alone, including the two 16-bit float formats NumPy lacks a reader for.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON ({name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {str: str}}), then the tensors' bytes, back to back, each
little-endian and row-major. The ``safetensors`` package cannot hand BF16 to NumPy (NumPy has no bfloat16), and
transformers and PEFT write BF16 files, so this module parses the format itself.

Widening is exact: every F16 and every BF16 number is a float32 number.
- F16 (1 sign, 5 exponent, 10 mantissa bits) converts to float32 by IEEE conversion (``astype``), exact for
  every value, subnormals, ±inf and NaN included.
- BF16 is the top 16 bits of a float32 (1 sign, 8 exponent, 7 mantissa bits), so shifting its bits left by 16
  and reading them as float32 gives the same number, bit for bit.

The header is checked as strictly as the format requires: offsets inside the data, a byte count equal to
dtype size × number of elements, and the tensors covering the data exactly once (no hole, no overlap).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

# safetensors dtype name -> little-endian NumPy dtype of the stored bytes
STORED = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
MAX_HEADER = 100 << 20  # the safetensors library's own limit on the JSON header


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 BF16 bit patterns -> float32 with the same values (the bits become a float32's top half)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _widen(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return bf16_bits_to_float32(raw)
    if dtype == "F16":
        return raw.astype(np.float32)  # IEEE half -> single: exact for every value
    return raw.astype(raw.dtype.newbyteorder("="), copy=True)  # an owned, writeable, native-order copy


def read_header(raw: bytes, path) -> tuple[dict, int]:
    """(header dict, offset of the data section); ValueError naming what is wrong."""
    if len(raw) < 8:
        raise ValueError(f"{path} is truncated or not a safetensors file ({len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > min(MAX_HEADER, len(raw) - 8) or raw[8:9] != b"{":
        from ..checkpoint import _PICKLE_SIGNS  # the same recognition of pickles and zips as minilora's own files

        for sign, what in _PICKLE_SIGNS.items():
            if raw.startswith(sign):
                raise ValueError(f"{path} is {what}; loading it would need pickle, which minilora never uses. "
                                 "Convert it to safetensors first (safetensors.torch.save_file).")
        raise ValueError(f"{path} is truncated or not a safetensors file (no valid header in {len(raw)} bytes)")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: the safetensors header is not valid JSON: {err}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header must be a JSON object")
    return header, 8 + n


def _entry(name, info, n_data: int, path) -> tuple[str, tuple, int, int]:
    """(dtype, shape, begin, end) of one header entry, validated."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"{path}: tensor {name!r} needs exactly 'dtype', 'shape' and 'data_offsets' in the header")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in STORED:
        raise ValueError(f"{path}: tensor {name!r} has dtype {dtype!r}, which minilora does not read "
                         f"(known: {sorted(STORED)})")
    if (not isinstance(shape, list) or
            any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape)):
        raise ValueError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or
            any(isinstance(o, bool) or not isinstance(o, int) for o in offsets) or
            not 0 <= offsets[0] <= offsets[1] <= n_data):
        raise ValueError(f"{path}: tensor {name!r} has data_offsets {offsets!r} outside the {n_data}-byte data")
    want = math.prod(shape) * np.dtype(STORED[dtype]).itemsize
    if offsets[1] - offsets[0] != want:
        raise ValueError(f"{path}: tensor {name!r} ({dtype}, shape {shape}) needs {want} bytes, "
                         f"its data_offsets give {offsets[1] - offsets[0]}")
    return dtype, tuple(shape), offsets[0], offsets[1]


def read_tensors(path) -> tuple[dict, dict, dict]:
    """(arrays, file dtypes, metadata) of a safetensors file, read without torch.

    arrays: {name: ndarray}; F16 and BF16 are widened exactly to float32, every other dtype is kept.
    file dtypes: {name: the dtype named in the file ("BF16", "F32", ...)}. metadata: the "__metadata__" strings.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a file")
    raw = path.read_bytes()
    header, start = read_header(raw, path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path}: '__metadata__' must map strings to strings")
    n_data = len(raw) - start
    entries = {name: _entry(name, info, n_data, path) for name, info in header.items()}
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items())
    covered = 0
    for begin, end, name in spans:
        if begin != covered:
            what = "overlaps the tensor before it" if begin < covered else f"leaves a hole of {begin - covered} bytes"
            raise ValueError(f"{path}: tensor {name!r} {what} (data_offsets {[begin, end]})")
        covered = end
    if covered != n_data:
        raise ValueError(f"{path}: {n_data - covered} bytes after the last tensor belong to none (corrupt file)")
    arrays, dtypes = {}, {}
    for name, (dtype, shape, begin, _) in entries.items():
        stored = np.frombuffer(raw, dtype=STORED[dtype], count=math.prod(shape), offset=start + begin)
        arrays[name] = _widen(stored, dtype).reshape(shape)
        dtypes[name] = dtype
    return arrays, dtypes, metadata
