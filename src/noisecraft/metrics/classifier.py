"""Small classifiers that give digit-sized datasets a feature space that fits them.

The Inception network was trained on 299×299 photographs; on 8×8 or 28×28 digits its features
say little. For those datasets noisecraft trains a small classifier once, caches its weights
(safetensors, never pickle) and reads three figures from it:

- **class coverage**: how many of the classes the samples are recognised as (mode dropping);
- **confidence**: the mean of max_y p(y|x) and the fraction above a threshold (sample quality);
- **classifier-FID**: the Fréchet distance in its penultimate-layer features (see ``fid.py``).

``digits`` (scikit-learn's 8×8 digits, 0–16 ink scaled to [0, 1]) uses a one-hidden-layer MLP
(64 ReLU units) trained with Adam in a few seconds, with outlier exposure so that noise is
not called a digit with confidence. ``mnist`` (28×28) uses a small CNN trained
for one pass over MNIST's training set (well under a minute on a CPU core).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .cache import cache_dir, load_arrays, save_arrays
from .images import as_uint8_images, grey_float

CLASSIFIER_VERSION = 1
SUPPORTED = ("digits",)


@dataclass(frozen=True)
class SmallClassifier:
    """A trained classifier held as plain arrays; ``arch`` says how to read them."""

    dataset: str
    arch: str  # "mlp" or "cnn"
    image_size: int
    weights: dict[str, np.ndarray]
    meta: dict

    @property
    def num_classes(self) -> int:
        return int(self.weights["out.bias"].shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.weights["out.weight"].shape[1])

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = {k: torch.from_numpy(v) for k, v in self.weights.items()}
        if self.arch == "mlp":
            h = F.relu(F.linear(x.flatten(1), w["hidden.weight"], w["hidden.bias"]))
        else:
            h = F.relu(F.conv2d(x, w["conv1.weight"], w["conv1.bias"], stride=2, padding=1))
            h = F.relu(F.conv2d(h, w["conv2.weight"], w["conv2.bias"], stride=2, padding=1))
            h = F.relu(F.linear(h.flatten(1), w["hidden.weight"], w["hidden.bias"]))
        return F.linear(h, w["out.weight"], w["out.bias"]), h

    @torch.no_grad()
    def predict(self, images, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W, C) images → (class probabilities (N, K), features (N, D)), float64.

        Images of another size are resized to the classifier's input (area averaging down,
        bilinear up); RGB is averaged to grey.
        """
        images = as_uint8_images(images)
        probs, feats = [], []
        for start in range(0, len(images), batch_size):
            x = grey_float(images[start:start + batch_size], self.image_size)
            logits, h = self._forward(x)
            probs.append(torch.softmax(logits.double(), dim=1).numpy())
            feats.append(h.double().numpy())
        return np.concatenate(probs), np.concatenate(feats)


