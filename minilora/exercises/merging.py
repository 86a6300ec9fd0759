"""Exercises: fold the adapter into W for inference, and take it out again.

    merge(W, A, B, alpha) -> W_merged          W + (α/r)·B A, a new array; W itself untouched
    unmerge(W_merged, A, B, alpha) -> W        W_merged − (α/r)·B A

After merging, x W_mergedᵀ + b is the adapted layer with no extra matmul at inference; W must survive
unchanged, because it is the frozen base every other adapter (and unmerge) needs.
"""

from __future__ import annotations

from .. import reference as ref
from ..cases import linear_cases
from ..casework import Case, run_cases
from ..diagnose import merge_variants


def _case(c, sign: float) -> Case:
    s, r, alpha = c.scale, c.shape.r, c.shape.alpha
    if sign > 0:
        W, name, want = c.W, "W", ref.merge(c.W, c.A, c.B, s)
    else:
        W, name = ref.merge(c.W, c.A, c.B, s).astype(c.dtype), "W_merged"
        want = ref.unmerge(W, c.A, c.B, s)
    return Case(f"{c.dtype} W{tuple(c.W.shape)} r={r} α={alpha:g}", (W, c.A, c.B, alpha), (name, "A", "B", "alpha"),
                (want,), (("W_merged",) if sign > 0 else ("W",)), c.tol,
                lambda: merge_variants(W, c.A, c.B, s, r, alpha, sign), c.tags, ((name, "merge_in_place"),))


def check_merge(fn):
    return run_cases("merge", fn, [_case(c, +1.0) for c in linear_cases(rule="alpha/r")])


def check_unmerge(fn):
    return run_cases("unmerge", fn, [_case(c, -1.0) for c in linear_cases(rule="alpha/r")])
