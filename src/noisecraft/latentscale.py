"""The one home of latent scaling (a leaf module: data, autoencoders, config and runs import it).

A latent run's network sees z_s = (z − shift) · scale, with z from the autoencoder's posterior,
``scale`` = 1/std(z) measured on the training latents (Stable Diffusion's fixed 0.18215, measured
here) and ``shift`` the autoencoder's own (diffusers' ``shift_factor``; 0 for noisecraft's).
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def scale_latent(z: T, scale: float, shift: float = 0.0) -> T:
    """Autoencoder latents z → the network's unit-variance z_s = (z − shift) · scale."""
    return (z - shift) * scale  # type: ignore[operator, return-value]


def unscale_latent(z_s: T, scale: float, shift: float = 0.0) -> T:
    """The network's z_s → autoencoder latents z = z_s / scale + shift."""
    return z_s / scale + shift  # type: ignore[operator, return-value]