def _outlier_images(n: int, in_class: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pixel noise at random contrast, and digits drowned in noise: the pictures a classifier
    must not be sure about. Trained towards the uniform distribution ("outlier exposure",
    Hendrycks et al. 2019), because a plain MLP calls pure noise a digit with ~95% confidence,
    which would make the confidence figure useless for judging noisy samples."""
    dim = in_class.shape[1]
    faint = torch.rand(n, dim, generator=generator) * torch.rand(n, 1, generator=generator)
    mix = torch.rand(n, 1, generator=generator) * 0.5
    pick = torch.randint(0, len(in_class), (n,), generator=generator)
    drowned = (1 - mix) * torch.rand(n, dim, generator=generator) + mix * in_class[pick]
    return torch.cat([faint, drowned])


def _train_digits(seed: int = 0, steps: int = 300) -> tuple[dict[str, np.ndarray], dict]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images.reshape(len(digits.images), -1) / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    held_out, train = order[:360], order[360:]
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.nn.Linear(64, 64)
    out = torch.nn.Linear(64, 10)
    with torch.no_grad():  # initialise from our own generator so the weights do not depend on global RNG
        for layer in (hidden, out):
            bound = layer.in_features ** -0.5
            layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
            layer.bias.zero_()
    net = torch.nn.Sequential(hidden, torch.nn.ReLU(), out)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    x_train, y_train = x[train], y[train]
    for _ in range(steps):
        loss = F.cross_entropy(net(x_train), y_train)
        outlier_logits = net(_outlier_images(256, x_train, generator))
        loss = loss - 0.5 * F.log_softmax(outlier_logits, dim=1).mean()  # CE against uniform
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (net(x[held_out]).argmax(dim=1) == y[held_out]).double().mean().item()
    weights = {
        "hidden.weight": hidden.weight.detach().numpy().copy(),
        "hidden.bias": hidden.bias.detach().numpy().copy(),
        "out.weight": out.weight.detach().numpy().copy(),
        "out.bias": out.bias.detach().numpy().copy(),
    }
    meta = {"arch": "mlp", "image_size": 8, "seed": seed, "train_size": int(len(train)),
            "held_out_size": int(len(held_out)), "held_out_accuracy": float(accuracy)}
    return weights, meta


@functools.cache
def load_classifier(dataset: str = "digits") -> SmallClassifier:
    """The cached classifier for ``dataset``, training and caching it on first use."""
    if dataset not in SUPPORTED:
        raise ValueError(f"dataset={dataset!r}: no small classifier for it; "
                         f"supported: {', '.join(SUPPORTED)}")
    path = cache_dir("classifiers") / f"{dataset}-v{CLASSIFIER_VERSION}.safetensors"
    if path.exists():
        weights, meta = load_arrays(path)
    else:
        weights, meta = _train_digits()
        meta = {**meta, "dataset": dataset, "version": CLASSIFIER_VERSION}
        save_arrays(path, weights, meta)
    return SmallClassifier(dataset=dataset, arch=meta["arch"], image_size=int(meta["image_size"]),
                           weights=weights, meta=meta)


def classify(images, dataset: str = "digits") -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, C) images → (predicted labels int64 (N,), confidences max_y p(y|x) (N,))."""
    probs, _ = load_classifier(dataset).predict(images)
    return probs.argmax(axis=1).astype(np.int64), probs.max(axis=1)


def classifier_features(images, dataset: str = "digits") -> np.ndarray:
    """Penultimate-layer features (N, D), float64: the feature space of classifier-FID."""
    return load_classifier(dataset).predict(images)[1]


def class_report(images, dataset: str = "digits", threshold: float = 0.9) -> dict:
    """Coverage and confidence of a sample set under the small classifier.

    Returns ``num_classes_covered`` (classes predicted with confidence ≥ ``threshold`` at least
    once, so that pure noise, spread thinly over every class, covers none), ``class_histogram``
    (counts per class), ``mean_confidence`` (mean of max_y p(y|x)) and ``fraction_confident``
    (fraction with max_y p(y|x) ≥ ``threshold``), plus the threshold and the classifier's
    held-out accuracy so the numbers can be read against it.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold}: must lie in (0, 1)")
    clf = load_classifier(dataset)
    probs, _ = clf.predict(images)
    labels, conf = probs.argmax(axis=1), probs.max(axis=1)
    histogram = np.bincount(labels, minlength=clf.num_classes)
    return {
        "dataset": dataset,
        "num_samples": int(len(labels)),
        "num_classes": clf.num_classes,
        "num_classes_covered": int(len(np.unique(labels[conf >= threshold]))),
        "class_histogram": [int(c) for c in histogram],
        "mean_confidence": float(conf.mean()),
        "fraction_confident": float((conf >= threshold).mean()),
        "confidence_threshold": float(threshold),
        "classifier_held_out_accuracy": float(clf.meta["held_out_accuracy"]),
    }

