"""fake_gpu: a strict CPU stand-in for CuPy, so the GPU code path is tested on machines without a GPU.

``minilora.backend.use(fake_gpu)`` plugs it in. Its arrays (``fake_gpu.ndarray``) hold a NumPy array inside, but
they are not ndarrays (no subclass) and, like CuPy's, they refuse to become one implicitly:

* ``np.asarray(x)`` / ``np.array(x)`` raise (``__array__`` raises, with CuPy's message);
* a NumPy array mixed into their arithmetic, passed to a ufunc or NumPy function next to them, used as an index
  or assigned into them raises ``HostArrayError`` (CuPy raises TypeError there);
* the only ways to the host are explicit: ``x.get()``, ``fake_gpu.asnumpy(x)``, ``tolist()``, and reading one
  element (``float(x)``, ``int(x)``, ``bool(x)``, ``x.item()``), which CuPy allows and which synchronises.

Like CuPy, they implement ``__array_ufunc__`` (``__call__`` and the ufunc methods ``at``, ``reduce``, ``outer``,
...) and ``__array_function__``, so ``np.exp(x)``, ``np.add.at(x, ...)`` or ``np.linalg.norm(x)`` dispatch to
the stand-in; reductions return 0-d arrays, never NumPy scalars. Underneath, every operation is NumPy's own
on the inner arrays, so every result is bit-identical to NumPy's.

Every crossing is counted in ``transfers`` (copies to the host and their sizes, one-element reads, copies to
the device). ``no_host_copies()`` makes a copy of more than one element to the host an error: a primitive that
round-trips through the host with an explicit ``.get()`` (which CuPy would allow, at the price of a
synchronisation and a PCIe copy) is caught too.
"""

from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass, field

import numpy

__version__ = "0"  # not CuPy: backend.use() checks versions of a module named "cupy" only

IMPLICIT = ("Implicit conversion to a NumPy array is not allowed (fake_gpu, like CuPy). "
            "Please use `.get()` to construct a NumPy array explicitly.")


class HostArrayError(TypeError):
    """A NumPy (host) array met a device array: CuPy refuses the implicit copy to the device."""


class HostCopyError(RuntimeError):
    """An array of more than one element was copied to the host inside ``no_host_copies()``."""


@dataclass
class Transfers:
    to_host: int = 0
    """Copies of whole arrays to the host (get, asnumpy, tolist)."""
    to_host_elements: int = 0
    to_host_shapes: list = field(default_factory=list)
    scalar_reads: int = 0
    """One-element reads: float(), int(), bool(), item() (each a synchronisation on a GPU)."""
    to_device: int = 0
    """Copies of host data to the device (asarray/array of NumPy arrays, lists or scalars)."""
    to_device_elements: int = 0
    forbid_host_copies: bool = False

    def reset(self):
        forbid = self.forbid_host_copies
        self.__init__()
        self.forbid_host_copies = forbid


transfers = Transfers()


@contextlib.contextmanager
def no_host_copies():
    """Inside: a copy of more than one element to the host raises HostCopyError."""
    before = transfers.forbid_host_copies
    transfers.forbid_host_copies = True
    try:
        yield transfers
    finally:
        transfers.forbid_host_copies = before


def _copy_to_host(a: numpy.ndarray, how: str) -> numpy.ndarray:
    if transfers.forbid_host_copies and a.size > 1:
        raise HostCopyError(f"fake_gpu: {how} copied a {a.shape} {a.dtype} array to the host inside no_host_copies()")
    transfers.to_host += 1
    transfers.to_host_elements += a.size
    transfers.to_host_shapes.append(a.shape)
    return a.copy()


def _read_scalar(a: numpy.ndarray, how: str):
    if a.size != 1:
        raise TypeError(f"fake_gpu: {how} needs an array of one element, got shape {a.shape}")
    transfers.scalar_reads += 1
    return a.reshape(()).item()


# ---- wrapping and unwrapping ---------------------------------------------------------------------------------

def _refuse(x, where: str):
    raise HostArrayError(f"fake_gpu: a NumPy array {x.shape} {x.dtype} reached {where} next to device arrays; "
                         "move it explicitly (minilora.backend.to_device / xp.asarray)")


def _unwrap(x, where: str):
    t = type(x)
    if t is ndarray:
        return x._a
    if t is list or t is tuple:
        return t(_unwrap(v, where) for v in x)
    if isinstance(x, numpy.ndarray):
        _refuse(x, where)
    return x


