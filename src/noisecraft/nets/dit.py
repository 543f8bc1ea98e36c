"""The Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

Read top-down: patches and their fixed 2-D position code → attention layers → the adaLN-Zero
block → the final layer → the model. The image (or latent) is cut into p×p patches, each a token
of width ``hidden_size``; every block is LayerNorm → self-attention → MLP, whose norms are
modulated by a scale and shift regressed from the condition vector c (time embedding, plus the
label or pooled text embedding), and whose residual branches are multiplied by gates regressed
from c too. The gates and the final layer start at zero ("adaLN-Zero"), so at initialisation
every block is the identity map and the net outputs exactly zero. Text runs add an ungated
cross-attention from the tokens to the text (PixArt-α's placement, between self-attention and
the MLP) whose output projection starts at zero.

Guidance is not in here: the net owns its null condition (label −1 or missing, an empty prompt)
and :class:`noisecraft.guidance.Guided` mixes the two branches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import boolean, jsonable, optional_positive_int, positive_int, positive_number
from .layers import (
    LabelEmbedding,
    TextEmbedding,
    TimeEmbedding,
    expand_time,
    sinusoidal_embedding,
    take_conditions,
    zero_,
)

# Width of the sinusoid the time MLP reads (DiT's ``frequency_embedding_size``).
TIME_SINUSOID_DIM = 256


# --------------------------------------------------------------------------- patches and positions
def sincos_position_2d(height: int, width: int, dim: int, device: torch.device | None = None
                       ) -> Tensor:
    """The fixed position code of a height × width grid of patches, (height·width, dim), row-major:
    the first dim/2 channels are the 1-D sin-cos code of the row, the last dim/2 of the column
    (MAE's and DiT's ``get_2d_sincos_pos_embed``, which puts the column first)."""
    rows, cols = torch.meshgrid(torch.arange(height, device=device),
                                torch.arange(width, device=device), indexing="ij")
    return torch.cat([sinusoidal_embedding(rows.flatten(), dim // 2),
                      sinusoidal_embedding(cols.flatten(), dim // 2)], dim=1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: a normalised x (batch, N, D) scaled by 1 + scale and shifted, both (batch, 1, D)."""
    return x * (1 + scale) + shift


