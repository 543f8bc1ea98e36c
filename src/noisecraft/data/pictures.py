"""Single picture files read through a run's own preprocessing: the one reader of ``nll
--image``, ``encode``, ``interpolate``, ``edit`` and ``inpaint`` (and of their Python calls)."""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import Tensor

from .folder import decode_image
from .transforms import Preprocess, convert_channels, prepare_array, resize_center_crop, scale_to_unit

# A mask pixel at or above this grey level marks the region to fill.
MASK_FILL_LEVEL = 128


def read_picture(path: str | os.PathLike[str], pre: Preprocess) -> tuple[Tensor, tuple[int, int]]:
    """(1, C, H, W) in [−1, 1] through ``pre`` (channels, resize + centre crop), and the file's
    own (H, W). A picture file holds 0..255 whatever the training data's source range."""
    if pre.kind != "image":
        raise ValueError(f"{path}: pictures need an image run, but this run models {pre.kind} data")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such picture")
    raw = decode_image(str(path))
    a = prepare_array(raw, pre)
    x = scale_to_unit(a, dataclasses.replace(pre, value_range=(0.0, 255.0)))[None]
    if tuple(x.shape[1:]) != tuple(pre.shape):
        raise ValueError(f"{path}: a {raw.shape[1]}x{raw.shape[0]} picture with {raw.shape[2]} "
                         f"channel(s) gives {tuple(x.shape[1:])} after the run's preprocessing, "
                         f"but the model takes {tuple(pre.shape)} (C, H, W)")
    return x, raw.shape[:2]


def read_mask(path: str | os.PathLike[str], size: tuple[int, int], pre: Preprocess) -> Tensor:
    """The known-region mask (1, 1, H, W) of a picture of file size ``size``: 1 = keep (dark
    pixels), 0 = fill (white, grey level >= :data:`MASK_FILL_LEVEL`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such mask file")
    raw = decode_image(str(path))
    if raw.shape[:2] != tuple(size):
        raise ValueError(f"mask {path} is {raw.shape[1]}x{raw.shape[0]} but the picture is "
                         f"{size[1]}x{size[0]}; give a mask of the picture's size")
    gray = convert_channels(raw, 1)
    if pre.image_size is not None:
        gray = resize_center_crop(gray, pre.image_size)
    fill = torch.from_numpy(gray[..., 0] >= MASK_FILL_LEVEL)
    known = (~fill).float()[None, None]
    if bool(known.all()):
        raise ValueError(f"mask {path} has no white pixels: nothing to fill")
    return known
