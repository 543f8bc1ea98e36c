"""WebDataset tar shards (``.tar``, ``.tar.gz``, ``.tgz``): streamed, split and shuffled.

A sample is the members sharing one key: an image (``.png``, ``.jpg``, ``.jpeg`` or ``.webp``),
an optional ``.cls`` label (decimal text), an optional ``.txt`` caption and optional ``.json``
metadata (read only for a caption when there is no ``.txt``: ``captions.json_caption``). A
``classes.txt`` beside the shards, one name per line, gives the class names.

Spec → shards: a folder (its shards, sorted; with ``train-*``/``test-*`` names a split picks its
own, ``all`` takes every one; without such names only ``train``/``all`` exist), one shard file, or
a brace pattern ``path/train-{0000..0004}.tar`` (exactly those shards; no ``test``).

Order and splitting, per epoch e (``dataset.set_epoch(e)``, like DistributedSampler; without it
the epoch counts the passes made in this process):
1. every rank and worker shuffles the full shard list with the same seed (seed, e) ...
2. ... then takes its slice: shards rank, rank + world, ... (``wds.split_by_node``), and of those
   its worker's slice (``wds.split_by_worker``), so no sample is read twice in one epoch;
3. samples are shuffled in a buffer seeded (seed, e, rank, worker).
Ranks get whole shards, so give at least world_size × num_workers shards of similar size.

The shard list, splitters and shuffle buffer are webdataset's; the reading is this package's own:
`noisecraft.data.tar` streams the members (one zlib call per 64 KiB, checksummed headers,
truncation caught), grouped into samples by webdataset's rule, and `noisecraft.data.decode`
decodes the images (simplejpeg for JPEGs when installed). webdataset's tarfile stream and Pillow
cost ~7x more CPU per CIFAR-10 sample (benchmarks/data_loading.py).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import random
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset
from webdataset.tariterators import base_plus_ext

from ..errors import DataError
from ..seeding import derive_seed
from .captions import json_caption
from .datasets import NO_LABEL, image_info
from .decode import ImageDecodeError, decode_image
from .tar import SHARD_SUFFIXES, TarFormatError, iter_members
from .transforms import Preprocess, prepare_array, random_flip, scale_to_unit

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
SHUFFLE_BUFFER = 2000
_SHARD_ERRORS = (OSError, TarFormatError)
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's own metadata members, skipped as it does


def list_shards(folder: str) -> list[str]:
    """The shard files directly in ``folder``, sorted."""
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.lower().endswith(SHARD_SUFFIXES) and not n.startswith("."))


def expand_pattern(pattern: str) -> list[str]:
    """``a/train-{0000..0003}.tar`` → the four paths; every one must exist."""
    paths = [os.path.expanduser(p) for p in wds.shardlists.expand_urls(pattern)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"shard {missing[0]} not found ({len(missing)} of {len(paths)} shards of "
                        f"{pattern!r} missing)")
    return paths


def _split_of(path: str) -> str | None:
    name = os.path.basename(path).lower()
    for split in ("train", "test"):
        if name.startswith(split) and name[len(split):len(split) + 1] in ("-", "_", "."):
            return split
    return None


def select_shards(spec: str, split: str) -> list[str]:
    """The shards of one split named by a folder, a shard file or a brace pattern."""
    if os.path.isdir(spec):
        shards = list_shards(spec)
        if not shards:
            raise DataError(f"{spec}: no shard files ({', '.join(SHARD_SUFFIXES)})")
        named = [s for s in shards if _split_of(s) is not None]
        if split == "all" or (not named and split == "train"):
            return shards
        picked = [s for s in shards if _split_of(s) == split]
        if not picked:
            raise DataError(f"{spec}: no {split} shards (names starting '{split}-'); found "
                            f"{', '.join(os.path.basename(s) for s in shards[:4])}")
        return picked
    shards = expand_pattern(spec) if "{" in spec else [spec]
    # Shards named explicitly are what the user asked for; "test" holds when their names say so.
    if split == "test" and not all(_split_of(s) == "test" for s in shards):
        raise DataError(f"{spec}: names its shards explicitly and not all are test shards "
                        "(names starting 'test-'), so it has no test split; pass the test "
                        "shards' own pattern, or --split train/all")
    return shards


def split_key(name: str) -> tuple[str | None, str | None]:
    """``dir/key.ext.more`` → (``dir/key``, ``ext.more`` lower-cased); (None, None) when no key.

    The common case (a dot in the base name after its first character) by string methods, which
    is what webdataset's `base_plus_ext` regular expression finds there, in a third of the time;
    every other shape goes to that regular expression itself.
    """
    start = name.rfind("/") + 1
    dot = name.find(".", start)
    if dot > start:
        return name[:dot], name[dot + 1:].lower()
    key, ext = base_plus_ext(name)
    return key, ext if ext is None else ext.lower()


def shard_samples(path: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard: ``{"__key__", "__url__", ext: bytes, ...}``, grouped as webdataset
    groups them (key = the name up to the first dot of its base name, extension lower-cased).

    Raises `TarFormatError` for a damaged shard (see `noisecraft.data.tar`), for a member with no
    extension (hidden files aside) and for a key whose members repeat an extension; the samples
    before the damage have been yielded by then.
    """
    sample: dict[str, Any] | None = None
    for name, data in iter_members(path):
        if name.startswith("__") and _META_MEMBER.match(name):
            continue
        key, ext = split_key(name)
        if key is None:
            if name[name.rfind("/") + 1:].startswith("."):
                continue  # a hidden file, skipped as in folders (and by webdataset)
            # webdataset drops such a member without a word; we name it
            raise TarFormatError(f"{name}: member has no extension, so it belongs to no sample")
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": path}
        if ext in sample:
            raise TarFormatError(f"{name}: a second .{ext} member for sample {key!r}")
        sample[ext] = data
    if sample is not None:
        yield sample


