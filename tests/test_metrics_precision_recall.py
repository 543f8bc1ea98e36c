import numpy as np
import pytest

from noisecraft.metrics.precision_recall import knn_radii, manifold_fraction, precision_recall


def _line(values):
    return np.asarray(values, dtype=np.float64)[:, None]


def _brute_force_fraction(query, support, radii):
    return np.mean([any(np.linalg.norm(q - s) <= r for s, r in zip(support, radii, strict=True))
                    for q in query])


def test_knn_radii_match_sorted_distances():
    rng = np.random.default_rng(0)
    pts = rng.standard_normal((40, 3))
    for k in (1, 3, 5):
        expected = [np.sort(np.linalg.norm(pts - p, axis=1))[k] for p in pts]  # index 0 is self
        np.testing.assert_allclose(knn_radii(pts, k), expected, rtol=1e-12)


def test_identical_sets_have_full_precision_and_recall():
    pts = np.random.default_rng(1).standard_normal((100, 4))
    out = precision_recall(pts, pts.copy())
    assert out["precision"] == 1.0 and out["recall"] == 1.0


def test_disjoint_sets_have_none():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((100, 4))
    out = precision_recall(real, real + 100.0)
    assert out["precision"] == 0.0 and out["recall"] == 0.0


def test_half_collapsed_generator_known_answer():
    # Real: the integers 0..99 on a line. With k = 3 every real ball has radius 3.
    # Fake: 0..49 (copies) plus 1000..1049 (off the data). Precision = 50/100.
    # Fake balls also have radius 3, so the real points 0..52 are covered (52 is 3 from 49),
    # 53..99 are not: recall = 53/100.
    real = _line(range(100))
    fake = _line(list(range(50)) + list(range(1000, 1050)))
    out = precision_recall(real, fake, k=3)
    assert out["precision"] == pytest.approx(0.50)
    assert out["recall"] == pytest.approx(0.53)


def test_manifold_fraction_matches_brute_force_with_batches():
    rng = np.random.default_rng(3)
    support, query = rng.standard_normal((60, 5)), rng.standard_normal((50, 5)) * 1.5
    radii = knn_radii(support, 3)
    expected = _brute_force_fraction(query, support, radii)
    assert manifold_fraction(query, support, radii, batch_size=7) == pytest.approx(expected)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="k=3"):
        knn_radii(np.zeros((3, 2)), 3)
    with pytest.raises(ValueError, match="equal D"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
