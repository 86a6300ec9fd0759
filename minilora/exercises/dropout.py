"""Exercise: LoRA dropout, on the adapter's input only and only while training.

    lora_dropout(x, W, b, A, B, alpha, dropout, training) -> h
        training: h = x Wᵀ + b + (α/r)·(dropout(x) Aᵀ) Bᵀ;   evaluation: h = x Wᵀ + b + (α/r)·(x Aᵀ) Bᵀ

``dropout`` is handed in by the checker: a function that multiplies an array shaped like x by a fixed mask
(0 or 1/(1 − p)). The student never draws random numbers, so nobody has to match a random stream, and each
dropout mistake becomes a definite, checkable result.
"""

from __future__ import annotations

import numpy as np

from .. import reference as ref
from ..cases import dropout_mask, linear_cases
from ..casework import Case, run_cases

P = 0.2  # 1/(1 - p) = 1.25 is exact in binary


class Dropout:
    """x -> x ⊙ mask for an x of the mask's shape; any other shape is an error that says what dropout acts on."""

    def __init__(self, mask):
        self.mask = mask

    def __call__(self, t):
        if np.shape(t) != self.mask.shape:
            raise ValueError(f"dropout acts on the adapter's input x, shape {self.mask.shape}; "
                             f"it was given an array of shape {np.shape(t)}")
        return t * self.mask

    def __repr__(self):
        return f"<dropout p={P} on x of shape {self.mask.shape}>"


def _case(c, training: bool) -> Case:
    mask = dropout_mask(np.random.default_rng([c.index, 7]), c.x.shape, P, c.dtype)
    s, r, alpha = c.scale, c.shape.r, c.shape.alpha
    on = lambda scale=s: ref.lora_linear(c.x, c.W, c.b, c.A, c.B, scale, mask)  # dropout on the adapter's x
    off = lambda scale=s: ref.lora_linear(c.x, c.W, c.b, c.A, c.B, scale)  # no dropout

    def variants():
        scales = [("scale_missing", 1.0), ("alpha_not_divided", alpha), ("rslora_for_lora", alpha / np.sqrt(r))]
        if not training:
            return [("dropout_at_eval", (on(),))] + [(k, (off(v),)) for k, v in scales]
        both_paths = ref.lora_linear(c.x * mask, c.W, c.b, c.A, c.B, s)  # the mask on W's input too
        return ([("dropout_missing", (off(),)), ("dropout_frozen_path", (both_paths,))]
                + [(k, (on(v),)) for k, v in scales])

    return Case(f"{'training' if training else 'evaluation'} {c.label}",
                (c.x, c.W, c.b, c.A, c.B, alpha, Dropout(mask), training),
                ("x", "W", "b", "A", "B", "alpha", "dropout", "training"),
                (on() if training else off(),), ("h",), c.tol, variants, c.tags | {"training" if training else "eval"})


def check_lora_dropout(fn):
    cases = linear_cases(rule="alpha/r")  # (shape 0 float32, shape 0 float64, shape 1 float32, ...)
    cases = [c for i, c in enumerate(cases) if (i // 2) % 2 == i % 2]  # every shape once, the dtypes alternating
    return run_cases("lora_dropout", fn, [_case(c, t) for c in cases for t in (True, False)])
