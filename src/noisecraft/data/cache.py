"""Decoded pictures held in memory, so that epochs skip the work that is the same every epoch:
tar, gzip and image decoding for WebDataset shards, resizing and channel conversion for
in-memory pictures that are not already of the model's shape.

`build_shard_cache` decodes every shard once (in parallel over DataLoader workers, whole shards
each) into one uint8 tensor (N, H, W, C): the pictures after steps 1-2 of `Preprocess`
(channels, resize), before scaling and flips. `cached` returns a copy of the dataset that
reads it. Every epoch still runs the dataset's own shard order, rank and worker split and
shuffle buffer, over row numbers instead of raw samples, and still scales and flips each
picture under its (seed, epoch, key) generator, so the batches are bit-identical to those read
from the shards. Samples that fail to decode are recorded as such (``skip_bad``), so they are
skipped at the same places; without ``skip_bad`` the first one is an error before training.

Limit (`cache_limit`): at most ``MAX_CACHE_BYTES`` (2 GiB) per process and a quarter of this
machine's memory shared by the processes of a node (``LOCAL_WORLD_SIZE`` under torchrun). Each
rank keeps every shard, since the shards a rank reads change each epoch (so under DDP the build
costs a rank one pass over all shards, world-size times its share of an epoch). The size is checked
before anything is decoded, from the first shard's sample count and the shards' file sizes
(shards of similar size, as `noisecraft.data.shards` asks), and again as each shard arrives:
a dataset over the limit is read from its shards every epoch, holding at most one decoded shard
beyond the limit.

Map-style pictures (`ArrayImageDataset`: IDX, .npz, digits) are decoded already; when each item
is resized or converted (``image_size``, ``channels``), `prepared` does that once for all of them
under the same limit (their count is known, so it is checked before allocating), and every item
is then scaled and flipped as before: the same bits under the same per-example seeds.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .datasets import NO_LABEL, ArrayImageDataset
from .limits import physical_memory
from .shards import _SHARD_ERRORS, ShardDataset, corrupt_shard, shard_samples
from .transforms import prepare_array

MAX_CACHE_BYTES = 2 << 30
MEMORY_FRACTION = 4  # of physical memory, over all processes on one machine


def cache_limit() -> int:
    """The bytes of decoded pictures this process may hold (module docstring)."""
    memory = physical_memory()
    text = os.environ.get("LOCAL_WORLD_SIZE") or "1"
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"LOCAL_WORLD_SIZE must be a positive integer, got {text!r}")
    local = int(text)
    share = MAX_CACHE_BYTES if memory is None else memory // MEMORY_FRACTION // local
    return min(MAX_CACHE_BYTES, share)


@dataclass
class ShardCache:
    """Rows of decoded pictures; ``shards[url] = (start, stop, error)``: the rows of one shard,
    in its order, and the message of a shard that could not be read to its end (or None).
    ``bad[row]`` is the message of a sample that failed to decode (its pixels are zeros)."""

    pixels: torch.Tensor
    labels: torch.Tensor
    captions: list[str]
    keys: list[str]
    shards: dict[str, tuple[int, int, str | None]]
    bad: dict[int, str]

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

    def rows(self, urls: list[str], bad: Callable[[str], None]) -> Iterator[int]:
        """The rows of these shards in order; ``bad`` gets a shard's read error where the reader
        met it (after the samples before the damage), as ``ShardDataset._samples`` does."""
        for url in urls:
            start, stop, error = self.shards[url]
            yield from range(start, stop)
            if error is not None:
                bad(error)

    def example(self, row: int) -> tuple[np.ndarray, int, str, str]:
        """(picture, label, caption, key) of one row; DataError for a sample that failed."""
        if row in self.bad:
            raise DataError(self.bad[row])
        return (self.pixels[row].numpy(), int(self.labels[row]), self.captions[row],
                self.keys[row])


def _decode_shard(dataset: ShardDataset, url: str) -> dict[str, Any]:
    """One shard's samples decoded: pictures (n, H, W, C), labels, captions, keys, the messages
    of samples that failed (by position) and of a read error that ended the shard."""
    pictures, labels, captions, keys, bad = [], [], [], [], {}
    blank = np.zeros(dataset.preprocess.shape[1:] + dataset.preprocess.shape[:1], np.uint8)
    error = None
    try:
        for sample in shard_samples(url):
            try:
                a, label, caption = dataset._decoded(sample)
            except DataError as e:
                bad[len(pictures)] = str(e)
                a, label, caption = blank, NO_LABEL, ""
            pictures.append(a)
            labels.append(label)
            captions.append(caption)
            keys.append(sample["__key__"])
    except _SHARD_ERRORS as e:
        error = corrupt_shard(url, e)
    shape = (0, *blank.shape)
    return {"url": url, "pixels": np.stack(pictures) if pictures else np.zeros(shape, np.uint8),
            "labels": labels, "captions": captions, "keys": keys, "bad": bad, "error": error}


class _Shards(Dataset):
    """``[k]`` is shard k decoded; a DataLoader spreads the shards over its workers."""

    def __init__(self, dataset: ShardDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.shards)

    def __getitem__(self, k: int) -> dict[str, Any]:
        return _decode_shard(self.dataset, self.dataset.shards[k])


def _loader(dataset: Dataset, num_workers: int) -> DataLoader:
    """A loader of whole shards or chunks. Its own generator: without one, starting it draws the
    workers' base seed from torch's global RNG, which the trainer checkpoints for dropout, so a
    cache built at a resumed run's first step would shift every later dropout mask."""
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is,
                      generator=torch.Generator().manual_seed(0))