def corrupt_shard(url: str, e: Exception) -> str:
    """The message for a shard that cannot be read to its end."""
    reason = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
    return f"{url}: corrupt shard: {reason}"


def _first_members(path: str, n: int = 8) -> list[str]:
    try:
        members = iter_members(path)
        with contextlib.closing(members):
            return [name for name, _data in itertools.islice(members, n)]
    except _SHARD_ERRORS as e:
        raise DataError(f"{path}: corrupt shard: {e}") from None


def shards_hold_audio(paths: list[str]) -> bool:
    """Whether the first shard's first samples carry ``.wav`` members."""
    return bool(paths) and any(m.lower().endswith(".wav") for m in _first_members(paths[0]))


def _seed(*parts: int) -> int:
    """One integer from several, so each (seed, epoch, rank, worker) has its own stream."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _read_classes(folder: str) -> list[str] | None:
    path = os.path.join(folder, "classes.txt")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


class ShardDataset(IterableDataset):
    """A stream of ``{"x", "label", "caption", "key"}`` from WebDataset shards (see module doc)."""

    def __init__(self, shards: list[str], *, source: str, image_size: int | None = None,
                 channels: int | None = None, flip: bool = False, skip_bad: bool = False,
                 shuffle: bool = True, seed: int = 0, classes: list[str] | None = None) -> None:
        self.shards, self.source = list(shards), source
        self.skip_bad, self.shuffle, self.seed = skip_bad, shuffle, seed
        self.epoch, self.skipped = 0, 0
        # Decoded pictures of every shard (`noisecraft.data.cache`); None reads the shards.
        self.cache: Any = None
        self._flip_generator: torch.Generator | None = None
        self._strict_channels, self._strict_size = channels is None, image_size is None
        # The output shape comes from the first sample of the first shard (a fixed, unshuffled
        # choice); without channels/image_size every other sample must agree with it.
        first = self._first_image()
        h, w = first.shape[:2] if image_size is None else (image_size, image_size)
        self.preprocess = Preprocess(kind="image", channels=channels or first.shape[-1], height=h,
                                     width=w, image_size=image_size, flip=flip)
        self._natural = first.shape
        self.info = image_info(self.preprocess, num_classes=len(classes) if classes else None,
                               count=None, classes=classes)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started by "spawn" get a pickled copy; each makes its own generator.
        return {**self.__dict__, "_flip_generator": None}

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shard order and shuffle the next pass uses."""
        self.epoch = int(epoch)

    def _first_image(self) -> np.ndarray:
        with contextlib.closing(self._samples(self.shards)) as samples:
            for sample in samples:
                try:
                    return self._decode_image(sample)[0]
                except DataError as e:
                    self._bad(str(e))  # raises unless skip_bad; the pass itself reports it again
                finally:
                    self.skipped = 0
        raise DataError(f"{self.source}: the shards hold no readable samples")

    def _bad(self, message: str) -> None:
        if not self.skip_bad:
            raise DataError(message)
        self.skipped += 1
        warnings.warn(f"skipped {message} ({self.skipped} skipped so far in this process)",
                      stacklevel=2)

    def _samples(self, urls: list[str]) -> Iterator[dict[str, Any]]:
        """Raw samples of each shard in turn; a corrupt shard is reported once, by name."""
        for url in urls:
            try:
                yield from shard_samples(url)
            except _SHARD_ERRORS as e:
                self._bad(corrupt_shard(url, e))

    def _decode_image(self, sample: dict[str, Any]) -> tuple[np.ndarray, str]:
        where = f"{sample.get('__url__', self.source)}: sample {sample.get('__key__')!r}"
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            members = ", ".join(sorted(k for k in sample if not k.startswith("__")))
            raise DataError(f"{where} has no image ({'/'.join(IMAGE_EXTS)}); members: {members}")
        try:
            return decode_image(sample[ext], ext), where
        except ImageDecodeError as e:
            raise DataError(f"{where}: .{ext} is not a readable image: {e}") from None

    def _item(self, sample: dict[str, Any], epoch: int) -> dict[str, Any]:
        return self._finish(*self._decoded(sample), sample["__key__"], epoch)

    def _decoded(self, sample: dict[str, Any]) -> tuple[np.ndarray, int, str]:
        """(uint8 picture (H, W, C) after steps 1-2 of `Preprocess`, label, caption): all that
        does not change between epochs, which is what `noisecraft.data.cache` keeps."""
        a, where = self._decode_image(sample)
        if self._strict_channels and a.shape[-1] != self._natural[-1]:
            raise DataError(f"{where} has {a.shape[-1]} channels but the first sample has "
                            f"{self._natural[-1]}; pass channels=1, 3 or 4 to convert them all")
        if self._strict_size and a.shape[:2] != self._natural[:2]:
            raise DataError(f"{where} is {a.shape[1]}x{a.shape[0]} but the first sample is "
                            f"{self._natural[1]}x{self._natural[0]}; pass image_size to resize")
        label = NO_LABEL
        if "cls" in sample:
            text = sample["cls"].strip()
            if not text.isdigit():  # a negative label would read as -1, "no label"
                raise DataError(f"{where}: .cls is not a non-negative decimal integer: "
                                f"{sample['cls'][:20]!r}")
            label = int(text)
        try:
            caption = sample["txt"].decode("utf-8").strip() if "txt" in sample else ""
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: .txt caption is not UTF-8: {e}") from None
        if not caption and "json" in sample:
            try:
                caption = json_caption(sample["json"], where)
            except ValueError as e:
                raise DataError(str(e)) from None
        return prepare_array(a, self.preprocess), label, caption

    def _finish(self, a: np.ndarray, label: int, caption: str, key: str,
                epoch: int) -> dict[str, Any]:
        """Steps 3-4 of `Preprocess` (scaling, the flip of this epoch) on a `_decoded` picture."""
        x = scale_to_unit(a, self.preprocess)
        flip_rng = self._flip_rng(epoch, key) if self.preprocess.flip else None
        return {"x": random_flip(x, self.preprocess, flip_rng), "label": label,
                "caption": caption, "key": key}

    def _flip_rng(self, epoch: int, key: str) -> torch.Generator:
        """A generator seeded by (seed, epoch, key): a sample's flip does not depend on which
        worker reads it, on the shuffle, or on where a resumed run starts (~5 µs a sample)."""
        if self._flip_generator is None:
            self._flip_generator = torch.Generator()
        return self._flip_generator.manual_seed(derive_seed("noisecraft-data", self.seed, epoch,
                                                            key))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, _world, worker, _workers = wds.utils.pytorch_worker_info()
        urls = list(self.shards)
        if self.shuffle:
            random.Random(_seed(self.seed, self.epoch)).shuffle(urls)
        # With the cache the same stages shuffle row numbers instead of raw samples: the buffer's
        # picks depend only on the rng and the stream's length, so the order is the same.
        cache = self.cache
        read = self._samples if cache is None else functools.partial(cache.rows, bad=self._bad)
        stages: list[Any] = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker,
                             lambda src: read([s["url"] for s in src])]
        if self.shuffle:
            rng = random.Random(_seed(self.seed, self.epoch, rank, worker))
            stages.append(wds.shuffle(SHUFFLE_BUFFER, initial=SHUFFLE_BUFFER // 4, rng=rng))
        epoch, self.epoch = self.epoch, self.epoch + 1
        for sample in wds.DataPipeline(*stages):
            try:
                yield (self._item(sample, epoch) if cache is None
                       else self._finish(*cache.example(sample), epoch))
            except DataError as e:
                self._bad(str(e))


def load_shards(spec: str, *, split: str = "train", image_size: int | None = None,
                channels: int | None = None, flip: bool = False, skip_bad: bool = False,
                shuffle: bool = True, seed: int = 0) -> ShardDataset:
    """The image shards of one split named by ``spec`` (folder, shard file or brace pattern)."""
    shards = select_shards(spec, split)
    folder = spec if os.path.isdir(spec) else os.path.dirname(shards[0])
    return ShardDataset(shards, source=spec, image_size=image_size, channels=channels, flip=flip,
                        skip_bad=skip_bad, shuffle=shuffle, seed=seed, classes=_read_classes(folder))
