"""Small classifiers that give digit-sized datasets a feature space that fits them.

The Inception network was trained on 299×299 photographs; on 8×8 or 28×28 digits its features
say little. For those datasets noisecraft trains a small classifier once, caches its weights
(safetensors, never pickle) and reads three figures from it:

- **class coverage**: how many of the classes the samples are recognised as (mode dropping);
- **confidence**: the mean of max_y p(y|x) and the fraction above a threshold (sample quality);
- **classifier-FID**: the Fréchet distance in its penultimate-layer features (see ``fid.py``).

``digits`` (scikit-learn's 8×8 digits, 0–16 ink scaled to [0, 1]) uses a one-hidden-layer MLP
(64 ReLU units) trained with Adam in a few seconds. ``mnist`` (28×28) uses a small CNN (two
stride-2 3×3 convolutions, 128 hidden units) trained for one pass over MNIST's training set
(well under a minute on a CPU core). Both are trained with outlier exposure so that noise is
not called a digit with confidence.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..cache import cache_dir, load_arrays, save_arrays
from .images import as_uint8_images, grey_float

CLASSIFIER_VERSION = 1
SUPPORTED = ("digits", "mnist")


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
        batches = (grey_float(images[start:start + batch_size], self.image_size)
                   for start in range(0, len(images), batch_size))
        return self._predict_batches(batches)

    @torch.no_grad()
    def predict_spectrograms(self, x, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Log-mel spectrograms (N, 1, n_mels, frames) in [−1, 1], of the shape the classifier
        was fitted on (:func:`fit_spectrogram_classifier`) → (probabilities, features)."""
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        expected = tuple(self.meta["input_shape"])
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"spectrograms of shape {tuple(x.shape[1:])}; this classifier reads "
                             f"{expected}")
        return self._predict_batches(_unit(x[start:start + batch_size])
                                     for start in range(0, len(x), batch_size))

    def _predict_batches(self, batches) -> tuple[np.ndarray, np.ndarray]:
        probs, feats = [], []
        for x in batches:
            logits, h = self._forward(x)
            probs.append(torch.softmax(logits.double(), dim=1).numpy())
            feats.append(h.double().numpy())
        return np.concatenate(probs), np.concatenate(feats)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] model units → [0, 1], the input range every classifier here is trained on."""
    return (x.clamp(-1, 1) + 1) / 2


def _outlier_images(n: int, in_class: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pixel noise at random contrast, and digits drowned in noise: the pictures a classifier
    must not be sure about. Trained towards the uniform distribution ("outlier exposure",
    Hendrycks et al. 2019), because a plain MLP calls pure noise a digit with ~95% confidence,
    which would make the confidence figure useless for judging noisy samples."""
    shape = (n, *in_class.shape[1:])
    scale_shape = (n,) + (1,) * (in_class.ndim - 1)
    faint = torch.rand(shape, generator=generator) * torch.rand(scale_shape, generator=generator)
    mix = torch.rand(scale_shape, generator=generator) * 0.5
    pick = torch.randint(0, len(in_class), (n,), generator=generator)
    drowned = (1 - mix) * torch.rand(shape, generator=generator) + mix * in_class[pick]
    return torch.cat([faint, drowned])


def _init_from(generator: torch.Generator, *layers: torch.nn.Module) -> None:
    """Uniform ±1/√fan_in weights and zero biases from our own generator, so the trained weights
    do not depend on the global RNG state."""
    with torch.no_grad():
        for layer in layers:
            fan_in = layer.weight[0].numel()
            uniform = torch.rand(layer.weight.shape, generator=generator) * 2 - 1
            layer.weight.copy_(uniform * fan_in**-0.5)
            layer.bias.zero_()


def _as_arrays(**layers: torch.nn.Module) -> dict[str, np.ndarray]:
    return {f"{name}.{p}": getattr(layer, p).detach().numpy().copy()
            for name, layer in layers.items() for p in ("weight", "bias")}


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
    _init_from(generator, hidden, out)
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
    meta = {"arch": "mlp", "image_size": 8, "seed": seed, "train_size": int(len(train)),
            "held_out_size": int(len(held_out)), "held_out_accuracy": float(accuracy),
            "trained_on": "scikit-learn digits (fixed 80% split)"}
    return _as_arrays(hidden=hidden, out=out), meta


