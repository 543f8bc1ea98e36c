"""Memorisation audit: does a sample copy a training image?

Following Carlini et al. (2023, "Extracting training data from diffusion models"), a sample x̂
is a near-copy when its nearest training image is much nearer than the next one:

    ratio(x̂) = ‖x̂ − x_(1)‖ / ‖x̂ − x_(2)‖ < 1/3,

with x_(1), x_(2) the nearest and second-nearest training images in pixel space ([0, 1],
Euclidean). A generic sample sits roughly as far from its first as from its second neighbour
(ratio near 1); a copy sits on one of them (ratio near 0). When the training set holds the
sample's nearest image twice (both distances 0), the ratio is 0: it is still a copy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .distances import k_smallest
from .images import as_uint8_images

COPY_THRESHOLD = 1.0 / 3.0


def nearest_training_images(samples, train, batch_size: int = 256) -> dict[str, np.ndarray]:
    """For each sample: the nearest and second-nearest training distances, the nearest's index,
    and their ratio (module docstring)."""
    samples = as_uint8_images(samples, name="samples")
    train = as_uint8_images(train, name="training images")
    if samples.shape[1:] != train.shape[1:]:
        raise ValueError(f"samples {samples.shape[1:]} and training images {train.shape[1:]} "
                         "differ in size or channels; compare like with like")
    if len(train) < 2:
        raise ValueError(f"the training set has {len(train)} image(s); the ratio test needs 2")
    flat = lambda a: a.reshape(len(a), -1).astype(np.float64) / 255.0  # noqa: E731
    dist, index = k_smallest(flat(samples), flat(train), 2, batch_size=batch_size)
    d1, d2 = dist[:, 0], dist[:, 1]
    ratio = np.divide(d1, d2, out=np.zeros_like(d1), where=d2 > 0)
    return {"nearest_distance": d1, "second_distance": d2, "nearest_index": index[:, 0], "ratio": ratio}


def save_pairs_figure(samples: np.ndarray, train: np.ndarray, sample_index: np.ndarray,
                      train_index: np.ndarray, path: str | os.PathLike, min_size: int = 64) -> None:
    """PNG with one row per pair: the sample on the left, its nearest training image on the
    right; small images are enlarged by pixel repetition so they stay legible."""
    scale = max(1, -(-min_size // samples.shape[1]))
    h, w, c = samples.shape[1] * scale, samples.shape[2] * scale, samples.shape[3]
    gap = max(2, scale)
    canvas = np.full((len(sample_index) * (h + gap) + gap, 2 * w + 3 * gap, c), 255, np.uint8)
    for row, (i, j) in enumerate(zip(sample_index, train_index, strict=True)):
        top = gap + row * (h + gap)
        for col, image in enumerate((samples[i], train[j])):
            left = gap + col * (w + gap)
            canvas[top:top + h, left:left + w] = image.repeat(scale, axis=0).repeat(scale, axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(path)


def memorization_audit(samples, train, threshold: float = COPY_THRESHOLD, worst: int = 8,
                       figure: str | os.PathLike | None = None) -> dict:
    """Fraction of samples that are near-copies of training images, and the worst cases.

    ``figure`` (optional) receives a PNG of the ``worst`` lowest-ratio pairs side by side.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold}: must lie in (0, 1)")
    samples = as_uint8_images(samples, name="samples")
    train = as_uint8_images(train, name="training images")
    nn = nearest_training_images(samples, train)
    order = np.argsort(nn["ratio"], kind="stable")[:max(0, worst)]
    report = {
        "memorization_threshold": threshold,
        "memorization_space": "pixels in [0, 1], Euclidean",
        "num_samples": int(len(samples)),
        "num_train": int(len(train)),
        "fraction_near_copies": float((nn["ratio"] < threshold).mean()),
        "num_near_copies": int((nn["ratio"] < threshold).sum()),
        "median_ratio": float(np.median(nn["ratio"])),
        "worst_pairs": [{"sample": int(i), "train": int(nn["nearest_index"][i]),
                         "ratio": float(nn["ratio"][i]), "distance": float(nn["nearest_distance"][i])}
                        for i in order],
    }
    if figure is not None and len(order):
        save_pairs_figure(samples, train, order, nn["nearest_index"][order], figure)
        report["worst_pairs_figure"] = str(figure)
    return report
