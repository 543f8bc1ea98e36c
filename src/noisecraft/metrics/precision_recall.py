"""Improved precision and recall (Kynkäänniemi et al. 2019).

Each set's manifold is the union of balls around its points, ball i having radius r_i = the
distance from φ_i to its k-th nearest neighbour within the same set (k = 3 in the paper):

    precision = fraction of generated φ_g inside some real ball:  ∃ r: ‖φ_g − φ_r‖ ≤ r_r,
    recall    = fraction of real φ_r inside some generated ball:  ∃ g: ‖φ_r − φ_g‖ ≤ r_g.

Precision measures fidelity (samples look real), recall measures diversity (the real data is
covered). Computed in the same feature space as FID, in float64.
"""

from __future__ import annotations

import numpy as np

from .distances import k_smallest, pairwise_sq_distances


def knn_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set (self excluded)."""
    features = np.asarray(features, np.float64)
    if len(features) <= k:
        raise ValueError(f"k={k}: the set has only {len(features)} points; need more than k")
    dist, _ = k_smallest(features, features, k + 1)  # the nearest is the point itself, at 0
    return dist[:, k]


def manifold_fraction(query: np.ndarray, support: np.ndarray, radii: np.ndarray,
                      batch_size: int = 1024) -> float:
    """Fraction of ``query`` points inside at least one ball (support_j, radii_j)."""
    query, support = np.asarray(query, np.float64), np.asarray(support, np.float64)
    radii_sq = np.asarray(radii, np.float64) ** 2
    support_sq = (support * support).sum(axis=1)
    inside = 0
    for start in range(0, len(query), batch_size):
        sq = pairwise_sq_distances(query[start:start + batch_size], support, support_sq)
        inside += int((sq <= radii_sq[None, :]).any(axis=1).sum())
    return inside / len(query)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict:
    """Improved precision and recall of ``fake`` against ``real`` features (N, D)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision/recall needs (N, D) sets with equal D, "
                         f"got {real.shape} and {fake.shape}")
    return {"precision": manifold_fraction(fake, real, knn_radii(real, k)),
            "recall": manifold_fraction(real, fake, knn_radii(fake, k)),
            "pr_k": k}
