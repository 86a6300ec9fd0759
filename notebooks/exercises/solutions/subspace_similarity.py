"""Solutions: exercise 06 (subspace similarity, Section 7.2)."""

import numpy as np


def subspace_similarity(A1, A2, i, j):
    V1 = np.linalg.svd(A1, full_matrices=False)[2]  # rows: right-singular vectors of A1, largest first
    V2 = np.linalg.svd(A2, full_matrices=False)[2]
    overlap = V1[:i] @ V2[:j].T  # (i, j)
    return float(np.sum(overlap**2) / min(i, j))
