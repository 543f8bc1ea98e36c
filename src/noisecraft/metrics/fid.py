"""Fréchet distance between Gaussians fitted to features (FID, classifier-FID).

For feature sets with means μ_1, μ_2 and covariances Σ_1, Σ_2 (Heusel et al. 2017):

    d² = ‖μ_1 − μ_2‖² + tr Σ_1 + tr Σ_2 − 2 tr (Σ_1^{1/2} Σ_2 Σ_1^{1/2})^{1/2}.

The last trace equals tr (Σ_1 Σ_2)^{1/2} (the two matrices are similar), but the symmetric form
is positive semi-definite, so its square root comes from one `eigh` with no complex parts to
discard — the step where scipy's ``sqrtm(Σ_1 Σ_2)`` route, run in float32, makes FIDs differ
between implementations. Everything here is float64.
"""

from __future__ import annotations

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features: need an (N, D) array with N ≥ 2, got shape {features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError("features: contain NaN or infinite values")
    mu = features.mean(axis=0)
    centred = features - mu
    return mu, centred.T @ centred / (len(features) - 1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; round-off negatives are set to 0."""
    eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet (2-Wasserstein)² distance between N(μ_1, Σ_1) and N(μ_2, Σ_2) (formula above)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}; "
                         f"covariances {sigma1.shape}, {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_sqrt = np.sqrt(np.clip(cross, 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    # identical statistics give 0 up to round-off of order 1e-12·tr Σ; never report a negative FID
    return float(max(value, 0.0))


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets (N_a, D) and (N_b, D)."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))
