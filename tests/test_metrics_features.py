"""The reference-feature cache (metrics/features.py): hits only for the exact same set, count and
preprocessing; the extractor is a stand-in that counts its calls, since the cache logic, not the
network, is under test here."""

import numpy as np
import pytest

from noisecraft.metrics import features


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """Cache in tmp_path; 'digits' space info without a classifier; features = mean pixel, 2-d."""
    monkeypatch.setenv("NOISECRAFT_CACHE", str(tmp_path))
    calls = []
    preprocess = {"input": "v1"}
    monkeypatch.setattr(features, "feature_space_info",
                        lambda space, weights=None: {"space": space, "version": 1,
                                                     "preprocess": dict(preprocess)})

    def extract(images, space, **_kw):
        calls.append(len(images))
        m = images.reshape(len(images), -1).mean(axis=1, dtype=np.float64)
        return np.stack([m, m * m], axis=1).astype(np.float32).astype(np.float64)

    monkeypatch.setattr(features, "extract_features", extract)
    return calls, preprocess


def test_cache_hits_only_the_same_pixels_count_and_preprocessing(counted):
    calls, preprocess = counted
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
    first, rec1 = features.reference_features(images, "toy", "train", "digits")
    again, rec2 = features.reference_features(images, "toy", "train", "digits")
    assert calls == [6] and not rec1["cached"] and rec2["cached"]
    np.testing.assert_array_equal(first, again)  # float32-exact features survive the round trip
    assert rec2["content_sha256"] == rec1["content_sha256"] and rec2["preprocess"] == {"input": "v1"}

    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1  # one pixel, one bit
    features.reference_features(changed, "toy", "train", "digits")
    features.reference_features(images[:5], "toy", "train", "digits")
    assert calls == [6, 6, 5]

    preprocess["input"] = "v2"  # e.g. another resize policy: old features must not be reused
    _, rec3 = features.reference_features(images, "toy", "train", "digits")
    assert calls == [6, 6, 5, 6] and not rec3["cached"] and rec3["cache_file"] != rec1["cache_file"]

