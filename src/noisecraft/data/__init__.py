"""Data in, tensors out: `load(spec)` resolves a dataset spec to one small reader per format.

A spec is one of

- a built-in name: ``digits`` (scikit-learn's 8x8 digits), or a 2-D toy distribution ``moons``,
  ``swissroll``, ``gmm8``, ``checkerboard`` (vectors, for the MLP backbone); ``builtin:NAME``
  says the same, and must be used when a file or folder ``NAME`` exists (``./NAME`` is that);
- a folder of MNIST-style IDX files (``train-images-idx3-ubyte[.gz]`` ...);
- WebDataset tar shards: a folder of ``*.tar``/``*.tar.gz``, one shard file, or a brace pattern
  ``path/train-{0000..0004}.tar`` (streamed, shuffled, split over DataLoader workers and DDP ranks);
- an image folder (recursive; labels from first-level subfolders, captions from sidecar .txt);
- a ``.npz``/``.npy`` file of uint8 images (N, H, W[, C]) with optional labels;
- audio: a folder or shards holding ``.wav`` files (read by `noisecraft.data.audio`).

Every dataset yields ``{"x": float32 tensor in [−1, 1], "label": int (−1: none), "caption": str
("" : none), "key": str}`` and carries ``.preprocess`` (a `Preprocess`) and ``.info`` (kind,
channels, image_size or dim, num_classes, count when known).
"""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import Dataset, IterableDataset

from ..checks import optional_positive_int
from ..errors import DataError
from .datasets import NO_LABEL
from .splits import held_out
from .tar import SHARD_SUFFIXES
from .transforms import Preprocess, denormalize, to_uint8

BUILTIN_NAMES = ("digits", "moons", "swissroll", "gmm8", "checkerboard")
ARRAY_SUFFIXES = (".npz", ".npy")
AUDIO_SUFFIXES = (".wav",)
SKIPPABLE_FORMATS = ("folder", "shards", "audio")  # readers that can leave one bad file out

__all__ = ["BUILTIN_NAMES", "NO_LABEL", "Preprocess", "denormalize", "held_out", "load", "to_uint8"]


def _is_shard_pattern(spec: str) -> bool:
    return "{" in spec and ".." in spec and "}" in spec


def _reject_image_options(spec: str, image_size: int | None, channels: int | None,
                          flip: bool) -> None:
    given = [k for k, v in (("image_size", image_size), ("channels", channels), ("flip", flip)) if v]
    if given:
        raise ValueError(f"{spec!r} is vector data; the image option(s) {', '.join(given)} do not apply")


def _folder_format(path: str) -> str:
    """Which reader a folder needs: 'idx', 'shards', 'audio' or 'folder' (pictures)."""
    from .idx import looks_like_idx_folder
    from .shards import list_shards

    if looks_like_idx_folder(path):
        return "idx"
    if list_shards(path):
        return "shards"
    for _root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(f.lower().endswith(AUDIO_SUFFIXES) for f in files):
            return "audio"
    return "folder"


BUILTIN_PREFIX = "builtin:"  # ``builtin:digits`` names the built-in set even beside ./digits


def builtin_name(spec: str) -> str | None:
    """The built-in dataset ``spec`` names (``digits`` or ``builtin:digits``), else None. A bare
    name that is also an existing path is ambiguous, and an error that says how to name either:
    taking the built-in would silently ignore the user's folder."""
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_NAMES:
            raise ValueError(f"{spec!r}: no such built-in dataset; valid: {', '.join(BUILTIN_NAMES)}")
        return name
    if spec not in BUILTIN_NAMES:
        return None
    if os.path.lexists(spec):
        raise ValueError(f"data {spec!r} names both the built-in dataset and the path "
                         f"{os.path.abspath(spec)}; write {'./' + spec!r} for the path or "
                         f"{BUILTIN_PREFIX + spec!r} for the built-in")
    return spec


