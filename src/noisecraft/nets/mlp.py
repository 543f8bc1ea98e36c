"""A residual MLP denoiser for vectors (2-D toy data, tabular rows) or small flattened images."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from .config import (
    boolean,
    jsonable,
    optional_positive_int,
    positive_int,
    positive_number,
    probability,
    sample_shape,
)
from .layers import LabelEmbedding, TimeEmbedding, expand_time, take_labels, zero_


class _MLPBlock(nn.Module):
    """h + F(h, emb): LayerNorm → SiLU → Linear → FiLM(emb) → SiLU → dropout → Linear (zero at init)."""

    def __init__(self, width: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb_proj = nn.Linear(emb_dim, 2 * width)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = zero_(nn.Linear(width, width))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.emb_proj(nn.functional.silu(emb)).chunk(2, dim=1)
        z = self.fc1(nn.functional.silu(self.norm(h))) * (1 + scale) + shift
        return h + self.fc2(self.dropout(nn.functional.silu(z)))


class MLP(nn.Module):
    """``mlp(x_t, t, labels=None) -> Tensor`` of x_t's shape (2× channels if ``learned_variance``).

    Args:
        in_channels: features of a vector x of shape (batch, in_channels), or channels of an image.
        image_size: None for vectors; S for images (batch, in_channels, S, S), which are flattened.
        width: hidden units of every block.
        depth: residual blocks.
        dropout: dropout rate inside the blocks.
        learned_variance: output twice the channels (dim 1).
        num_classes: class-conditional when set (labels −1 or None: the learned null condition).
        T: the schedule's length; the net embeds t · 1000 / T.
    """

    arch = "mlp"

    def __init__(self, in_channels: int = 2, image_size: int | None = None, width: int = 128,
                 depth: int = 3, dropout: float = 0.0, learned_variance: bool = False,
                 num_classes: int | None = None, T: int = 1000):
        super().__init__()
        self.sample_shape = sample_shape(in_channels, image_size)
        width = positive_int("width", width)
        depth = positive_int("depth", depth)
        dropout = probability("dropout", dropout)
        learned_variance = boolean("learned_variance", learned_variance)
        num_classes = optional_positive_int("num_classes", num_classes)
        T = positive_number("T", T)
        self._config = dict(in_channels=in_channels, image_size=image_size, width=width, depth=depth,
                            dropout=dropout, learned_variance=learned_variance,
                            num_classes=num_classes, T=T)
        self.num_classes = num_classes
        self.out_shape = (2 * in_channels if learned_variance else in_channels, *self.sample_shape[1:])
        features = math.prod(self.sample_shape)

        self.time_embed = TimeEmbedding(width, width, T)
        self.label_embed = LabelEmbedding(num_classes, width) if num_classes is not None else None
        self.fc_in = nn.Linear(features, width)
        self.blocks = nn.ModuleList(_MLPBlock(width, width, dropout) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.fc_out = zero_(nn.Linear(width, math.prod(self.out_shape)))

    @property
    def config(self) -> dict[str, Any]:
        """The JSON-able arguments that rebuild this architecture: ``nets.from_config(config)``."""
        return {"arch": self.arch, **jsonable(self._config)}

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            shape = ", ".join(map(str, self.sample_shape))
            raise ValueError(f"MLP expects x of shape (batch, {shape}), got {tuple(x.shape)}")
        labels = take_labels(cond, self.num_classes)
        emb = self.time_embed(expand_time(t, x))
        if self.label_embed is not None:
            emb = emb + self.label_embed(labels, x.shape[0], x.device)
        h = self.fc_in(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        out = self.fc_out(nn.functional.silu(self.norm_out(h)))
        return out.reshape(x.shape[0], *self.out_shape)
