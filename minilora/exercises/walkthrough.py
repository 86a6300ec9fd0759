"""The walkthrough: write the LoRA term as an autograd primitive with a hand-derived VJP, then time what the
missing dW buys.

    lora_delta(x, A, B, scale) -> s·(x Aᵀ) Bᵀ       an autograd primitive (autograd.extend.primitive + defvjp)

``check("lora_delta_vjp", lora_delta)`` runs the forward and autograd's reverse pass through the student's
primitive (make_vjp in x, A and B) on verify's cases and compares y, dx, dA, dB with the reference.
``step_times(lora_delta)`` times one gradient step of a stack of frozen linear layers, fully fine-tuned
(gradients for every W) against LoRA (gradients for A and B only, W untraced so ``ops.linear`` never forms
dW = gᵀ x), and returns the ratio.
"""

from __future__ import annotations

import math
import time
import warnings

import autograd.numpy as anp
import numpy as np
from autograd import grad, make_vjp

from .. import reference as ref
from ..cases import linear_cases
from ..casework import Case, run_cases
from ..diagnose import layer_mistakes
from ..ops import linear


def _run_primitive(fn):
    """(x, A, B, scale, g) -> (y, dx, dA, dB) through the student's primitive and autograd's reverse pass, one
    argument traced at a time, so each gradient comes back exactly as the student's VJP returned it."""
    def run(x, A, B, scale, g):
        args, grads = [x, A, B], []
        for i in range(3):
            def f(t, i=i):
                return fn(*args[:i], t, *args[i + 1:], scale)
            with warnings.catch_warnings():  # "output seems independent of input": the report says more
                warnings.simplefilter("ignore", UserWarning)
                vjp, y = make_vjp(f)(args[i])
                grads.append(vjp(g))
        return (y, *grads)
    return run


def _case(c) -> Case:
    zero = np.zeros_like(c.W)  # the LoRA term alone: the layer with W = 0 and no bias
    y = ref.lora_linear(c.x, zero, None, c.A, c.B, c.scale)
    grads = ref.lora_linear_vjp(c.x, zero, None, c.A, c.B, c.scale, c.g)

    def variants():
        out = []
        for key, f in layer_mistakes(zero, None, c.scale, c.shape.r, c.shape.rule):
            out.append((key, (f(*map(ref.f64, (c.x, c.A, c.B))), *ref.vjp_xab(f, c.x, c.A, c.B, c.g))))
        return out

    return Case(c.label, (c.x, c.A, c.B, c.scale, c.g), ("x", "A", "B", "scale", "g"), (y, *grads),
                ("y", "dx", "dA", "dB"), c.tol, variants, c.tags)


def check_lora_delta_vjp(fn):
    if not callable(fn):
        raise TypeError(f"lora_delta_vjp: expected your primitive lora_delta, got {type(fn).__name__}")
    return run_cases("lora_delta_vjp", _run_primitive(fn), [_case(c) for c in linear_cases()])


# ---- what the missing dW buys ------------------------------------------------------------------------------

def stack_loss(Ws, factors, x, lora_delta, scale):
    """½‖h_L‖² for h_{l+1} = tanh(h_l W_lᵀ + s·lora_delta(h_l, A_l, B_l)), h_0 = x; factors None = no adapter."""
    h = x
    for i, W in enumerate(Ws):
        z = linear(h, W)  # (N, d): the frozen path (ops.linear: dW only when W is traced)
        if factors is not None:
            z = z + lora_delta(h, *factors[i], scale)  # (N, d): the low-rank path
        h = anp.tanh(z)
    return 0.5 * anp.sum(h * h)


def step_times(lora_delta, n_layers: int = 4, d: int = 768, n: int = 256, r: int = 8, repeats: int = 5,
               seed: int = 0) -> dict:
    """Median seconds of one gradient step: full fine-tuning (∂/∂W of every layer, no adapter) and LoRA (∂/∂A,
    ∂/∂B, W frozen), on the same stack, interleaved so machine noise falls on both; and their ratio.

    d is wide on purpose: the adapter's products are only r = 8 wide, and BLAS runs such skinny products several
    times slower per FLOP than the d × d ones (measured here: about 4× at d = 256), so at small d the adapter's
    own cost hides what the missing dW saves (d = 256 gives a ratio near 1.2, d = 768 near 1.4)."""
    rng = np.random.default_rng(seed)
    Ws = [(rng.standard_normal((d, d)) / math.sqrt(d)).astype(np.float32) for _ in range(n_layers)]
    factors = [((rng.standard_normal((r, d)) / math.sqrt(d)).astype(np.float32),
                (0.1 * rng.standard_normal((d, r))).astype(np.float32)) for _ in range(n_layers)]
    x = rng.standard_normal((n, d)).astype(np.float32)
    full = grad(lambda Ws: stack_loss(Ws, None, x, lora_delta, 2.0))  # built once
    lora = grad(lambda f: stack_loss(Ws, f, x, lora_delta, 2.0))
    times = {"full": [], "lora": []}
    for _ in range(repeats):
        for name, step, arg in (("full", full, Ws), ("lora", lora, factors)):
            t0 = time.perf_counter()
            step(arg)
            times[name].append(time.perf_counter() - t0)
    out = {k: float(np.median(v)) for k, v in times.items()}
    out["ratio"] = out["full"] / out["lora"]
    return out
