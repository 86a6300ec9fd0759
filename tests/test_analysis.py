"""Section 7 analyses: subspace similarity φ and the ΔW-vs-W projections."""

import numpy as np
import pytest

from minilora.analysis import delta_w_vs_w, subspace_similarity, subspace_similarity_grid


def test_phi_of_a_matrix_with_itself_is_one():
    A = np.random.default_rng(0).standard_normal((8, 40))
    for i in range(1, 9):
        assert subspace_similarity(A, A, i, i) == pytest.approx(1.0, abs=1e-12)


def test_phi_of_orthogonal_subspaces_is_zero():
    Q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((40, 12)))
    A1, A2 = Q[:, :4].T, Q[:, 4:12].T  # rows span orthogonal subspaces
    assert subspace_similarity(A1, A2, 4, 8) == pytest.approx(0.0, abs=1e-12)
    assert np.abs(subspace_similarity_grid(A1, A2)).max() < 1e-12


def test_phi_is_in_unit_interval_and_grid_matches_pointwise():
    rng = np.random.default_rng(2)
    A1, A2 = rng.standard_normal((8, 30)), rng.standard_normal((16, 30))
    grid = subspace_similarity_grid(A1, A2)
    assert grid.shape == (8, 16)
    assert grid.min() >= -1e-12 and grid.max() <= 1 + 1e-12
    for i, j in [(1, 1), (3, 7), (8, 16), (8, 2)]:
        assert grid[i - 1, j - 1] == pytest.approx(subspace_similarity(A1, A2, i, j), abs=1e-12)


def test_phi_subspace_contained_in_larger_one_is_one():
    rng = np.random.default_rng(3)
    A_small = rng.standard_normal((2, 30))
    A_big = np.vstack([A_small, rng.standard_normal((6, 30))])  # contains A_small's row space
    assert subspace_similarity(A_small, A_big, 2, 8) == pytest.approx(1.0, abs=1e-10)


def test_phi_rejects_bad_arguments():
    A = np.ones((4, 10))
    with pytest.raises(ValueError, match="i must be"):
        subspace_similarity(A, A, 0, 1)
    with pytest.raises(ValueError, match="same d_in"):
        subspace_similarity(A, np.ones((4, 11)), 1, 1)
    with pytest.raises(ValueError, match="2-D"):
        subspace_similarity(np.ones(3), A, 1, 1)


def test_delta_w_vs_w_orders_projections_as_section_7_3():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((64, 64))
    r = 4
    # ΔW along directions W barely has: its bottom singular vectors, so the projection is small
    U, S, Vh = np.linalg.svd(W)
    delta = U[:, -r:] @ np.diag([3.0, 2.0, 1.5, 1.0]) @ Vh[-r:]
    out = delta_w_vs_w(W, delta, r)
    assert out["W"] == pytest.approx(np.sqrt((S[:r] ** 2).sum()))  # W's own top-r directions: its top-r energy
    assert out["delta"] == pytest.approx(np.sqrt((S[-r:] ** 2).sum()))
    assert out["delta"] < out["W"]
    assert out["amplification"] == pytest.approx(np.linalg.norm(delta) / out["delta"])
    with pytest.raises(ValueError, match="same shape"):
        delta_w_vs_w(W, delta[:10], r)


def test_exact_random_baseline_of_phi_matches_monte_carlo():
    """E φ = max(i, j)/d for random Gaussian A1, A2: 4,000 draws agree within 4 standard errors."""
    from minilora.analysis import random_subspace_similarity

    rng = np.random.default_rng(3)
    d = 24
    for i, j in [(1, 1), (1, 8), (3, 5), (8, 8)]:
        draws = [subspace_similarity(rng.standard_normal((i, d)), rng.standard_normal((j, d)), i, j)
                 for _ in range(4000)]
        se = np.std(draws) / np.sqrt(len(draws))
        assert abs(np.mean(draws) - random_subspace_similarity(i, j, d)) < 4 * se, (i, j, np.mean(draws))
    grid = random_subspace_similarity(np.arange(1, 4)[:, None], np.arange(1, 5)[None, :], d)
    assert grid.shape == (3, 4) and grid[2, 3] == 4 / d and grid[2, 0] == 3 / d
    with pytest.raises(ValueError, match="i and j"):
        random_subspace_similarity(0, 3, d)


def test_exact_random_projection_baseline_matches_monte_carlo():
    from minilora.analysis import projection_norm, random_projection_rms

    rng = np.random.default_rng(4)
    W = rng.standard_normal((12, 20)) * np.linspace(0.1, 3, 20)
    sq = []
    for _ in range(3000):
        U, _ = np.linalg.qr(rng.standard_normal((12, 3)))
        V, _ = np.linalg.qr(rng.standard_normal((20, 3)))
        sq.append(projection_norm(W, U, V.T) ** 2)
    se = np.std(sq) / np.sqrt(len(sq))
    assert abs(np.mean(sq) - random_projection_rms(W, 3) ** 2) < 4 * se
    with pytest.raises(ValueError, match="r must be"):
        random_projection_rms(W, 13)


def test_stable_rank_and_energy_rank():
    from minilora.analysis import energy_rank, stable_rank

    rng = np.random.default_rng(5)
    Q1, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    Q2, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    M = Q1 @ np.diag([3.0, 3.0, 3.0, 0, 0] + [0] * 25) @ Q2  # three equal singular values
    assert stable_rank(M) == pytest.approx(3.0)
    assert stable_rank(np.outer(rng.standard_normal(7), rng.standard_normal(9))) == pytest.approx(1.0)
    assert energy_rank(M, 0.9) == 3 and energy_rank(M, 0.3) == 1
    spread = Q1 @ np.diag(np.linspace(1, 2, 30)) @ Q2
    assert stable_rank(spread) > 10 and energy_rank(spread, 1.0) == 30
    with pytest.raises(ValueError, match="zero matrix"):
        stable_rank(np.zeros((3, 3)))
