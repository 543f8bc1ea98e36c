"""Image preprocessing, its record, and its inverse.

Every image reader turns a decoded picture into a uint8 array (H, W, C) with the picture's own
channels, then applies one `Preprocess`:

1. channels: grayscale (1), RGB (3) or RGBA (4). Transparency is composited on white before
   anything else, so that resizing never bleeds the colour of invisible pixels into the picture.
   RGB → gray uses Pillow's ITU-R 601-2 luma, L = (299 R + 587 G + 114 B) / 1000.
2. size: when ``image_size`` is set, resize the shorter side to it (bicubic, antialiased) and
   crop the centre square; otherwise keep the native size.
3. scaling: a source value v in [lo, hi] (``value_range``, (0, 255) for 8-bit pictures and
   (0, 16) for scikit-learn's digits) becomes x = 2 (v − lo) / (hi − lo) − 1 ∈ [−1, 1].
4. flips: with ``flip`` the picture is mirrored left-right with probability 1/2 (training only;
   nothing to undo).

The record goes into a run's config.json, so sampling can undo step 3 with `to_uint8`.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

KINDS = ("image", "vector", "audio")  # the data kinds, written once (config.DATA_KINDS imports them)
CHANNELS = (1, 3, 4)
_PIL_MODE = {1: "L", 3: "RGB", 4: "RGBA"}
# Pixel diffusion beyond this side is out of reach (use latent diffusion); resizing to it would
# allocate gigabytes per picture.
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class Preprocess:
    """How raw data became the tensors the model sees; enough to undo the scaling.

    ``channels``/``height``/``width`` describe the output images (``dim`` the output vectors);
    ``image_size`` is the requested resize + centre crop (None: native size).
    ``audio`` holds the audio reader's own settings (mel bins, hop, sample rate ...).
    """

    kind: str = "image"
    channels: int | None = None
    height: int | None = None
    width: int | None = None
    image_size: int | None = None
    value_range: tuple[float, float] = (0.0, 255.0)
    flip: bool = False
    dim: int | None = None
    audio: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Preprocess.kind must be one of {KINDS}, got {self.kind!r}")
        if self.channels is not None and self.channels not in CHANNELS:
            raise ValueError(f"channels must be one of {CHANNELS}, got {self.channels!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int)
                                            or self.image_size < 1):
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(f"image_size {self.image_size} is too large: at most {MAX_IMAGE_SIZE} "
                             "(one float32 RGB picture of that size is already 200 MiB)")
        lo, hi = self.value_range
        if not hi > lo:
            raise ValueError(f"value_range must have hi > lo, got {self.value_range!r}")
        object.__setattr__(self, "value_range", (float(lo), float(hi)))

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one item's ``x``: (C, H, W) for images, (D,) for vectors."""
        if self.kind == "vector":
            return (int(self.dim or 0),)
        return (int(self.channels or 0), int(self.height or 0), int(self.width or 0))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["value_range"] = list(self.value_range)
        d["version"] = 1
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        d = dict(d)
        version = d.pop("version", 1)
        if version != 1:
            raise ValueError(f"Preprocess record version {version!r} is not supported (expected 1)")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"unknown key {key!r} in preprocess record; known: {sorted(known)}")
        if "value_range" in d:
            d["value_range"] = tuple(d["value_range"])
        return cls(**d)


def natural_channels(img: Image.Image) -> int:
    """The channel count a picture has of its own: 1 (gray), 3 (colour) or 4 (with alpha)."""
    if img.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        return 1
    if img.mode in ("LA", "La", "RGBA", "RGBa", "PA"):
        return 4
    if img.mode == "P":
        return 4 if "transparency" in img.info else 3
    return 3


def pil_to_array(img: Image.Image) -> np.ndarray:
    """A decoded Pillow picture as uint8 (H, W, C) with its natural channel count."""
    c = natural_channels(img)
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit gray: keep the top 8 bits rather than letting convert("L") clip at 255.
        a = np.asarray(img, dtype=np.uint32) >> 8
        return np.clip(a, 0, 255).astype(np.uint8)[..., None]
    img = img if img.mode == _PIL_MODE[c] else img.convert(_PIL_MODE[c])
    a = np.array(img)
    return a[..., None] if a.ndim == 2 else a


