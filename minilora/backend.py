"""The array module that minilora computes with: NumPy on the CPU, CuPy (or any module with NumPy's API) elsewhere.

Two rules decide where an array lives:

* The data decides where a computation runs. Every primitive asks ``array_module(x)`` for the module that owns
  its input and computes with that module, so the same code runs wherever the data lives.
* The selected backend decides where new arrays go. ``get_xp()`` is that module: NumPy unless ``use(...)`` or
  the environment variable ``MINILORA_BACKEND`` chose another. ``init_params``, ``init_lora``, the LoRA dropout
  masks and the file loaders draw or read on the host and move the result with ``to_device``, so a seed gives
  the same model on every backend. ``to_host(tree)`` brings a tree back; checkpoints are written from host
  arrays only.

    use("numpy")            the default
    use("cupy")             CuPy on an NVIDIA GPU (clear ImportError / RuntimeError when missing or no GPU)
    use(module)             any module with NumPy's API and an ``ndarray`` type (the tests' CPU stand-in)

A non-NumPy module is registered with autograd through its public extension points: its array type is boxed
like an ndarray (``ArrayBox.register``) and gets a vector space whose zeros and ones come from the array's own
module (``VSpace.register``). autograd's own ``ArrayVSpace`` cannot be reused: its constructor calls
``np.asarray`` on the value, an implicit copy to the host that CuPy refuses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import sys
import types

import numpy
from autograd.extend import VSpace
from autograd.numpy.numpy_boxes import ArrayBox
from autograd.numpy.numpy_vspaces import ArrayVSpace
from autograd.tracer import getval

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""The environment variables that set the BLAS libraries' thread counts. Thread counts change the order of BLAS
reductions, so a bit-exact rerun needs the same settings: the CLI's records and compare's measurements keep them."""

ENV_VAR = "MINILORA_BACKEND"
BACKENDS = ("numpy", "cupy")
CUPY_INSTALL = "pip install cupy-cuda12x (CUDA 12) or cupy-cuda13x (CUDA 13), matching the CUDA of your driver"
CUPY_MIN_MAJOR = 13  # numpy.add.at on a CuPy array (autograd's gradient of x[i]) dispatches to CuPy from 13 on

_xp = None  # the selected module; None until use() is called or MINILORA_BACKEND is first read
_module_of: dict = {numpy.ndarray: numpy}  # array type -> the module that owns it


# ---- choosing the backend ----------------------------------------------------------------------------------

def get_xp():
    """The module new arrays are placed on: NumPy unless ``use(...)`` or ``MINILORA_BACKEND`` chose another."""
    if _xp is None:
        use(backend_from_environment())
    return _xp


def backend_from_environment() -> str:
    """The backend named by ``MINILORA_BACKEND`` ("numpy" when unset or empty)."""
    name = os.environ.get(ENV_VAR, "").strip().lower() or "numpy"
    if name not in BACKENDS:
        raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {os.environ[ENV_VAR]!r}")
    return name


def use(backend):
    """Select the backend: ``"numpy"``, ``"cupy"``, or a module object with NumPy's API. Returns the module.

    ``"cupy"`` raises ImportError when CuPy is missing or older than 13, and RuntimeError when it sees no GPU;
    both messages say what to install or where to run.
    """
    global _xp
    if isinstance(backend, str):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or a module, got {backend!r}")
        module = numpy if backend == "numpy" else import_cupy()
    elif isinstance(backend, types.ModuleType):
        module = backend
        if module is not numpy and module.__name__ == "cupy":
            module = import_cupy()
    else:
        raise TypeError(f"backend must be 'numpy', 'cupy' or a module with NumPy's API, got {type(backend).__name__}")
    if module is not numpy:
        register(module)
    _xp = module
    return module


def import_cupy():
    """CuPy, checked: installed, version >= 13, and at least one GPU visible. Clear errors otherwise."""
    try:
        import cupy
    except ImportError as err:
        raise ImportError(f"backend 'cupy' needs CuPy, which is not installed ({err}): {CUPY_INSTALL}") from None
    version = getattr(cupy, "__version__", "0")
    if int(version.split(".")[0]) < CUPY_MIN_MAJOR:
        raise ImportError(f"backend 'cupy' needs CuPy >= {CUPY_MIN_MAJOR}, found {version}: {CUPY_INSTALL}")
    try:
        n_gpus = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError without a driver, or a broken CUDA install
        raise RuntimeError(f"backend 'cupy': CuPy {version} is installed but sees no CUDA GPU "
                           f"({type(err).__name__}: {err}); run on a machine with an NVIDIA GPU, "
                           "or choose the numpy backend") from None
    if n_gpus < 1:
        raise RuntimeError(f"backend 'cupy': CuPy {version} is installed but sees no CUDA GPU "
                           "(getDeviceCount() = 0); run on a machine with an NVIDIA GPU, or choose the numpy backend")
    return cupy


