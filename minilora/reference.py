"""The reference LoRA layer in the framework-neutral signature that verify, golden and the exercises share.

NumPy arrays in, NumPy arrays out: x (..., d_in), W (d_out, d_in), b (d_out,), A (r, d_in), B (d_out, r),
a scale s (α/r or α/√r), an upstream gradient g (..., d_out). Everything is computed in float64 with minilora's
own primitives (``lora.lora_linear`` = ``ops.linear`` + ``ops.lora_delta``), whatever the inputs' dtype: a
float32 case is judged against the exact answer for its float32 inputs, not against another float32 rounding.
"""

from __future__ import annotations

import numpy as np
from autograd import make_vjp

from .lora import delta_weight
from .lora import lora_linear as _lora_linear


def f64(a):
    """a as a float64 NumPy array (None stays None)."""
    return None if a is None else np.asarray(a, dtype=np.float64)


def lora_layer(W, b, scale, mask=None):
    """f(x, A, B) = x Wᵀ + b + s·((x ⊙ mask) Aᵀ) Bᵀ with W, b, s and the dropout mask fixed: differentiable in
    x, A and B (autograd), so the same function gives the forward and, through ``vjp_xab``, the VJP."""
    layer = {"W": f64(W), "b": None if b is None else f64(b)}
    mask = f64(mask)
    return lambda x, A, B: _lora_linear(x, layer, {"A": A, "B": B}, float(scale), mask)  # (..., d_out)


def vjp_xab(f, x, A, B, g):
    """(dx, dA, dB) of L = Σ g ⊙ f(x, A, B), by reverse mode through f, in float64."""
    vjp, _ = make_vjp(f, argnum=(0, 1, 2))(f64(x), f64(A), f64(B))
    return tuple(vjp(f64(g)))


def lora_linear(x, W, b, A, B, scale, mask=None):
    """h = x Wᵀ + b + s·((x ⊙ mask) Aᵀ) Bᵀ (mask: dropout on the adapter's input, None = off). x (..., d_in) ->
    h (..., d_out), float64."""
    return lora_layer(W, b, scale, mask)(f64(x), f64(A), f64(B))


def lora_linear_vjp(x, W, b, A, B, scale, g, mask=None):
    """(dx, dA, dB) of L = Σ g ⊙ h for h = lora_linear(x, W, b, A, B, scale, mask): shaped like x, A, B."""
    return vjp_xab(lora_layer(W, b, scale, mask), x, A, B, g)


def merge(W, A, B, scale):
    """W' = W + s·B A, (d_out, d_in), float64 (``lora.delta_weight``)."""
    return f64(W) + delta_weight({"A": f64(A), "B": f64(B)}, float(scale))


def unmerge(W_merged, A, B, scale):
    """W = W' − s·B A, (d_out, d_in), float64."""
    return f64(W_merged) - delta_weight({"A": f64(A), "B": f64(B)}, float(scale))
