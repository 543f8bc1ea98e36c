"""A convolutional KL-regularised autoencoder (the first stage of latent diffusion, Rombach et al.
2022): ``encode(x) -> (mean, logvar)`` of a diagonal Gaussian posterior q(z|x) over a latent image
of ``latent_channels`` channels at 1/``factor`` of the input size, and ``decode(z) -> x``.

Layout (a slimmer LDM ``AutoencoderKL``): encoder = 3×3 conv in; per level ``num_res_blocks``
residual blocks and a stride-2 downsample (log₂ factor of them); a middle residual block;
GroupNorm, SiLU, 3×3 conv to 2C channels (mean and log-variance). The decoder mirrors it with
nearest-neighbour upsampling. Inputs whose size is not a multiple of ``4·factor`` (28×28 MNIST)
are padded by edge replication before encoding and cropped back after decoding, so the latent
stays divisible by 4 (what a small U-Net on the latent needs): 28 px at f = 4 gives an 8×8 latent.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import int_tuple, jsonable, positive_int
from .layers import group_norm

FACTORS = (1, 2, 4, 8)
# Each latent side stays divisible by this, so a 2-level U-Net runs on it unpadded.
LATENT_MULTIPLE = 4

AUTOENCODER_PRESETS: dict[str, dict[str, Any]] = {
    # 28×28 / 32×32 (MNIST, CIFAR-10) on a CPU: ~0.6M parameters at f = 4 (0.4M at f = 2).
    "ae32": dict(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, norm_groups=8),
    # 64×64 (twemoji64) on a GPU: ~9.4M parameters at f = 4.
    "ae64": dict(base_channels=64, channel_mult=(1, 2, 4, 4), num_res_blocks=2, norm_groups=32),
}


class _Res(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))) with a 1×1 skip when the channels change."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(group_norm(cin, groups), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  group_norm(cout, groups), nn.SiLU(),
                                  nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class KLAutoencoder(nn.Module):
    """``encode(x) -> (mean, logvar)``, ``decode(z) -> x`` (see the module docstring).

    Args:
        in_channels: image channels (1, 3 or 4).
        image_size: the training size (square); decoding a latent of this size's latent side
            returns exactly ``image_size`` pixels (the padding is cropped).
        latent_channels: C, the channels of the latent image.
        factor: the downsampling f, one of 1, 2, 4, 8.
        base_channels: channels of the first level; level i has ``base_channels · channel_mult[i]``.
        channel_mult: multipliers for levels 0..log₂ f (extra entries are ignored).
        num_res_blocks: residual blocks per level.
        norm_groups: the most GroupNorm groups.
    """

    arch = "kl-autoencoder"

    def __init__(self, in_channels: int = 1, image_size: int = 28, latent_channels: int = 4,
                 factor: int = 4, base_channels: int = 32, channel_mult: tuple[int, ...] = (1, 2, 2, 2),
                 num_res_blocks: int = 1, norm_groups: int = 8):
        super().__init__()
        if factor not in FACTORS:
            raise ValueError(f"factor must be one of {', '.join(map(str, FACTORS))}, got {factor!r}")
        levels = int(math.log2(factor))
        channel_mult = int_tuple("channel_mult", channel_mult)
        if len(channel_mult) < levels + 1:
            raise ValueError(f"channel_mult needs {levels + 1} entries for factor {factor}, "
                             f"got {list(channel_mult)}")
        self.config = jsonable(dict(
            arch=self.arch, in_channels=positive_int("in_channels", in_channels),
            image_size=positive_int("image_size", image_size),
            latent_channels=positive_int("latent_channels", latent_channels), factor=factor,
            base_channels=positive_int("base_channels", base_channels), channel_mult=channel_mult,
            num_res_blocks=positive_int("num_res_blocks", num_res_blocks),
            norm_groups=positive_int("norm_groups", norm_groups)))
        self.factor = factor
        self.image_size = image_size
        self.latent_channels = latent_channels
        chans = [base_channels * m for m in channel_mult[:levels + 1]]
        g = norm_groups

        enc: list[nn.Module] = [nn.Conv2d(in_channels, chans[0], 3, padding=1)]
        for i in range(levels + 1):
            cin = chans[max(i - 1, 0)]
            for j in range(num_res_blocks):
                enc.append(_Res(cin if j == 0 else chans[i], chans[i], g))
            if i < levels:
                enc.append(nn.Conv2d(chans[i], chans[i], 3, stride=2, padding=1))
        enc += [_Res(chans[-1], chans[-1], g), group_norm(chans[-1], g), nn.SiLU(),
                nn.Conv2d(chans[-1], 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(latent_channels, chans[-1], 3, padding=1),
                                _Res(chans[-1], chans[-1], g)]
        for i in reversed(range(levels + 1)):
            cin = chans[min(i + 1, levels)]
            for j in range(num_res_blocks):
                dec.append(_Res(cin if j == 0 else chans[i], chans[i], g))
            if i > 0:
                dec += [nn.Upsample(scale_factor=2.0, mode="nearest"),
                        nn.Conv2d(chans[i], chans[i], 3, padding=1)]
        dec += [group_norm(chans[0], g), nn.SiLU(), nn.Conv2d(chans[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    # ------------------------------------------------------------------ sizes
    def padded_size(self, size: int) -> int:
        """The input side after padding: the next multiple of LATENT_MULTIPLE · factor."""
        m = LATENT_MULTIPLE * self.factor
        return -(-size // m) * m

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(C, H', W') of the latent of one (c, H, W) image."""
        _, h, w = image_shape
        return (self.latent_channels, self.padded_size(h) // self.factor,
                self.padded_size(w) // self.factor)

    # ------------------------------------------------------------------ the contract
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, c, H, W) in [−1, 1] → (mean, logvar) of q(z|x), each (N, C, H', W')."""
        h, w = x.shape[-2:]
        ph, pw = self.padded_size(h) - h, self.padded_size(w) - w
        if ph or pw:  # replicate, so the border the decoder learns is the image's own
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        # LDM's clamp: exp(logvar) stays finite while the KL term is still small.
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        """z (N, C, H', W') → x (N, c, H, W); the padding of ``image_size`` is cropped off."""
        x = self.decoder(z)
        padded = self.padded_size(self.image_size)
        if x.shape[-1] == padded and x.shape[-2] == padded and padded != self.image_size:
            lo = (padded - self.image_size) // 2
            x = x[..., lo:lo + self.image_size, lo:lo + self.image_size]
        return x

    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction from a posterior sample, mean, logvar): one training step's forward."""
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.decode(mean + torch.exp(0.5 * logvar) * eps), mean, logvar


def build_autoencoder(preset: str, **overrides: Any) -> KLAutoencoder:
    """The autoencoder preset ``preset`` (``ae32``, ``ae64``) with ``overrides``."""
    if preset not in AUTOENCODER_PRESETS:
        raise ValueError(f"unknown autoencoder preset {preset!r}; "
                         f"valid: {', '.join(AUTOENCODER_PRESETS)}")
    return autoencoder_from_config({**AUTOENCODER_PRESETS[preset], **overrides})


def autoencoder_from_config(config: dict[str, Any]) -> KLAutoencoder:
    """Rebuild from ``.config``; unknown keys are an error naming them."""
    import inspect

    args = {k: v for k, v in config.items() if k != "arch"}
    if config.get("arch", KLAutoencoder.arch) != KLAutoencoder.arch:
        raise ValueError(f"not an autoencoder config: arch {config.get('arch')!r}")
    valid = list(inspect.signature(KLAutoencoder.__init__).parameters)[1:]
    unknown = [k for k in args if k not in valid]
    if unknown:
        raise ValueError(f"unknown autoencoder config key(s) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(valid)}")
    return KLAutoencoder(**args)
