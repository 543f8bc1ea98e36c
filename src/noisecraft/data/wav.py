"""WAV files: the audio codec. PCM WAV bytes ↔ float32 samples in [−1, 1), and resampling.

``read_wav`` decodes (8-bit unsigned, 16/24/32-bit signed PCM; extensible and IEEE-float layouts
through ``scipy.io.wavfile``), ``write_wav`` encodes 16-bit PCM atomically, ``load_waveform``
gives one mono clip at a chosen rate. Nothing here knows about spectrograms or datasets.
"""

from __future__ import annotations

import io
import math
import os
import warnings
import wave

import numpy as np
import torch
from scipy.signal import resample_poly

from ..checks import positive_int
from ..errors import DataError
from ..io import atomic_write


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
    positive_int("sample_rate", sample_rate)
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