def _as_is(item: Any) -> Any:
    # No default_convert: numpy arrays come back pickled into ordinary memory, where tensors
    # would each hold a shared-memory file descriptor until the cache is assembled.
    return item


def estimate_bytes(dataset: ShardDataset) -> int:
    """The decoded size of every shard, from the first shard's sample count scaled by the shards'
    file sizes; reads (but does not decode) the first shard."""
    first = dataset.shards[0]
    try:
        count = sum(1 for _ in shard_samples(first))
    except _SHARD_ERRORS:
        count = 1  # the pass itself reports the damage
    sizes = [os.path.getsize(s) for s in dataset.shards]
    per_example = int(np.prod(dataset.preprocess.shape))
    return int(count * per_example * sum(sizes) / max(sizes[0], 1))


def build_shard_cache(dataset: ShardDataset, *, num_workers: int = 0,
                      limit: int | None = None) -> ShardCache | None:
    """Every shard of ``dataset`` decoded, or None when the pictures exceed ``limit`` bytes
    (default `cache_limit`). Without ``skip_bad`` a sample or shard that fails is a DataError."""
    limit = cache_limit() if limit is None else limit
    if estimate_bytes(dataset) > limit:
        return None
    loader = _loader(_Shards(dataset), num_workers)
    parts, total = [], 0
    for part in loader:
        total += part["pixels"].nbytes
        if total > limit:  # the estimate was low (shards of unequal size): stop here
            return None
        if not dataset.skip_bad:
            failed = next(iter(part["bad"].values()), part["error"])
            if failed is not None:
                raise DataError(failed)
        parts.append(part)
    n = sum(len(p["keys"]) for p in parts)
    if n == 0:
        raise DataError(f"{dataset.source}: the shards hold no readable samples")
    pixels = torch.empty((n, *parts[0]["pixels"].shape[1:]), dtype=torch.uint8)
    labels, captions, keys = [], [], []
    shards: dict[str, tuple[int, int, str | None]] = {}
    bad: dict[int, str] = {}
    start = 0
    for part in parts:
        stop = start + len(part["keys"])
        pixels[start:stop] = torch.from_numpy(part.pop("pixels"))  # freed shard by shard
        labels += part["labels"]
        captions += part["captions"]
        keys += part["keys"]
        shards[part["url"]] = (start, stop, part["error"])
        bad.update({start + i: message for i, message in part["bad"].items()})
        start = stop
    return ShardCache(pixels, torch.tensor(labels, dtype=torch.int64), captions, keys, shards, bad)


class _Prepared(Dataset):
    """``[k]`` is chunk k of an `ArrayImageDataset`'s pictures after steps 1-2 of `Preprocess`."""

    CHUNK = 1024

    def __init__(self, dataset: ArrayImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.CHUNK)

    def __getitem__(self, k: int) -> np.ndarray:
        images, pre = self.dataset.images, self.dataset.preprocess
        rows = range(k * self.CHUNK, min((k + 1) * self.CHUNK, len(images)))
        return np.stack([prepare_array(images[i], pre) for i in rows])


def prepared(dataset: ArrayImageDataset, *, num_workers: int = 0,
             limit: int | None = None) -> ArrayImageDataset | None:
    """A copy of ``dataset`` holding its pictures already resized and converted, or None when
    they exceed ``limit`` bytes (default `cache_limit`)."""
    limit = cache_limit() if limit is None else limit
    c, h, w = dataset.preprocess.shape
    n = len(dataset)
    if n * c * h * w > limit:
        return None
    images = np.empty((n, h, w, c), np.uint8)
    chunks = _loader(_Prepared(dataset), num_workers)
    for k, chunk in enumerate(chunks):
        images[k * _Prepared.CHUNK:k * _Prepared.CHUNK + len(chunk)] = chunk
    out = copy.copy(dataset)
    out.images, out._as_is = images, True
    return out


def cached(dataset: Any, *, num_workers: int = 0, limit: int | None = None) -> Any:
    """A copy of ``dataset`` reading its decoded (and, for in-memory pictures, resized) pictures
    from memory when they fit in ``limit``; otherwise, or when there is nothing to save,
    ``dataset`` itself."""
    if isinstance(dataset, ArrayImageDataset) and not dataset._as_is:
        return prepared(dataset, num_workers=num_workers, limit=limit) or dataset
    if not isinstance(dataset, ShardDataset) or dataset.cache is not None:
        return dataset
    cache = build_shard_cache(dataset, num_workers=num_workers, limit=limit)
    if cache is None:
        return dataset
    out = copy.copy(dataset)
    out.cache = cache
    return out
