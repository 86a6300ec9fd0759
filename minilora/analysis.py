"""The paper's Section 7 analyses: subspace similarity between adapters, and how ΔW relates to W.

Everything here takes plain arrays and returns plain numbers, so it works on any adapter (minilora's, or A and B
read from PEFT/PyTorch), with W stored (d_out, d_in) and A (r, d_in). The arithmetic runs on the module that owns
the inputs (NumPy, or CuPy for adapters trained on a GPU: nothing is copied to the host but the numbers returned);
host inputs given beside device ones are moved to that device. Everything is computed in float64.
"""

from __future__ import annotations

import numpy as np

from .backend import array_module, to_device


def _float64(*arrays):
    """(xp, the arrays as float64 arrays of xp): xp owns the first device array among them, else it is NumPy.
    Host inputs beside a device array are copied to that device (explicitly, by xp.asarray)."""
    xp = array_module(*arrays)
    return xp, [xp.asarray(a, dtype=xp.float64) for a in arrays]


def right_singular_vectors(A):
    """Rows of Vh in A = U Σ Vh, in order of decreasing singular value: (min(r, d_in), d_in)."""
    xp, (A,) = _float64(A)
    if A.ndim != 2:
        raise ValueError(f"A must be a 2-D (r, d_in) matrix, got shape {A.shape}")
    return xp.linalg.svd(A, full_matrices=False)[2]  # (r, d_in)