def _wrap(x):
    if isinstance(x, numpy.ndarray):
        return ndarray._of(x)
    if isinstance(x, numpy.generic):  # CuPy returns 0-d arrays, never NumPy scalars
        return ndarray._of(numpy.asarray(x))
    if isinstance(x, tuple):
        items = [_wrap(v) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _is_scalar(x) -> bool:
    return isinstance(x, (numbers.Number, numpy.generic)) and not isinstance(x, numpy.ndarray)


class _Function:
    """A NumPy function on device arrays: unwrap, call NumPy, wrap (creation functions allocate 'on the device')."""

    def __init__(self, fn, name):
        self._fn, self.__name__ = fn, name

    def __call__(self, *args, **kwargs):
        where = f"fake_gpu.{self.__name__}"
        return _wrap(self._fn(*_unwrap(list(args), where), **{k: _unwrap(v, where) for k, v in kwargs.items()}))

    def __repr__(self):
        return f"<fake_gpu function {self.__name__}>"


class _Ufunc(_Function):
    """A ufunc of the stand-in: callable, with the methods CuPy's ufuncs have (at, reduce, outer, accumulate)."""

    def __call__(self, *args, **kwargs):
        return _apply_ufunc(self._fn, "__call__", args, kwargs)

    def at(self, a, indices, b=None):
        return _apply_ufunc(self._fn, "at", (a, indices) if b is None else (a, indices, b), {})

    def reduce(self, *args, **kwargs):
        return _apply_ufunc(self._fn, "reduce", args, kwargs)

    def accumulate(self, *args, **kwargs):
        return _apply_ufunc(self._fn, "accumulate", args, kwargs)

    def outer(self, *args, **kwargs):
        return _apply_ufunc(self._fn, "outer", args, kwargs)


def _index(idx):
    """An index for the inner array: device index arrays unwrap, host (NumPy) index arrays are refused."""
    if type(idx) is ndarray:
        return idx._a
    if type(idx) is tuple:
        return tuple(_index(i) for i in idx)
    if isinstance(idx, numpy.ndarray):
        _refuse(idx, "an index")
    return idx


def _apply_ufunc(ufunc, method, inputs, kwargs):
    where = f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
    out = kwargs.get("out")
    outs = out if isinstance(out, tuple) else (() if out is None else (out,))
    operands = list(inputs)
    if method == "at":  # (a, indices[, b]): the indices may be slices and tuples
        operands = [inputs[0]] + list(inputs[2:])
    for x in operands + list(outs):
        if isinstance(x, numpy.ndarray):
            _refuse(x, where)
        if type(x) is not ndarray and not _is_scalar(x):
            return NotImplemented  # an autograd box, say: let its own __array_ufunc__ handle the call
    args = [_unwrap(x, where) for x in inputs]
    if method == "at":
        args[1] = _index(inputs[1])
    kw = {k: _unwrap(v, where) for k, v in kwargs.items() if k != "out"}
    if outs:
        kw["out"] = tuple(o._a for o in outs)
    result = getattr(ufunc, method)(*args, **kw)
    if method == "at":
        return None
    if outs:
        return outs[0] if len(outs) == 1 else outs
    return _wrap(result)


# ---- the array -----------------------------------------------------------------------------------------------

def _binary(ufunc):
    def op(self, other):
        return _apply_ufunc(ufunc, "__call__", (self, other), {})

    def rop(self, other):
        return _apply_ufunc(ufunc, "__call__", (other, self), {})

    def iop(self, other):
        result = _apply_ufunc(ufunc, "__call__", (self, other), {"out": (self,)})
        return self if result is not NotImplemented else NotImplemented

    return op, rop, iop


def _method(name):
    def method(self, *args, **kwargs):
        where = f"fake_gpu.ndarray.{name}"
        result = getattr(self._a, name)(*_unwrap(list(args), where), **{k: _unwrap(v, where)
                                                                          for k, v in kwargs.items()})
        return self if result is self._a else _wrap(result)

    method.__name__ = name
    return method


class ndarray:  # noqa: N801 - the name CuPy and NumPy use
    """An array 'on the device': a NumPy array inside, no implicit way out."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100.0
    __hash__ = None

    def __init__(self, shape, dtype=float):  # like cupy.ndarray(shape, dtype): uninitialised memory
        self._a = numpy.empty(shape, dtype=dtype)

    @classmethod
    def _of(cls, a: numpy.ndarray) -> "ndarray":
        obj = object.__new__(cls)
        obj._a = a
        return obj

    # -- what CuPy refuses, and what it allows explicitly
    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT)

    def get(self, stream=None):
        return _copy_to_host(self._a, ".get()")

    def tolist(self):
        return _copy_to_host(self._a, ".tolist()").tolist()

    def item(self):
        return _read_scalar(self._a, ".item()")

    def __float__(self):
        return float(_read_scalar(self._a, "float()"))

    def __int__(self):
        return int(_read_scalar(self._a, "int()"))

    def __complex__(self):
        return complex(_read_scalar(self._a, "complex()"))

    def __bool__(self):
        return bool(_read_scalar(self._a, "bool()"))

    def __format__(self, spec):
        return format(self.item(), spec) if self._a.size == 1 else repr(self)

    def __repr__(self):  # no copy to the host: shape and dtype only
        return f"fake_gpu.ndarray(shape={self._a.shape}, dtype={self._a.dtype})"

    __str__ = __repr__

    # -- protocols
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _apply_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        for t in types:
            if issubclass(t, numpy.ndarray):
                raise HostArrayError(f"fake_gpu: numpy.{func.__name__} got a NumPy array next to device arrays; "
                                     "move it explicitly (minilora.backend.to_device / xp.asarray)")
            if t is not ndarray:
                return NotImplemented
        where = f"numpy.{func.__name__}"
        return _wrap(func(*_unwrap(list(args), where), **{k: _unwrap(v, where) for k, v in kwargs.items()}))

    # -- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: ndarray._of(self._a.T))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (ndarray._of(numpy.asarray(self._a[i])) for i in range(len(self._a)))

    def __getitem__(self, idx):
        return _wrap(self._a[_index(idx)])

    def __setitem__(self, idx, value):
        if isinstance(value, numpy.ndarray):
            _refuse(value, "an assignment")
        self._a[_index(idx)] = value._a if type(value) is ndarray else value

    def __neg__(self):
        return _apply_ufunc(numpy.negative, "__call__", (self,), {})

    def __pos__(self):
        return _apply_ufunc(numpy.positive, "__call__", (self,), {})

    def __abs__(self):
        return _apply_ufunc(numpy.absolute, "__call__", (self,), {})

    def __invert__(self):
        return _apply_ufunc(numpy.invert, "__call__", (self,), {})


for _name, _uf in (("add", numpy.add), ("sub", numpy.subtract), ("mul", numpy.multiply),
                   ("truediv", numpy.true_divide), ("floordiv", numpy.floor_divide), ("mod", numpy.remainder),
                   ("pow", numpy.power), ("matmul", numpy.matmul), ("and", numpy.bitwise_and),
                   ("or", numpy.bitwise_or), ("xor", numpy.bitwise_xor)):
    _op, _rop, _iop = _binary(_uf)
    setattr(ndarray, f"__{_name}__", _op)
    setattr(ndarray, f"__r{_name}__", _rop)
    setattr(ndarray, f"__i{_name}__", _iop)
for _name, _uf in (("eq", numpy.equal), ("ne", numpy.not_equal), ("lt", numpy.less), ("le", numpy.less_equal),
                   ("gt", numpy.greater), ("ge", numpy.greater_equal)):
    setattr(ndarray, f"__{_name}__", _binary(_uf)[0])
for _name in ("reshape", "transpose", "swapaxes", "astype", "copy", "ravel", "flatten", "squeeze", "sum", "mean",
              "max", "min", "argmax", "argmin", "all", "any", "cumsum", "prod", "std", "var", "dot", "clip", "fill",
              "take", "repeat", "nonzero", "round", "conj", "diagonal", "trace", "argsort", "view"):
    setattr(ndarray, _name, _method(_name))


# ---- the module's functions ----------------------------------------------------------------------------------

def asarray(a, dtype=None, order=None):
    """Host data -> a device array (a counted copy); a device array comes back as it is (or cast)."""
    if type(a) is ndarray:
        return a if dtype is None or numpy.dtype(dtype) == a.dtype else a.astype(dtype)
    host = numpy.array(a, dtype=dtype, order=order or "K", copy=True)
    transfers.to_device += 1
    transfers.to_device_elements += host.size
    return ndarray._of(host)


def array(a, dtype=None, copy=True, order="K"):
    if type(a) is ndarray:
        return ndarray._of(numpy.array(a._a, dtype=dtype, copy=copy, order=order))
    return asarray(a, dtype=dtype, order=order)


def asnumpy(a):
    """A device array -> a NumPy copy (counted); anything else through numpy.asarray."""
    return a.get() if type(a) is ndarray else numpy.asarray(a)


class _Namespace:
    """fake_gpu.linalg: numpy.linalg's functions on device arrays."""

    def __init__(self, module, prefix):
        self._module, self._prefix = module, prefix

    def __getattr__(self, name):
        return _Function(getattr(self._module, name), f"{self._prefix}.{name}")


linalg = _Namespace(numpy.linalg, "linalg")
_NOT_OFFERED = {"random", "fft", "ma", "polynomial", "testing", "lib", "char", "rec", "ctypeslib", "matrix"}


def __getattr__(name):
    """Everything else of NumPy's namespace: ufuncs and functions wrapped; dtypes and constants as they are."""
    if name.startswith("__") or name in _NOT_OFFERED or not hasattr(numpy, name):
        raise AttributeError(f"module 'fake_gpu' has no attribute {name!r}")
    obj = getattr(numpy, name)
    if isinstance(obj, numpy.ufunc):
        wrapped = _Ufunc(obj, name)
    elif callable(obj) and not isinstance(obj, type):
        wrapped = _Function(obj, name)
    else:
        wrapped = obj  # float32, dtype, inf, newaxis: the same objects as NumPy's (as in CuPy)
    globals()[name] = wrapped
    return wrapped
