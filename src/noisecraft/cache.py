"""Where noisecraft keeps what it computes once: the metrics' reference statistics and small
trained classifiers, encoded latents (``data.latents``) and text-encoder outputs (``conditioning``).
A leaf module (it imports only ``io``), so that data, metrics and conditioning all sit above it.

The directory is ``$NOISECRAFT_CACHE`` when set, otherwise ``~/.cache/noisecraft``. Files are
safetensors (arrays) with a JSON metadata header, written atomically so that two processes
computing the same entry at once never leave a torn file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save

from .io import atomic_write


def cache_dir(sub: str | None = None) -> Path:
    """The cache directory (created on first use), or its sub-directory ``sub``."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "noisecraft")
    root = os.environ.get("NOISECRAFT_CACHE") or default
    path = Path(root) / sub if sub else Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def content_hash(images: np.ndarray) -> str:
    """sha256 of an image array's shape, dtype and bytes: the identity of a reference set."""
    images = np.ascontiguousarray(images)
    digest = hashlib.sha256()
    digest.update(json.dumps([list(images.shape), str(images.dtype)]).encode())
    digest.update(images.tobytes())
    return digest.hexdigest()


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` and the JSON-able ``meta`` (under metadata key "meta") atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                metadata={"meta": json.dumps(meta, sort_keys=True)})
    atomic_write(path, data)  # temp file, fsync, rename; the umask applies


def load_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a file written by :func:`save_arrays`: (arrays, meta)."""
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    return load_file(str(path)), meta
