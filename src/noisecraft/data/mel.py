"""Audio features: waveforms ↔ log-mel spectrograms in [−1, 1] of shape (1, n_mels, frames), and
the spectral DSP under them (mel scales, the mel filterbank, STFT power, its inversion).

Nothing here knows about files or datasets: ``wav.py`` is the codec, ``audio.py`` finds clips
and builds datasets.

Forward (:func:`audio_to_spectrogram`, settings in :class:`AudioConfig`): a mono waveform at
``sample_rate`` → the first ``(frames − 1) · hop_length`` samples, zero padded at the end when the
clip is shorter (so every clip gives exactly ``frames`` centred STFT frames) → power |STFT|² (Hann
window, scaled so a sine of amplitude A peaks at A/2, see :func:`stft`) → mel power
P = F |STFT|² (:func:`mel_filterbank`) → decibels clipped to the range [min_db, max_db], which
also serves as the log floor (P is floored at 10^(min_db/10)):

    x = 2 · (10·log10 max(P, 10^(min_db/10)) − min_db) / (max_db − min_db) − 1,  clamped to [−1, 1].

The levels are absolute (a full-scale sine sits near −6 dB), not relative to each clip's
maximum, so the map is invertible and a clip's loudness is part of what a model learns.

Inverse (listening, :func:`spectrogram_to_audio`): x → P → non-negative least-squares linear
power (:func:`mel_power_to_linear`) → magnitude → fast Griffin-Lim (:func:`griffin_lim`) →
waveform (``wav.write_wav`` writes it).
Mel scales (``scale=``):
- ``"slaney"`` (the default, Slaney's Auditory Toolbox, librosa's ``htk=False``): linear below
  1 kHz and logarithmic above, m(f) = 3 f / 200 for f < 1000 Hz and
  m(f) = 15 + 27 · ln(f / 1000) / ln 6.4 above, so m(1000 Hz) = 15 and m(6400 Hz) = 42.
- ``"htk"``: m(f) = 2595 · log10(1 + f / 700).

Filters are triangles in Hz with peak 1 (no area normalisation) between mel-equally spaced
centres c_0 < c_1 < … < c_{n+1}: filter k rises from c_{k-1} to 1 at c_k and falls to 0 at
c_{k+1}. Between c_1 and c_n the filters therefore sum to exactly 1 at every frequency (a
partition of unity), so a mel band's power is a weighted share of the linear power, not a sum
that grows with the band's width.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..checks import positive_int

MEL_SCALES = ("slaney", "htk")
GRIFFIN_LIM_ITERS = 64  # the default: on FSDD the spectral convergence has levelled off by then

_SLANEY_F_BREAK = 1000.0
_SLANEY_MEL_BREAK = 15.0  # = 1000 Hz · 3 / 200
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(freq_hz: np.ndarray | float, scale: str = "slaney") -> np.ndarray:
    """Frequencies in Hz → mels on the ``scale`` stated in the module docstring (float64)."""
    f = np.asarray(freq_hz, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    if scale == "slaney":
        linear = 3.0 * f / 200.0
        octaves = np.log(np.maximum(f, 1e-12) / _SLANEY_F_BREAK)  # clamped: where() evaluates both
        logarithmic = _SLANEY_MEL_BREAK + octaves / _SLANEY_LOG_STEP
        return np.where(f >= _SLANEY_F_BREAK, logarithmic, linear)
    raise ValueError(f"mel scale {scale!r} is not one of {MEL_SCALES}")


def mel_to_hz(mel: np.ndarray | float, scale: str = "slaney") -> np.ndarray:
    """The inverse of :func:`hz_to_mel` (float64)."""
    m = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    if scale == "slaney":
        linear = 200.0 * m / 3.0
        logarithmic = _SLANEY_F_BREAK * np.exp(_SLANEY_LOG_STEP * (m - _SLANEY_MEL_BREAK))
        return np.where(m >= _SLANEY_MEL_BREAK, logarithmic, linear)
    raise ValueError(f"mel scale {scale!r} is not one of {MEL_SCALES}")


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None, scale: str = "slaney") -> torch.Tensor:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1), float32, peak 1 each.

    Raises ValueError when a filter falls between two FFT bins and so would be all zeros: such
    a band carries no information and cannot be inverted; use fewer mels or a longer n_fft.
    """
    nyquist = sample_rate / 2.0
    f_max = nyquist if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max <= nyquist:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2 = {nyquist}, "
                         f"got f_min={f_min}, f_max={f_max}")
    if n_mels < 1:
        raise ValueError(f"n_mels must be >= 1, got {n_mels}")
    fft_freqs = np.linspace(0.0, nyquist, n_fft // 2 + 1)
    mel_edges = np.linspace(hz_to_mel(f_min, scale), hz_to_mel(f_max, scale), n_mels + 2)
    hz_edges = mel_to_hz(mel_edges, scale)
    lower, centre, upper = hz_edges[:-2, None], hz_edges[1:-1, None], hz_edges[2:, None]
    rising = (fft_freqs[None, :] - lower) / (centre - lower)
    falling = (upper - fft_freqs[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    empty = np.flatnonzero(weights.max(axis=1) <= 0.0)
    if empty.size:
        k = int(empty[0])
        raise ValueError(
            f"mel filter {k} ({hz_edges[k]:.1f}-{hz_edges[k + 2]:.1f} Hz) contains no FFT bin at "
            f"n_fft={n_fft}, sample_rate={sample_rate}: use fewer than n_mels={n_mels} "
            "or a larger n_fft")
    return torch.from_numpy(weights).to(torch.float32)


def hann_window(win_length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Periodic Hann window: its hop-shifted squares sum to a constant for hops of win/4, win/2."""
    return torch.hann_window(win_length, periodic=True, dtype=dtype)


def stft(waveform: torch.Tensor, n_fft: int, hop_length: int, win_length: int) -> torch.Tensor:
    """Complex STFT (…, n_fft // 2 + 1, frames), centred frames, Hann window, zero padding.

    Scaled by 1 / Σ w so that a sine of amplitude A has peak magnitude A / 2 whatever the window
    length: spectra are comparable across settings, and dB levels mean the same thing.
    """
    window = hann_window(win_length, dtype=waveform.dtype).to(waveform.device)
    spec = torch.stft(waveform, n_fft=n_fft, hop_length=hop_length, win_length=win_length,
                      window=window, center=True, pad_mode="constant", return_complex=True)
    return spec / window.sum()


def istft(spec: torch.Tensor, n_fft: int, hop_length: int, win_length: int, length: int) -> torch.Tensor:
    """Inverse of :func:`stft` (least-squares overlap-add), undoing its 1 / Σ w scaling."""
    window = hann_window(win_length, dtype=spec.real.dtype).to(spec.device)
    return torch.istft(spec * window.sum(), n_fft=n_fft, hop_length=hop_length, win_length=win_length,
                       window=window, center=True, length=length)


def mel_power_to_linear(mel_power: torch.Tensor, filterbank: torch.Tensor,
                        n_iter: int = 100) -> torch.Tensor:
    """Non-negative least squares: argmin_{S >= 0} ||F S − M||² per frame, batched.

    ``mel_power`` is (…, n_mels, frames), ``filterbank`` F is (n_mels, n_freqs); returns
    (…, n_freqs, frames). There are more frequencies than mels, so the system is
    under-determined and the pseudo-inverse F⁺ M has negative entries, which are not powers.
    We start from max(F⁺ M, ε) and refine with Lee–Seung multiplicative updates
    S ← S · (Fᵀ M) / (Fᵀ F S), which keep S ≥ 0 and do not increase the squared error.
    On FSDD clips 100 updates take the relative mel residual from 3.4 % (clamped F⁺ M) to 0.23 %
    and the spectral convergence after 64 fast Griffin-Lim iterations from 0.078 to 0.042;
    twice as many updates gain less than 0.001 more.
    """
    f = filterbank.to(mel_power.dtype)
    pinv = torch.linalg.pinv(f)
    floor = 1e-6 * mel_power.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    linear = (pinv @ mel_power).clamp_min(0.0) + floor
    numerator = f.T @ mel_power
    gram = f.T @ f
    for _ in range(n_iter):
        linear = linear * numerator / (gram @ linear).clamp_min(1e-30)
    return linear


def griffin_lim(magnitude: torch.Tensor, n_fft: int, hop_length: int, win_length: int, length: int,
                n_iter: int = GRIFFIN_LIM_ITERS, momentum: float = 0.99,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Waveform whose STFT magnitude approaches ``magnitude`` (…, n_fft // 2 + 1, frames).

    Fast Griffin-Lim (Perraudin, Balazs & Søndergaard 2013, Algorithm 2): alternate the
    projection onto consistent spectrograms P_C1(X) = STFT(ISTFT(X)) and onto the target
    magnitude P_C2(X) = |S| · X / |X|, with an inertial step
        c_n = P_C1(P_C2(t_{n-1})),   t_n = c_n + α (c_n − c_{n-1}).
    α = 0 is the original Griffin-Lim (Griffin & Lim 1984). Initial phases are uniform random
    from ``generator`` so the result is reproducible.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    magnitude = magnitude.to(torch.float32)
    phase = torch.rand(magnitude.shape, generator=generator, dtype=torch.float32) * (2 * math.pi)
    t = torch.polar(magnitude, phase.to(magnitude.device))
    previous = None
    for _ in range(n_iter):
        consistent = stft(istft(_impose(magnitude, t), n_fft, hop_length, win_length, length),
                          n_fft, hop_length, win_length)
        t = consistent if previous is None else consistent + momentum * (consistent - previous)
        previous = consistent
    return istft(_impose(magnitude, t), n_fft, hop_length, win_length, length)


def _impose(magnitude: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
    """P_C2: keep the phase of ``spec`` and take the target magnitude."""
    return magnitude * spec / spec.abs().clamp_min(1e-12)


def spectral_convergence(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """||reference − estimate||_F / ||reference||_F over all elements (a ratio, 0 is perfect)."""
    return float(torch.linalg.vector_norm(reference - estimate) / torch.linalg.vector_norm(reference))


# ---------------------------------------------------------------------------------------------
# Log-mel spectrograms of waveforms


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
            positive_int(f"AudioConfig.{name}", getattr(self, name))
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
        mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max,
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
    return mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, scale)


def audio_to_spectrogram(waveform: torch.Tensor | np.ndarray, config: AudioConfig) -> torch.Tensor:
    """Mono waveform(s) (n,) or (batch, n) at ``config.sample_rate`` → (…, 1, n_mels, frames) in [−1, 1].

    Clips longer than ``config.n_samples`` keep their start; shorter ones are padded with silence.
    """
    w = torch.as_tensor(waveform, dtype=torch.float32)
    if w.ndim not in (1, 2) or w.shape[-1] == 0:
        raise ValueError(f"waveform must be (n,) or (batch, n) with n > 0, got shape {tuple(w.shape)}")
    n = config.n_samples
    w = w[..., :n] if w.shape[-1] >= n else torch.nn.functional.pad(w, (0, n - w.shape[-1]))
    power = stft(w, config.n_fft, config.hop_length, config.win_length).abs().square()
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
    magnitude = mel_power_to_linear(mel_power, config.filterbank()).sqrt()
    length = (x.shape[-1] - 1) * config.hop_length
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return griffin_lim(magnitude, config.n_fft, config.hop_length, config.win_length, length,
                           n_iter=n_iter, momentum=momentum, generator=generator)
