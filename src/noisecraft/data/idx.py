"""MNIST / Fashion-MNIST style IDX files (raw or gzip) in one folder.

An IDX file is a 4-byte magic ``0 0 <type> <ndim>`` (type 0x08 = uint8), ``ndim`` big-endian
int32 sizes, then the values in C order. Images are ``*-images-idx3-ubyte`` (N, H, W) and labels
``*-labels-idx1-ubyte`` (N,); the train split's names start with ``train``, the test split's with
``t10k`` or ``test``. ``all`` is train followed by test.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import zlib

import numpy as np

from ..errors import DataError
from .datasets import ArrayImageDataset
from .limits import check_claim

_IDX_NAME = re.compile(r"idx(\d)-ubyte(\.gz)?$")
_SPLIT_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}
_UINT8 = 0x08


def looks_like_idx_folder(path: str) -> bool:
    """True when the folder holds at least one ``*idxN-ubyte[.gz]`` file."""
    return any(_IDX_NAME.search(name) for name in os.listdir(path))


def read_idx(path: str) -> np.ndarray:
    """One IDX file as a uint8 array of the shape its header states; DataError names the file.

    The header is read first and its claim checked against the file's size (raw) or what that
    many deflated bytes can inflate to (gzip), so a forged header allocates nothing.
    """
    gzipped = path.endswith(".gz")
    try:
        stored = os.path.getsize(path)
        with (gzip.open if gzipped else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DataError(f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'})")
            dtype, ndim = head[2], head[3]
            if dtype != _UINT8:
                raise DataError(f"{path}: IDX value type 0x{dtype:02x} is not supported (only "
                                "0x08, uint8)")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header ({4 + len(dims)} bytes)")
            shape = tuple(int(d) for d in np.frombuffer(dims, ">i4"))
            expected = math.prod(shape)
            if any(d < 0 for d in shape):
                raise DataError(f"{path}: IDX header has a negative size: {shape}")
            check_claim(path, expected, available=stored - (0 if gzipped else 4 + 4 * ndim),
                        compressed=gzipped)
            raw = bytearray(f.read(expected + 1))  # one more: a longer file is corrupt too
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read IDX file: {e}") from None
    if len(raw) != expected:
        raise DataError(f"{path}: header says shape {shape} ({expected} values) but the file holds "
                        f"{'more' if len(raw) > expected else len(raw)}: truncated or corrupt")
    # bytearray: a writable buffer, so torch can wrap items without copying or warning.
    return np.frombuffer(raw, np.uint8).reshape(shape)


def _find(folder: str, split: str, kind: str) -> str | None:
    """The images (idx3) or labels (idx1) file of one split, or None."""
    digit = "3" if kind == "images" else "1"
    matches = sorted(
        name for name in os.listdir(folder)
        if name.startswith(_SPLIT_PREFIXES[split]) and (m := _IDX_NAME.search(name))
        and m.group(1) == digit and kind in name
    )
    if len(matches) > 1:
        raise DataError(f"{folder}: several {split} {kind} files: {', '.join(matches)}")
    return os.path.join(folder, matches[0]) if matches else None


def _read_split(folder: str, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    images_path = _find(folder, split, "images")
    if images_path is None:
        found = sorted(n for n in os.listdir(folder) if _IDX_NAME.search(n))
        raise DataError(f"{folder}: no {split} images file (expected a name starting with "
                        f"{' or '.join(_SPLIT_PREFIXES[split])} and ending in idx3-ubyte[.gz]); "
                        f"found {', '.join(found)}")
    images = read_idx(images_path)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise DataError(f"{images_path}: expected images (N, H, W) or (N, H, W, C), got {images.shape}")
    labels_path = _find(folder, split, "labels")
    labels = None
    if labels_path is not None:
        labels = read_idx(labels_path)
        if labels.shape != (images.shape[0],):
            raise DataError(f"{labels_path}: labels do not match the images: shape {labels.shape} "
                            f"for {images.shape[0]} images in {os.path.basename(images_path)}")
    return images, labels


def load_idx(folder: str, *, split: str = "train", image_size: int | None = None,
             channels: int | None = None, flip: bool = False) -> ArrayImageDataset:
    """The IDX images (and labels, when their file is there) of one split of ``folder``."""
    parts = ["train", "test"] if split == "all" else [split]
    read = [_read_split(folder, p) for p in parts]
    if len({r[0].shape[1:] for r in read}) > 1:
        raise DataError(f"{folder}: train and test images differ in shape: "
                        f"{read[0][0].shape[1:]} vs {read[1][0].shape[1:]}")
    if any(r[1] is None for r in read) and any(r[1] is not None for r in read):
        raise DataError(f"{folder}: one split has a labels file and the other has not")
    images = np.concatenate([r[0] for r in read]) if len(read) > 1 else read[0][0]
    labels = None if read[0][1] is None else np.concatenate([r[1] for r in read])
    keys = [f"{p}_{i:05d}" for p, r in zip(parts, read, strict=True) for i in range(len(r[0]))]
    return ArrayImageDataset(images, source=folder, labels=labels, keys=keys, channels=channels,
                             image_size=image_size, flip=flip)
