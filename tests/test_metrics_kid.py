import numpy as np
import pytest

from noisecraft.metrics.kid import kid, mmd2_unbiased


def _brute_force_mmd2(x, y):
    d = x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_matches_brute_force_loop():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 5)), rng.standard_normal((9, 5)) + 0.3
    assert mmd2_unbiased(x, y) == pytest.approx(_brute_force_mmd2(x, y), rel=1e-12)


def test_one_full_subset_equals_the_whole_set_estimate():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((40, 6)), rng.standard_normal((30, 6))
    out = kid(x, y, num_subsets=1, subset_size=1000)
    assert out["kid_subset_size"] == 30 and out["kid_std"] == 0.0
    # the estimate does not depend on the order of rows, so a subset of all 30 rows is the set
    full = kid(x[:30], y, num_subsets=1, subset_size=30)
    assert full["kid"] == pytest.approx(mmd2_unbiased(x[:30], y), rel=1e-12)


def test_unbiased_for_equal_distributions():
    # E[MMD²_u] = 0 when both sets come from one distribution. Over 400 independent pairs the
    # mean's standard error is std/20; the mean must lie within 4 standard errors of 0.
    rng = np.random.default_rng(2)
    values = np.array([mmd2_unbiased(rng.standard_normal((20, 3)), rng.standard_normal((20, 3)))
                       for _ in range(400)])
    assert abs(values.mean()) < 4 * values.std() / np.sqrt(len(values))


def test_separates_different_distributions():
    rng = np.random.default_rng(3)
    same = kid(rng.standard_normal((200, 8)), rng.standard_normal((200, 8)),
               num_subsets=20, subset_size=100)
    shifted = kid(rng.standard_normal((200, 8)), rng.standard_normal((200, 8)) + 1.0,
                  num_subsets=20, subset_size=100)
    assert shifted["kid"] > 10 * abs(same["kid"]) and shifted["kid"] > 0


def test_bad_input_raises():
    with pytest.raises(ValueError, match="N ≥ 2"):
        mmd2_unbiased(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="num_subsets"):
        kid(np.zeros((4, 3)), np.zeros((4, 3)), num_subsets=0)
