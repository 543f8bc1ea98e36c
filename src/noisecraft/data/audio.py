"""Audio data sets: finding WAV clips (a folder of .wav files, one .wav, or WebDataset shards with
.wav members), labelling and splitting them, and holding their log-mel spectrograms in memory;
see :func:`load_audio` for labels and splits.

The codec is :mod:`.wav` and the features are :mod:`.mel`; their public names are importable from
here too, where the rest of noisecraft has always found them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .datasets import NO_LABEL
from .mel import (
    GRIFFIN_LIM_ITERS,
    AudioConfig,
    audio_to_spectrogram,
    spectrogram_to_audio,
    spectrogram_to_mel_power,
)
from .tar import SHARD_SUFFIXES
from .transforms import Preprocess
from .wav import load_waveform, read_wav, resample, write_wav

_FEATURE_BATCH = 256  # clips per STFT call while loading: amortises torch overhead, bounds memory


class AudioDataset(Dataset):
    """Log-mel spectrograms held in memory (decoded once): items ``{"x", "label", "caption", "key"}``.

    ``x`` is float32 (1, n_mels, frames) in [−1, 1]; ``label`` −1 means none; ``caption`` "" none.
    ``audio_config`` rebuilds the features and ``preprocess`` (a ``Preprocess`` of kind "audio"
    holding it) records them in config.json; ``info`` sizes the net;
    ``skipped`` counts the files left out by ``skip_bad``.
    """

    def __init__(self, x: torch.Tensor, labels: list[int], captions: list[str], keys: list[str], *,
                 audio_config: AudioConfig, num_classes: int, classes: list[str] | None,
                 source: str, skipped: int = 0) -> None:
        if not (x.shape[0] == len(labels) == len(captions) == len(keys)):
            raise ValueError(f"{source}: {x.shape[0]} spectrograms but {len(labels)} labels, "
                             f"{len(captions)} captions, {len(keys)} keys")
        self.x, self.labels, self.captions, self.keys = x, labels, captions, keys
        self.audio_config = audio_config
        self.source = source
        self.skipped = skipped
        # One record for every kind, so a run stores the audio settings as it stores image ones.
        self.preprocess = Preprocess(kind="audio", channels=1, height=audio_config.n_mels,
                                     width=audio_config.frames, value_range=(-1.0, 1.0),
                                     audio=audio_config.to_dict())
        self.info: dict[str, Any] = {
            "kind": "audio", "channels": 1, "image_size": (audio_config.n_mels, audio_config.frames),
            "height": audio_config.n_mels, "width": audio_config.frames, "num_classes": num_classes,
            "count": len(keys), "classes": classes, "sample_rate": audio_config.sample_rate,
        }

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "label": self.labels[i], "caption": self.captions[i],
                "key": self.keys[i]}

    def to_audio(self, x: torch.Tensor, n_iter: int = GRIFFIN_LIM_ITERS) -> torch.Tensor:
        """Spectrogram(s) shaped like ``x`` items → waveform(s) at ``audio_config.sample_rate``."""
        return spectrogram_to_audio(x, self.audio_config, n_iter=n_iter)


@dataclass
class _Clip:
    key: str
    source: str  # what error messages call it: a path, or "shard.tar.gz:key.wav"
    wav: bytes | str  # raw bytes from a shard, or a path on disk
    label: int = NO_LABEL
    caption: str = ""
    split: str | None = None  # from a shard's .json, None when it has none


FEATURE_SETTINGS = ("n_mels", "frames", "n_fft", "hop_length")
"""The :class:`AudioConfig` fields that are ``noisecraft train`` settings (:func:`feature_options`)."""


def feature_options(*, n_mels: int | None = None, frames: int | None = None,
                    n_fft: int | None = None, hop_length: int | None = None) -> dict[str, int]:
    """The :class:`AudioConfig` fields that ``noisecraft train``'s audio flags set (None: the
    default). A given ``n_fft`` also sets the window's length: a Hann window shorter than the FFT
    would only zero-pad it, and hop ≤ window / 2 must hold for the inverse."""
    given = {"n_mels": n_mels, "frames": frames, "n_fft": n_fft, "hop_length": hop_length}
    out = {k: v for k, v in given.items() if v is not None}
    if n_fft is not None:
        out["win_length"] = n_fft
    return out


def load_audio(spec: str | os.PathLike, *, split: str = "train", skip_bad: bool = False,
               config: AudioConfig | None = None, **audio_options: Any) -> AudioDataset:
    """Read WAV audio into an :class:`AudioDataset` of log-mel spectrograms.

    ``spec`` is one of:
    - a folder, searched recursively for ``*.wav``. Labels: when every file lies in a first-level
      subfolder, the sorted subfolder names are the classes (label = index, like an image folder);
      when every file sits directly in the folder and every name starts with digits and "_"
      (FSDD's ``7_jackson_32.wav``), that number is the label; otherwise all labels are −1.
      A mix of files at the top and in subfolders is an error.
    - a single ``.wav`` file.
    - WebDataset shards: a ``.tar``/``.tar.gz`` path, a brace pattern (``fsdd-{0000..0002}.tar.gz``)
      or a folder of shards. Each sample needs a ``.wav`` member; ``.cls`` (a decimal integer)
      gives the label, ``.txt`` the caption, and a ``.json`` with a ``"split"`` entry selects
      samples.

    ``split``: "all" takes everything. When the samples carry a ``"split"`` in their .json, only
    those with that split are kept (and an unknown split is an error listing the known ones).
    Data without split information is all training data: "train" takes everything and any other
    split is an error. ``num_classes`` counts the labels of all samples read, before the split.

    ``config`` and/or ``audio_options`` (fields of :class:`AudioConfig`, which override
    ``config``) set the features. A file that cannot be decoded raises DataError naming it; with
    ``skip_bad=True`` it is left out and one warning gives the count and the first failure.
    """
    base = config.to_dict() if config is not None else {}
    audio_config = AudioConfig.from_dict({**base, **audio_options})
    source = os.fspath(spec)
    kind, paths = _resolve(source)
    bad: list[str] = []
    if kind == "shards":
        clips, num_classes = _shard_clips(paths, skip_bad, bad, source)
        classes = None
    else:
        clips, num_classes, classes = _folder_clips(source, paths)
    clips = _select_split(clips, split, source)
    x = _features(clips, audio_config, skip_bad, bad)
    bad_set = set(bad)
    kept = [c for c in clips if c.source not in bad_set]
    if bad:
        warnings.warn(f"{source}: skipped {len(bad)} unreadable audio file(s); first: {bad[0]}",
                      stacklevel=2)
    if not kept:
        raise DataError(f"{source}: no readable audio clips for split {split!r}")
    return AudioDataset(x, [c.label for c in kept], [c.caption for c in kept], [c.key for c in kept],
                        audio_config=audio_config, num_classes=num_classes, classes=classes,
                        source=source, skipped=len(bad))


def is_shard_path(path: str) -> bool:
    return path.lower().endswith(SHARD_SUFFIXES)


def _resolve(spec: str) -> tuple[str, list[str]]:
    """('shards', shard paths) | ('folder', wav paths relative to it) | ('file', [wav path]).

    Brace patterns and shard folders are resolved by ``shards`` so that every reader in
    ``noisecraft.data`` understands the same spec; a folder holding shards is read as shards.
    """
    from .shards import expand_pattern, list_shards

    if "{" in spec:
        paths = expand_pattern(spec)
        not_shards = [p for p in paths if not is_shard_path(p)]
        if not_shards:
            raise DataError(f"{spec}: {not_shards[0]} is not a .tar/.tar.gz shard")
        return "shards", paths
    if os.path.isdir(spec):
        shards = list_shards(spec)
        if shards:
            return "shards", shards
        wavs = sorted(os.path.relpath(os.path.join(d, f), spec)
                      for d, _, files in os.walk(spec) for f in files if f.lower().endswith(".wav"))
        if wavs:
            return "folder", wavs
        raise DataError(f"{spec}: folder holds no .wav files and no .tar/.tar.gz shards")
    if not os.path.exists(spec):
        raise FileNotFoundError(f"audio data not found: {spec}")
    if is_shard_path(spec):
        return "shards", [spec]
    if spec.lower().endswith(".wav"):
        return "file", [spec]
    raise DataError(f"{spec}: not a .wav file, a folder or a .tar/.tar.gz shard")


def _folder_clips(root: str, rel_paths: list[str]) -> tuple[list[_Clip], int, list[str] | None]:
    if os.path.isfile(root):  # a single .wav
        return [_Clip(key=os.path.splitext(os.path.basename(root))[0], source=root, wav=root)], 0, None
    parts = [p.split(os.sep) for p in rel_paths]
    nested = [len(p) > 1 for p in parts]
    keys = [os.path.splitext(p)[0].replace(os.sep, "/") for p in rel_paths]
    if all(nested):
        classes = sorted({p[0] for p in parts})
        index = {c: i for i, c in enumerate(classes)}
        clips = [_Clip(k, os.path.join(root, r), os.path.join(root, r), index[p[0]])
                 for k, r, p in zip(keys, rel_paths, parts, strict=True)]
        return clips, len(classes), classes
    if any(nested):
        top = rel_paths[nested.index(False)]
        raise DataError(f"{root}: {top} lies at the top while other .wav files are in class subfolders; "
                        "put every file in a subfolder (labelled) or none")
    digits = [re.match(r"(\d+)_", os.path.basename(r)) for r in rel_paths]
    labels = [int(m.group(1)) for m in digits] if all(digits) else [NO_LABEL] * len(rel_paths)
    clips = [_Clip(k, os.path.join(root, r), os.path.join(root, r), lab)
             for k, r, lab in zip(keys, rel_paths, labels, strict=True)]
    return clips, (max(labels) + 1 if all(digits) else 0), None


def _shard_members(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, {extension: bytes}) per sample, read and grouped as image shards are (``shards``)."""
    from .shards import shard_samples
    from .tar import TarFormatError

    try:
        for sample in shard_samples(path):
            yield sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}
    except (TarFormatError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataError(f"{path}: not a readable .tar/.tar.gz shard ({e})") from e


def _shard_clips(paths: list[str], skip_bad: bool, bad: list[str], spec: str) -> tuple[list[_Clip], int]:
    """Every sample of every shard (WAVs still encoded) and num_classes = 1 + the largest label."""
    clips: list[_Clip] = []
    for path in paths:
        for key, members in _shard_members(path):
            where = f"{path}:{key}"
            try:
                clips.append(_shard_clip(key, where, members))
            except DataError:
                if not skip_bad:
                    raise
                bad.append(where)
    if not clips:
        raise DataError(f"{spec}: shards hold no readable samples with a .wav member")
    return clips, max(c.label for c in clips) + 1


def _shard_clip(key: str, where: str, members: dict[str, bytes]) -> _Clip:
    if "wav" not in members:
        raise DataError(f"{where}: sample has no .wav member (has {', '.join(sorted(members))})")
    label = NO_LABEL
    if "cls" in members:
        text = members["cls"].decode("utf-8", "replace").strip()
        if not re.fullmatch(r"\d+", text):
            raise DataError(f"{where}.cls: expected a non-negative integer, got {text[:40]!r}")
        label = int(text)
    caption = members["txt"].decode("utf-8", "replace").strip() if "txt" in members else ""
    split_value = None
    if "json" in members:
        try:
            meta = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{where}.json: invalid JSON ({e})") from e
        if isinstance(meta, dict) and "split" in meta:
            split_value = str(meta["split"])
    return _Clip(key, f"{where}.wav", members["wav"], label, caption, split_value)


def _select_split(clips: list[_Clip], split: str, spec: str) -> list[_Clip]:
    if split == "all":
        return clips
    has_split = [c.split is not None for c in clips]
    if not any(has_split):
        if split != "train":
            raise DataError(f"{spec}: the data has no split information, so split={split!r} cannot be "
                            "selected; use 'train' or 'all'")
        return clips
    if not all(has_split):
        missing = clips[has_split.index(False)].key
        raise DataError(f"{spec}: sample {missing} has no 'split' in its .json while others do")
    chosen = [c for c in clips if c.split == split]
    if not chosen:
        known = sorted({str(c.split) for c in clips})
        raise DataError(f"{spec}: no samples in split {split!r}; the data has {known}")
    return chosen


def _features(clips: list[_Clip], config: AudioConfig, skip_bad: bool, bad: list[str]) -> torch.Tensor:
    """Decode each clip once and compute its spectrogram, a batch of clips per STFT call."""
    out: list[torch.Tensor] = []
    batch: list[torch.Tensor] = []
    n = config.n_samples

    def flush() -> None:
        if batch:
            out.append(audio_to_spectrogram(torch.stack(batch), config))
            batch.clear()

    for clip in clips:
        try:
            w = load_waveform(clip.wav, config.sample_rate, name=clip.source)
        except DataError:
            if not skip_bad:
                raise
            bad.append(clip.source)
            continue
        w = torch.from_numpy(np.ascontiguousarray(w[:n]))
        batch.append(torch.nn.functional.pad(w, (0, n - w.shape[0])))
        if len(batch) == _FEATURE_BATCH:
            flush()
    flush()
    if not out:
        return torch.empty((0, *config.shape))
    return torch.cat(out)


__all__ = [
    "GRIFFIN_LIM_ITERS",
    "AudioConfig",
    "AudioDataset",
    "audio_to_spectrogram",
    "load_audio",
    "load_waveform",
    "read_wav",
    "resample",
    "spectrogram_to_audio",
    "spectrogram_to_mel_power",
    "write_wav",
]