def _train_mnist(data: str, seed: int = 0, batch_size: int = 128) -> tuple[dict[str, np.ndarray], dict]:
    """One epoch of Adam over the training split of ``data`` (an MNIST spec), with outlier
    exposure as for digits; accuracy measured on its test split."""
    from .images import load_labelled_images

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = load_labelled_images(data, split=split)
        if images.shape[1:] != (28, 28, 1) or labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"{data!r} ({split}) is not MNIST-like: need 28×28 grey images "
                             f"labelled 0-9, got {images.shape[1:]}")
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, torch.from_numpy(labels)

    x, y = tensors("train")
    x_test, y_test = tensors("test")
    generator = torch.Generator().manual_seed(seed)
    conv1, conv2 = torch.nn.Conv2d(1, 16, 3, 2, 1), torch.nn.Conv2d(16, 32, 3, 2, 1)
    hidden, out = torch.nn.Linear(32 * 7 * 7, 128), torch.nn.Linear(128, 10)
    _init_from(generator, conv1, conv2, hidden, out)
    net = torch.nn.Sequential(conv1, torch.nn.ReLU(), conv2, torch.nn.ReLU(), torch.nn.Flatten(),
                              hidden, torch.nn.ReLU(), out)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        logits = net(torch.cat([x[idx], _outlier_images(batch_size // 8, x[idx], generator)]))
        loss = (F.cross_entropy(logits[:len(idx)], y[idx])
                - 0.5 * F.log_softmax(logits[len(idx):], dim=1).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (net(x_test).argmax(dim=1) == y_test).double().mean().item()
    meta = {"arch": "cnn", "image_size": 28, "seed": seed, "train_size": int(len(x)),
            "held_out_size": int(len(x_test)), "held_out_accuracy": float(accuracy),
            "trained_on": f"{data} (train split, one epoch; accuracy on its test split)"}
    return _as_arrays(conv1=conv1, conv2=conv2, hidden=hidden, out=out), meta


def fit_spectrogram_classifier(x, labels, *, epochs: int = 8, batch_size: int = 64,
                               seed: int = 0, max_shift: int = 4) -> SmallClassifier:
    """A small CNN (the MNIST one's layout: two stride-2 3×3 convolutions, 128 hidden units)
    fitted to log-mel spectrograms ``x`` (N, 1, n_mels, frames) in [−1, 1] with integer
    ``labels`` (N,), by Adam for ``epochs`` passes. Each batch is shifted in time by up to
    ``max_shift`` frames (circularly), so a word heard a little earlier or later is the same word.

    Not cached: it is fitted to one feature setting (``meta["input_shape"]``), and takes
    seconds on FSDD. Read it with :meth:`SmallClassifier.predict_spectrograms`.
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if x.ndim != 4 or x.shape[1] != 1 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need spectrograms (N, 1, n_mels, frames) and N labels, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if y.min() < 0:
        raise ValueError("labels must be non-negative class indices (−1 means unlabelled)")
    h, w = x.shape[2], x.shape[3]
    if h % 4 or w % 4:
        raise ValueError(f"n_mels and frames must be multiples of 4, got {h}×{w}")
    generator = torch.Generator().manual_seed(seed)
    num_classes = int(y.max()) + 1
    conv1, conv2 = torch.nn.Conv2d(1, 16, 3, 2, 1), torch.nn.Conv2d(16, 32, 3, 2, 1)
    hidden, out = torch.nn.Linear(32 * (h // 4) * (w // 4), 128), torch.nn.Linear(128, num_classes)
    _init_from(generator, conv1, conv2, hidden, out)
    net = torch.nn.Sequential(conv1, torch.nn.ReLU(), conv2, torch.nn.ReLU(), torch.nn.Flatten(),
                              hidden, torch.nn.ReLU(), out)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    unit = _unit(x)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            shift = int(torch.randint(-max_shift, max_shift + 1, (), generator=generator))
            loss = F.cross_entropy(net(unit[idx].roll(shift, dims=-1)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    meta = {"arch": "cnn", "image_size": int(h), "input_shape": [1, int(h), int(w)], "seed": seed,
            "epochs": epochs, "train_size": int(len(x)), "trained_on": "log-mel spectrograms",
            "version": CLASSIFIER_VERSION}
    return SmallClassifier(dataset="spectrograms", arch="cnn", image_size=int(h),
                           weights=_as_arrays(conv1=conv1, conv2=conv2, hidden=hidden, out=out),
                           meta=meta)


def cache_file(dataset: str) -> Path:
    """Where the classifier for ``dataset`` is cached (whether or not it exists yet)."""
    if dataset not in SUPPORTED:
        raise ValueError(f"dataset={dataset!r}: no small classifier for it; "
                         f"supported: {', '.join(SUPPORTED)}")
    return cache_dir("classifiers") / f"{dataset}-v{CLASSIFIER_VERSION}.safetensors"


def prepare_classifier(dataset: str = "digits", data: str | None = None) -> None:
    """Train and cache the classifier for ``dataset`` unless it is cached already.

    ``digits`` needs nothing; ``mnist`` needs ``data``, a spec of MNIST (e.g. its IDX folder),
    and trains once in well under a minute on a CPU.
    """
    path = cache_file(dataset)
    if path.exists():
        return
    if dataset == "digits":
        weights, meta = _train_digits()
    elif data is None:
        raise FileNotFoundError(f"no cached {dataset} classifier in {path.parent}; train it once with "
                                f"prepare_classifier({dataset!r}, data=<MNIST folder>)")
    else:
        weights, meta = _train_mnist(data)
    save_arrays(path, weights, {**meta, "dataset": dataset, "version": CLASSIFIER_VERSION})
    load_classifier.cache_clear()


@functools.cache
def load_classifier(dataset: str = "digits") -> SmallClassifier:
    """The cached classifier for ``dataset`` (``digits`` is trained on first use; ``mnist`` must
    have been prepared with :func:`prepare_classifier`)."""
    path = cache_file(dataset)
    if not path.exists():
        prepare_classifier(dataset)
    weights, meta = load_arrays(path)
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

