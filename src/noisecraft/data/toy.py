"""Built-in data: scikit-learn's bundled 8x8 digits and four 2-D toy distributions.

Nothing here touches the network: the digits ship inside scikit-learn and the toy sets are drawn
from numpy generators.

Splits
------
- ``digits``: 1,797 pictures, values 0..16, labels 0..9. A fixed permutation
  (``numpy.random.RandomState(0).permutation(1797)``, stable by numpy's compatibility policy)
  puts its first 179 indices (10 %) in ``test`` and the other 1,618 in ``train``; each split keeps
  the original order. ``all`` is the 1,797 in the original order. The split ignores ``seed``.
- toy sets: ``train`` is 10,000 draws from the generator seeded ``(seed, 0)``, ``test`` 2,000
  draws seeded ``(seed, 1)``; ``all`` is train followed by test. All four lie in [−1, 1]².
"""

from __future__ import annotations

import math

import numpy as np

from ..analytic import GaussianMixture
from ..errors import DataError
from .datasets import ArrayImageDataset, VectorDataset

SPLITS = ("train", "test", "all")
TOY_SIZES = {"train": 10_000, "test": 2_000}
DIGITS_TEST_FRACTION = 0.1

GMM8_RADIUS = 0.8
GMM8_STD = 0.05


def _check_split(split: str, name: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split for {name!r} must be one of {SPLITS}, got {split!r}")


def digits_split_indices(split: str, n: int = 1797) -> np.ndarray:
    """The indices of the digits in ``split`` (see the module docstring)."""
    _check_split(split, "digits")
    if split == "all":
        return np.arange(n)
    perm = np.random.RandomState(0).permutation(n)
    n_test = int(n * DIGITS_TEST_FRACTION)
    return np.sort(perm[:n_test] if split == "test" else perm[n_test:])


def load_digits(*, split: str = "train", image_size: int | None = None, channels: int | None = None,
                flip: bool = False) -> ArrayImageDataset:
    """scikit-learn's 8x8 digits as 1-channel pictures, 0..16 mapped to [−1, 1], labels 0..9."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    idx = digits_split_indices(split, len(bunch.target))
    images = bunch.images[idx].astype(np.uint8)[..., None]  # the values are the integers 0..16
    return ArrayImageDataset(images, source="digits", labels=bunch.target[idx],
                             keys=[f"digits_{i:04d}" for i in idx], channels=channels,
                             image_size=image_size, flip=flip, value_range=(0.0, 16.0),
                             classes=[str(d) for d in range(10)], num_classes=10)


def gmm8_mixture() -> GaussianMixture:
    """The exact law of ``gmm8``: 8 equal isotropic Gaussians (std 0.05) on a circle of radius 0.8."""
    angles = 2 * math.pi * np.arange(8) / 8
    means = GMM8_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return GaussianMixture([1 / 8] * 8, means, GMM8_STD)


def _gmm8(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    k = rng.integers(0, 8, n)
    angles = 2 * math.pi * k / 8
    means = GMM8_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return means + GMM8_STD * rng.standard_normal((n, 2)), k


def _moons(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    # scikit-learn's two interleaved half circles (noise 0.05), centred and scaled by 1/1.5 so the
    # long axis spans [-1, 1].
    k = rng.integers(0, 2, n)
    theta = math.pi * rng.random(n)
    upper = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    lower = np.stack([1 - np.cos(theta), 0.5 - np.sin(theta)], axis=1)
    x = np.where(k[:, None] == 0, upper, lower) + 0.05 * rng.standard_normal((n, 2))
    return (x - np.array([0.5, 0.25])) / 1.5, k


def _swissroll(rng: np.random.Generator, n: int) -> tuple[np.ndarray, None]:
    # The 2-D section of scikit-learn's swiss roll, t ∈ [1.5π, 4.5π], (t cos t, t sin t), noise
    # 0.5, scaled by 1/(4.5π + 1.5) so it stays inside [-1, 1]².
    t = 1.5 * math.pi * (1 + 2 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + 0.5 * rng.standard_normal((n, 2))
    return np.clip(x / (4.5 * math.pi + 1.5), -1, 1), None


def _checkerboard(rng: np.random.Generator, n: int) -> tuple[np.ndarray, None]:
    # Uniform on the 8 dark squares of a 4x4 board covering [-1, 1]²: pick a column, then a
    # row of the matching parity.
    col = rng.integers(0, 4, n)
    row = 2 * rng.integers(0, 2, n) + (col % 2)
    x = np.stack([col + rng.random(n), row + rng.random(n)], axis=1)
    return x / 2 - 1, None


TOY_GENERATORS = {"moons": _moons, "swissroll": _swissroll, "gmm8": _gmm8,
                  "checkerboard": _checkerboard}
TOY_CLASSES = {"moons": 2, "gmm8": 8}


def load_toy(name: str, *, split: str = "train", seed: int = 0) -> VectorDataset:
    """One of ``moons``, ``swissroll``, ``gmm8`` (labels = component), ``checkerboard``."""
    if name not in TOY_GENERATORS:
        raise DataError(f"unknown toy distribution {name!r}; valid: {sorted(TOY_GENERATORS)}")
    _check_split(split, name)
    parts = []
    for i, part in enumerate(("train", "test")):
        if split in (part, "all"):
            parts.append(TOY_GENERATORS[name](np.random.default_rng([seed, i]), TOY_SIZES[part]))
    x = np.concatenate([p[0] for p in parts])
    labels = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
    return VectorDataset(x, source=name, labels=labels, num_classes=TOY_CLASSES.get(name))
