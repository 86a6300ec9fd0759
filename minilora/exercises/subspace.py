"""Exercise: the paper's subspace similarity (Section 7.2).

    subspace_similarity(A1, A2, i, j) -> float
        φ(A1, A2, i, j) = ‖U1ᵢᵀ U2ⱼ‖²_F / min(i, j),  U1ᵢ: the top-i right-singular vectors of A1 (r1, d_in)

The right-singular vectors of A (r, d_in) are the rows of Vh in A = U Σ Vh (numpy.linalg.svd), in order of
decreasing singular value. φ is 1 when the smaller subspace lies inside the larger and 0 when they are
orthogonal; it does not depend on the signs numpy gives the singular vectors.
"""

from __future__ import annotations

import numpy as np

from ..analysis import subspace_similarity
from ..casework import Case, run_cases

TOL = 1e-9  # float64 SVDs of 20-wide matrices agree to ~1e-14; φ is in [0, 1], errors are absolute (floor 1)


def _matrices():
    rng = np.random.default_rng([7, 2])
    A1 = rng.standard_normal((4, 20))
    mix = rng.standard_normal((2, 4))
    A2 = np.vstack([mix @ A1 + 0.3 * rng.standard_normal((2, 20)), rng.standard_normal((6, 20))])  # (8, 20)
    A3 = np.vstack([A1[:2] + 0.5 * rng.standard_normal((2, 20)), rng.standard_normal((2, 20))])  # (4, 20), same r
    Q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    return {"A1": A1, "A2": A2, "A3": A3, "P": 2.0 * Q[:3], "P_perp": 0.5 * Q[3:6]}  # orthogonal rows


def _svd_variants(A1, A2, i, j):
    U1, _, V1 = np.linalg.svd(A1, full_matrices=False)
    U2, _, V2 = np.linalg.svd(A2, full_matrices=False)
    overlap = V1[:i] @ V2[:j].T  # (i, j)
    out = [("phi_not_normalised", float((overlap**2).sum())),
           ("phi_max_normaliser", float((overlap**2).sum() / max(i, j))),
           ("phi_not_squared", float(np.linalg.norm(overlap) / min(i, j)))]
    if A1.shape[0] == A2.shape[0]:  # the wrong vectors have compatible shapes only when r1 = r2
        out.append(("phi_left_vectors", float((((U1[:, :i]).T @ U2[:, :j]) ** 2).sum() / min(i, j))))
        out.append(("phi_columns", float(((V1[:, :i].T @ V2[:, :j]) ** 2).sum() / min(i, j))))
    return [(k, (v,)) for k, v in out]


# (name of A1, name of A2, i, j): i = j = 1; the full ranks; i ≠ j both ways; r1 = r2; identical; orthogonal
CASES = (("A1", "A2", 1, 1), ("A1", "A2", 2, 5), ("A1", "A2", 4, 8), ("A1", "A2", 3, 2), ("A1", "A3", 2, 3),
         ("A1", "A3", 4, 4), ("A2", "A2", 3, 3), ("P", "P_perp", 2, 3))


def check_subspace_similarity(fn):
    m = _matrices()
    cases = [Case(f"φ({a}{m[a].shape}, {b}{m[b].shape}, i={i}, j={j})", (m[a], m[b], i, j), (a, b, "i", "j"),
                  (subspace_similarity(m[a], m[b], i, j),), ("phi",), TOL,
                  lambda a=a, b=b, i=i, j=j: _svd_variants(m[a], m[b], i, j), floor=1.0)
             for a, b, i, j in CASES]
    return run_cases("subspace_similarity", fn, cases)
