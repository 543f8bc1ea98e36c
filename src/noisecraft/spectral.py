"""Frequency views of diffusion: radially averaged power spectra, the per-frequency SNR of the
forward process, and the Wiener-filter answer for stationary Gaussian data.

Conventions: the orthonormal 2-D DFT X(k) = (HW)^{-1/2} Σ_n x(n) e^{−2πi k·n/N}, so white noise
of variance 1 has power E|X(k)|² = 1 at every k, and the power of data is P(k) = E|X(k)|².
Frequencies are bucketed by their radius |k| = √(k_y² + k_x²) in cycles per image, rounded to
an integer band b = 0, 1, …, ⌊min(H, W)/2⌋ (band 0 is the mean; corners beyond the last band
are dropped).

Forward process: x_t = α_t x_0 + σ_t ε transforms band by band into X_t = α_t X_0 + σ_t E with
E white, so the signal-to-noise ratio of frequency k at time t is

    SNR_t(k) = α_t² P(k) / σ_t² = SNR(t) · P(k).

Natural images have P(k) ∝ |k|^{−γ} with γ ≈ 2: high frequencies drown first under the forward
process, and emerge last in the reverse one.

Stationary Gaussian data (independent Fourier coefficients, X_0(k) ~ N(0, P(k)) apart from the
Hermitian symmetry of real signals) has the Wiener filter as its exact denoiser,

    X̂_0(k) = E[X_0 | X_t](k) = α_t P(k) / (α_t² P(k) + σ_t²) · X_t(k),

and, since E|X_t(k)|² = α_t² P(k) + σ_t², the power of x̂_0 is

    P̂_t(k) = P(k) · SNR_t(k) / (1 + SNR_t(k)):

each band keeps its power once its own SNR exceeds 1 and is suppressed while it is below.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .schedule import Schedule, broadcast_to


def _check_images(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError("images must be a tensor of shape (N, C, H, W), got "
                         + (f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__))
    return x


def frequency_radius(height: int, width: int) -> Tensor:
    """|k| in cycles per image for each DFT coefficient, float64 (H, W)."""
    ky = torch.fft.fftfreq(height, d=1.0 / height, dtype=torch.float64)
    kx = torch.fft.fftfreq(width, d=1.0 / width, dtype=torch.float64)
    return torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


def radial_bands(height: int, width: int) -> tuple[Tensor, int]:
    """(band index per coefficient (H, W) int64 with −1 for dropped corners, number of bands)."""
    n = min(height, width) // 2 + 1
    b = frequency_radius(height, width).round().long()
    return torch.where(b < n, b, torch.full_like(b, -1)), n


def power_spectrum(x: Tensor) -> Tensor:
    """E|X(k)|² averaged over examples and channels: float64 (H, W), orthonormal DFT."""
    x = _check_images(x)
    X = torch.fft.fft2(x.double(), norm="ortho")
    return (X.abs() ** 2).mean(dim=(0, 1))


def radial_average(power: Tensor) -> Tensor:
    """The mean of a (H, W) spectrum over each radial band: float64 (bands,)."""
    bands, n = radial_bands(*power.shape[-2:])
    keep = bands >= 0
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, bands[keep], power[keep].double())
    counts = torch.zeros(n, dtype=torch.float64).index_add_(
        0, bands[keep], torch.ones_like(power[keep], dtype=torch.float64))
    return sums / counts


def radial_power_spectrum(x: Tensor) -> Tensor:
    """Radially averaged power spectrum of images (N, C, H, W): float64 (bands,)."""
    return radial_average(power_spectrum(x))


def forward_snr(schedule: Schedule, t: Tensor | float, band_power: Tensor) -> Tensor:
    """SNR_t(k) = SNR(t) · P(k) for each t (rows) and band (columns): float64 (len(t), bands)."""
    snr = schedule.snr(torch.as_tensor(t, dtype=torch.float64).reshape(-1))
    return snr[:, None] * band_power.double()[None, :]


def wiener_power(schedule: Schedule, t: Tensor | float, band_power: Tensor) -> Tensor:
    """P̂_t(k) = P(k) SNR_t(k)/(1 + SNR_t(k)): the power of E[x_0 | x_t] for stationary Gaussian
    data of power P (module docstring); float64 (len(t), bands). t = 0 gives P itself."""
    r = forward_snr(schedule, t, band_power)
    frac = torch.where(torch.isinf(r), torch.ones_like(r), r / (1 + r))
    return band_power.double()[None, :] * frac


# --------------------------------------------------------------------------- Gaussian fields
class StationaryGaussian:
    """Zero-mean stationary Gaussian images with power P(k) = amplitude · max(|k|, 1)^{−exponent}
    per DFT coefficient (orthonormal convention), shape (channels, size, size)."""

    def __init__(self, size: int, exponent: float = 2.0, amplitude: float = 1.0, channels: int = 1):
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size!r}")
        if not amplitude > 0:
            raise ValueError(f"amplitude must be > 0, got {amplitude!r}")
        self.size, self.channels = int(size), int(channels)
        self.exponent, self.amplitude = float(exponent), float(amplitude)
        r = frequency_radius(size, size).clamp(min=1.0)
        self.power = amplitude * r ** (-exponent)        # (H, W), symmetric under k → −k

    def band_power(self) -> Tensor:
        return radial_average(self.power)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws, float64 (n, C, H, W): white noise filtered by √P (a real filter keeps the
        Hermitian symmetry, so the result is real and E|X(k)|² = P(k) exactly)."""
        w = torch.randn(n, self.channels, self.size, self.size, generator=generator,
                        dtype=torch.float64)
        return torch.fft.ifft2(torch.fft.fft2(w, norm="ortho") * self.power.sqrt(), norm="ortho").real

    def posterior_mean(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """The Wiener filter E[x_0 | x_t], float64 of x_t's shape."""
        x = x_t.double()
        a = broadcast_to(torch.as_tensor(alpha, dtype=torch.float64).reshape(-1), x)
        s = broadcast_to(torch.as_tensor(sigma, dtype=torch.float64).reshape(-1), x)
        gain = a * self.power / (a**2 * self.power + s**2)
        return torch.fft.ifft2(torch.fft.fft2(x, norm="ortho") * gain, norm="ortho").real

    def net(self, schedule: Schedule) -> nn.Module:
        """The ideal x_0-predicting network for ``schedule`` (use with prediction="x0")."""
        return _WienerNet(self, schedule)


class _WienerNet(nn.Module):
    def __init__(self, field: StationaryGaussian, schedule: Schedule):
        super().__init__()
        self.field, self.schedule = field, schedule

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.schedule.marginal(t.double())
        return self.field.posterior_mean(x_t, alpha, sigma).to(x_t.dtype)


def half_power_time(schedule: Schedule, band_power: Tensor) -> Tensor:
    """For each band, the t at which SNR_t(k) = 1 (the band is half drowned): float64 (bands,).

    From SNR(t) P = 1, i.e. λ(t) = −log P, inverted with the schedule's own t(λ); bands whose
    SNR stays above 1 up to T get T, those below 1 already at t → 0 get 0.
    """
    lam = -torch.log(band_power.double())
    lam_T = schedule.log_snr(schedule.T).item()
    out = schedule.t_from_log_snr(lam.clamp(min=lam_T))
    return torch.where(lam <= lam_T, torch.full_like(out, float(schedule.T)), out)