def convert_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W, C) → (H, W, channels); alpha is composited on white when it is dropped."""
    c = a.shape[-1]
    if c == channels:
        return a
    if c == 4:  # composite on white: v' = v a + 255 (1 - a), a in [0, 1]
        alpha = a[..., 3:4].astype(np.uint32)
        rgb = (a[..., :3].astype(np.uint32) * alpha + 255 * (255 - alpha) + 127) // 255
        a, c = rgb.astype(np.uint8), 3
        if channels == 3:
            return a
    if c == 3 and channels == 1:
        r, g, b = (a[..., i].astype(np.uint32) for i in range(3))
        return ((r * 299 + g * 587 + b * 114 + 500) // 1000).astype(np.uint8)[..., None]
    if c == 1 and channels in (3, 4):
        a = np.repeat(a, 3, axis=-1)
        c = 3
    if c == 3 and channels == 4:
        return np.concatenate([a, np.full(a.shape[:-1] + (1,), 255, np.uint8)], axis=-1)
    if c == channels:
        return a
    raise ValueError(f"cannot convert {c} channels to {channels}")


def resize_center_crop(a: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (H, W, C) so the shorter side is ``size`` (bicubic), then crop the centre."""
    h, w, c = a.shape
    if (h, w) == (size, size):
        return a
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = Image.fromarray(a[..., 0] if c == 1 else a, mode=_PIL_MODE[c])
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    out = np.array(img.crop((left, top, left + size, top + size)))
    return out[..., None] if out.ndim == 2 else out


def prepare_array(a: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Steps 1-2 (channels, size) on one uint8 (H, W, C) picture."""
    a = convert_channels(a, int(pre.channels))
    if pre.image_size is not None:
        a = resize_center_crop(a, pre.image_size)
    return a


def scale_to_unit(a: np.ndarray | Tensor, pre: Preprocess) -> Tensor:
    """Step 3 on (..., H, W, C) values: float32 (..., C, H, W) in [−1, 1]."""
    lo, hi = pre.value_range
    if isinstance(a, np.ndarray):
        # numpy is several times cheaper than torch for one small picture (the shard hot path);
        # both branches make a fresh contiguous array, so read-only sources (np.frombuffer) are fine.
        # (..., H, W, C) → (..., C, H, W); transpose, because np.moveaxis spends ~5 µs on checks
        chw = a.transpose(*range(a.ndim - 3), a.ndim - 1, a.ndim - 3, a.ndim - 2)
        if a.dtype == np.uint8:  # one table look-up per pixel: 8 µs instead of 20 for 32x32x3
            return torch.from_numpy(_unit_levels(lo, hi).take(chw))
        return torch.from_numpy(_scale_in_place(chw.astype(np.float32, order="C"), lo, hi))
    t = a.movedim(-1, -3).to(torch.float32)
    return t.sub_(lo).mul_(2.0 / (hi - lo)).sub_(1.0)


def _scale_in_place(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    x *= 2.0 / (hi - lo)
    x -= 1.0 + 2.0 * lo / (hi - lo)
    return x


@functools.lru_cache(maxsize=16)
def _unit_levels(lo: float, hi: float) -> np.ndarray:
    """The scaled value of each of the 256 uint8 levels, by the same float32 arithmetic."""
    levels = _scale_in_place(np.arange(256, dtype=np.float32), lo, hi)
    levels.flags.writeable = False
    return levels


def random_flip(x: Tensor, pre: Preprocess, generator: torch.Generator | None = None) -> Tensor:
    """Step 4: mirror left-right with probability 1/2, drawn from ``generator`` (default: torch's
    global RNG). Callers that must be reproducible per example pass a generator seeded for it."""
    if pre.flip and torch.rand((), generator=generator).item() < 0.5:  # .item(): cheaper compare
        return x.flip(-1)
    return x


def to_uint8(x: Tensor | np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """Model-space images in [−1, 1], (N, C, H, W) or (C, H, W) → uint8 (N, H, W, C) pictures.

    The inverse of step 3 for 8-bit output: v = round((x + 1) · 127.5), clipped to 0..255. For
    data whose source range is not 0..255 (digits: 0..16) this gives the same picture on the
    0..255 scale a PNG expects; `denormalize` gives the source units instead.
    """
    if preprocess.kind != "image":
        raise ValueError(f"to_uint8 needs image data, but the preprocess record is {preprocess.kind!r}")
    t = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"to_uint8 expects (N, C, H, W) or (C, H, W), got shape {tuple(t.shape)}")
    if preprocess.channels is not None and t.shape[1] != preprocess.channels:
        raise ValueError(f"images have {t.shape[1]} channels but the data had {preprocess.channels}")
    v = ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(0, 2, 3, 1).contiguous().numpy()


def denormalize(x: Tensor, preprocess: Preprocess) -> Tensor:
    """Model-space values back to the source units: v = lo + (x + 1)(hi − lo)/2 (no rounding)."""
    lo, hi = preprocess.value_range
    return lo + (x.to(torch.float32) + 1) * ((hi - lo) / 2)
