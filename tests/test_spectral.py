"""Spectral views (noisecraft.spectral) against exact answers: white noise, a Gaussian field of
known power-law spectrum, and the Wiener filter along a reverse process."""

from __future__ import annotations

import math

import pytest
import torch

from noisecraft import Denoiser, Schedule, samplers
from noisecraft.spectral import (
    StationaryGaussian,
    forward_snr,
    half_power_time,
    power_spectrum,
    radial_average,
    radial_bands,
    radial_power_spectrum,
    wiener_power,
)

SCHEDULE = Schedule.linear(1000)


def _band_counts(size: int) -> torch.Tensor:
    bands, n = radial_bands(size, size)
    return torch.bincount(bands[bands >= 0], minlength=n).double()


def test_bands_by_hand():
    bands, n = radial_bands(4, 4)
    assert n == 3
    # frequencies 0, 1, −2, −1 per axis: (0,0) → 0, (0,1) → 1, (1,1) → √2 → 1, (2,2) → 2.8 dropped
    assert bands[0, 0] == 0 and bands[0, 1] == 1 and bands[1, 1] == 1 and bands[2, 2] == -1
    assert radial_average(torch.ones(4, 4)).tolist() == [1.0, 1.0, 1.0]


def test_white_noise_has_unit_power_in_every_band():
    x = torch.randn(400, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = radial_power_spectrum(x)
    counts = _band_counts(16) * 400
    # |X(k)|² of unit white noise is χ²-like with relative SD ≤ √2 (real coefficients);
    # Hermitian pairs are copies, so the effective count is about half: 5 SE = 5 √(2·2/count).
    assert ((p - 1).abs() < 5 * torch.sqrt(4 / counts)).all(), p


def test_gaussian_field_has_its_power_law():
    field = StationaryGaussian(16, exponent=2.0, amplitude=3.0)
    x = field.sample(400, torch.Generator().manual_seed(1))
    rel = radial_power_spectrum(x) / field.band_power()
    assert ((rel - 1).abs() < 5 * torch.sqrt(4 / (_band_counts(16) * 400))).all(), rel
    assert power_spectrum(x)[0, 1].item() == pytest.approx(3.0, rel=0.3)


def test_x0_hat_spectrum_along_the_reverse_process_is_the_wiener_prediction():
    """Drive ancestral sampling with the exact (Wiener) denoiser of a power-law field; at every
    recorded step the radial spectrum of x̂_0 must equal P · SNR_t P/(1 + SNR_t P) per band."""
    field = StationaryGaussian(16, exponent=2.0, amplitude=2.0)
    den = Denoiser(field.net(SCHEDULE), SCHEDULE, "x0")
    n = 150
    grid = samplers.grids.respaced(SCHEDULE, 125)
    keep = {12, 50, 90, 110, 120}
    seen = {}

    def record(i, t, x_t, x0_hat):
        if i in keep:
            seen[grid[i].item()] = radial_power_spectrum(x0_hat)

    x_T = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    samplers.ddpm(den, x_T, grid, callback=record, noise=samplers.BatchNoise(
        n, torch.Generator().manual_seed(3)))
    counts = _band_counts(16) * n
    for t, got in seen.items():
        want = wiener_power(SCHEDULE, t, field.band_power())[0]
        rel = got / want
        # sampling error as above, plus 3 % for the ancestral sampler's discretisation
        # (125 of 1000 steps)
        assert ((rel - 1).abs() < 5 * torch.sqrt(4 / counts) + 0.03).all(), (t, rel)
    # and the story it tells: the kept fraction falls with frequency at every t (coarse
    # structure settles first); at t = 100 the lowest band keeps 93 %, the highest 22 %
    for t in (100.0, 300.0):
        kept = wiener_power(SCHEDULE, t, field.band_power())[0] / field.band_power()
        assert (kept.diff() < 0).all()
    assert kept[1] > 2 * kept[3]


def test_forward_snr_and_half_power_time():
    p = torch.tensor([10.0, 1.0, 0.01])
    snr = forward_snr(SCHEDULE, torch.tensor([0.0, 500.0]), p)
    assert torch.isinf(snr[0]).all()
    assert snr[1].tolist() == pytest.approx((SCHEDULE.snr(500.0) * p).tolist())
    t_half = half_power_time(SCHEDULE, p)
    for t, pk in zip(t_half.tolist(), p.tolist(), strict=True):
        assert 0 < t < SCHEDULE.T
        assert SCHEDULE.snr(t).item() * pk == pytest.approx(1.0, rel=1e-6)
    assert t_half[0] > t_half[1] > t_half[2]          # low frequencies drown last
    assert half_power_time(SCHEDULE, torch.tensor([1e9]))[0].item() == SCHEDULE.T
    assert math.isclose(wiener_power(SCHEDULE, 0.0, p)[0, 0].item(), 10.0)


def test_bad_input():
    with pytest.raises(ValueError, match="N, C, H, W"):
        radial_power_spectrum(torch.zeros(3, 8, 8))
