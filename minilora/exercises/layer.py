"""Exercises on the LoRA layer itself: its forward (α/r and α/√r) and its VJP.

    lora_forward(x, W, b, A, B, alpha) -> h                     h = x Wᵀ + b + (α/r)·(x Aᵀ) Bᵀ, r = A.shape[0]
    lora_forward_rslora(x, W, b, A, B, alpha) -> h              the same with s = α/√r
    lora_vjp(x, W, b, A, B, alpha, g) -> (dx, dA, dB)           gradients of L = Σ g ⊙ h, s = α/r

The cases are verify's (minilora.cases), with α passed instead of the scale.
"""

from __future__ import annotations

from ..cases import linear_cases
from ..casework import CaseResult, check_result, run_cases
from ..verify import layer_case
from .watch import Tagged, watching


def check_lora_forward(fn):
    cases = [layer_case(c, vjp=False, alpha_arg=True) for c in linear_cases(rule="alpha/r")]
    return run_cases("lora_forward", fn, cases)


def check_lora_forward_rslora(fn):
    cases = [layer_case(c, vjp=False, alpha_arg=True) for c in linear_cases(rule="alpha/sqrt(r)")]
    return run_cases("lora_forward_rslora", fn, cases)


def check_lora_vjp(fn):
    linear = linear_cases(rule="alpha/r")
    report = run_cases("lora_vjp", fn, [layer_case(c, vjp=True, alpha_arg=True) for c in linear])
    report.results.append(watch_for_dW(fn, next(c for c in linear if len(c.x.shape) == 3)))
    return report


def watch_for_dW(fn, c):
    """One extra check: run fn on a case with watched inputs and look for a computed ∂L/∂W."""
    label = "no gradient for the frozen W"
    names = ("x", "W", "b", "A", "B", "alpha", "g")
    values = (c.x, c.W, c.b, c.A, c.B, c.shape.alpha, c.g)
    args = [Tagged(v, {n}) if hasattr(v, "shape") else v for n, v in zip(names, values, strict=True)]
    try:
        with watching(c.W.shape) as found:
            fn(*args)
    except NotImplementedError:
        return CaseResult(label, False, "not implemented", not_implemented=True)
    except Exception:  # fn may not accept an ndarray subclass; its own cases already show its errors
        return check_result(label, True, "not watched (the function did not run on watched arrays)")
    if found:
        return check_result(label, False, f"computed a {found[0]} array from g and x alone: that is ∂L/∂W",
                            ["frozen_w_grad"])
    return check_result(label, True, f"no {c.W.shape} array was computed from g and x")
