"""Kernel Inception Distance (Bińkowski et al. 2018): an unbiased MMD² estimate.

With the cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³ on d-dimensional features and sets
X (size m), Y (size n):

    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m−1)) + Σ_{i≠j} k(y_i, y_j) / (n(n−1))
             − 2 Σ_{i,j} k(x_i, y_j) / (mn).

Unlike FID it has no bias in the sample size, so small sample sets can be compared. As in the
reference implementation, it is averaged over random subsets; the spread over subsets is
reported beside the mean.
"""

from __future__ import annotations

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² estimate above for one pair of sets (each needs ≥ 2 rows)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2 or x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs two (N, D) sets with N ≥ 2 and equal D, "
                         f"got {x.shape} and {y.shape}")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
                 + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
                 - 2.0 * k_xy.mean())


def kid(features_a: np.ndarray, features_b: np.ndarray, num_subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> dict:
    """KID: mean and standard deviation of MMD²_u over ``num_subsets`` random subsets of
    min(``subset_size``, N_a, N_b) rows from each set, drawn without replacement (seeded)."""
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"num_subsets={num_subsets}, subset_size={subset_size}: need ≥ 1 and ≥ 2")
    features_a = np.asarray(features_a, np.float64)
    features_b = np.asarray(features_b, np.float64)
    size = min(subset_size, len(features_a), len(features_b))
    rng = np.random.default_rng(seed)
    values = np.array([
        mmd2_unbiased(features_a[rng.choice(len(features_a), size, replace=False)],
                      features_b[rng.choice(len(features_b), size, replace=False)])
        for _ in range(num_subsets)
    ])
    return {"kid": float(values.mean()), "kid_std": float(values.std()), "kid_subsets": num_subsets,
            "kid_subset_size": int(size), "kid_seed": seed}
