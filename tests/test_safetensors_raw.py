"""minilora.interop.safetensors_raw: the torch-free reader, exact widening of F16 and BF16, and strict headers."""

from __future__ import annotations

import json
import math
import pickle
import struct

import numpy as np
import pytest
import safetensors.numpy
from interop_helpers import write_raw_safetensors

from minilora.interop.safetensors_raw import read_tensors


def _decode(bits: int, exp_bits: int, man_bits: int) -> float:
    """An IEEE binary number from its bits by the textbook formula, in Python floats (an independent path)."""
    sign = -1.0 if bits >> (exp_bits + man_bits) else 1.0
    e = (bits >> man_bits) & ((1 << exp_bits) - 1)
    m = bits & ((1 << man_bits) - 1)
    bias = (1 << (exp_bits - 1)) - 1
    if e == (1 << exp_bits) - 1:
        return math.nan if m else sign * math.inf
    if e == 0:
        return sign * math.ldexp(m, 1 - bias - man_bits)
    return sign * math.ldexp((1 << man_bits) + m, e - bias - man_bits)


@pytest.mark.parametrize("dtype, exp_bits, man_bits", [("BF16", 8, 7), ("F16", 5, 10)])
def test_every_16_bit_pattern_widens_exactly(tmp_path, dtype, exp_bits, man_bits):
    bits = np.arange(1 << 16, dtype="<u2")
    write_raw_safetensors(tmp_path / "all.safetensors", {"x": (dtype, (1 << 16,), bits.tobytes())})
    arrays, dtypes, _ = read_tensors(tmp_path / "all.safetensors")
    got = arrays["x"]
    assert got.dtype == np.float32 and dtypes["x"] == dtype
    want = np.array([_decode(int(b), exp_bits, man_bits) for b in bits])
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].astype(np.float64), want[~nan])  # every finite value and ±inf, exactly
    assert np.array_equal(np.signbit(got[~nan]), np.signbit(want[~nan]))  # -0.0 stays -0.0


def test_reads_what_the_safetensors_library_writes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"f64": rng.standard_normal((3, 4)), "f32": rng.standard_normal((2, 5)).astype(np.float32),
              "i64": rng.integers(-9, 9, (7,)), "u8": rng.integers(0, 255, (2, 2)).astype(np.uint8),
              "b": rng.random((3,)) < 0.5, "empty": np.zeros((0, 3), np.float32), "scalar": np.float32(2.5)}
    arrays["f16"] = rng.standard_normal((4,)).astype(np.float16)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    (tmp_path / "a.safetensors").write_bytes(safetensors.numpy.save(arrays, metadata={"k": "v"}))
    got, dtypes, metadata = read_tensors(tmp_path / "a.safetensors")
    assert metadata == {"k": "v"} and set(got) == set(arrays)
    for k, a in arrays.items():
        want = a.astype(np.float32) if a.dtype == np.float16 else a
        assert got[k].dtype == want.dtype and got[k].shape == want.shape and np.array_equal(got[k], want), k
        assert got[k].flags.writeable and got[k].flags.owndata or got[k].base is not None
    assert dtypes["f16"] == "F16" and dtypes["b"] == "BOOL"


def _header_file(tmp_path, header: dict, data: bytes, name="bad.safetensors"):
    blob = json.dumps(header).encode()
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


@pytest.mark.parametrize("header, data, match", [
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "4 bytes after the last tensor"),
    ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12 bytes"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 8, "outside the 8-byte data"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "y": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"\0" * 6, "overlaps"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "hole of 4 bytes"),
    ({"x": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "dtype 'F8_E4M3'"),
    ({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "invalid shape"),
    ({"x": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "exactly 'dtype', 'shape' and 'data_offsets'"),
    ({"__metadata__": {"a": 1}}, b"", "'__metadata__' must map strings to strings"),
])
def test_refuses_a_bad_header_naming_the_tensor(tmp_path, header, data, match):
    with pytest.raises(ValueError, match=match):
        read_tensors(_header_file(tmp_path, header, data))


def test_refuses_truncated_and_foreign_files(tmp_path):
    (tmp_path / "short").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        read_tensors(tmp_path / "short")
    (tmp_path / "p").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="a Python pickle"):
        read_tensors(tmp_path / "p")
    (tmp_path / "z").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(ValueError, match="zip archive"):
        read_tensors(tmp_path / "z")
    blob = b"{not json}"
    (tmp_path / "j").write_bytes(struct.pack("<Q", len(blob)) + blob)
    with pytest.raises(ValueError, match="not valid JSON"):
        read_tensors(tmp_path / "j")
    with pytest.raises(FileNotFoundError):
        read_tensors(tmp_path / "missing")


def test_bf16_agrees_with_torch(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'minilora[parity]')")
    import safetensors.torch

    t = torch.randn(5, 7, dtype=torch.float32).to(torch.bfloat16)
    h = torch.randn(3, dtype=torch.float32).to(torch.float16)
    safetensors.torch.save_file({"t": t, "h": h}, str(tmp_path / "b.safetensors"))
    got, _, _ = read_tensors(tmp_path / "b.safetensors")
    assert np.array_equal(got["t"], t.float().numpy()) and np.array_equal(got["h"], h.float().numpy())
