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


# ---- element-wise work on several cores (issue 12) ------------------------------------------------------
#
# NumPy runs an element-wise ufunc on one core, but releases the GIL while it runs. A row-wise computation
# (GELU, layer norm, a softmax and their VJPs) can therefore be cut into blocks of rows that a few threads
# compute at the same time. Each row goes through the same sequence of NumPy calls whichever block it lands
# in, so the result is bit-identical to the single-threaded one; a reduction across rows is never split.
# ``rowwise`` is the only entry point. It runs the kernel in one call (no threads) when the pool is off
# (MINILORA_THREADS=1 or set_threads(1)), when the arrays are small (threads then cost more than they save),
# for anything that is not a numpy.ndarray (CuPy arrays, a stand-in array type), and when timing shows that
# one call is faster (a machine whose cores other processes are using, see _Choice).

# (imported here, not at the top, so that this section stays self-contained)
import os as _os  # noqa: E402
import threading as _threading  # noqa: E402
import time as _time  # noqa: E402
from queue import SimpleQueue as _SimpleQueue  # noqa: E402

POOL_MIN_ELEMENTS = 1 << 16
"""Arrays with fewer elements than this run in one call: a hand-off to a thread costs ~10-30 us."""
POOL_BLOCK_ELEMENTS = 1 << 17
"""Largest block: a kernel's passes over a block this size stay in a core's cache (15% faster GELU VJP than
whole 2 MB arrays), and small blocks let an idle thread take over the work of one that is descheduled."""

_pool = {"threads": None, "min_elements": POOL_MIN_ELEMENTS, "measure": True, "workers": 0}
_choices = {}  # (kernel, size) -> _Choice
_pool_lock = _threading.Lock()
_tickets = _SimpleQueue()  # a worker takes a job from here and helps compute its blocks


