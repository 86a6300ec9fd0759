"""Watch a NumPy function for the one product LoRA must never compute: ∂L/∂W = gᵀ x.

A gradient for the frozen W does not show in a VJP's return value when it is computed and thrown away (or
used as a detour: dA = s·Bᵀ (gᵀ x) is right but forms the (d_out, d_in) matrix LoRA exists to avoid). So the
checker passes x, g, W, A and B as ``Tagged`` arrays: an ndarray subclass that remembers which inputs each
array was computed from (through every ufunc, matmul, einsum, dot, reshape, transpose, index...). An array
shaped like W that was computed from g and x, and not from W itself, is a dW. The watch sees only NumPy
calls; a function that leaves NumPy (``np.asarray`` strips the tags, so does torch) is simply not seen.
"""

from __future__ import annotations

import contextlib

import numpy as np

_SEEN: list | None = None  # the shapes to report, and what was found, while ``watching`` is active


class Tagged(np.ndarray):
    """An ndarray that carries ``tags``: the names of the inputs it was computed from."""

    def __new__(cls, a, tags):
        obj = np.array(a).view(cls)
        obj.tags = frozenset(tags)
        return obj

    def __array_finalize__(self, obj):
        self.tags = getattr(obj, "tags", frozenset())

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out", ())
        tags = _tags(inputs) | _tags(out)
        if out:
            kwargs["out"] = tuple(_plain(o) for o in out)
        return _wrap(getattr(ufunc, method)(*(_plain(i) for i in inputs), **kwargs), tags)

    def __array_function__(self, func, types, args, kwargs):
        tags = _tags(args) | _tags(kwargs.values())
        return _wrap(func(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()}), tags)


def _tags(items) -> frozenset:
    found = set()
    for item in items:
        if isinstance(item, Tagged):
            found |= item.tags
        elif isinstance(item, (list, tuple)):
            found |= _tags(item)
    return frozenset(found)


def _plain(item):
    if isinstance(item, Tagged):
        return item.view(np.ndarray)
    if isinstance(item, (list, tuple)):
        return type(item)(_plain(i) for i in item)
    return item


def _wrap(result, tags):
    if isinstance(result, tuple):
        return tuple(_wrap(r, tags) for r in result)
    if not isinstance(result, np.ndarray) or isinstance(result, Tagged):
        return result
    if _SEEN is not None:
        shape, found = _SEEN
        if result.shape[-2:] == shape and {"g", "x"} <= tags and "W" not in tags:
            found.append(result.shape)
    wrapped = result.view(Tagged)
    wrapped.tags = tags
    return wrapped


@contextlib.contextmanager
def watching(w_shape):
    """Inside: every W-shaped array computed from g and x (not from W) is recorded; yields the record."""
    global _SEEN
    found: list = []
    previous, _SEEN = _SEEN, (tuple(w_shape), found)
    try:
        yield found
    finally:
        _SEEN = previous
