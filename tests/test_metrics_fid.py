import numpy as np
import pytest
import scipy.linalg

from noisecraft.metrics.fid import feature_statistics, fid_from_features, frechet_distance


def _random_spd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


def _scipy_frechet(mu1, s1, mu2, s2):
    # the pytorch-fid / TF-FID formula: tr sqrtm(Σ1 Σ2), real part, in float64
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((500, 64))
    mu, sigma = feature_statistics(feats)
    # round-off in eigh is ~1e-15 · tr Σ per eigenvalue; 1e-9 · tr Σ is a generous bound
    assert frechet_distance(mu, sigma, mu, sigma) < 1e-9 * np.trace(sigma)
    assert fid_from_features(feats, feats.copy()) < 1e-9 * np.trace(sigma)


def test_diagonal_covariances_match_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    a, b = rng.uniform(0.1, 3, 20), rng.uniform(0.1, 3, 20)
    # commuting covariances: W2² = ‖Δμ‖² + Σ (√a − √b)²
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_two_by_two_non_commuting_closed_form():
    # For 2×2 PSD M with eigenvalues λ1, λ2: (√λ1 + √λ2)² = tr M + 2√det M, so
    # tr (Σ1 Σ2)^{1/2} = sqrt(tr(Σ1 Σ2) + 2 sqrt(det Σ1 det Σ2)) — an answer with no matrix roots.
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 1.5]])
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("d", [5, 32, 128])
def test_matches_scipy_sqrtm_reference(d):
    rng = np.random.default_rng(d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ours = frechet_distance(mu1, s1, mu2, s2)
    # both are float64; scipy's Schur-based sqrtm is accurate to ~1e-10 relative on these
    # well-conditioned matrices, so agreement to 1e-8 of the scale tr Σ1 + tr Σ2 is expected
    scale = np.trace(s1) + np.trace(s2)
    assert abs(ours - _scipy_frechet(mu1, s1, mu2, s2)) < 1e-8 * scale


def test_rank_deficient_covariances_are_symmetric_and_nonnegative():
    # fewer samples than dimensions (common with small evaluation sets): Σ is singular
    rng = np.random.default_rng(3)
    fa, fb = rng.standard_normal((30, 100)), rng.standard_normal((40, 100)) + 0.2
    d_ab, d_ba = fid_from_features(fa, fb), fid_from_features(fb, fa)
    assert d_ab > 0 and np.isfinite(d_ab)
    # Σ1^{1/2} Σ2 Σ1^{1/2} has ~70 zero eigenvalues that eigh returns as ±1e-15·‖Σ‖; their square
    # roots, ~3e-8 each, make the two orders differ at the 1e-8 level, not more
    assert d_ab == pytest.approx(d_ba, rel=1e-7)
    ref = _scipy_frechet(*feature_statistics(fa), *feature_statistics(fb))
    assert d_ab == pytest.approx(ref, rel=1e-6)


def test_statistics_match_numpy_cov():
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((300, 10)) * np.arange(1, 11)
    mu, sigma = feature_statistics(feats.astype(np.float32))
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, feats.astype(np.float32).astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float32).astype(np.float64), rowvar=False),
                               rtol=1e-10, atol=1e-12)


def test_monte_carlo_fid_approaches_population_value():
    # N(0, I) vs N(m, 4I) in d = 4: W2² = ‖m‖² + d(2 − 1)² = ‖m‖² + 4. With N = 20 000 samples
    # each, the noise is dominated by 2 Δμ·(μ̂_b − μ_b): std ≈ 2‖m‖·2/√N ≈ 0.04, plus the
    # spread of the sample deviations, 2·Σ_d(σ̂ − σ) ≈ 0.04; the two give std ≈ 0.065 (20 seeds
    # measured 0.067). 0.3 is 4.5 standard deviations.
    rng = np.random.default_rng(5)
    m = np.array([1.0, -1.0, 0.5, 0.0])
    fa = rng.standard_normal((20000, 4))
    fb = m + 2.0 * rng.standard_normal((20000, 4))
    assert fid_from_features(fa, fb) == pytest.approx(np.sum(m**2) + 4.0, abs=0.3)


def test_bad_statistics_raise():
    with pytest.raises(ValueError, match="N ≥ 2"):
        feature_statistics(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
