"""Feature spaces for the distribution metrics, and the cache of reference-set features.

``inception`` is the standard FID network (2048-d pool-3); ``digits`` and ``mnist`` are the
small classifiers' penultimate layers (see ``classifier.py``), the feature space that fits
digit-sized images. A reference set's features are computed once and cached under
``<cache>/reference/``, keyed by dataset, split, count, feature space and the sha256 of the
exact uint8 pixels, so a changed file or a different subset can never reuse stale statistics.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import torch

from ..cache import cache_dir, content_hash, load_arrays, save_arrays
from .fid import feature_statistics
from .images import as_uint8_images

FEATURE_SPACES = ("inception", "digits", "mnist")


def _check_space(space: str) -> None:
    if space not in FEATURE_SPACES:
        raise ValueError(f"feature space {space!r} unknown; choose one of {', '.join(FEATURE_SPACES)}")


def feature_space_info(space: str, weights: str | os.PathLike | None = None) -> dict:
    """What identifies a feature space: its name and the sha256 / version of its weights."""
    _check_space(space)
    if space == "inception":
        from .inception import FEATURE_DIM, FID_INCEPTION_SHA256, PREPROCESS, locate_weights

        return {"space": space, "network": "InceptionV3 pool3 (FID)", "dim": FEATURE_DIM,
                "sha256": FID_INCEPTION_SHA256, "weights": str(locate_weights(weights)),
                "preprocess": PREPROCESS}
    from .classifier import load_classifier

    clf = load_classifier(space)
    return {"space": space, "network": f"small {clf.arch} classifier", "dim": clf.feature_dim,
            "version": clf.meta["version"], "held_out_accuracy": clf.meta["held_out_accuracy"],
            "preprocess": {"input": f"grey (RGB averaged) in [0, 1], resized to {clf.image_size}x"
                                    f"{clf.image_size} (images.resize_nchw)",
                           "statistics": "float64, unbiased covariance"}}


def extract_features(images, space: str = "inception", *, batch_size: int = 50,
                     weights: str | os.PathLike | None = None, progress: bool = False,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """Features (N, D), float64, of uint8 (N, H, W, C) images in the named feature space.
    ``device`` runs the Inception network (the small classifiers are CPU-sized)."""
    _check_space(space)
    if space == "inception":
        from ..devices import check_device
        from .inception import inception_features

        return inception_features(images, batch_size=batch_size, weights=weights, progress=progress,
                                  device=check_device(device))
    if weights is not None:
        raise ValueError(f"weights={weights!r} applies only to the inception feature space")
    from .classifier import classifier_features

    return classifier_features(images, dataset=space)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[-60:] or "data"


def reference_features(images, dataset: str, split: str, space: str = "inception", *,
                       batch_size: int = 50, weights: str | os.PathLike | None = None,
                       progress: bool = False,
                       device: str | torch.device = "cpu") -> tuple[np.ndarray, dict]:
    """Features of a reference set, from the cache when this exact set was seen before.

    Returns (features float64 (N, D), record) where the record names dataset, split, count,
    content sha256, feature space and weights, the input preprocessing and the cache file.
    """
    images = as_uint8_images(images, name=f"reference set {dataset!r}")
    info = feature_space_info(space, weights)
    key = {"dataset": dataset, "split": split, "count": int(len(images)),
           "content_sha256": content_hash(images), "feature_space": space,
           "feature_weights": info.get("sha256", info.get("version")),
           "preprocess": info["preprocess"]}
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    name = f"{_slug(dataset)}-{split}-{len(images)}-{space}-{key_hash[:16]}.safetensors"
    path = cache_dir("reference") / name
    if path.exists():
        arrays, meta = load_arrays(path)
        if meta.get("key") == key:
            record = {**key, "cache_file": str(path), "cached": True}
            return arrays["features"].astype(np.float64), record
    feats = extract_features(images, space, batch_size=batch_size, weights=weights, progress=progress,
                             device=device)
    mu, sigma = feature_statistics(feats)
    # the networks compute in float32, so storing the features as float32 loses nothing
    save_arrays(path, {"features": feats.astype(np.float32), "mu": mu, "sigma": sigma}, {"key": key})
    return feats, {**key, "cache_file": str(path), "cached": False}


def compute_fid(images_a, reference, *, split: str = "train", features: str = "inception",
                n: int | None = None, image_size: int | None = None, channels: int | None = None,
                batch_size: int = 50, weights: str | os.PathLike | None = None,
                progress: bool = False, device: str | torch.device = "cpu") -> float:
    """FID in one call, as ``noisecraft fid`` computes it: ``images_a`` is uint8 (N, H, W, C)
    (what ``load_run(...).generate`` returns) and ``reference`` either such an array or a data
    spec (``"digits"``, an MNIST folder, shards ...) read with ``split``, whose features are
    cached. ``n``, ``image_size`` and ``channels`` select and convert a spec's images
    (``metrics.images.load_image_set``). ``features`` "digits"/"mnist" use the small classifiers.
    """
    from .fid import frechet_distance
    from .images import load_image_set

    _check_space(features)
    if isinstance(reference, str):
        if features in ("digits", "mnist"):
            from .classifier import prepare_classifier

            prepare_classifier(features, data=reference)
        name = reference
        reference = load_image_set(reference, n=n, split=split, image_size=image_size,
                                   channels=channels)
    else:
        name = "<array>"
    options = {"batch_size": batch_size, "weights": weights, "progress": progress, "device": device}
    feats_b, _ = reference_features(reference, name, split, features, **options)
    feats_a = extract_features(images_a, features, **options)
    return frechet_distance(*feature_statistics(feats_a), *feature_statistics(feats_b))
