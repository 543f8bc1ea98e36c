"""Yardsticks for generative models: FID/KID in Inception features, improved precision/recall,
a memorisation audit, and small-classifier figures for digit-sized datasets."""

from . import classifier
from .classifier import class_report, classifier_features, classify, load_classifier

__all__ = ["class_report", "classifier", "classifier_features", "classify", "load_classifier"]
