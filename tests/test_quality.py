"""The one PSNR (noisecraft.quality.psnr), against values worked out by hand."""

import math

import pytest
import torch

from noisecraft.quality import psnr


def test_psnr_by_hand():
    ref = torch.zeros(3, 1, 2, 2)
    x = ref.clone()
    x[0] += 0.1          # every value off by 0.1: MSE 0.01, 10 log10(2² / 0.01) = 26.0206 dB
    x[1, 0, 0, 0] = 1.0  # one value of four off by 1: MSE 0.25, 10 log10(4 / 0.25) = 12.0412 dB
    got = psnr(x, ref)   # example 2 is identical: MSE 0, +inf
    assert got.dtype == torch.float64 and got.shape == (3,)
    assert got[0].item() == pytest.approx(26.020599913, abs=1e-6)
    assert got[1].item() == pytest.approx(12.041199827, abs=1e-6)
    assert got[2].item() == math.inf
    # uint8 range: every value off by 5 of 255: 20 log10(255 / 5) = 34.1514 dB
    assert psnr(torch.full((1, 4), 5.0), torch.zeros(1, 4), data_range=255).item() == pytest.approx(
        34.151403521, abs=1e-6)


def test_clamp_compares_the_pictures_as_saved():
    ref = torch.tensor([[1.0, -1.0, 0.0, 0.0]])
    x = torch.tensor([[1.5, -1.0, 0.0, 0.0]])  # overshoots the range by 0.5 in one value of four
    assert psnr(x, ref).item() == pytest.approx(10 * math.log10(4 / (0.25 / 4)), abs=1e-9)  # 18.06
    assert psnr(x, ref, clamp=(-1.0, 1.0)).item() == math.inf  # saved, both are white there
    assert psnr(ref, x, clamp=(-1.0, 1.0)).item() == math.inf  # both inputs are clamped
    y = torch.tensor([[0.5, -1.0, 0.0, 0.0]])  # inside the range: clamping changes nothing
    assert psnr(y, ref, clamp=(-1.0, 1.0)).item() == psnr(y, ref).item()


@pytest.mark.parametrize("kwargs, match", [
    ({"data_range": 0.0}, r"data_range must be a number in \(0, inf\), got 0.0"),
    ({"data_range": float("nan")}, "data_range .* got nan"),
    ({"clamp": (1.0, -1.0)}, r"clamp must be \(lo, hi\) with lo < hi, got \(1.0, -1.0\)"),
])
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        psnr(torch.zeros(1, 2), torch.zeros(1, 2), **kwargs)
    with pytest.raises(ValueError, match=r"shapes differ: \(1, 2\) vs \(1, 3\)"):
        psnr(torch.zeros(1, 2), torch.zeros(1, 3))
