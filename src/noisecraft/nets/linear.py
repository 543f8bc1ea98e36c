"""The "linear diffusion" baseline: a denoiser that is affine in x_t at every t.

    f(x_t, t) = W(t) x_t + b(t),   W(t) = Σ_k φ_k(t) W_k,   b(t) = Σ_k φ_k(t) b_k,

with the fixed cosine basis φ_k(t) = cos(π k t / T), k = 0, …, K − 1 (a smooth, complete basis
on [0, T]). x is flattened, so any shape works. Because the output is linear in the parameters
too, fitting it by squared error is a convex problem: its optimum is the best affine denoiser,
i.e. the one that only knows the data's mean and covariance, which makes it the yardstick that
shows what a nonlinear network adds.

With ``rank`` set, W_k = U_k V_kᵀ + diag(d_k) (low rank plus diagonal) keeps large images cheap.
Class labels, when used, add a per-class offset Σ_k φ_k(t) c_{k,y}: still affine in x.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .config import (
    boolean,
    jsonable,
    optional_positive_int,
    positive_int,
    positive_number,
    sample_shape,
)
from .layers import LabelEmbedding, expand_time, take_labels


class LinearDenoiser(nn.Module):
    """``linear(x_t, t, labels=None) -> Tensor`` of x_t's shape (2× channels if ``learned_variance``).

    Args:
        in_channels: features of a vector x (batch, in_channels), or channels of an image.
        image_size: None for vectors; S for images (batch, in_channels, S, S).
        num_basis: K, the number of cosine basis functions of t.
        rank: None for full matrices W_k; r for W_k = U_k V_kᵀ + diag(d_k).
        learned_variance: output twice the channels (dim 1).
        num_classes: class-conditional offsets when set (labels −1 or None: the null offset).
        T: the schedule's length; the basis lives on t / T ∈ [0, 1].
    """

    arch = "linear"

    def __init__(self, in_channels: int = 1, image_size: int | None = 8, num_basis: int = 16,
                 rank: int | None = None, learned_variance: bool = False,
                 num_classes: int | None = None, T: int = 1000):
        super().__init__()
        self.sample_shape = sample_shape(in_channels, image_size)
        num_basis = positive_int("num_basis", num_basis)
        rank = optional_positive_int("rank", rank)
        learned_variance = boolean("learned_variance", learned_variance)
        num_classes = optional_positive_int("num_classes", num_classes)
        self.T = positive_number("T", T)
        self._config = dict(in_channels=in_channels, image_size=image_size, num_basis=num_basis,
                            rank=rank, learned_variance=learned_variance, num_classes=num_classes, T=T)
        self.num_classes = num_classes
        self.out_shape = (2 * in_channels if learned_variance else in_channels, *self.sample_shape[1:])
        d_in, d_out = math.prod(self.sample_shape), math.prod(self.out_shape)
        self.register_buffer("frequencies", math.pi * torch.arange(num_basis, dtype=torch.float32),
                             persistent=False)
        # Zero start: the fit is convex, so no symmetry needs breaking (except in the low-rank factor).
        self.bias = nn.Parameter(torch.zeros(num_basis, d_out))
        if rank is None:
            self.weight = nn.Parameter(torch.zeros(num_basis, d_out, d_in))
        else:
            self.left = nn.Parameter(torch.zeros(num_basis, d_out, rank))
            self.right = nn.Parameter(torch.randn(num_basis, rank, d_in) / math.sqrt(d_in))
            self.diagonal = nn.Parameter(torch.zeros(num_basis, d_out))
        self.label_offset = None
        if num_classes is not None:
            self.label_offset = LabelEmbedding(num_classes, num_basis * d_out)
            nn.init.zeros_(self.label_offset.table.weight)

    @property
    def config(self) -> dict[str, Any]:
        """The JSON-able arguments that rebuild this architecture: ``nets.from_config(config)``."""
        return {"arch": self.arch, **jsonable(self._config)}

    def basis(self, t: Tensor) -> Tensor:
        """φ_k(t) = cos(π k t / T), shape (batch, K)."""
        return torch.cos((t / self.T)[:, None] * self.frequencies[None, :])

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"LinearDenoiser expects x of shape "
                             f"(batch, {', '.join(map(str, self.sample_shape))}), got {tuple(x.shape)}")
        labels = take_labels(cond, self.num_classes)
        batch = x.shape[0]
        phi = self.basis(expand_time(t, x)).to(self.bias.dtype)  # (batch, K)
        flat = x.flatten(1).to(self.bias.dtype)  # (batch, D_in)
        if self._config["rank"] is None:
            per_basis = torch.einsum("koi,bi->bko", self.weight, flat)
        else:
            low = torch.einsum("kor,bkr->bko", self.left, torch.einsum("kri,bi->bkr", self.right, flat))
            # diag(d_k) acts on x tiled to D_out (learned variance doubles the outputs).
            tiled = flat.repeat(1, self.diagonal.shape[1] // flat.shape[1])
            per_basis = low + self.diagonal[None] * tiled[:, None, :]
        offset = self.bias[None]
        if self.label_offset is not None:
            offset = offset + self.label_offset(labels, batch, x.device).view(batch, *self.bias.shape)
        out = torch.einsum("bk,bko->bo", phi, per_basis + offset)
        return out.reshape(batch, *self.out_shape)