def register(module) -> None:
    """Make ``module``'s arrays known to array_module and to autograd (box type and vector space). Idempotent."""
    for name in ("ndarray", "asarray", "zeros", "ones"):
        if not hasattr(module, name):
            raise TypeError(f"backend module {module.__name__!r} has no {name!r}: it needs NumPy's API")
    array_type = module.ndarray
    if not isinstance(array_type, type) or issubclass(array_type, numpy.ndarray):
        raise TypeError(f"backend module {module.__name__!r}: ndarray must be its own array type, "
                        "not numpy.ndarray or a subclass of it")
    if not (hasattr(module, "asnumpy") or hasattr(array_type, "get")):
        raise TypeError(f"backend module {module.__name__!r} needs asnumpy() or ndarray.get() to copy to the host")
    _module_of[array_type] = module
    if array_type not in VSpace.mappings:
        ArrayBox.register(array_type)
        VSpace.register(array_type, lambda value: DeviceVSpace(value, module))


class DeviceVSpace(ArrayVSpace):
    """autograd's vector space of a device array: ArrayVSpace, except that it reads shape and dtype without
    converting the value to NumPy, and every array it makes (the zero and one gradients autograd starts from
    and accumulates into) comes from the array's own module."""

    def __init__(self, value, xp):
        self.shape = tuple(value.shape)
        self.dtype = value.dtype
        self.xp = xp
        if numpy.dtype(self.dtype).kind == "c":
            raise TypeError("minilora's device vector space is real: complex device arrays are not supported")

    def zeros(self):
        return self.xp.zeros(self.shape, dtype=self.dtype)

    def ones(self):
        return self.xp.ones(self.shape, dtype=self.dtype)

    def standard_basis(self):
        for idx in numpy.ndindex(*self.shape):
            v = self.zeros()
            v[idx] = 1
            yield v

    def randn(self):  # drawn on the host (global NumPy stream, as autograd's own), then moved
        return self.xp.asarray(numpy.random.randn(*self.shape).astype(self.dtype))

    def _inner_prod(self, x, y):
        return self.xp.vdot(x, y)


# ---- which module owns an array ----------------------------------------------------------------------------

def array_module(*arrays):
    """The module that owns these arrays: the first non-NumPy one found, else numpy (also for scalars, lists)."""
    for a in arrays:
        module = _module_of.get(type(a))
        if module is None:
            module = _module_of_other(a)
        if module is not numpy:
            return module
    return numpy


def _module_of_other(a):
    if type(a).__module__.startswith("cupy"):  # a CuPy array made outside minilora, before any use("cupy")
        import cupy

        register(cupy)
        return cupy
    value = getval(a)
    return numpy if value is a else array_module(value)


# ---- moving trees ------------------------------------------------------------------------------------------

def to_device(tree, like=None):
    """``tree`` with every NumPy array moved to the selected backend (or to the module that owns ``like``).

    Trees are dicts, lists, tuples and dataclass instances (a task's Batch); other leaves (ints, floats, None,
    arrays already on a device) stay as they are. With NumPy as the target nothing is copied: the same tree
    comes back.
    """
    xp = get_xp() if like is None else array_module(like)
    if xp is numpy:
        return tree
    return _map(tree, lambda a: xp.asarray(a) if isinstance(a, numpy.ndarray) else a)


def to_host(tree):
    """``tree`` with every device array copied to a NumPy array (NumPy arrays and other leaves unchanged)."""
    return _map(tree, _leaf_to_host)


def to_numpy(a):
    """A NumPy array of one array from any backend (identity for NumPy arrays)."""
    return numpy.asarray(_leaf_to_host(a))


def _leaf_to_host(a):
    module = array_module(a)
    if module is numpy:
        return a
    return module.asnumpy(a) if hasattr(module, "asnumpy") else a.get()


def _map(tree, fn):
    if isinstance(tree, dict):
        return {k: _map(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        items = [_map(v, fn) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)  # namedtuples too
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return dataclasses.replace(tree, **{f.name: _map(getattr(tree, f.name), fn)
                                            for f in dataclasses.fields(tree) if f.init})
    return fn(tree)


# ---- the command line: one flag, one call ------------------------------------------------------------------

def add_backend_argument(parser):
    """Add ``--backend {numpy,cupy}`` to an argparse parser (default: $MINILORA_BACKEND, else numpy)."""
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help=f"array backend: numpy (CPU) or cupy (NVIDIA GPU); default ${ENV_VAR}, else numpy")
    return parser


def select_from_args(args, prog: str = "minilora"):
    """``use()`` the backend named by ``args.backend`` or $MINILORA_BACKEND. A backend that cannot be used
    ends the program with one line on stderr (exit status 2), not a traceback."""
    try:
        return use(getattr(args, "backend", None) or backend_from_environment())
    except (ImportError, RuntimeError, ValueError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def describe(xp=None) -> str:
    """One line naming a backend module and, for CuPy, the GPU: for logs and benchmark headers."""
    xp = get_xp() if xp is None else xp
    version = getattr(xp, "__version__", "?")
    if xp.__name__ != "cupy":
        return f"{xp.__name__} {version}"
    props = xp.cuda.runtime.getDeviceProperties(xp.cuda.runtime.getDevice())
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return f"cupy {version} on {name} ({props['totalGlobalMem'] / 2**30:.0f} GiB)"


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
