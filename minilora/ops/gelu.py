"""GELU, tanh approximation (GPT-2's "gelu_new"): 0.5 x (1 + tanh(c (x + 0.044715 x^3))), c = √(2/π)."""

import math

from autograd.extend import defvjp, primitive

from ..backend import array_module

_C = math.sqrt(2.0 / math.pi)  # Python floats keep float32 arrays float32 (NumPy 2's weak scalars)


def _tanh_inner(x):
    """t = tanh(c (x + 0.044715 x^3)), written as x·x·x and in place: x**3 calls pow(), ten times slower."""
    xp = array_module(x)
    t = x * x  # (...)
    t *= 0.044715 * _C
    t += _C
    t *= x
    return xp.tanh(t, out=t)


@primitive
def gelu(x):
    """x (...) -> (...)."""
    y = _tanh_inner(x)
    y += 1.0
    y *= x
    y *= 0.5
    return y


def _gelu_vjp(y, x):
    def vjp(g):  # g (...); the derivative is formed in the backward pass, not kept from the forward
        t = _tanh_inner(x)
        # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t²) c (1 + 3·0.044715 x²)
        dydx = x * x
        dydx *= 3 * 0.044715 * _C
        dydx += _C
        dydx *= x
        dydx *= 1.0 - t * t
        dydx += 1.0 + t
        dydx *= 0.5
        dydx *= g
        return dydx  # (...)

    return vjp


defvjp(gelu, _gelu_vjp)
