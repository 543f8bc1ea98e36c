"""Audio as pictures: WAV files ↔ log-mel spectrograms in [−1, 1] of shape (1, n_mels, frames).

Forward (data): WAV → mono (mean over channels) → resampled to ``sample_rate`` (polyphase
FIR, ``scipy.signal.resample_poly``) → the first ``(frames − 1) · hop_length`` samples, zero
padded at the end when the clip is shorter (so every clip gives exactly ``frames`` centred STFT
frames) → power |STFT|² (Hann window, scaled so a sine of amplitude A peaks at A/2, see
``mel.stft``) → mel power P = F |STFT|² (``mel.mel_filterbank``) → decibels clipped to the
range [min_db, max_db], which also serves as the log floor (P is floored at 10^(min_db/10)):

    x = 2 · (10·log10 max(P, 10^(min_db/10)) − min_db) / (max_db − min_db) − 1,  clamped to [−1, 1].

The levels are absolute (a full-scale sine sits near −6 dB), not relative to each clip's
maximum, so the map is invertible and a clip's loudness is part of what a model learns.

Inverse (listening): x → P → non-negative least-squares linear power (``mel.mel_power_to_linear``)
→ magnitude → fast Griffin-Lim (``mel.griffin_lim``) → waveform → ``write_wav``.

Datasets (``load_audio``): a folder of .wav files, one .wav, or WebDataset shards with .wav
members; see ``load_audio`` for labels and splits.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import re
import warnings
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.signal import resample_poly
from torch.utils.data import Dataset

from ..errors import DataError
from ..io import atomic_write
from . import mel
from .mel import GRIFFIN_LIM_ITERS
from .transforms import Preprocess

NO_LABEL = -1
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_FEATURE_BATCH = 256  # clips per STFT call while loading: amortises torch overhead, bounds memory


@dataclass(frozen=True)
class AudioConfig:
    """Every choice between a WAV file and the (1, n_mels, frames) tensor a model sees.

    Defaults suit 8 kHz speech (FSDD): 32 ms windows every 8 ms (75 % overlap, which Griffin-Lim
    needs to rebuild phase well), 64 Slaney-scale mels up to 4 kHz and 128 frames ≈ 1.02 s,
    longer than 99 % of FSDD clips. ``f_max=None`` means the Nyquist frequency.
    """

    sample_rate: int = 8000
    n_fft: int = 256
    hop_length: int = 64
    win_length: int = 256
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None
    mel_scale: str = "slaney"
    frames: int = 128
    min_db: float = -80.0
    max_db: float = 0.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels", "frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AudioConfig.{name} must be a positive integer, got {value!r}")
        if self.win_length > self.n_fft:
            raise ValueError(f"AudioConfig.win_length={self.win_length} exceeds n_fft={self.n_fft}")
        if self.hop_length > self.win_length // 2:
            # Less than 50 % overlap leaves gaps the Hann windows cannot cover for the inverse.
            raise ValueError(f"AudioConfig.hop_length={self.hop_length} must be at most "
                             f"win_length // 2 = {self.win_length // 2}")
        if self.frames < 2:
            raise ValueError(f"AudioConfig.frames must be >= 2, got {self.frames}")
        if not (math.isfinite(self.min_db) and math.isfinite(self.max_db) and self.min_db < self.max_db):
            raise ValueError(f"AudioConfig needs finite min_db < max_db, "
                             f"got {self.min_db}, {self.max_db}")
        mel.mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max,
                           self.mel_scale)  # raises ValueError naming the bad mel setting

    @property
    def n_samples(self) -> int:
        """Samples per clip: ``frames`` centred frames span (frames − 1) hops."""
        return (self.frames - 1) * self.hop_length

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, self.n_mels, self.frames)

    def filterbank(self) -> torch.Tensor:
        """The (n_mels, n_fft // 2 + 1) mel filters; cached per setting, so treat it as read-only."""
        return _cached_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max,
                                  self.mel_scale)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in names:
                raise ValueError(f"unknown audio option {key!r}; known: {', '.join(sorted(names))}")
        return cls(**d)


@functools.lru_cache(maxsize=16)
def _cached_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None,
                       scale: str) -> torch.Tensor:
    # Building it costs about as much as a clip's STFT, and loading calls it once per batch.
    return mel.mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, scale)


# ---------------------------------------------------------------------------------------------
# WAV files


