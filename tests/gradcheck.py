"""Finite-difference check of a gradient along random directions (directional derivatives).

For a scalar function f of a tree of float64 arrays x and its claimed gradient g (same structure), the
directional derivative along v is <g, v>; the central difference (f(x + εv) - f(x - εv)) / 2ε approximates it
with error O(ε²) + O(machine ε · |f| / ε). Checking a few random directions v tests every component of g at
once, which is what makes whole-model checks cheap.
"""

from __future__ import annotations

import numpy as np
from autograd.misc import flatten


def rounding_floor(f_plus, f_minus, eps):
    """The finest step a central difference can resolve: f(x ± εv) are rounded to multiples of spacing(f), so
    the quotient moves in steps of spacing(f)/(2ε). Two such steps are allowed (the rounding of each side); a
    tolerance below this floor would make a check pass or fail by luck (e.g. a gradient that is exactly zero
    in exact arithmetic, where the difference is pure rounding: 8.9e-10 for a loss of 8.2 at ε = 1e-6)."""
    return 2 * float(np.spacing(max(abs(f_plus), abs(f_minus)))) / (2 * eps)


def directional_check(f, x, grad, rng, n_dirs=3, eps=1e-6, rtol=1e-6, atol=1e-9):
    """Assert <grad, v> == (f(x + eps v) - f(x - eps v)) / (2 eps) for n_dirs random unit directions v.

    f: tree -> scalar; x, grad: trees of the same structure (arrays, dicts, lists, tuples); rng: a numpy
    Generator (every direction comes from it). Returns the list of (analytic, numeric) pairs.
    """
    flat_x, unflatten = flatten(x)
    flat_g, _ = flatten(grad)
    assert flat_x.shape == flat_g.shape, f"gradient has {flat_g.size} entries, input has {flat_x.size}"
    assert flat_x.dtype == np.float64, "finite differences need float64"
    pairs = []
    for _ in range(n_dirs):
        v = rng.standard_normal(flat_x.shape)
        v /= np.linalg.norm(v)
        f_plus, f_minus = float(f(unflatten(flat_x + eps * v))), float(f(unflatten(flat_x - eps * v)))
        numeric = (f_plus - f_minus) / (2 * eps)
        analytic = float(flat_g @ v)
        tol = atol + rounding_floor(f_plus, f_minus, eps) + rtol * max(abs(numeric), abs(analytic))
        assert abs(analytic - numeric) <= tol, (
            f"directional derivative mismatch: analytic {analytic!r}, finite difference {numeric!r} "
            f"(|diff| {abs(analytic - numeric):.3g} > tol {tol:.3g})"
        )
        pairs.append((analytic, numeric))
    return pairs
