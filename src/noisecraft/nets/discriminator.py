"""A PatchGAN discriminator (Isola et al. 2017; taming-transformers' ``NLayerDiscriminator``, the
one LDM's ``LPIPSWithDiscriminator`` uses): a stack of 4×4 convolutions whose output is a grid of
logits, one per overlapping patch of the input, each saying "real" (> 0) or "reconstructed" (< 0).

Layout: conv stride 2 → LeakyReLU(0.2); ``num_layers − 1`` × [conv stride 2 → GroupNorm →
LeakyReLU(0.2)]; conv stride 1 → GroupNorm → LeakyReLU(0.2); conv stride 1 to 1 channel.
GroupNorm, not taming's BatchNorm: its output does not depend on the batch or on train/eval mode,
so there are no running statistics to checkpoint and a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .config import jsonable, positive_int
from .layers import group_norm

NORM_GROUPS = 32
INIT_STD = 0.02  # taming's weights_init: N(0, 0.02) conv weights (DCGAN's choice)


class PatchDiscriminator(nn.Module):
    """x (N, c, H, W) → patch logits (N, 1, H', W').

    Args:
        in_channels: image channels.
        base_channels: channels of the first convolution; they double per stride-2 layer
            (at most 8×).
        num_layers: stride-2 convolutions; each doubles the patch a logit sees (1 → 16 px, 2 → 34 px,
            3 → 70 px).
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        self.config = jsonable(dict(in_channels=positive_int("in_channels", in_channels),
                                    base_channels=positive_int("base_channels", base_channels),
                                    num_layers=positive_int("num_layers", num_layers)))
        act = nn.LeakyReLU(0.2)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1), act]
        mult = 1
        for i in range(1, num_layers + 1):
            prev, mult = mult, min(2 ** i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(base_channels * prev, base_channels * mult, 4, stride=stride,
                                 padding=1, bias=False),
                       group_norm(base_channels * mult, NORM_GROUPS), act]
        layers.append(nn.Conv2d(base_channels * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, INIT_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def discriminator_for(autoencoder_config: dict[str, Any]) -> dict[str, Any]:
    """The discriminator that goes with an autoencoder: its channels and ``base_channels``, and
    taming's 3 stride-2 layers (70 px patches) from 64 px images, 2 (34 px) from 16 px, else 1
    (16 px), so that even 8 px images leave a 2×2 grid of patch logits."""
    size = autoencoder_config["image_size"]
    if size < 8:
        raise ValueError(f"the patch discriminator needs images of at least 8 px, got {size}")
    return dict(in_channels=autoencoder_config["in_channels"],
                base_channels=autoencoder_config["base_channels"],
                num_layers=3 if size >= 64 else 2 if size >= 16 else 1)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """The discriminator's hinge loss ½[mean relu(1 − D(x)) + mean relu(1 + D(x̂))]: 1 at
    D ≡ 0, 0 once every real logit is ≥ 1 and every reconstructed one ≤ −1."""
    return 0.5 * (torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean())