def read_wav(source: str | os.PathLike | bytes, *, name: str | None = None) -> tuple[np.ndarray, int]:
    """PCM WAV (8-bit unsigned, 16/24/32-bit signed) → (float32 array (channels, n) in [−1, 1), rate).

    ``source`` is a path or the file's bytes (then ``name`` is what error messages call it).
    The stdlib ``wave`` reads plain PCM; the WAVE_FORMAT_EXTENSIBLE and IEEE-float layouts it
    rejects before Python 3.12 go to ``scipy.io.wavfile``. A file that is not RIFF/WAVE, is
    compressed, empty or shorter than its header says raises DataError naming it.
    """
    label = name if name is not None else str(source if not isinstance(source, bytes) else "<bytes>")
    handle = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
    try:
        with wave.open(handle, "rb") as w:
            channels, width = w.getnchannels(), w.getsampwidth()
            rate, count = w.getframerate(), w.getnframes()
            if w.getcomptype() != "NONE":
                raise DataError(f"{label}: compressed WAV ({w.getcompname()}) is not supported; use PCM")
            data = w.readframes(count)
    except FileNotFoundError:
        raise
    except (wave.Error, EOFError, ValueError, OSError) as e:
        if isinstance(e, DataError):
            raise
        if isinstance(e, wave.Error) and str(e).startswith("unknown format"):
            return _read_with_scipy(source, label)
        raise DataError(f"{label}: not a readable PCM WAV file ({e})") from e
    if count == 0:
        raise DataError(f"{label}: WAV file has no samples")
    if len(data) < count * channels * width:
        got = len(data) // (channels * width)
        raise DataError(f"{label}: truncated WAV file: header says {count} frames, found {got}")
    return _checked(_pcm_to_float(data, width, channels, label), rate, label)


# Sample rates a real recording has (telephone 8 kHz … studio 768 kHz); anything else is a
# damaged header, and resampling from it would give silence or a division by zero.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768_000


