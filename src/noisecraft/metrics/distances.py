"""Distances between two samples, in float64: batched Euclidean nearest neighbours (shared by
precision/recall and the memorisation audit), so an (N × M) distance matrix never has to exist at
once; and the sliced Wasserstein distance, the yardstick for toy and vector runs."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def pairwise_sq_distances(a: np.ndarray, b: np.ndarray,
                          b_sq_norms: np.ndarray | None = None) -> np.ndarray:
    """‖a_i − b_j‖² (len(a), len(b)) via ‖a‖² + ‖b‖² − 2 a·b, clipped at 0 against round-off."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    b_sq = (b * b).sum(axis=1) if b_sq_norms is None else b_sq_norms
    sq = (a * a).sum(axis=1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.maximum(sq, 0.0)


def k_smallest(query: np.ndarray, support: np.ndarray, k: int, batch_size: int = 256
               ) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest distances from each query row to the support rows, ascending, and their
    indices: ((N, k) float64, (N, k) int64)."""
    query = np.asarray(query, np.float64).reshape(len(query), -1)
    support = np.asarray(support, np.float64).reshape(len(support), -1)
    if query.shape[1] != support.shape[1]:
        raise ValueError(f"feature sizes differ: {query.shape[1]} vs {support.shape[1]}")
    if not 1 <= k <= len(support):
        raise ValueError(f"k={k}: need 1 ≤ k ≤ {len(support)} (the support set size)")
    support_sq = (support * support).sum(axis=1)
    dist = np.empty((len(query), k))
    index = np.empty((len(query), k), dtype=np.int64)
    for start in range(0, len(query), batch_size):
        rows = query[start:start + batch_size]
        sq = pairwise_sq_distances(rows, support, support_sq)
        part = np.argpartition(sq, k - 1, axis=1)[:, :k] if k < sq.shape[1] else np.argsort(sq, axis=1)
        # the expanded form loses ~1e-8 relative to cancellation; recompute the k winners by
        # direct subtraction so that an exact copy is at distance exactly 0
        part_sq = ((rows[:, None, :] - support[part]) ** 2).sum(axis=2)
        order = np.argsort(part_sq, axis=1, kind="stable")
        index[start:start + len(sq)] = np.take_along_axis(part, order, axis=1)
        dist[start:start + len(sq)] = np.sqrt(np.take_along_axis(part_sq, order, axis=1))
    return dist, index


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 128,
                       generator: torch.Generator | None = None) -> float:
    """The sliced 2-Wasserstein distance √(E_θ W_2²(θ·a, θ·b)) over ``projections`` random unit
    directions θ; each 1-D W_2 compares the quantiles of the two projected samples at the
    same 257 levels (so a and b may differ in size)."""
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"sliced_wasserstein: dimensions differ, {a.shape[1]} vs {b.shape[1]}")
    theta = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    q = torch.linspace(0, 1, 257, dtype=torch.float64)
    qa = torch.quantile(a @ theta, q, dim=0)
    qb = torch.quantile(b @ theta, q, dim=0)
    return float(torch.sqrt(torch.trapezoid((qa - qb) ** 2, q, dim=0).mean()))
