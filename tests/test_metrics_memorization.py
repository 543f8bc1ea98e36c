import numpy as np
import pytest
from PIL import Image

from noisecraft.metrics.memorization import COPY_THRESHOLD, memorization_audit, nearest_training_images


def _train_set(n=50, size=8, channels=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def test_exact_copy_is_flagged_and_fresh_samples_are_not(tmp_path):
    train = _train_set()
    fresh = _train_set(n=20, seed=1)  # independent noise: ratio near 1, far above 1/3
    samples = np.concatenate([fresh, train[7:8]])  # sample 20 copies training image 7
    figure = tmp_path / "worst.png"
    report = memorization_audit(samples, train, worst=3, figure=figure)
    assert report["num_near_copies"] == 1
    assert report["fraction_near_copies"] == pytest.approx(1 / 21)
    worst = report["worst_pairs"][0]
    assert worst == {"sample": 20, "train": 7, "ratio": 0.0, "distance": 0.0}
    assert report["memorization_threshold"] == COPY_THRESHOLD
    with Image.open(figure) as im:
        # 3 rows of 64-px images (8 px × 8) with 8-px gaps, two columns
        assert im.size == (2 * 64 + 3 * 8, 3 * 64 + 4 * 8)


def test_ratio_matches_brute_force_distances():
    train = _train_set(n=30, channels=3)
    samples = _train_set(n=10, channels=3, seed=2)
    nn = nearest_training_images(samples, train)
    for i in range(len(samples)):
        diff = train.reshape(30, -1) / 255.0 - samples[i].reshape(-1) / 255.0
        d = np.sort(np.linalg.norm(diff, axis=1))
        assert nn["nearest_distance"][i] == pytest.approx(d[0], rel=1e-10)
        assert nn["ratio"][i] == pytest.approx(d[0] / d[1], rel=1e-10)


def test_slightly_perturbed_copy_is_flagged():
    train = _train_set()
    near = train[3:4].astype(np.int16) + np.random.default_rng(3).integers(-4, 5, (1, 8, 8, 1))
    report = memorization_audit(np.clip(near, 0, 255).astype(np.uint8), train)
    assert report["num_near_copies"] == 1 and report["worst_pairs"][0]["train"] == 3


def test_duplicate_training_images_still_count_as_copies():
    train = np.concatenate([_train_set(n=10), _train_set(n=10)[2:3]])  # image 2 is stored twice
    nn = nearest_training_images(train[2:3], train)
    assert nn["ratio"][0] == 0.0


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="differ"):
        memorization_audit(_train_set(n=5, size=8), _train_set(n=5, size=16))
    with pytest.raises(ValueError, match="threshold"):
        memorization_audit(_train_set(n=5), _train_set(n=5), threshold=0.0)
