"""Picture quality figures shared by the autoencoder trainer and the editing tools: one PSNR.

A leaf module: it imports torch only, so any layer may use it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import number


def psnr(x: Tensor, ref: Tensor, data_range: float = 2.0,
         clamp: tuple[float, float] | None = None) -> Tensor:
    """Peak signal-to-noise ratio per example in dB: 10 log₁₀(data_range² / MSE), the MSE taken
    over every value of an example (dim 0 indexes examples), in float64.

    ``data_range`` is the peak-to-peak range of the values: 2 for pictures in [−1, 1], 255 for
    uint8. ``clamp=(lo, hi)`` clamps both inputs to [lo, hi] first, i.e. compares the pictures as
    they would be saved (a decoder's raw output can overshoot the data range, and the overshoot
    is not an error a viewer sees); None (the default) compares the values as given. Identical
    examples have MSE 0 and PSNR +inf.
    """
    if x.shape != ref.shape:
        raise ValueError(f"psnr: shapes differ: {tuple(x.shape)} vs {tuple(ref.shape)}")
    if x.ndim < 2:
        raise ValueError(f"psnr: needs a batch of examples (N, ...), got shape {tuple(x.shape)}")
    number("psnr: data_range", data_range, 0, low_open=True)
    a, b = x.double(), ref.double()
    if clamp is not None:
        lo, hi = clamp
        if not lo < hi:
            raise ValueError(f"psnr: clamp must be (lo, hi) with lo < hi, got {clamp!r}")
        a, b = a.clamp(lo, hi), b.clamp(lo, hi)
    mse = (a - b).square().flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)
