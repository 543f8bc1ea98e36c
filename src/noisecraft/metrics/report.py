"""One evaluation of a sample set against a reference set: every figure the metrics package
computes, with every setting that moves a number written beside it."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from .features import extract_features, feature_space_info, reference_features
from .fid import fid_from_features
from .images import as_uint8_images

METRICS = ("fid", "kid", "pr", "memorization", "classifier")
DEFAULT_METRICS = ("fid", "kid", "pr", "memorization")


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"fid,kid"`` → ("fid", "kid"); an unknown or repeated name is a ValueError naming it."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--metrics {text!r}: give each metric once, comma-separated")
    return names


def classifier_for(spec: str, images: np.ndarray) -> str | None:
    """Which small classifier fits a dataset: ``digits`` for the built-in digits; ``mnist`` for
    28×28 grey images whose spec names MNIST (not Fashion-MNIST); otherwise none."""
    name = os.path.basename(os.path.normpath(spec)).lower()
    if spec == "digits":
        return "digits"
    if images.shape[1:] == (28, 28, 1) and "mnist" in name and "fashion" not in name:
        return "mnist"
    return None


def evaluate_samples(samples, reference, *, reference_spec: str, reference_split: str,
                     metrics: tuple[str, ...] = DEFAULT_METRICS, feature_space: str = "inception",
                     train_images=None, classifier: str | None = None, batch_size: int = 50,
                     weights: str | os.PathLike | None = None, figure: str | os.PathLike | None = None,
                     seed: int = 0, progress: bool = False,
                     device: str | torch.device = "cpu") -> dict:
    """Compute ``metrics`` for uint8 ``samples`` against uint8 ``reference`` images.

    FID, KID and precision/recall use ``feature_space`` (reference features cached by content
    hash); the memorisation audit compares with ``train_images`` (default: the reference) in
    pixel space; ``classifier`` ("digits"/"mnist") adds coverage, confidence and
    classifier-FID in that classifier's feature space. ``device`` runs the Inception network.
    """
    from .classifier import class_report
    from .kid import kid
    from .memorization import memorization_audit
    from .precision_recall import precision_recall

    samples = as_uint8_images(samples, name="samples")
    reference = as_uint8_images(reference, name="reference")
    if samples.shape[-1] != reference.shape[-1] or samples.shape[1:3] != reference.shape[1:3]:
        # FID would still run after resizing to 299, but such a mismatch is almost always a
        # wrong --data; refuse rather than report a meaningless number
        raise ValueError(f"samples {samples.shape[1:]} and reference {reference.shape[1:]} "
                         "differ in size or channels")
    if "classifier" in metrics and classifier is None:
        raise ValueError(f"metric 'classifier' needs a small classifier, but none fits "
                         f"{reference_spec!r}; supported: digits, MNIST")
    started = time.perf_counter()
    out: dict = {"num_samples": int(len(samples))}
    if {"fid", "kid", "pr"} & set(metrics):
        ref_feats, ref_record = reference_features(reference, reference_spec, reference_split,
                                                   feature_space, batch_size=batch_size,
                                                   weights=weights, progress=progress,
                                                   device=device)
        sample_feats = extract_features(samples, feature_space, batch_size=batch_size,
                                        weights=weights, progress=progress, device=device)
        out["reference"] = ref_record
        out["feature_space"] = feature_space_info(feature_space, weights)
        if "fid" in metrics:
            out["fid"] = fid_from_features(sample_feats, ref_feats)
        if "kid" in metrics:
            out.update(kid(sample_feats, ref_feats, seed=seed))
        if "pr" in metrics:
            out.update(precision_recall(ref_feats, sample_feats))
    if "memorization" in metrics:
        train = reference if train_images is None else train_images
        out["memorization"] = memorization_audit(samples, train, figure=figure)
    if "classifier" in metrics:
        report = class_report(samples, dataset=classifier)
        ref_cls, _ = reference_features(reference, reference_spec, reference_split, classifier)
        report["classifier_fid"] = fid_from_features(extract_features(samples, classifier), ref_cls)
        out["classifier"] = report
    out["elapsed_s"] = round(time.perf_counter() - started, 3)
    return out