def resolve_format(spec: str) -> str:
    """The reader a spec goes to: 'digits', 'toy', 'idx', 'shards', 'arrays', 'folder' or 'audio'."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a data spec must be a non-empty string, got {spec!r}")
    builtin = builtin_name(spec)
    if builtin is not None:
        return "digits" if builtin == "digits" else "toy"
    if _is_shard_pattern(spec):
        from .shards import expand_pattern, shards_hold_audio

        return "audio" if shards_hold_audio(expand_pattern(spec)) else "shards"
    path = os.path.expanduser(spec)
    if not os.path.exists(path):
        raise DataError(f"data {spec!r} not found: it is neither a built-in dataset "
                        f"({', '.join(BUILTIN_NAMES)}) nor an existing file or folder")
    if os.path.isdir(path):
        fmt = _folder_format(path)
        if fmt == "shards":
            from .shards import list_shards, shards_hold_audio

            return "audio" if shards_hold_audio(list_shards(path)) else "shards"
        return fmt
    lower = path.lower()
    if lower.endswith(ARRAY_SUFFIXES):
        return "arrays"
    if lower.endswith(AUDIO_SUFFIXES):
        return "audio"
    if lower.endswith(SHARD_SUFFIXES):
        from .shards import shards_hold_audio

        return "audio" if shards_hold_audio([path]) else "shards"
    raise DataError(f"{spec}: unknown data file type; expected a folder, {', '.join(ARRAY_SUFFIXES)}, "
                    f"a shard ({', '.join(SHARD_SUFFIXES)}), a .wav file or one of "
                    f"{', '.join(BUILTIN_NAMES)}")


def load(spec: str, *, image_size: int | None = None, channels: int | None = None,
         split: str = "train", flip: bool = False, skip_bad: bool = False, shuffle: bool = True,
         seed: int = 0, **audio_options: Any) -> Dataset | IterableDataset:
    """The dataset a spec names (see the module docstring), preprocessed for diffusion.

    ``image_size`` resizes the shorter side and crops the centre square (None: native size);
    ``channels`` is 1, 3 or 4 (None: the data's own; alpha is composited on white when dropped);
    ``split`` is "train", "test" or "all"; ``flip`` adds random left-right flips; ``skip_bad``
    turns a bad file into a warning plus a count (``dataset.skipped``) instead of a DataError
    (picture folders, shards and audio; elsewhere it is refused, as there is nothing to skip).
    ``shuffle`` and ``seed`` drive the shard stream's order (and the toy sets' draws); in-memory
    datasets are left to the DataLoader's sampler. ``audio_options`` go to the audio reader.
    """
    if channels is not None and channels not in (1, 3, 4):
        raise ValueError(f"channels must be 1, 3 or 4, got {channels!r}")
    optional_positive_int("image_size", image_size)
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    fmt = resolve_format(spec)
    if audio_options and fmt != "audio":
        raise ValueError(f"option(s) {', '.join(sorted(audio_options))} apply only to audio data, "
                         f"but {spec!r} is {fmt} data")
    if skip_bad and fmt not in SKIPPABLE_FORMATS:
        # these readers take the data whole (one file or a built-in set): there is no file to skip
        raise ValueError(f"skip_bad applies only to {', '.join(SKIPPABLE_FORMATS)} data, "
                         f"but {spec!r} is {fmt} data")
    path = os.path.expanduser(spec)
    images = {"image_size": image_size, "channels": channels, "flip": flip}
    if fmt == "digits":
        from .toy import load_digits

        return load_digits(split=split, **images)
    if fmt == "toy":
        from .toy import load_toy

        _reject_image_options(spec, image_size, channels, flip)
        return load_toy(builtin_name(spec) or spec, split=split, seed=seed)
    if fmt == "idx":
        from .idx import load_idx

        return load_idx(path, split=split, **images)
    if fmt == "arrays":
        from .arrays import load_arrays

        return load_arrays(path, split=split, **images)
    if fmt == "folder":
        from .folder import load_folder

        return load_folder(path, split=split, skip_bad=skip_bad, **images)
    if fmt == "shards":
        from .shards import load_shards

        return load_shards(path, split=split, skip_bad=skip_bad, shuffle=shuffle, seed=seed, **images)
    from .audio import load_audio

    if image_size is not None or channels is not None or flip:
        raise ValueError(f"{spec!r} is audio data; image_size, channels and flip do not apply")
    return load_audio(path, split=split, skip_bad=skip_bad, **audio_options)
