"""Exercise: a finite-difference gradient, to check any hand-derived gradient with.

    numerical_gradient(f, x, eps) -> array shaped like x
        entry k: (f(x + eps·e_k) − f(x − eps·e_k)) / (2·eps), for a scalar function f of an array x

The checker compares with the same central difference computed by the reference, not with the exact
derivative, so the only differences left are rounding (≈ 1e-16·|f|/eps): a one-sided difference (error of
order eps) or a wrong divisor stands out by orders of magnitude. x must come back unchanged.
"""

from __future__ import annotations

import numpy as np

from ..casework import Case, run_cases

TOL = 1e-7  # rounding of a difference quotient: u·|f|/eps ≈ 1e-16·10/1e-3 = 1e-12 relative; the mistakes: ≥ 1e-3


def central(f, x, eps, sided=False, divisor=2.0):
    """The reference: central differences (or, for the mistakes, one-sided ones / a wrong divisor)."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        old = x[k]
        x[k] = old + eps
        up = f(x)
        x[k] = old if sided else old - eps
        down = f(x)
        x[k] = old
        g[k] = (up - down) / (eps if sided else divisor * eps)
    return g


def _functions():
    rng = np.random.default_rng(11)
    c, M = rng.standard_normal(5), rng.standard_normal((4, 3))
    return (
        ("f(x) = Σ c·sin(3x), x (5,)", lambda x: float(np.sum(c * np.sin(3 * x))), rng.standard_normal(5)),
        ("f(X) = Σ tanh(X M), X (3, 4)", lambda X: float(np.sum(np.tanh(X @ M))), rng.standard_normal((3, 4))),
        ("f(X) = log Σ exp(X), X (2, 3)", lambda X: float(np.log(np.sum(np.exp(X)))), rng.standard_normal((2, 3))),
    )


def check_numerical_gradient(fn):
    eps = 1e-3
    cases = [Case(label, (f, x, eps), ("f", "x", "eps"), (central(f, x, eps),), ("grad",), TOL,
                  lambda f=f, x=x: [("fd_one_sided", (central(f, x, eps, sided=True),)),
                                    ("fd_half", (central(f, x, eps, divisor=1.0),))])
             for label, f, x in _functions()]
    return run_cases("numerical_gradient", fn, cases)
