"""A folder of pictures, read recursively, decoded once into memory.

- Every non-hidden file is a picture (any format Pillow reads), except sidecars: ``.txt`` (the
  caption of the picture with the same stem in the same folder), ``.json`` and ``.cls`` (metadata,
  not read). A file ``decode.py`` cannot decode is an error, or with ``skip_bad`` a counted warning.
- Labels: when the pictures sit in first-level subfolders, label = index of the subfolder's name
  in sorted order (``dataset.info["classes"]``); pictures directly in the folder have none.
  Mixing the two is an error.
- Splits: when the first-level subfolders are exactly ``train`` and/or ``test``, a split is its
  subfolder (classes are the union of both, so labels agree); otherwise ``train`` and ``all``
  are the whole folder and there is no ``test``.
- Without ``channels``, all pictures must have the same channel count; without ``image_size``,
  the same size. Large collections belong in shards (streamed), not here (held in memory).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from . import decode
from .datasets import NO_LABEL, ArrayImageDataset
from .transforms import convert_channels, resize_center_crop

SIDECARS = (".txt", ".json", ".cls")
SPLIT_DIRS = ("train", "test")


@dataclass
class _Entry:
    path: str
    key: str
    label: int
    caption: str


def decode_image(path: str) -> np.ndarray:
    """Decode one picture fully to uint8 (H, W, C) with the decoder shards use (``decode.py``);
    any failure is a DataError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        return decode.decode_image(data, os.path.splitext(path)[1][1:].lower())
    except (OSError, decode.ImageDecodeError) as e:
        raise DataError(f"{path}: not a readable image: {e}") from None