def _default_threads() -> int:
    env = _os.environ.get("MINILORA_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"MINILORA_THREADS must be a positive integer (1 turns the pool off), got {env!r}")
        return int(env)
    try:
        return len(_os.sched_getaffinity(0))  # the cores this process may use (Linux)
    except AttributeError:  # pragma: no cover - not Linux
        return _os.cpu_count() or 1


def get_threads() -> int:
    """Threads ``rowwise`` computes with (1: the pool is off)."""
    if _pool["threads"] is None:
        _pool["threads"] = _default_threads()
    return _pool["threads"]


def set_threads(n: int | None = None, *, min_elements: int | None = None, measure: bool | None = None) -> int:
    """Set the threads for element-wise work; returns the previous count (to restore it later).

    n: a positive int, 1 turns the pool off; None: MINILORA_THREADS if set, else the machine's core count (the
    default). min_elements: arrays below this size run in one call (default POOL_MIN_ELEMENTS). measure: time
    the pool against one call, per kernel and size, and take the faster (default True); False uses the pool
    for every array of at least min_elements (the tests do, with min_elements=0).
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"set_threads: n must be a positive int or None, got {n!r}")
    if min_elements is not None and (isinstance(min_elements, bool) or not isinstance(min_elements, int)
                                     or min_elements < 0):
        raise ValueError(f"set_threads: min_elements must be a non-negative int, got {min_elements!r}")
    if measure is not None and not isinstance(measure, bool):
        raise ValueError(f"set_threads: measure must be True, False or None, got {measure!r}")
    previous = get_threads()
    _pool["threads"] = _default_threads() if n is None else n
    if min_elements is not None:
        _pool["min_elements"] = min_elements
    if measure is not None:
        _pool["measure"] = measure
    _choices.clear()  # timings taken with other settings no longer apply
    return previous


class _Choice:
    """For one kernel at one size: is the pool faster than one call? Measured, not assumed.

    On a machine whose cores other processes are using, a pool thread, or the thread holding the GIL, can be
    descheduled for milliseconds, and a pooled call is then several times slower than one call (measured:
    3-10x at load 8 on 2 cores). So both ways are timed: three calls each first, then the faster way by the
    median of its last three timings, with the other way tried every 32nd call to notice a change.
    """

    def __init__(self):
        self.seconds = {True: [], False: []}
        self.calls = 0

    def use_pool(self):
        self.calls += 1
        pooled, single = self.seconds[True], self.seconds[False]
        if len(pooled) < 3 or len(single) < 3:
            return len(pooled) <= len(single)
        pool_faster = sorted(pooled)[1] <= sorted(single)[1]
        return pool_faster != (self.calls % 32 == 0)

    def record(self, pooled, seconds):
        last = self.seconds[pooled]
        last.append(seconds)
        del last[:-3]


class _Job:
    """The row blocks of one rowwise call: whoever is free (the caller or a worker) takes the next block."""

    def __init__(self, kernel, blocks):
        self.kernel, self.blocks = kernel, blocks
        self.next = 0
        self.left = len(blocks)
        self.lock = _threading.Lock()
        self.done = _threading.Event()
        self.error = None

    def work(self):
        while True:
            with self.lock:
                i = self.next
                self.next += 1
            if i >= len(self.blocks):
                return
            args, out = self.blocks[i]
            try:
                self.kernel(*args, out=out)
            except BaseException as err:  # noqa: B036 - handed to the caller, which re-raises it
                self.error = err
            with self.lock:
                self.left -= 1
                if self.left == 0:
                    self.done.set()


def _worker():
    while True:
        _tickets.get().work()


def _start_workers(n):
    with _pool_lock:
        while _pool["workers"] < n:
            _threading.Thread(target=_worker, name=f"minilora-rowwise-{_pool['workers']}", daemon=True).start()
            _pool["workers"] += 1


def _forget_workers():  # a forked child has none of its parent's threads
    global _tickets, _pool_lock
    _tickets, _pool_lock = _SimpleQueue(), _threading.Lock()
    _pool["workers"] = 0


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_forget_workers)


def _row_block(a, rows, n, lo, hi):
    """Rows lo:hi of ``a`` if its first axis is the rows' axis; otherwise ``a`` whole (γ, a mask, a scalar)."""
    if isinstance(a, numpy.ndarray) and a.ndim >= rows.ndim and a.shape[0] == n:
        return a[lo:hi]
    return a


def rowwise(kernel, *args, out):
    """Run ``kernel(*args, out=out)``, cut into blocks of rows computed by several threads; returns ``out``.

    out: the output array, or a tuple of them, allocated by the caller; their first axis is the rows.
    The kernel must treat each row on its own (element-wise, or reductions within a row) and write every
    output through ``out=`` or in place. An argument is cut into the same row blocks when its first axis is
    the rows' axis (the length of out's first axis and at least out's number of dimensions); anything else
    (γ, β, a mask, a scalar) goes whole to every block.
    """
    outs = out if isinstance(out, tuple) else (out,)
    rows = outs[0]
    arrays = [a for a in args + outs if hasattr(a, "shape")]
    threads = get_threads()
    n = rows.shape[0] if rows.ndim else 0
    largest = max(a.size for a in arrays)
    if threads == 1 or n < 2 or largest < _pool["min_elements"] or any(type(a) is not numpy.ndarray for a in arrays):
        kernel(*args, out=out)
        return out
    if not _pool["measure"]:
        _in_blocks(kernel, args, out, outs, threads, largest)
        return out
    if len(_choices) > 4096:  # many sizes (e.g. generation, one T per token): start the timings over
        _choices.clear()
    choice = _choices.setdefault((kernel, largest), _Choice())
    pooled = choice.use_pool()
    start = _time.perf_counter()
    if pooled:
        _in_blocks(kernel, args, out, outs, threads, largest)
    else:
        kernel(*args, out=out)
    choice.record(pooled, _time.perf_counter() - start)
    return out


def _in_blocks(kernel, args, out, outs, threads, largest):
    """kernel(*args, out=out) as row blocks computed by the caller and up to threads - 1 pool workers."""
    rows = outs[0]
    n = rows.shape[0]
    n_blocks = min(n, max(threads, -(-largest // POOL_BLOCK_ELEMENTS)))
    edges = [n * i // n_blocks for i in range(n_blocks + 1)]
    blocks = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        block_out = tuple(_row_block(o, rows, n, lo, hi) for o in outs)
        blocks.append((tuple(_row_block(a, rows, n, lo, hi) for a in args),
                       block_out if isinstance(out, tuple) else block_out[0]))
    job = _Job(kernel, blocks)
    helpers = min(threads, n_blocks) - 1
    _start_workers(helpers)
    for _ in range(helpers):
        _tickets.put(job)
    job.work()
    job.done.wait()
    if job.error is not None:
        raise job.error
