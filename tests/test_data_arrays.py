"""Arrays reader: .npz/.npy layouts, and every way such a file can be wrong."""

import numpy as np
import pytest

from noisecraft import DataError
from noisecraft.data import load


def images(n, h=6, w=5, c=None, seed=0):
    shape = (n, h, w) if c is None else (n, h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_plain_npz_with_labels_and_captions(tmp_path):
    x, y = images(4, c=3), np.array([3, 1, 4, 1])
    path = tmp_path / "d.npz"
    np.savez(path, images=x, labels=y, captions=np.array(["a", "b", "c", "d"]))
    ds = load(str(path))
    assert len(ds) == 4 and ds.info["channels"] == 3 and ds.info["num_classes"] == 5
    item = ds[2]
    np.testing.assert_allclose(item["x"].permute(1, 2, 0).numpy(), x[2] / 127.5 - 1, atol=1e-6)
    assert (item["label"], item["caption"]) == (4, "c")
    with pytest.raises(DataError, match="no test split"):
        load(str(path), split="test")


def test_keras_layout_splits(tmp_path):
    path = tmp_path / "mnist.npz"
    xtr, xte = images(5), images(2, seed=1)
    np.savez_compressed(path, x_train=xtr, y_train=np.arange(5), x_test=xte, y_test=np.arange(2))
    assert len(load(str(path))) == 5
    test = load(str(path), split="test")
    assert len(test) == 2 and test[1]["label"] == 1 and test.info["channels"] == 1
    both = load(str(path), split="all")
    np.testing.assert_allclose(both[5]["x"][0].numpy(), xte[0] / 127.5 - 1, atol=1e-6)


def test_npy_and_resize(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, images(3, 10, 20, 4))
    ds = load(str(path), image_size=8, channels=1)
    assert ds[0]["x"].shape == (1, 8, 8) and ds[0]["label"] == -1


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="evil.npy.*never"):
        load(str(path))


@pytest.mark.parametrize("bad, message", [
    (dict(images=images(3).astype(np.float32)), "float32.*uint8"),
    (dict(images=images(3, 3, 32, 32)), r"channels-last"),
    (dict(images=images(3), labels=np.arange(4)), "labels do not match"),
    (dict(images=images(3), labels=np.array([0.5, 1, 2])), "integers"),
    (dict(pictures=images(3)), "no images array.*pictures"),
    (dict(images=images(0)), "no images"),
])
def test_bad_npz_contents(tmp_path, bad, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **bad)
    with pytest.raises(DataError, match=message):
        load(str(path))


def test_truncated_npz(tmp_path):
    path = tmp_path / "cut.npz"
    np.savez(path, images=images(20))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="cut.npz"):
        load(str(path))


def test_unused_arrays_are_reported(tmp_path):
    path = tmp_path / "extra.npz"
    np.savez(path, images=images(2), mean=np.zeros(3))
    with pytest.warns(UserWarning, match="ignoring array.*mean"):
        load(str(path))