def _checked(samples: np.ndarray, rate: int, label: str) -> tuple[np.ndarray, int]:
    """Decoded samples refused when the header's rate is absurd or a float WAV holds NaN/Inf."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise DataError(f"{label}: sample rate {rate} Hz in the WAV header is not a real one "
                        f"({MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz); the file is damaged")
    if not np.isfinite(samples).all():
        raise DataError(f"{label}: WAV holds NaN or infinite samples")
    return samples, rate


def _read_with_scipy(source: str | os.PathLike | bytes, label: str) -> tuple[np.ndarray, int]:
    from scipy.io import wavfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", wavfile.WavFileWarning)  # a damaged file is an error here
            rate, data = wavfile.read(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (ValueError, EOFError, OSError, wavfile.WavFileWarning) as e:
        raise DataError(f"{label}: not a readable WAV file ({e})") from e
    data = data.reshape(data.shape[0], -1)
    if data.shape[0] == 0:
        raise DataError(f"{label}: WAV file has no samples")
    if data.dtype == np.uint8:
        samples = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):  # scipy left-justifies 24-bit samples in int32
        full_scale = float(2 ** (8 * data.dtype.itemsize - 1))
        samples = (data.astype(np.float64) / full_scale).astype(np.float32)
    elif np.issubdtype(data.dtype, np.floating):
        samples = data.astype(np.float32)
    else:
        raise DataError(f"{label}: unsupported WAV sample type {data.dtype}")
    return _checked(np.ascontiguousarray(samples.T), int(rate), label)


def _pcm_to_float(data: bytes, width: int, channels: int, label: str) -> np.ndarray:
    if width == 1:  # 8-bit WAV is unsigned with 128 as silence
        samples = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    elif width == 3:  # no 24-bit dtype: place the bytes in the top of an int32, shift back with sign
        raw = np.frombuffer(data, np.uint8).reshape(-1, 3)
        padded = np.zeros((raw.shape[0], 4), np.uint8)
        padded[:, 1:] = raw
        samples = (padded.view("<i4")[:, 0] >> 8).astype(np.float32) / float(2**23)
    elif width == 4:
        samples = (np.frombuffer(data, "<i4").astype(np.float64) / float(2**31)).astype(np.float32)
    else:
        raise DataError(f"{label}: unsupported sample width of {width} bytes")
    return samples.reshape(-1, channels).T


def write_wav(path: str | os.PathLike, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM: ``waveform`` is (n,) or (channels, n) in [−1, 1]; louder samples are clipped.

    The file appears atomically (temporary file in the same folder, fsync, rename).
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    a = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"waveform must be (n,) or (channels, n) with n > 0, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"waveform for {os.fspath(path)} contains NaN or infinite samples")
    pcm = np.round(np.clip(a.astype(np.float64), -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(pcm.shape[0])
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.T.tobytes())
    atomic_write(path, buf.getvalue())  # the umask applies, as for every file a run writes


def resample(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis (Kaiser-windowed sinc FIR, anti-aliased)."""
    if orig_rate == target_rate:
        return samples
    g = math.gcd(int(orig_rate), int(target_rate))
    return resample_poly(samples, target_rate // g, orig_rate // g, axis=-1).astype(np.float32)


def load_waveform(source: str | os.PathLike | bytes, sample_rate: int, *,
                  name: str | None = None) -> np.ndarray:
    """A WAV file as mono float32 (n,) at ``sample_rate``: channels averaged, then resampled."""
    samples, rate = read_wav(source, name=name)
    return resample(samples.mean(axis=0), rate, sample_rate)


# ---------------------------------------------------------------------------------------------
# Spectrograms


def audio_to_spectrogram(waveform: torch.Tensor | np.ndarray, config: AudioConfig) -> torch.Tensor:
    """Mono waveform(s) (n,) or (batch, n) at ``config.sample_rate`` → (…, 1, n_mels, frames) in [−1, 1].

    Clips longer than ``config.n_samples`` keep their start; shorter ones are padded with silence.
    """
    w = torch.as_tensor(waveform, dtype=torch.float32)
    if w.ndim not in (1, 2) or w.shape[-1] == 0:
        raise ValueError(f"waveform must be (n,) or (batch, n) with n > 0, got shape {tuple(w.shape)}")
    n = config.n_samples
    w = w[..., :n] if w.shape[-1] >= n else torch.nn.functional.pad(w, (0, n - w.shape[-1]))
    power = mel.stft(w, config.n_fft, config.hop_length, config.win_length).abs().square()
    mel_power = config.filterbank() @ power
    floor = 10.0 ** (config.min_db / 10.0)
    db = 10.0 * torch.log10(mel_power.clamp_min(floor))
    x = 2.0 * (db - config.min_db) / (config.max_db - config.min_db) - 1.0
    return x.clamp(-1.0, 1.0).unsqueeze(-3)


def spectrogram_to_mel_power(x: torch.Tensor, config: AudioConfig) -> torch.Tensor:
    """Inverse of the [−1, 1] scaling: mel power P = 10^(dB/10); values outside [−1, 1] are clamped."""
    unit = (x.to(torch.float32).clamp(-1.0, 1.0) + 1.0) / 2.0
    db = unit * (config.max_db - config.min_db) + config.min_db
    return 10.0 ** (db / 10.0)


def spectrogram_to_audio(x: torch.Tensor, config: AudioConfig, n_iter: int = GRIFFIN_LIM_ITERS, *,
                         momentum: float = 0.99,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """(1, n_mels, F) or (batch, 1, n_mels, F) spectrograms in [−1, 1] → waveforms (n,) or (batch, n).

    F may differ from ``config.frames``; the waveform has (F − 1) · hop_length samples.
    Phases come from ``n_iter`` iterations of fast Griffin-Lim with ``momentum``; the random
    initial phases come from ``generator`` (seed 0 when None, so the result is reproducible).
    """
    x = torch.as_tensor(x)
    if x.ndim not in (3, 4) or x.shape[-3] != 1 or x.shape[-2] != config.n_mels or x.shape[-1] < 2:
        raise ValueError(f"spectrogram must be (1, {config.n_mels}, frames) or (batch, 1, "
                         f"{config.n_mels}, frames), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("spectrogram contains NaN or infinite values")
    mel_power = spectrogram_to_mel_power(x.squeeze(-3).detach().cpu(), config)
    magnitude = mel.mel_power_to_linear(mel_power, config.filterbank()).sqrt()
    length = (x.shape[-1] - 1) * config.hop_length
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return mel.griffin_lim(magnitude, config.n_fft, config.hop_length, config.win_length, length,
                           n_iter=n_iter, momentum=momentum, generator=generator)


# ---------------------------------------------------------------------------------------------
# Datasets


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
