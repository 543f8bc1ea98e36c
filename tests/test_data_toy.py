"""Digits and the 2-D toy sets, checked against scikit-learn's arrays and the sets' exact laws."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits
from torch.utils.data import DataLoader

import noisecraft
from noisecraft.data import load, to_uint8
from noisecraft.data.toy import digits_split_indices, gmm8_mixture


def test_digits_values_labels_and_split():
    sk = sk_load_digits()
    train, test, full = (load("digits", split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (1618, 179, 1797)
    tr, te = set(digits_split_indices("train")), set(digits_split_indices("test"))
    assert not tr & te and len(tr | te) == 1797
    # Each split keeps the original order, so split items are sklearn rows picked by the indices.
    idx = digits_split_indices("test")
    for j in (0, 57, 178):
        item = test[j]
        i = int(idx[j])
        np.testing.assert_allclose(item["x"][0].numpy(), sk.images[i] / 8 - 1, atol=1e-6)
        assert item["label"] == sk.target[i] and item["key"] == f"digits_{i:04d}"
        assert item["caption"] == ""
    # every label appears in the test split (179 draws of 10 near-equal classes)
    assert {test[j]["label"] for j in range(len(test))} == set(range(10))
    assert train.info == {"kind": "image", "channels": 1, "image_size": 8, "height": 8, "width": 8,
                          "num_classes": 10, "count": 1618, "classes": [str(d) for d in range(10)]}


def test_digits_split_is_deterministic():
    np.testing.assert_array_equal(digits_split_indices("test"), digits_split_indices("test"))
    assert digits_split_indices("test")[:5].tolist() == sorted(
        np.random.RandomState(0).permutation(1797)[:179].tolist())[:5]


def test_digits_batches_with_default_collate_and_inverts_to_pictures():
    ds = load("digits", split="test")
    batch = next(iter(DataLoader(ds, batch_size=16)))
    assert batch["x"].shape == (16, 1, 8, 8) and batch["label"].dtype == torch.int64
    pictures = to_uint8(batch["x"], ds.preprocess)
    sk = sk_load_digits()
    expected = np.round(sk.images[digits_split_indices("test")[:16]] / 16 * 255)
    np.testing.assert_array_equal(pictures[..., 0], expected)


def test_digits_resized_to_rgb():
    ds = load("digits", image_size=16, channels=3)
    x = ds[0]["x"]
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert ds.preprocess.to_dict()["image_size"] == 16


def test_gmm8_matches_its_exact_mixture():
    ds = load("gmm8")
    mix = gmm8_mixture()
    x = ds.vectors.double()
    labels = torch.as_tensor(ds.labels)
    n = len(ds)
    assert n == 10_000 and ds.info["dim"] == 2 and ds.info["num_classes"] == 8
    # Components are 0.61 apart with std 0.05: the label is the most probable component.
    assert torch.equal(mix.component_of(x), labels)
    for k in range(8):
        sel = x[labels == k]
        # count ~ Binomial(n, 1/8): sd = sqrt(n p (1-p)) ≈ 33; allow 5 sd
        assert abs(len(sel) - n / 8) < 5 * math.sqrt(n / 8 * 7 / 8)
        # component mean: sd 0.05/sqrt(1250) ≈ 0.0014 per coordinate; allow 5 sd
        assert (sel.mean(0) - mix.means[k]).abs().max() < 5 * 0.05 / math.sqrt(len(sel))
        # component variance: relative sd of a variance estimate is sqrt(2/m) ≈ 0.04; allow 5 sd
        assert abs(sel.var(0).mean().item() / 0.05**2 - 1) < 5 * math.sqrt(2 / (2 * len(sel)))
    # the average log-likelihood under the true law vs its expectation −H: the mixture is nearly
    # separated, so H ≈ log 8 + entropy of N(0, 0.05² I₂); per-sample sd of log p ≈ 1 → 5/sqrt(n)
    h = math.log(8) + math.log(2 * math.pi * math.e * 0.05**2)
    assert abs(mix.log_prob(x).mean().item() + h) < 5 / math.sqrt(n)


def test_moons_lie_on_two_half_circles():
    ds = load("moons", split="test")
    x = ds.vectors.double().numpy() * 1.5 + np.array([0.5, 0.25])  # undo the documented scaling
    k = np.asarray(ds.labels)
    centre = np.where(k[:, None] == 0, [0.0, 0.0], [1.0, 0.5])
    r = np.linalg.norm(x - centre, axis=1)
    # radial noise ~ N(0, 0.05²) (to first order): 6 sd covers all 2,000 points
    assert np.abs(r - 1).max() < 6 * 0.05
    # upper moon above its centre, lower moon below
    assert (x[k == 0, 1] > -0.3).all() and (x[k == 1, 1] < 0.8).all()


def test_checkerboard_is_uniform_on_dark_squares():
    x = load("checkerboard").vectors.numpy()
    col, row = np.floor((x + 1) * 2).astype(int).T
    assert ((col + row) % 2 == 0).all()
    counts = np.bincount(col * 4 + row, minlength=16)
    counts = counts[counts > 0]
    assert len(counts) == 8
    n = len(x)
    assert np.abs(counts - n / 8).max() < 5 * math.sqrt(n / 8 * 7 / 8)


def test_swissroll_in_box_and_spiral():
    ds = load("swissroll")
    x = ds.vectors.numpy() * (4.5 * math.pi + 1.5)
    assert np.abs(ds.vectors.numpy()).max() <= 1
    # distance from the origin is t + noise with t ∈ [1.5π, 4.5π]; noise sd 0.5 → 6 sd margin
    r = np.linalg.norm(x, axis=1)
    assert r.min() > 1.5 * math.pi - 3 and r.max() < 4.5 * math.pi + 3
    assert ds[0]["label"] == -1


def test_toy_splits_and_seeds():
    a, b = load("moons", seed=3), load("moons", seed=3)
    assert torch.equal(a.vectors, b.vectors)
    assert not torch.equal(a.vectors, load("moons", seed=4).vectors)
    test = load("moons", split="test", seed=3)
    full = load("moons", split="all", seed=3)
    assert len(test) == 2000 and torch.equal(full.vectors, torch.cat([a.vectors, test.vectors]))


def test_vector_data_refuses_image_options_and_unknown_names():
    with pytest.raises(ValueError, match="image_size"):
        load("moons", image_size=32)
    with pytest.raises(noisecraft.DataError, match="digits, moons"):
        load("mnistt")
