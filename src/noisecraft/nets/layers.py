"""Building blocks shared by the backbones: time, label and text embeddings, residual, self- and
cross-attention blocks.

None of these knows any diffusion maths. Time enters only as the float ``t`` ∈ [0, T] that
``Schedule.marginal`` takes; the embedding rescales it to t·1000/T so that a net trained with one
schedule length sees the same frequencies as the DDPM reference (T = 1000, integer t).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..conditions import NULL_LABEL, TEXT_KEYS

# DDPM embeds the integer step of a T = 1000 chain; we embed t · REFERENCE_T / T.
REFERENCE_T = 1000.0


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """The Transformer position code of a float time: [sin(t ω_i), cos(t ω_i)], ω_i = P^(−i/h).

    ``t`` has shape (batch,); the result has shape (batch, dim) (a zero column pads odd ``dim``).
    The fastest frequency is 1 rad per unit of t, so neighbouring integer steps stay distinct.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def expand_time(t: Tensor | float, x: Tensor) -> Tensor:
    """``t`` as float32 of shape (batch,) on x's device; a scalar is broadcast to the batch."""
    t = torch.as_tensor(t, device=x.device).to(torch.float32)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape (batch,) = ({x.shape[0]},), "
                         f"got {tuple(t.shape)}")
    return t


