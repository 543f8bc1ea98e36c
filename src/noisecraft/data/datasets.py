"""The two in-memory dataset shapes every map-style reader returns.

Items are dicts ``{"x", "label", "caption", "key"}``: ``label`` is an int with −1 for "no label"
and ``caption`` a str, "" for none, so torch's default collate batches them without a custom
function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..conditions import NULL_LABEL as NO_LABEL  # data's name for it: the example has no class
from ..errors import DataError
from .transforms import Preprocess, prepare_array, random_flip, scale_to_unit


def image_info(pre: Preprocess, *, num_classes: int | None, count: int | None,
               classes: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``dataset.info`` record of an image dataset (what the trainer sizes the net by)."""
    size: int | tuple[int, int] = (pre.height if pre.height == pre.width
                                   else (int(pre.height or 0), int(pre.width or 0)))
    return {"kind": "image", "channels": pre.channels, "image_size": size, "height": pre.height,
            "width": pre.width, "num_classes": num_classes, "count": count,
            "classes": list(classes) if classes is not None else None}


# Class labels index an embedding table of K rows: past this K is a data error, not a model.
MAX_CLASSES = 100_000


def check_labels(labels: np.ndarray | None, n: int, source: str) -> np.ndarray | None:
    """Labels must be one non-negative integer per image; anything else names ``source``."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{source}: labels do not match the images: labels of shape "
                        f"{labels.shape} for {n} images")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers, got dtype {labels.dtype}")
    if n and labels.min() < 0:
        i = int(labels.argmin())
        raise DataError(f"{source}: labels must be >= 0, found {int(labels[i])} (example {i})")
    if n and labels.max() >= MAX_CLASSES:  # the class embedding would have max + 1 rows
        i = int(labels.argmax())
        raise DataError(f"{source}: label {int(labels[i])} (example {i}) is too large; labels are "
                        f"class indices 0..K-1 with K at most {MAX_CLASSES}")
    return labels.astype(np.int64)


class ArrayImageDataset(Dataset):
    """uint8 pictures (N, H, W, C) held in memory, preprocessed one item at a time.

    ``channels``/``image_size`` of None keep the pictures' own channel count and size.
    ``skipped`` counts the files a reader passed over with ``skip_bad``.
    """

    skipped = 0

    def __init__(self, images: np.ndarray, *, source: str, labels: np.ndarray | None = None,
                 captions: Sequence[str] | None = None, keys: Sequence[str] | None = None,
                 channels: int | None = None, image_size: int | None = None, flip: bool = False,
                 value_range: tuple[float, float] = (0.0, 255.0),
                 classes: Sequence[str] | None = None, num_classes: int | None = None) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise DataError(f"{source}: expected uint8 images of shape (N, H, W[, C]) with C in 1, 3, 4;"
                            f" got {images.dtype} {images.shape}")
        n, h, w, c = images.shape
        if n == 0:
            raise DataError(f"{source}: holds no images")
        self.images = images
        self.labels = check_labels(labels, n, source)
        if captions is not None and len(captions) != n:
            raise DataError(f"{source}: {len(captions)} captions for {n} images")
        self.captions = list(captions) if captions is not None else None
        self.keys = list(keys) if keys is not None else None
        channels = c if channels is None else channels
        size = (h, w) if image_size is None else (image_size, image_size)
        self.preprocess = Preprocess(kind="image", channels=channels, height=size[0], width=size[1],
                                     image_size=image_size, value_range=value_range, flip=flip)
        # Fast path: nothing but scaling to do, so no per-item Pillow round trip.
        self._as_is = channels == c and (image_size is None or (h, w) == size)
        if num_classes is None and self.labels is not None:
            num_classes = int(self.labels.max()) + 1
        self.info = image_info(self.preprocess, num_classes=num_classes, count=n, classes=classes)
        self.source = source

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        a = self.images[i]
        if not self._as_is:
            a = prepare_array(a, self.preprocess)
        x = random_flip(scale_to_unit(a, self.preprocess), self.preprocess)
        return {"x": x,
                "label": int(self.labels[i]) if self.labels is not None else NO_LABEL,
                "caption": self.captions[i] if self.captions is not None else "",
                "key": self.keys[i] if self.keys is not None else str(i)}


class VectorDataset(Dataset):
    """Float vectors (N, D) held in memory, e.g. the 2-D toy distributions."""

    def __init__(self, vectors: np.ndarray | torch.Tensor, *, source: str,
                 labels: np.ndarray | None = None, num_classes: int | None = None) -> None:
        v = torch.as_tensor(vectors, dtype=torch.float32)
        if v.ndim != 2 or v.shape[0] == 0:
            raise DataError(f"{source}: expected vectors of shape (N, D) with N > 0, "
                            f"got {tuple(v.shape)}")
        self.vectors = v
        self.labels = check_labels(labels, v.shape[0], source)
        self.preprocess = Preprocess(kind="vector", dim=v.shape[1], value_range=(-1.0, 1.0))
        if num_classes is None and self.labels is not None:
            num_classes = int(self.labels.max()) + 1
        self.info = {"kind": "vector", "dim": v.shape[1], "num_classes": num_classes,
                     "count": v.shape[0], "channels": None, "image_size": None, "classes": None}
        self.source = source

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.vectors[i],
                "label": int(self.labels[i]) if self.labels is not None else NO_LABEL,
                "caption": "", "key": f"{self.source}_{i:06d}"}
