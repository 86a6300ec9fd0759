"""GELU, tanh approximation (GPT-2's "gelu_new"): 0.5 x (1 + tanh(c (x + 0.044715 x^3))), c = √(2/π).

Forward and VJP are kernels that write into ``out`` and work in place on their own temporaries (one pass over
memory per arithmetic step); backend.rowwise runs them on several cores for a large x.
"""

import math

from autograd.extend import defvjp, primitive

from ..backend import array_module, rowwise

_C = math.sqrt(2.0 / math.pi)  # Python floats keep float32 arrays float32 (NumPy 2's weak scalars)
_A = 0.044715


def _tanh_inner(x, out):
    """out = tanh(c (x + 0.044715 x³)) = tanh(x (c + 0.044715 c x²)), in out alone: x**3 would call pow(),
    ten times slower."""
    xp = array_module(x)
    xp.multiply(x, x, out=out)
    out *= _A * _C
    out += _C
    out *= x
    return xp.tanh(out, out=out)


def _gelu_rows(x, out):
    """out = 0.5 x (1 + t)."""
    _tanh_inner(x, out)
    out += 1.0
    out *= x
    out *= 0.5


def _gelu_grad_rows(x, g, out):
    """out = g dy/dx, dy/dx = 0.5 (1 + t) + 0.5 x (1 - t²) c (1 + 3·0.044715 x²) = (1 + t) (0.5 + s (1 - t)),
    s = 0.5 x c (1 + 3·0.044715 x²) (the 0.5 folded into the constants)."""
    xp = array_module(x)
    t = _tanh_inner(x, xp.empty_like(x))
    s = x * x
    s *= 1.5 * _A * _C
    s += 0.5 * _C
    s *= x  # s = 0.5 x c (1 + 3·0.044715 x²)
    xp.multiply(s, t, out=out)  # out as scratch
    s -= out  # s (1 - t)
    s += 0.5
    t += 1.0
    t *= s  # dy/dx
    xp.multiply(t, g, out=out)


def _as_rows(a):
    return a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a  # (N, d): element-wise, so any rows will do


@primitive
def gelu(x):
    """x (...) -> (...)."""
    x2 = _as_rows(x)
    return rowwise(_gelu_rows, x2, out=array_module(x).empty_like(x2)).reshape(x.shape)


def _gelu_vjp(y, x):
    def vjp(g):  # g (...); the derivative is formed in the backward pass, not kept from the forward
        x2 = _as_rows(x)
        return rowwise(_gelu_grad_rows, x2, _as_rows(g), out=array_module(x).empty_like(x2)).reshape(x.shape)

    return vjp


defvjp(gelu, _gelu_vjp)
