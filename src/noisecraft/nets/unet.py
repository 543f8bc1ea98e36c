"""The DDPM U-Net (Ho et al. 2020, appendix B), with Improved-DDPM options.

Layout: a 3×3 conv in; per resolution level ``num_res_blocks`` residual blocks (with
self-attention at the listed resolutions) and a stride-2 downsample; a middle of
res–attention–res; the mirror image upwards with ``num_res_blocks + 1`` blocks per level, each
taking the matching skip activation concatenated on the channels; GroupNorm, SiLU and a zero
3×3 conv out. Time (and optionally a class label) enter every residual block through one
embedding vector.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .config import (
    boolean,
    int_tuple,
    jsonable,
    optional_positive_int,
    positive_int,
    positive_number,
    probability,
)
from .layers import (
    AttentionBlock,
    CrossAttentionBlock,
    Downsample,
    LabelEmbedding,
    ResBlock,
    TextEmbedding,
    TimeEmbedding,
    Upsample,
    expand_time,
    group_norm,
    take_conditions,
    zero_,
)

TIME_CONDITIONING = ("film", "add")


class _ResAttn(nn.Module):
    """A residual block, then self-attention and cross-attention at the resolutions that have them."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None,
                 cross: CrossAttentionBlock | None = None):
        super().__init__()
        self.res = res
        self.attn = attn
        self.cross = cross

    def forward(self, x: Tensor, emb: Tensor, context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.cross is not None:
            x = self.cross(x, *context)
        return x


class UNet(nn.Module):
    """``unet(x_t, t, labels=None, text=None, text_mask=None, text_pooled=None) -> Tensor`` of x_t's
    shape (2× channels if ``learned_variance``).

    Args:
        in_channels: channels of x_t.
        image_size: the training resolution; it only places ``attention_resolutions``. Any
            H, W divisible by 2^(levels − 1) is accepted at call time.
        base_channels: channels at the first level; level i has ``base_channels · channel_mult[i]``.
        channel_mult: one multiplier per resolution level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: the (square) resolutions, in pixels at ``image_size``, whose
            blocks get self-attention; each must be one of the levels' resolutions.
        dropout: dropout rate inside the residual blocks.
        num_heads: attention heads.
        norm_groups: the most GroupNorm groups (fewer where they do not divide the channels).
        time_conditioning: ``"film"`` (scale and shift) or ``"add"`` (a bias, as in DDPM).
        learned_variance: output twice the channels (the Improved-DDPM variance interpolation).
        num_classes: class-conditional when set: ``labels`` of shape (batch,) in 0..num_classes−1,
            −1 or a missing/None ``labels`` meaning the learned null condition.
        T: the schedule's length; the net embeds t · 1000 / T.
        text_dim: text-conditional when set (the text encoder's width D): ``text`` (batch, L, D)
            tokens with ``text_mask`` (batch, L) bool (True: a real token) are attended to by
            cross-attention blocks, and ``text_pooled`` (batch, D) is projected and added to the
            time embedding. Missing keywords, or a row whose mask is all False (the empty
            prompt), are the net's learned null condition (see ``layers.TextEmbedding``).
        cross_attention_resolutions: the resolutions whose blocks get cross-attention (the middle
            always has it); None: the same as ``attention_resolutions``. Only with ``text_dim``.
    """

    arch = "unet"

    def __init__(self, in_channels: int = 3, image_size: int = 32, base_channels: int = 128,
                 channel_mult: tuple[int, ...] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: tuple[int, ...] = (16,), dropout: float = 0.0,
                 num_heads: int = 1, norm_groups: int = 32, time_conditioning: str = "film",
                 learned_variance: bool = False, num_classes: int | None = None, T: int = 1000,
                 text_dim: int | None = None,
                 cross_attention_resolutions: tuple[int, ...] | None = None):
        super().__init__()
        in_channels = positive_int("in_channels", in_channels)
        image_size = positive_int("image_size", image_size)
        base_channels = positive_int("base_channels", base_channels)
        channel_mult = int_tuple("channel_mult", channel_mult)
        num_res_blocks = positive_int("num_res_blocks", num_res_blocks)
        attention_resolutions = int_tuple("attention_resolutions", attention_resolutions,
                                          allow_empty=True)
        dropout = probability("dropout", dropout)
        num_heads = positive_int("num_heads", num_heads)
        norm_groups = positive_int("norm_groups", norm_groups)
        if time_conditioning not in TIME_CONDITIONING:
            raise ValueError(f"time_conditioning must be one of {', '.join(TIME_CONDITIONING)}, "
                             f"got {time_conditioning!r}")
        learned_variance = boolean("learned_variance", learned_variance)
        num_classes = optional_positive_int("num_classes", num_classes)
        T = positive_number("T", T)
        text_dim = optional_positive_int("text_dim", text_dim)
        if cross_attention_resolutions is not None:
            if text_dim is None:
                raise ValueError("cross_attention_resolutions needs text_dim (a text-conditional net)")
            cross_attention_resolutions = int_tuple("cross_attention_resolutions",
                                                    cross_attention_resolutions, allow_empty=True)
        elif text_dim is not None:
            cross_attention_resolutions = attention_resolutions

        self.levels = len(channel_mult)
        self.divisor = 2 ** (self.levels - 1)
        if image_size % self.divisor:
            raise ValueError(f"image_size {image_size} is not divisible by 2^(levels-1) = "
                             f"{self.divisor} for channel_mult {list(channel_mult)}")
        resolutions = [image_size // 2 ** i for i in range(self.levels)]
        for r in (*attention_resolutions, *(cross_attention_resolutions or ())):
            if r not in resolutions:
                raise ValueError(f"attention resolution {r} is not one of this U-Net's resolutions "
                                 f"{resolutions} (image_size {image_size})")

        self._config = dict(in_channels=in_channels, image_size=image_size, base_channels=base_channels,
                            channel_mult=channel_mult, num_res_blocks=num_res_blocks,
                            attention_resolutions=attention_resolutions, dropout=dropout,
                            num_heads=num_heads, norm_groups=norm_groups,
                            time_conditioning=time_conditioning, learned_variance=learned_variance,
                            num_classes=num_classes, T=T)
        if text_dim is not None:  # recorded only when used, so older configs stay as they were
            self._config.update(text_dim=text_dim,
                                cross_attention_resolutions=cross_attention_resolutions)
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learned_variance else in_channels
        self.num_classes = num_classes
        self.text_dim = text_dim

        emb_dim = 4 * base_channels
        self.time_embed = TimeEmbedding(base_channels, emb_dim, T)
        self.label_embed = LabelEmbedding(num_classes, emb_dim) if num_classes is not None else None
        self.text_embed = TextEmbedding(text_dim, emb_dim) if text_dim is not None else None

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, norm_groups, time_conditioning)

        def attn(c: int, level: int) -> AttentionBlock | None:
            if resolutions[level] not in attention_resolutions:
                return None
            return AttentionBlock(c, num_heads, norm_groups)

        def cross(c: int, level: int | None) -> CrossAttentionBlock | None:
            if text_dim is None or (level is not None
                                    and resolutions[level] not in cross_attention_resolutions):
                return None
            return CrossAttentionBlock(c, text_dim, num_heads, norm_groups)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        skips = [base_channels]
        ch = base_channels
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                cout = base_channels * mult
                self.down.append(_ResAttn(res(ch, cout), attn(cout, level), cross(cout, level)))
                ch = cout
                skips.append(ch)
            if level < self.levels - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)

        self.mid = _ResAttn(res(ch, ch), AttentionBlock(ch, num_heads, norm_groups), cross(ch, None))
        self.mid_res = res(ch, ch)

        self.up = nn.ModuleList()
        for level in reversed(range(self.levels)):
            cout = base_channels * channel_mult[level]
            for _ in range(num_res_blocks + 1):
                self.up.append(_ResAttn(res(ch + skips.pop(), cout), attn(cout, level),
                                       cross(cout, level)))
                ch = cout
            if level > 0:
                self.up.append(Upsample(ch))

        self.norm_out = group_norm(ch, norm_groups)
        self.conv_out = zero_(nn.Conv2d(ch, self.out_channels, 3, padding=1))

    @property
    def config(self) -> dict[str, Any]:
        """The JSON-able arguments that rebuild this architecture: ``nets.from_config(config)``."""
        return {"arch": self.arch, **jsonable(self._config)}

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x of shape (batch, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[2] % self.divisor or x.shape[3] % self.divisor:
            raise ValueError(f"image size {tuple(x.shape[2:])} is not divisible by {self.divisor} "
                             f"(2^(levels-1) for {self.levels} levels)")
        cond = take_conditions(cond, self.num_classes, self.text_dim)
        emb = self.time_embed(expand_time(t, x))
        if self.label_embed is not None:
            emb = emb + self.label_embed(cond["labels"], x.shape[0], x.device)
        context = None
        if self.text_embed is not None:
            pooled, *context = self.text_embed(cond["text"], cond["text_mask"], cond["text_pooled"],
                                               x.shape[0], x.device)
            emb = emb + pooled

        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = block(h) if isinstance(block, Downsample) else block(h, emb, context)
            hs.append(h)
        h = self.mid_res(self.mid(h, emb, context), emb)
        for block in self.up:
            if isinstance(block, Upsample):
                h = block(h)
            else:
                h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        out = self.conv_out(nn.functional.silu(self.norm_out(h)))
        # Weights in channels_last make every activation NHWC (run.INFERENCE_MEMORY_FORMAT); the
        # output goes back to the input's layout so code that reshapes it never meets strides.
        return out.contiguous() if x.is_contiguous() else out
