"""The array module that minilora computes with.

Every hot op is written against an array module ``xp`` that has NumPy's API: NumPy by default, CuPy when the
data lives on a GPU. Primitives never import numpy for their arithmetic; they ask ``array_module(x)`` for the
module that owns their input, so the same code runs wherever the data lives. ``use("cupy")`` registers CuPy
arrays with autograd and makes ``get_xp()`` return CuPy.

Status: initialisation (init_params, init_lora) and LoRA dropout masks still create NumPy arrays, and the CuPy
path has not yet been run on a GPU; on the CPU everything here is NumPy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import numpy

_xp = numpy


def get_xp():
    """The array module new arrays are created with (numpy unless ``use("cupy")`` was called)."""
    return _xp


def use(name: str):
    """Select the array module by name: ``"numpy"`` or ``"cupy"``. Returns the module."""
    global _xp
    if name == "numpy":
        _xp = numpy
    elif name == "cupy":
        try:
            import cupy
        except ImportError as err:  # pragma: no cover - depends on the machine
            raise ImportError("backend 'cupy' needs CuPy: pip install 'minilora[gpu]'") from err
        _register_cupy_with_autograd(cupy)
        _xp = cupy
    else:
        raise ValueError(f"backend name must be 'numpy' or 'cupy', got {name!r}")
    return _xp


def array_module(*arrays):
    """The module (numpy or cupy) that owns these arrays; numpy for plain numpy arrays and scalars."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy

            return cupy
    return numpy


def to_numpy(a):
    """A NumPy copy of an array from any backend (identity for NumPy arrays)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, numpy.ndarray) else numpy.asarray(a)


def _register_cupy_with_autograd(cupy):  # pragma: no cover - exercised on a GPU machine only
    """Let autograd trace CuPy arrays: box them like ndarrays and give them a vector space."""
    from autograd.extend import VSpace
    from autograd.numpy.numpy_boxes import ArrayBox
    from autograd.numpy.numpy_vspaces import ArrayVSpace
    from autograd.tracer import Box

    if cupy.ndarray in Box.type_mappings:
        return

    class CupyVSpace(ArrayVSpace):
        def zeros(self):
            return cupy.zeros(self.shape, dtype=self.dtype)

        def ones(self):
            return cupy.ones(self.shape, dtype=self.dtype)

    ArrayBox.register(cupy.ndarray)
    VSpace.register(cupy.ndarray, lambda x: CupyVSpace(x))


# ---- allocator tuning -------------------------------------------------------------------------------------
#
# A training step allocates and frees the same large temporaries (activations, gradients) every iteration.
# glibc serves blocks above M_MMAP_THRESHOLD with fresh mmap() calls and hands them back with munmap(), so the
# next step page-faults on every page again (thousands of faults per step: measured at 25-30% of a step in a
# prototype). Raising the mmap threshold and the trim threshold keeps those pages in the heap for reuse.
# This is process-wide, so the library never does it on import: the CLI, the trainer and the benchmark call it.

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_malloc_tuned = False


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc to keep large freed blocks for reuse instead of returning them to the OS.

    glibc caps the mmap threshold at 32 MiB on 64-bit machines; blocks below it stay in the heap.
    Returns True when the settings were applied (Linux with glibc), False elsewhere (a no-op there).
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, min(mmap_threshold, 2**31 - 1)) == 1
    ok = (mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)) == 1) and ok
    _malloc_tuned = ok
    return ok
