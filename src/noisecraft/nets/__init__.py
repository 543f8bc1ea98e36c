"""Backbones: plain ``nn.Module`` s called as ``net(x_t, t, **cond) -> Tensor``.

They know no diffusion maths; :class:`noisecraft.Denoiser` reads their output. Build one by
name with :func:`build` and rebuild it from JSON with :func:`from_config` (``net.config``).
"""

from .dit import DiT
from .layers import (
    AttentionBlock,
    CrossAttentionBlock,
    LabelEmbedding,
    ResBlock,
    TextEmbedding,
    TimeEmbedding,
    sinusoidal_embedding,
)
from .linear import LinearDenoiser
from .mlp import MLP
from .presets import ARCHITECTURES, DEFAULT_PRESETS, PRESETS, build, from_config
from .unet import UNet

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_PRESETS",
    "PRESETS",
    "AttentionBlock",
    "CrossAttentionBlock",
    "DiT",
    "LabelEmbedding",
    "LinearDenoiser",
    "MLP",
    "ResBlock",
    "TextEmbedding",
    "TimeEmbedding",
    "UNet",
    "build",
    "from_config",
    "sinusoidal_embedding",
]
