"""A run's latent dataset: pictures encoded once by an autoencoder (``data.latents`` does the
encoding and caching), together with the :class:`~noisecraft.config.LatentConfig` the run records.

This sits above ``config`` and ``data``: the data layer encodes and serves latents, and the run
configuration that describes them is filled in here, so no data module imports the config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch.utils.data import Dataset, IterableDataset

from .config import LATENT_POSTERIORS, LatentConfig
from .data.latents import LatentDataset, cached_posteriors, latent_std
from .data.transforms import Preprocess


def latent_dataset(pixels: Dataset | IterableDataset, ae: Any, *, posterior: str = "mean",
                   flip: bool = False, scale_factor: float | None = None,
                   progress: bool = True) -> LatentDataset:
    """The latent dataset of ``pixels`` (loaded without flips; ``flip`` flips before encoding).

    ``scale_factor`` None measures it (``data.latents``' docstring); a resumed run passes its
    recorded one.
    """
    if posterior not in LATENT_POSTERIORS:
        raise ValueError(f"latent posterior must be one of {', '.join(LATENT_POSTERIORS)}, "
                         f"got {posterior!r}")
    pre: Preprocess = pixels.preprocess  # type: ignore[union-attr]
    if pre.kind != "image":
        raise ValueError(f"{getattr(pixels, 'source', 'the data')} is {pre.kind} data; latent "
                         "diffusion needs images")
    if pre.flip:
        raise ValueError("load the pictures without flips; latent_dataset(flip=True) flips them "
                         "before encoding")
    shape = list(ae.latent_shape(pre.shape))
    posteriors, key, hit = cached_posteriors(pixels, ae, flip=flip, progress=progress)
    if list(posteriors["mean"].shape[1:]) != shape:
        raise ValueError(f"{ae.path}: latents of shape {list(posteriors['mean'].shape[1:])}, "
                         f"expected {shape}")
    if scale_factor is None:
        scale_factor = 1.0 / latent_std(posteriors["mean"], posteriors["logvar"], posterior)
    latent = LatentConfig(autoencoder=str(ae.path.resolve()), sha256=ae.sha256, kind=ae.kind,
                          posterior=posterior, scale_factor=scale_factor,
                          shift_factor=ae.shift_factor, shape=shape)
    return LatentDataset(posteriors, latent, dataclasses.replace(pre, flip=flip),
                         dict(pixels.info), getattr(pixels, "source", ""),  # type: ignore[union-attr]
                         cache_key=key, from_cache=hit, autoencoder=ae)
