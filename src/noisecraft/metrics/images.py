"""Validation and resizing of image batches handed to the metrics.

Every metric takes uint8 images of shape (N, H, W, C), C ∈ {1, 3} — what ``noisecraft sample``
writes and what ``noisecraft.data.to_uint8`` returns — so that two feature extractors never see
the same picture scaled two different ways.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..conditions import NULL_LABEL


def as_uint8_images(images, name: str = "images") -> np.ndarray:
    """Check and return ``images`` as a uint8 array (N, H, W, C) with C in {1, 3}.

    A (N, H, W) array is read as grey. Torch tensors are accepted and copied to numpy.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 pixels, got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim == 4 and images.shape[-1] == 4:
        raise ValueError(f"{name}: RGBA images {images.shape}; convert them to 3 channels (alpha "
                         "composited on white) or 1, e.g. load_image_set(..., channels=3)")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{name}: expected shape (N, H, W, C) with C in (1, 3), got {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: the image set is empty")
    return images


def resize_nchw(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float NCHW images to ``size``×``size``.

    Bilinear without antialiasing, as torch-fidelity and clean-fid's "legacy_pytorch" mode do for
    the Inception input (upsampling is the common case: 8–64 px images to 299). Shrinking (an
    image larger than the classifier's input) uses area averaging, which is the antialiased choice.
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if h >= size and w >= size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def grey_float(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, C) → float32 (N, 1, size, size) grey in [0, 1] (RGB averaged)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    return resize_nchw(x, size)


def load_image_set(spec: str, n: int | None = None, split: str = "train",
                   image_size: int | None = None, channels: int | None = None) -> np.ndarray:
    """The first ``n`` images (all when None) of a data spec as uint8 (N, H, W, C).

    Any spec ``noisecraft.data.load`` reads works here (a name such as ``digits``, an IDX folder,
    shards, an image folder, an ``.npz``); images are taken in the dataset's own order (shards
    unshuffled), so the same spec, split and n always give the same set.
    """
    return load_labelled_images(spec, n, split, image_size, channels)[0]


def load_labelled_images(spec: str, n: int | None = None, split: str = "train",
                         image_size: int | None = None, channels: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`load_image_set`, with the labels (int64, −1 where the data has none)."""
    # metrics sit above data (tests/test_layout.py): a yardstick reads its reference set through
    # the one spec resolver; no data module imports metrics. Imported here to keep
    # ``import noisecraft.metrics`` light.
    from .. import data

    if n is not None and n < 1:
        raise ValueError(f"n={n}: must be at least 1")
    dataset = data.load(spec, split=split, image_size=image_size, channels=channels, shuffle=False)
    if dataset.preprocess.kind != "image":
        raise ValueError(f"{spec!r} holds {dataset.preprocess.kind} data, not images")
    items = dataset if not hasattr(dataset, "__len__") else (dataset[j] for j in range(len(dataset)))
    xs, labels = [], []
    for i, item in enumerate(items):
        if n is not None and i >= n:
            break
        xs.append(item["x"])
        labels.append(NULL_LABEL if item["label"] is None else int(item["label"]))
    if not xs:
        raise ValueError(f"{spec!r} (split {split!r}) holds no images")
    return data.to_uint8(torch.stack(xs), dataset.preprocess), np.asarray(labels, dtype=np.int64)