# --------------------------------------------------------------------------- attention
class SelfAttention(nn.Module):
    """Multi-head self-attention over the tokens (timm's ``Attention`` layout: one qkv linear)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, heads, N, D/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """proj(MultiHeadAttention(q = LN(x), k, v = LN(text tokens))), masked to the real tokens.

    ``context`` always starts with the net's learned null token (``layers.TextEmbedding``), so a
    row without text attends to it alone; padding (mask False) gets zero weight. ``proj`` starts
    at zero, so the branch adds nothing at initialisation.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.context_norm = nn.LayerNorm(context_dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        b, n, d = x.shape
        heads = self.num_heads
        q = self.q(self.norm(x)).reshape(b, n, heads, d // heads).transpose(1, 2)
        kv = self.kv(self.context_norm(context)).reshape(b, -1, 2, heads, d // heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, heads, 1 + L, D/heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=context_mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


# --------------------------------------------------------------------------- blocks
class DiTBlock(nn.Module):
    """x + g₁·Attn(adaLN(x)) [+ CrossAttn(x, text)] + g₂·MLP(adaLN(x)), all six of (shift, scale,
    gate) × 2 regressed from c by one zero-initialised linear (adaLN-Zero: the identity at init).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, text_dim: int | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.cross = CrossAttention(dim, text_dim, num_heads) if text_dim is not None else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, dim))
        # DiT's chunk order: shift, scale, gate of the attention, then of the MLP.
        self.modulation = nn.Linear(dim, 6 * dim)

    def forward(self, x: Tensor, c: Tensor, context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        mods = self.modulation(F.silu(c))[:, None, :].chunk(6, dim=2)  # six (b, 1, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None:
            x = x + self.cross(x, *context)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale from c) → linear to p·p·C_out per token; both start at zero."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(F.silu(c))[:, None, :].chunk(2, dim=2)
        return self.linear(modulate(self.norm(x), shift, scale))


# --------------------------------------------------------------------------- the model
class DiT(nn.Module):
    """``dit(x_t, t, labels=None, text=None, text_mask=None, text_pooled=None) -> Tensor`` of x_t's
    shape (2× channels if ``learned_variance``).

    Args:
        in_channels: channels of x_t (1 or 3 for pictures, the autoencoder's for latents).
        image_size: the training resolution (recorded; the net holds nothing of that size). Any
            H, W is accepted at call time: sizes not divisible by ``patch_size`` are zero-padded
            at the bottom and right, and the padding is cropped off the output.
        patch_size: p, the side of the square patches (the conv's kernel and stride).
        hidden_size: token width D (divisible by ``num_heads`` and by 4 for the position code).
        depth: DiT blocks.
        num_heads: attention heads.
        mlp_ratio: the MLP's hidden width over D.
        learned_variance: output twice the channels (the Improved-DDPM variance interpolation).
        num_classes: class-conditional when set: ``labels`` (batch,) in 0..num_classes−1, −1 or a
            missing/None ``labels`` meaning the learned null condition (``layers.LabelEmbedding``).
        T: the schedule's length; the net embeds t · 1000 / T.
        text_dim: text-conditional when set (the text encoder's width): ``text`` (batch, L,
            text_dim) with ``text_mask`` is attended to by every block, ``text_pooled`` joins c;
            missing keywords or an all-False mask row are the learned null (``layers.TextEmbedding``).
    """

    arch = "dit"

    def __init__(self, in_channels: int = 4, image_size: int = 32, patch_size: int = 2,
                 hidden_size: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, learned_variance: bool = False,
                 num_classes: int | None = None, T: int = 1000, text_dim: int | None = None):
        super().__init__()
        in_channels = positive_int("in_channels", in_channels)
        if image_size is None:
            raise ValueError("a DiT works on images or latents (C, H, W), not vectors "
                             "(image_size None); use an mlp preset for vector data")
        image_size = positive_int("image_size", image_size)
        patch_size = positive_int("patch_size", patch_size)
        hidden_size = positive_int("hidden_size", hidden_size)
        depth = positive_int("depth", depth)
        num_heads = positive_int("num_heads", num_heads)
        mlp_ratio = positive_number("mlp_ratio", mlp_ratio)
        learned_variance = boolean("learned_variance", learned_variance)
        num_classes = optional_positive_int("num_classes", num_classes)
        T = positive_number("T", T)
        text_dim = optional_positive_int("text_dim", text_dim)
        if hidden_size % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide hidden_size={hidden_size}")
        if hidden_size % 4:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by 4 (the 2-D sin-cos "
                             "position code gives each axis a sin and a cos half)")
        if int(hidden_size * mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio={mlp_ratio} leaves the MLP no hidden units")
        if patch_size > image_size:
            raise ValueError(f"patch_size {patch_size} is larger than image_size {image_size}")

        self._config = dict(in_channels=in_channels, image_size=image_size, patch_size=patch_size,
                            hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                            mlp_ratio=mlp_ratio, learned_variance=learned_variance,
                            num_classes=num_classes, T=T, text_dim=text_dim)
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learned_variance else in_channels
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.text_dim = text_dim

        self.patch_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.time_embed = TimeEmbedding(TIME_SINUSOID_DIM, hidden_size, T)
        self.label_embed = LabelEmbedding(num_classes, hidden_size) if num_classes is not None else None
        self.text_embed = TextEmbedding(text_dim, hidden_size) if text_dim is not None else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, text_dim)
                                    for _ in range(depth))
        self.final = FinalLayer(hidden_size, patch_size, self.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linears (and the patch conv, seen as a linear),
        N(0, 0.02²) label table and time MLP, then adaLN-Zero's zeros."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.table.weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for block in self.blocks:
            zero_(block.modulation)          # gates 0: the block is the identity map
            if block.cross is not None:
                zero_(block.cross.proj)      # the ungated cross-attention adds 0
        zero_(self.final.modulation)
        zero_(self.final.linear)             # the net outputs exactly 0

    @property
    def config(self) -> dict[str, Any]:
        """The JSON-able arguments that rebuild this architecture: ``nets.from_config(config)``."""
        return {"arch": self.arch, **jsonable(self._config)}

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DiT expects x of shape (batch, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        cond = take_conditions(cond, self.num_classes, self.text_dim)
        batch, _, height, width = x.shape
        p = self.patch_size
        # Zero-pad to whole patches; the padding's outputs are cropped off below.
        h_in = F.pad(x, (0, -width % p, 0, -height % p)) if height % p or width % p else x

        c = self.time_embed(expand_time(t, x))                         # (b, D)
        if self.label_embed is not None:
            c = c + self.label_embed(cond["labels"], batch, x.device)
        context = None
        if self.text_embed is not None:
            pooled, *context = self.text_embed(cond["text"], cond["text_mask"], cond["text_pooled"],
                                               batch, x.device)
            c = c + pooled

        tokens = self.patch_embed(h_in)                                # (b, D, H/p, W/p)
        rows, cols = tokens.shape[2:]
        tokens = tokens.flatten(2).transpose(1, 2)                     # (b, N, D), N = rows·cols
        # The position code is a function of the grid, made per call (N·D sines: nothing beside
        # the blocks), never stored: any grid works, and no config can make a huge buffer.
        tokens = tokens + sincos_position_2d(rows, cols, self.hidden_size, x.device).to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens, c, context)                         # (b, N, D)
        out = self.final(tokens, c)                                    # (b, N, p·p·C_out)
        out = out.reshape(batch, rows, cols, p, p, self.out_channels)
        out = out.permute(0, 5, 1, 3, 2, 4).reshape(batch, self.out_channels, rows * p, cols * p)
        out = out[:, :, :height, :width]                               # (b, C_out, H, W)
        # The caller's layout back (run.INFERENCE_MEMORY_FORMAT feeds channels_last pictures).
        nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return out.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