class TimeEmbedding(nn.Module):
    """t ↦ MLP(sinusoid(t · 1000 / T)): a (batch, out_dim) code that the blocks condition on."""

    def __init__(self, sinusoid_dim: int, out_dim: int, T: float):
        super().__init__()
        self.sinusoid_dim = sinusoid_dim
        self.scale = REFERENCE_T / float(T)
        self.mlp = nn.Sequential(nn.Linear(sinusoid_dim, out_dim), nn.SiLU(),
                                 nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        emb = sinusoidal_embedding(t * self.scale, self.sinusoid_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedding(nn.Module):
    """Class labels ↦ vectors, with one learned extra row for the null condition.

    The null row (index ``num_classes``) is used where ``labels`` is None or equals −1, so the
    same network gives the conditional and the unconditional prediction that classifier-free
    guidance mixes.
    """

    NULL_LABEL = NULL_LABEL  # conditions.NULL_LABEL, kept as a class attribute for readers

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        if labels is None:
            index = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
            return self.table(index)
        labels = torch.as_tensor(labels, device=device)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape (batch,) = ({batch},), got {tuple(labels.shape)}")
        labels = labels.long()
        bad = (labels < self.NULL_LABEL) | (labels >= self.num_classes)
        if bad.any():
            raise ValueError(f"label {int(labels[bad][0])} is out of range: use 0.."
                             f"{self.num_classes - 1}, or -1 for the null condition")
        index = torch.where(labels == self.NULL_LABEL, torch.full_like(labels, self.num_classes), labels)
        return self.table(index)


def take_labels(cond: Mapping[str, Any], num_classes: int | None) -> Tensor | None:
    """The ``labels`` condition, refusing conditions this net cannot use (no silent drops).

    A keyword whose value is None is the null condition and is accepted by every net.
    """
    return take_conditions(cond, num_classes, None)["labels"]


def take_conditions(cond: Mapping[str, Any], num_classes: int | None,
                    text_dim: int | None) -> dict[str, Any]:
    """The conditions a net uses: ``labels`` (with ``num_classes``) and ``text``, ``text_mask``,
    ``text_pooled`` (with ``text_dim``); any other keyword that is not None is an error naming it.
    """
    usable = ({"labels"} if num_classes is not None else set()) | (
        set(TEXT_KEYS) if text_dim is not None else set())
    unused = sorted(k for k, v in cond.items() if v is not None and k not in usable)
    if unused:
        accepted = ", ".join(sorted(usable)) or "no conditions (num_classes and text_dim are None)"
        raise ValueError(f"this network cannot use the condition(s) {', '.join(unused)}; it accepts "
                         f"{accepted}")
    return {k: cond.get(k) for k in ("labels", *TEXT_KEYS)}


class TextEmbedding(nn.Module):
    """The text condition's two ways in, and the net's own learned null for both.

    - the pooled sentence embedding (batch, D) ↦ a (batch, emb_dim) vector added to the time
      embedding; rows without text get a learned null vector instead;
    - the tokens (batch, L, D) become the keys/values of the cross-attention blocks, always
      preceded by one learned null token, so a row whose mask is all False (the empty prompt, or
      no text at all) attends to the null token alone and softmax never sees an empty set.

    A missing ``text`` keyword and an all-False mask row are therefore the same null condition.
    """

    def __init__(self, text_dim: int, emb_dim: int):
        super().__init__()
        self.text_dim = text_dim
        self.pooled_proj = nn.Linear(text_dim, emb_dim)
        self.null_pooled = nn.Parameter(torch.zeros(emb_dim))
        self.null_token = nn.Parameter(torch.randn(text_dim) * text_dim ** -0.5)

    def forward(self, text: Tensor | None, text_mask: Tensor | None, text_pooled: Tensor | None,
                batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(emb (batch, emb_dim), context (batch, 1 + L, D), context_mask (batch, 1 + L) bool)."""
        dtype = self.pooled_proj.weight.dtype
        if text is None:
            if text_mask is not None or text_pooled is not None:
                raise ValueError("text_mask and text_pooled need the text tokens (text=...) too")
            text = torch.zeros(batch, 0, self.text_dim, device=device, dtype=dtype)
            text_mask = torch.zeros(batch, 0, dtype=torch.bool, device=device)
            text_pooled = torch.zeros(batch, self.text_dim, device=device, dtype=dtype)
        if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != self.text_dim:
            raise ValueError(f"text must have shape (batch, L, text_dim) = ({batch}, L, "
                             f"{self.text_dim}), got {tuple(text.shape)}")
        if text_pooled is None:
            raise ValueError("text needs text_pooled (the pooled sentence embedding) too")
        if text_pooled.shape != (batch, self.text_dim):
            raise ValueError(f"text_pooled must have shape (batch, text_dim) = ({batch}, "
                             f"{self.text_dim}), got {tuple(text_pooled.shape)}")
        if text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=device)
        if text_mask.shape != text.shape[:2] or text_mask.dtype != torch.bool:
            raise ValueError(f"text_mask must be a bool tensor of shape {tuple(text.shape[:2])}, "
                             f"got {text_mask.dtype} {tuple(text_mask.shape)}")
        has_text = text_mask.any(dim=1, keepdim=True)
        emb = torch.where(has_text, self.pooled_proj(text_pooled.to(dtype)), self.null_pooled)
        null = self.null_token.to(dtype).expand(batch, 1, self.text_dim)
        context = torch.cat([null, text.to(dtype)], dim=1)
        context_mask = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=device), text_mask], 1)
        return emb, context, context_mask


def group_norm(channels: int, max_groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ ``max_groups`` that divides ``channels``."""
    groups = max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that the residual branch it ends starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """x + F(x, emb): GroupNorm → SiLU → conv → time conditioning → GroupNorm → SiLU → dropout → conv.

    ``time_conditioning="film"`` modulates the second norm with a scale and a shift from the
    embedding, h ← GN(h)(1 + s) + b (Improved DDPM); ``"add"`` adds a per-channel bias before the
    second norm, as in the DDPM paper (which the 35.7M CIFAR-10 preset reproduces). The last conv
    starts at zero, so every block starts as the identity map.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float,
                 norm_groups: int, time_conditioning: str):
        super().__init__()
        self.film = time_conditioning == "film"
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if self.film else out_channels)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(F.silu(emb))[:, :, None, None]
        if self.film:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """x + proj(MultiHeadSelfAttention(GN(x))) over the H·W positions (scaled_dot_product_attention)."""

    def __init__(self, channels: int, num_heads: int, norm_groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide the {channels} channels "
                             f"of an attention block")
        self.num_heads = num_heads
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each (b, heads, h·w, c/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class CrossAttentionBlock(nn.Module):
    """x + proj(MultiHeadAttention(q = GN(x), k, v = text tokens)), masked to the real tokens.

    Queries are the H·W image positions; keys and values are projected from the context tokens
    (width ``context_dim``, the text encoder's). ``context_mask`` is False on padding, which then
    gets zero attention weight, so the output does not depend on how far a prompt was padded.
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int, norm_groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide the {channels} channels "
                             f"of a cross-attention block")
        self.num_heads = num_heads
        self.norm = group_norm(channels, norm_groups)
        self.context_norm = nn.LayerNorm(context_dim)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        heads = self.num_heads
        q = self.q(self.norm(x)).reshape(b, heads, c // heads, h * w).transpose(-1, -2)
        kv = self.kv(self.context_norm(context)).reshape(b, -1, 2, heads, c // heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, heads, tokens, c/heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=context_mask[:, None, None, :])
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour repeat, then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
