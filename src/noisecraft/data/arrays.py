"""uint8 images in a ``.npy`` or ``.npz`` file (never unpickled: ``allow_pickle=False``).

- ``.npy``: one array of images (N, H, W) or (N, H, W, C), C in 1, 3, 4; no labels, no test split.
- ``.npz``, plain layout: images under ``images``, ``x`` or ``arr_0``; optional labels under
  ``labels`` or ``y`` (integers, one per image) and captions under ``captions`` (str array).
  Splits: ``train`` and ``all`` are the whole file; there is no ``test``.
- ``.npz``, split layout (Keras' mnist.npz): ``x_train``/``y_train``, ``x_test``/``y_test``
  (also ``train_images``/``train_labels``/``train_captions`` ...); ``all`` is train then test.
- either layout may name the classes in a 1-D str array ``classes`` (label i ↔ classes[i]).

Keys the reader does not use are reported in a warning, so nothing vanishes unnoticed.
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from typing import Any

import numpy as np

from ..errors import DataError
from .datasets import ArrayImageDataset
from .limits import check_claim

PLAIN_KEYS = {"images": ("images", "x", "arr_0"), "labels": ("labels", "y"), "captions": ("captions",)}


def _split_keys(split: str) -> dict[str, tuple[str, ...]]:
    return {"images": (f"x_{split}", f"{split}_images"), "labels": (f"y_{split}", f"{split}_labels"),
            "captions": (f"captions_{split}", f"{split}_captions")}


def _pick(arrays: dict[str, np.ndarray], names: tuple[str, ...], path: str) -> str | None:
    found = [n for n in names if n in arrays]
    if len(found) > 1:
        raise DataError(f"{path}: ambiguous: both {found[0]!r} and {found[1]!r} are present")
    return found[0] if found else None


def _npy_claim(f: Any) -> int | None:
    """The bytes of data a ``.npy`` header (at ``f``'s position) claims; None for object arrays
    (np.load refuses those without allocating) and headers numpy cannot parse (np.load says why)."""
    try:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _fortran, dtype = read(f)
    except (ValueError, OSError, EOFError):
        return None
    if dtype.hasobject:
        return None
    return math.prod(shape) * dtype.itemsize


def _check_sizes(path: str) -> None:
    """Each array's claimed size checked against the file before numpy allocates it."""
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
        f.seek(0)
        if not zipped:
            claim = _npy_claim(f)
            if claim is not None:
                check_claim(path, claim, available=os.path.getsize(path) - f.tell())
            return
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                where = f"{path}: {info.filename}"
                deflated = info.compress_type != zipfile.ZIP_STORED
                check_claim(where, info.file_size, available=info.compress_size,
                            compressed=deflated)
                with z.open(info) as member:
                    claim = _npy_claim(member)
                if claim is not None:
                    check_claim(where, claim, available=info.file_size)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError):
        return  # np.load reports it, naming the file


def _read(path: str) -> dict[str, np.ndarray]:
    _check_sizes(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"images": loaded}
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path}: holds Python objects (pickled arrays), which noisecraft never "
                            "loads; store uint8 images and integer labels") from None
        raise DataError(f"{path}: cannot read: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read (truncated or not a numpy file): {e}") from None


def _images(a: np.ndarray, key: str, path: str) -> np.ndarray:
    if a.dtype != np.uint8:
        raise DataError(f"{path}: {key!r} has dtype {a.dtype}; images must be uint8 (0..255)")
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        raise DataError(f"{path}: {key!r} has shape {a.shape}; expected (N, H, W) or channels-last "
                        "(N, H, W, C) with C in 1, 3, 4")
    return a


def _captions(a: np.ndarray, key: str, path: str) -> list[str]:
    if a.dtype.kind != "U" or a.ndim != 1:
        raise DataError(f"{path}: {key!r} must be a 1-D str array, got {a.dtype} {a.shape}")
    return [str(c) for c in a]


def load_arrays(path: str, *, split: str = "train", image_size: int | None = None,
                channels: int | None = None, flip: bool = False) -> ArrayImageDataset:
    """The images (with labels and captions when present) of one split of a .npy/.npz file."""
    arrays = _read(path)
    split_layout = any(k in arrays for s in ("train", "test") for k in _split_keys(s)["images"])
    layouts = ([_split_keys(s) for s in (["train", "test"] if split == "all" else [split])]
               if split_layout else [PLAIN_KEYS])
    if not split_layout and split == "test":
        raise DataError(f"{path}: has no test split (no 'x_test' or 'test_images' array; "
                        f"found {', '.join(sorted(arrays))})")
    used: set[str] = set()
    parts = []
    for names in layouts:
        key = _pick(arrays, names["images"], path)
        if key is None:
            raise DataError(f"{path}: no images array; expected one of {', '.join(names['images'])}, "
                            f"found {', '.join(sorted(arrays)) or 'nothing'}")
        images = _images(arrays[key], key, path)
        lkey, ckey = _pick(arrays, names["labels"], path), _pick(arrays, names["captions"], path)
        labels = arrays[lkey] if lkey else None
        if labels is not None and (labels.ndim != 1 or len(labels) != len(images)):
            raise DataError(f"{path}: labels do not match the images: {lkey!r} has shape "
                            f"{labels.shape} for {len(images)} images in {key!r}")
        captions = _captions(arrays[ckey], ckey, path) if ckey else None
        if captions is not None and len(captions) != len(images):
            raise DataError(f"{path}: {len(captions)} captions in {ckey!r} for {len(images)} images")
        used.update(k for k in (key, lkey, ckey) if k)
        parts.append((images, labels, captions, key))
    classes = _captions(arrays["classes"], "classes", path) if "classes" in arrays else None
    used.add("classes")
    unused = sorted(set(arrays) - used - {k for s in ("train", "test") for v in _split_keys(s).values()
                                          for k in v})
    if unused:
        warnings.warn(f"{path}: ignoring array(s) {', '.join(unused)}", stacklevel=3)
    if len({p[0].shape[1:] for p in parts}) > 1:
        raise DataError(f"{path}: the splits' images differ in shape: {[p[0].shape for p in parts]}")
    has_labels = [p[1] is not None for p in parts]
    if any(has_labels) and not all(has_labels):
        raise DataError(f"{path}: one split has labels and the other has not")
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if all(has_labels) else None
    captions = ([c for p in parts for c in (p[2] or [""] * len(p[0]))]
                if any(p[2] is not None for p in parts) else None)
    keys = [f"{p[3]}_{i:06d}" for p in parts for i in range(len(p[0]))]
    return ArrayImageDataset(images, source=path, labels=labels, captions=captions, keys=keys,
                             channels=channels, image_size=image_size, flip=flip, classes=classes,
                             num_classes=len(classes) if classes else None)