def _visible(names: list[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def _walk(root: str, label: int, base: str) -> list[_Entry]:
    """Every picture under ``root`` (sorted, recursive), with its caption sidecar."""
    entries = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = _visible(dirs)
        files = _visible(files)
        stems = {os.path.splitext(f)[0]: f for f in files if f.lower().endswith(".txt")}
        for f in files:
            stem, ext = os.path.splitext(f)
            if ext.lower() in SIDECARS:
                continue
            path = os.path.join(dirpath, f)
            caption = ""
            if stem in stems:
                try:
                    with open(os.path.join(dirpath, stems[stem]), encoding="utf-8") as fh:
                        caption = fh.read().strip()
                except (OSError, UnicodeDecodeError) as e:
                    raise DataError(f"{os.path.join(dirpath, stems[stem])}: unreadable caption: {e}") \
                        from None
            key = os.path.relpath(os.path.join(dirpath, stem), base).replace(os.sep, "/")
            entries.append(_Entry(path, key, label, caption))
    return entries


def _split_roots(folder: str, split: str) -> tuple[list[str], list[str]]:
    """(roots to read, roots that define the class names)."""
    subdirs = [d for d in _visible(os.listdir(folder)) if os.path.isdir(os.path.join(folder, d))]
    if subdirs and set(subdirs) <= set(SPLIT_DIRS):
        all_roots = [os.path.join(folder, d) for d in subdirs]
        if split == "all":
            return all_roots, all_roots
        if split not in subdirs:
            raise DataError(f"{folder}: has no {split!r} subfolder (found {', '.join(subdirs)})")
        return [os.path.join(folder, split)], all_roots
    if split == "test":
        raise DataError(f"{folder}: has no test split (it would be a 'test' subfolder beside 'train')")
    return [folder], [folder]


def _entries(folder: str, split: str) -> tuple[list[_Entry], list[str] | None]:
    roots, class_roots = _split_roots(folder, split)
    classes = sorted({d for r in class_roots for d in _visible(os.listdir(r))
                      if os.path.isdir(os.path.join(r, d))})
    entries: list[_Entry] = []
    for root in roots:
        loose = [f for f in _visible(os.listdir(root))
                 if os.path.isfile(os.path.join(root, f)) and not f.lower().endswith(SIDECARS)]
        if classes and loose:
            raise DataError(f"{os.path.join(root, loose[0])}: pictures lie both directly in {root} and "
                            f"in class subfolders ({', '.join(classes[:3])}...); move them into one")
        if classes:
            for i, c in enumerate(classes):
                if os.path.isdir(os.path.join(root, c)):
                    entries += _walk(os.path.join(root, c), i, folder)
        else:
            entries += _walk(root, NO_LABEL, folder)
    return entries, (classes or None)


SKIPPED_NAMED = 3  # a skip warning names this many files; dataset.skipped_files holds them all


def skipped_message(folder: str, skipped: list[str], total: int, first_error: str) -> str:
    """One line: how many of ``total`` files were skipped, the first few by name (relative to
    ``folder``), and why the first one was (error text can hold newlines; they are flattened)."""
    names = [os.path.relpath(p, folder) for p in skipped[:SKIPPED_NAMED]]
    more = f" and {len(skipped) - SKIPPED_NAMED} more" if len(skipped) > SKIPPED_NAMED else ""
    why = " ".join(first_error.removeprefix(f"{skipped[0]}: ").split())
    return (f"{folder}: skipped {len(skipped)} of {total} file(s) that could not be read: "
            f"{', '.join(names)}{more} ({names[0]}: {why})")


def load_folder(folder: str, *, split: str = "train", image_size: int | None = None,
                channels: int | None = None, flip: bool = False,
                skip_bad: bool = False) -> ArrayImageDataset:
    """Every picture of one split of ``folder``, decoded and preprocessed into memory.

    With ``skip_bad`` an unreadable file is left out instead of raising: the dataset's
    ``skipped`` counts them, ``skipped_files`` lists their paths, and one UserWarning (a single
    line, :func:`skipped_message`) names the count and the first few."""
    entries, classes = _entries(folder, split)
    if not entries:
        raise DataError(f"{folder}: no image files (the folder is empty or holds only sidecars)")

    def decode(e: _Entry) -> np.ndarray | DataError:
        try:
            return decode_image(e.path)
        except DataError as err:
            return err

    # Pillow releases the GIL while decoding, so threads overlap the work.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(decode, entries))
    bad = [(e, d) for e, d in zip(entries, decoded, strict=True) if isinstance(d, DataError)]
    if bad and not skip_bad:
        raise bad[0][1]
    good = [(e, d) for e, d in zip(entries, decoded, strict=True) if not isinstance(d, DataError)]
    if bad:
        warnings.warn(skipped_message(folder, [e.path for e, _ in bad], len(entries),
                                      str(bad[0][1])), stacklevel=3)
    if not good:
        raise DataError(f"{folder}: no readable image among {len(entries)} file(s)")

    first_e, first = good[0]
    if channels is None:
        for e, a in good:
            if a.shape[-1] != first.shape[-1]:
                raise DataError(f"{e.path}: has {a.shape[-1]} channels but {first_e.path} has "
                                f"{first.shape[-1]}; pass channels=1, 3 or 4 to convert them all")
    target = channels or first.shape[-1]
    if image_size is None:
        for e, a in good:
            if a.shape[:2] != first.shape[:2]:
                raise DataError(f"{e.path}: is {a.shape[1]}x{a.shape[0]} but {first_e.path} is "
                                f"{first.shape[1]}x{first.shape[0]}; pass image_size to resize them all")
    arrays = []
    for _, a in good:
        a = convert_channels(a, target)
        arrays.append(a if image_size is None else resize_center_crop(a, image_size))
    has_labels = classes is not None
    ds = ArrayImageDataset(np.stack(arrays), source=folder,
                           labels=np.array([e.label for e, _ in good]) if has_labels else None,
                           captions=[e.caption for e, _ in good], keys=[e.key for e, _ in good],
                           channels=target, image_size=image_size, flip=flip, classes=classes,
                           num_classes=len(classes) if has_labels else None)
    ds.skipped = len(bad)
    ds.skipped_files = [e.path for e, _ in bad]
    return ds
