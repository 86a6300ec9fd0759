"""Helpers shared by the interop tests: a raw safetensors writer (for BF16, which NumPy cannot write) and
random trees at a scale where every weight matters."""

from __future__ import annotations

import json
import struct

import numpy as np

from minilora.tree import map_leaves


def write_raw_safetensors(path, entries: dict, metadata: dict | None = None) -> None:
    """entries: {name: (dtype name, shape, raw bytes)}, written back to back in the given order."""
    header, data = {}, b""
    for name, (dtype, shape, raw) in entries.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def bf16_bytes(a: np.ndarray) -> bytes:
    """float32 values that are BF16 numbers (low 16 bits zero) as BF16 bytes."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    assert not np.any(bits & 0xFFFF), "not a BF16 number"
    return (bits >> 16).astype("<u2").tobytes()


def randomize(tree, seed: int, std: float = 0.5):
    """Every leaf replaced by N(0, std²) draws of its shape and dtype (B != 0, LayerNorm γ, β random)."""
    rng = np.random.default_rng(seed)
    return map_leaves(lambda a: (rng.standard_normal(a.shape) * std).astype(a.dtype), tree)


def assert_trees_bitwise_equal(a, b) -> None:
    from minilora.tree import flatten

    fa, fb = flatten(a), flatten(b)
    assert list(fa) == list(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, k
        assert np.array_equal(fa[k], fb[k]), k
