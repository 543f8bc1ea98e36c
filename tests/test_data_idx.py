"""IDX reader: the real MNIST files and small hand-written IDX files, good and broken."""

import gzip
import hashlib
import os
import struct

import numpy as np
import pytest

from noisecraft import DataError
from noisecraft.data import load


def write_idx(path, array, compress=False):
    """IDX by the published layout, written independently of the reader."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


def make_idx_folder(folder, n_train=6, n_test=3, compress=True, size=(5, 4)):
    rng = np.random.default_rng(0)
    sets = {}
    ext = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, *size), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{ext}"), x, compress)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{ext}"), y, compress)
        sets[prefix] = (x, y)
    return sets


@pytest.mark.parametrize("compress", [True, False])
def test_small_idx_round_trip(tmp_path, compress):
    sets = make_idx_folder(tmp_path, compress=compress)
    train, test, both = (load(str(tmp_path), split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(both)) == (6, 3, 9)
    x, y = sets["t10k"]
    for i in range(3):
        np.testing.assert_allclose(test[i]["x"][0].numpy(), x[i] / 127.5 - 1, atol=1e-6)
        assert test[i]["label"] == y[i] and test[i]["key"] == f"test_{i:05d}"
    assert both[6]["key"] == "test_00000" and both[6]["label"] == y[0]
    assert train.info["height"] == 5 and train.info["width"] == 4 and train.info["image_size"] == (5, 4)


def test_mnist_matches_published_facts(shared_data):
    folder = os.path.join(shared_data, "mnist")
    with open(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"), "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == "ec29112dd5afa0611ce80d1b7f02629c"
    train = load(folder)
    test = load(folder, split="test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.info["num_classes"] == 10 and train.preprocess.shape == (1, 28, 28)
    # Widely published facts: the first training digit is a 5, the first test digit a 7, and the
    # training pixels have mean 0.1307 and std 0.3081 on the [0, 1] scale.
    assert train[0]["label"] == 5 and test[0]["label"] == 7
    v = train.images.ravel()  # exact integer moments: Σv and Σv² in uint64
    n, s1, s2 = v.size, v.sum(dtype=np.uint64), np.einsum("i,i->", v, v, dtype=np.uint64)
    mean = s1 / n / 255
    std = np.sqrt(s2 / n / 255**2 - mean**2)
    assert abs(mean - 0.1307) < 5e-5 and abs(std - 0.3081) < 5e-5
    assert np.bincount(train.labels).tolist()[:2] == [5923, 6742]


def test_truncated_idx_names_the_file(tmp_path):
    make_idx_folder(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        load(str(tmp_path))


def test_truncated_gzip_names_the_file(tmp_path):
    make_idx_folder(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load(str(tmp_path))


def test_label_count_mismatch(tmp_path):
    make_idx_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), compress=True)
    with pytest.raises(DataError, match="labels do not match.*6 images"):
        load(str(tmp_path))


def test_bad_magic_and_missing_split(tmp_path):
    make_idx_folder(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(DataError, match="bad magic"):
        load(str(tmp_path))
    other = tmp_path / "only_train"
    other.mkdir()
    make_idx_folder(other)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (other / name).unlink()
    with pytest.raises(DataError, match="no test images file"):
        load(str(other), split="test")
    assert load(str(other)).labels is not None