def subspace_similarity(A1, A2, i: int, j: int) -> float:
    """φ(A1, A2, i, j) = ‖U1^{i⊤} U2^{j}‖²_F / min(i, j) ∈ [0, 1] (Section 7.2).

    U^i: the top-i right-singular vectors of A. 1 means the smaller subspace lies inside the larger one; 0 means
    they are orthogonal.
    """
    V1, V2 = right_singular_vectors(A1), right_singular_vectors(A2)
    if V1.shape[1] != V2.shape[1]:
        raise ValueError(f"A1 and A2 must have the same d_in, got {V1.shape[1]} and {V2.shape[1]}")
    for name, k, V in (("i", i, V1), ("j", j, V2)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= V.shape[0]:
            raise ValueError(f"{name} must be an int in [1, {V.shape[0]}], got {k!r}")
    overlap = V1[:i] @ V2[:j].T  # (i, j)
    return float((overlap**2).sum() / min(i, j))


def subspace_similarity_grid(A1, A2, max_i: int | None = None, max_j: int | None = None):
    """(max_i, max_j) array of φ(A1, A2, i, j) for i = 1..max_i, j = 1..max_j (a Figure 3 heatmap), on the
    inputs' module."""
    xp, (A1, A2) = _float64(A1, A2)
    V1, V2 = right_singular_vectors(A1), right_singular_vectors(A2)
    max_i = V1.shape[0] if max_i is None else max_i
    max_j = V2.shape[0] if max_j is None else max_j
    sq = (V1[:max_i] @ V2[:max_j].T) ** 2  # (max_i, max_j)
    cum = sq.cumsum(axis=0).cumsum(axis=1)  # cum[i-1, j-1] = ‖U1^{i⊤} U2^{j}‖²_F
    mins = xp.minimum.outer(xp.arange(1, max_i + 1), xp.arange(1, max_j + 1))  # (max_i, max_j)
    return cum / mins


def top_singular_directions(M, r: int):
    """U (d_out, r) and Vh (r, d_in): the top-r left and right singular vectors of M."""
    xp, (M,) = _float64(M)
    U, _, Vh = xp.linalg.svd(M, full_matrices=False)
    return U[:, :r], Vh[:r]


def projection_norm(W, U, Vh) -> float:
    """‖Uᵀ W Vhᵀ‖_F: how much of W lies in the subspace spanned by U (left) and Vh (right)."""
    xp, (W, U, Vh) = _float64(W, U, Vh)
    return float(xp.linalg.norm(U.T @ W @ Vh.T))


def delta_w_vs_w(W, delta, r: int, seed: int = 0) -> dict:
    """Section 7.3 / Table 7: project W onto the top-r directions of ΔW, of W itself, and of a random matrix.

    Returns ‖Uᵀ W Vᵀ‖_F for each, ‖W‖_F, ‖ΔW‖_F and the amplification factor ‖ΔW‖_F / ‖Uᵀ W Vᵀ‖_F (ΔW's
    directions). A small projection onto ΔW's directions with a large amplification means ΔW amplifies
    directions W itself does not emphasise.
    """
    xp, (W, delta) = _float64(W, delta)
    if W.shape != delta.shape:
        raise ValueError(f"W and delta must have the same shape, got {W.shape} and {delta.shape}")
    rng = np.random.default_rng(seed)  # drawn on the host: the same random directions on every backend
    random_U, _ = xp.linalg.qr(to_device(rng.standard_normal((W.shape[0], r)), like=W))  # (d_out, r) orthonormal
    random_V, _ = xp.linalg.qr(to_device(rng.standard_normal((W.shape[1], r)), like=W))  # (d_in, r) orthonormal
    on_delta = projection_norm(W, *top_singular_directions(delta, r))
    return {
        "delta": on_delta,
        "W": projection_norm(W, *top_singular_directions(W, r)),
        "random": projection_norm(W, random_U, random_V.T),
        "norm_W": float(xp.linalg.norm(W)),
        "norm_delta": float(xp.linalg.norm(delta)),
        "amplification": float(xp.linalg.norm(delta)) / on_delta if on_delta > 0 else float("inf"),
    }


def random_subspace_similarity(i, j, d: int):
    """E[φ(A1, A2, i, j)] for independent random A1, A2 whose row spaces are uniformly distributed (Gaussian A):
    exactly max(i, j) / d.

    Derivation: with U1 (d, i) and U2 (d, j) orthonormal and U2 uniformly random, each column u of U1 has
    E‖U2ᵀ u‖² = j/d (a random j-dimensional projection keeps j/d of a unit vector's squared length on average),
    so E‖U1ᵀ U2‖²_F = i·j/d and E φ = i·j / (d · min(i, j)) = max(i, j)/d. Works on arrays of i and j.
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    i, j = np.asarray(i), np.asarray(j)
    if np.any(i < 1) or np.any(j < 1) or np.any(i > d) or np.any(j > d):
        raise ValueError(f"i and j must lie in [1, d={d}]")
    return np.maximum(i, j) / d


def stable_rank(M) -> float:
    """‖M‖²_F / ‖M‖²_2: how many singular values carry the matrix's energy (1 for rank 1, n for n equal ones)."""
    s = np.linalg.svd(np.asarray(M, dtype=np.float64), compute_uv=False)
    if s[0] == 0:
        raise ValueError("stable_rank of a zero matrix is undefined")
    return float((s**2).sum() / s[0] ** 2)


def energy_rank(M, fraction: float = 0.9) -> int:
    """The number of top singular values that hold ``fraction`` of ‖M‖²_F."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    s2 = np.linalg.svd(np.asarray(M, dtype=np.float64), compute_uv=False) ** 2
    return int(np.searchsorted(np.cumsum(s2) / s2.sum(), fraction - 1e-12) + 1)


def random_projection_rms(W, r: int) -> float:
    """The exact root-mean-square of ‖Uᵀ W V‖_F over independent, uniformly random orthonormal U (d_out, r) and
    V (d_in, r): ‖W‖_F · r / √(d_out · d_in), because E[U Uᵀ] = (r/d_out) I and E[V Vᵀ] = (r/d_in) I. Table 7's
    "random" baseline without sampling."""
    W = np.asarray(W, dtype=np.float64)
    d_out, d_in = W.shape
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 1 <= r <= min(d_out, d_in):
        raise ValueError(f"r must be an int in [1, {min(d_out, d_in)}], got {r!r}")
    return float(np.linalg.norm(W) * r / np.sqrt(d_out * d_in))
