"""Yardsticks for generative models: FID/KID in Inception features, improved precision/recall,
a memorisation audit, and small-classifier figures for digit-sized datasets.

Every function takes uint8 images (N, H, W, C); features and statistics are float64.
"""

from . import classifier
from .classifier import class_report, classifier_features, classify, load_classifier, prepare_classifier
from .features import FEATURE_SPACES, compute_fid, extract_features, reference_features
from .fid import feature_statistics, fid_from_features, frechet_distance
from .inception import inception_features
from .kid import kid
from .memorization import memorization_audit
from .precision_recall import precision_recall
from .report import evaluate_samples

__all__ = [
    "FEATURE_SPACES",
    "class_report",
    "classifier",
    "classifier_features",
    "classify",
    "compute_fid",
    "evaluate_samples",
    "extract_features",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "inception_features",
    "kid",
    "load_classifier",
    "memorization_audit",
    "precision_recall",
    "prepare_classifier",
    "reference_features",
]
