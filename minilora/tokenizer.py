"""Byte-level tokenizer: token id = UTF-8 byte value. 256 ids, no vocabulary file, nothing to download."""

from __future__ import annotations

import numpy as np

VOCAB_SIZE = 256


def encode(text: str) -> np.ndarray:
    """str -> (n,) int32 token ids, one per UTF-8 byte."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)  # (n,)


def decode(ids) -> str:
    """Token ids -> str. Byte sequences that are not valid UTF-8 (a cut multi-byte character) become U+FFFD."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return ""  # np.asarray([]) is float64: an empty sequence is fine whatever its dtype
    if ids.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
        raise ValueError(f"ids must be in [0, {VOCAB_SIZE}), got values in [{ids.min()}, {ids.max()}]")
    return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
