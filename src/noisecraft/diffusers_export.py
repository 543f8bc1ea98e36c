"""noisecraft U-Net runs written as diffusers ``DDPMPipeline`` folders: :func:`export_diffusers`,
what ``noisecraft export RUN OUT --format diffusers`` does.

The layout mapping, written once (:func:`unet2d_config`, :func:`to_diffusers_state`,
:func:`from_diffusers_state`). noisecraft's :class:`noisecraft.nets.UNet` is diffusers'
``UNet2DModel`` with

    base_channels · channel_mult     → block_out_channels
    num_res_blocks                   → layers_per_block
    a level in attention_resolutions → AttnDownBlock2D / AttnUpBlock2D (else DownBlock2D / UpBlock2D)
    num_heads = 1                    → attention_head_dim None (one head per block, as DDPM)
    num_heads = h > 1                → attention_head_dim = channels / h (one value for all blocks)
    time_conditioning "add" / "film" → resnet_time_scale_shift "default" / "scale_shift"
    norm_groups                      → norm_num_groups = attn_norm_num_groups (must divide every
                                       normalised width; noisecraft would otherwise take fewer)
    GroupNorm eps 1e-6, Downsample stride-2 conv with padding 1, nearest ×2 + conv Upsample
                                     → norm_eps 1e-6, downsample_padding 1, "conv" up/downsampling
    learned_variance                 → out_channels = 2 · in_channels (variance_type learned_range)

Parameters: ``conv_in``, ``time_embed.mlp.{0,2}`` ↔ ``time_embedding.linear_{1,2}``;
``down.i`` / ``up.i`` walk the blocks in the same order as diffusers' ``down_blocks.L.resnets.j``
(+ ``attentions.j``, ``downsamplers.0``) / ``up_blocks.L…`` (+ ``upsamplers.0``); a ResBlock's
``norm1, conv1, emb_proj, norm2, conv2, skip`` are ``norm1, conv1, time_emb_proj, norm2, conv2,
conv_shortcut``; an AttentionBlock's ``norm``, ``qkv`` (a 1×1 conv, q/k/v stacked on the output
channels, heads contiguous) and ``proj`` are ``group_norm``, ``to_q/to_k/to_v`` and ``to_out.0``
(linear layers: the same matrices); ``mid``, ``mid_res`` are ``mid_block.resnets.0`` +
``attentions.0``, ``resnets.1``; ``norm_out``, ``conv_out`` are ``conv_norm_out``, ``conv_out``.

Time. noisecraft's net embeds u = t · 1000/T as [sin(uω_i), cos(uω_i)], ω_i = 10000^(−i/h);
the exported UNet2DModel (``flip_sin_to_cos=False``, ``freq_shift=0``: the same code) is called
by diffusers with its index k = t − 1. For T = 1000, u = k + 1, and the shift by one is a fixed
rotation of each (sin, cos) pair: sin((k+1)ω) = sin kω cos ω + cos kω sin ω, cos((k+1)ω) =
cos kω cos ω − sin kω sin ω. It is folded exactly into ``time_embedding.linear_1``'s weight
(W_d = W_nc R). For T ≠ 1000 the frequencies differ and no UNet2DModel matches: refused.

The scheduler: DDPMScheduler with the run's named schedule (linear → linear, quadratic →
scaled_linear, cosine(s=0.008, max_beta=0.999) → squaredcos_cap_v2) or ``trained_betas``, its
prediction, its sampling clip as clip_sample/clip_sample_range, and ``timestep_spacing
"trailing"``, which is noisecraft's own ``respaced`` grid: diffusers' default walk is then the
walk of ``noisecraft sample`` with the same steps.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

EXPORTABLE_PRESETS = ("tiny", "mnist-cpu", "ddpm-cifar10", "audio")
# noisecraft's predictions that a DDPMScheduler's prediction_type names; flow and edm read the
# network at a rescaled input, which no diffusers scheduler does.
DIFFUSERS_PREDICTIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
"""U-Net presets whose layout has a UNet2DModel counterpart (unconditional, T = 1000)."""

REFERENCE_T = 1000


def check_exportable(net_config: dict[str, Any], T: int) -> None:
    """Raise ValueError (one line, naming the value) unless the net maps onto a UNet2DModel."""
    presets = ", ".join(EXPORTABLE_PRESETS)
    arch = net_config.get("arch")
    if arch != "unet":
        raise ValueError(f"a {arch!r} net has no diffusers counterpart; the U-Net presets export "
                         f"({presets}, unconditional, T = 1000)")
    for key in ("num_classes", "text_dim"):
        if net_config.get(key) is not None:
            raise ValueError(f"a net with {key}={net_config[key]!r} has no DDPMPipeline "
                             f"counterpart; unconditional U-Nets export ({presets})")
    if T != REFERENCE_T or net_config.get("T", REFERENCE_T) != REFERENCE_T:
        raise ValueError(f"T = {T}: the net embeds t·1000/T, which a UNet2DModel's time code "
                         "matches only for T = 1000")
    groups = net_config["norm_groups"]
    odd = [w for w in _levels(net_config)[0] if w % groups]
    if odd:   # every normalised width is a sum of level widths, so these are the ones to check
        raise ValueError(f"norm_groups {groups} does not divide the channel width {odd[0]}: "
                         "noisecraft's GroupNorm takes fewer groups there, and UNet2DModel has one "
                         f"norm_num_groups for every layer; the U-Net presets that export: {presets}")
    if net_config["base_channels"] % 2:
        raise ValueError(f"base_channels {net_config['base_channels']} is odd: its time code is "
                         "padded, which UNet2DModel's is not")


def _levels(c: dict[str, Any]) -> tuple[list[int], list[bool]]:
    size = c["image_size"]
    channels = [c["base_channels"] * m for m in c["channel_mult"]]
    attention = [size // 2 ** i in c["attention_resolutions"] for i in range(len(channels))]
    return channels, attention


def unet2d_config(c: dict[str, Any]) -> dict[str, Any]:
    """The ``UNet2DModel`` config of a noisecraft U-Net config (module docstring's table)."""
    channels, attention = _levels(c)
    heads = c["num_heads"]
    head_dim = None
    if heads > 1:
        widths = {ch for ch, a in zip(channels, attention, strict=True) if a} | {channels[-1]}
        if len(widths) != 1:
            raise ValueError(f"num_heads={heads} over attention widths {sorted(widths)}: "
                             "UNet2DModel has one attention_head_dim for every block")
        head_dim = widths.pop() // heads
    return {
        "sample_size": c["image_size"], "in_channels": c["in_channels"],
        "out_channels": c["in_channels"] * (2 if c["learned_variance"] else 1),
        "center_input_sample": False, "time_embedding_type": "positional",
        "freq_shift": 0, "flip_sin_to_cos": False,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": channels, "layers_per_block": c["num_res_blocks"],
        "mid_block_scale_factor": 1, "downsample_padding": 1, "downsample_type": "conv",
        "upsample_type": "conv", "dropout": c["dropout"], "act_fn": "silu",
        "attention_head_dim": head_dim, "norm_num_groups": c["norm_groups"],
        "attn_norm_num_groups": c["norm_groups"], "norm_eps": 1e-6,
        "resnet_time_scale_shift": "default" if c["time_conditioning"] == "add" else "scale_shift",
        "add_attention": True,
    }


# UNet2DModel's defaults (diffusers 0.42) for keys an older config.json may lack.
UNET2D_DEFAULTS: dict[str, Any] = {
    "center_input_sample": False, "time_embedding_type": "positional", "freq_shift": 0,
    "flip_sin_to_cos": True, "mid_block_scale_factor": 1, "downsample_padding": 1,
    "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None, "num_train_timesteps": None, "mid_block_type": "UNetMidBlock2D",
    "time_embedding_dim": None}
# Keys outside the table that a noisecraft twin must leave at these values.
_NEUTRAL = {"class_embed_type": None, "num_class_embeds": None, "num_train_timesteps": None,
            "mid_block_type": "UNetMidBlock2D", "time_embedding_dim": None}


def native_config(u: dict[str, Any], T: int) -> dict[str, Any] | None:
    """The noisecraft U-Net config whose :func:`unet2d_config` is the UNet2DModel config ``u``
    (the inverse of the table), or None when ``u`` has no exact noisecraft counterpart (e.g.
    DDPM's own CIFAR-10 checkpoint: ``freq_shift=1`` gives frequencies 10000^(−i/(h−1)) and
    ``downsample_padding=0`` pads asymmetrically; both differ from noisecraft's UNet)."""
    def get(key: str) -> Any:
        return u.get(key, UNET2D_DEFAULTS.get(key))

    try:
        widths = [int(w) for w in u["block_out_channels"]]
        base, size = widths[0], u["sample_size"]
        if any(w % base for w in widths) or not isinstance(size, int):
            return None
        attention = [b == "AttnDownBlock2D" for b in u["down_block_types"]]
        head_dim = get("attention_head_dim")
        heads = 1 if head_dim is None else widths[-1] // int(head_dim)
        shift = {"default": "add", "scale_shift": "film"}.get(get("resnet_time_scale_shift"))
        c = {"arch": "unet", "in_channels": int(u["in_channels"]), "image_size": size,
             "base_channels": base, "channel_mult": [w // base for w in widths],
             "num_res_blocks": int(u["layers_per_block"]),
             "attention_resolutions": [size // 2 ** i for i, a in enumerate(attention) if a],
             "dropout": float(get("dropout")), "num_heads": heads,
             "norm_groups": int(get("norm_num_groups")), "time_conditioning": shift,
             "learned_variance": int(u["out_channels"]) == 2 * int(u["in_channels"]),
             "num_classes": None, "T": T}
        if shift is None or heads < 1:
            return None
        check_exportable(c, T)
        expected = unet2d_config(c)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    for key, value in expected.items():
        have = get(key)
        if key == "attn_norm_num_groups" and have is None and shift == "add":
            continue  # diffusers then takes norm_num_groups itself
        if (list(have) if isinstance(have, list | tuple) else have) != value:
            return None
    extra = [k for k in u if not k.startswith("_") and k not in expected]
    if any(k not in _NEUTRAL or u[k] != _NEUTRAL[k] for k in extra):
        return None
    return c


def _module_pairs(c: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(noisecraft prefix, diffusers prefix, kind) of every module, kind ∈ res, attn, conv, norm,
    linear."""
    channels, attention = _levels(c)
    n, levels = c["num_res_blocks"], len(channels)
    pairs = [("conv_in", "conv_in", "conv"), ("time_embed.mlp.0", "time_embedding.linear_1", "time"),
             ("time_embed.mlp.2", "time_embedding.linear_2", "linear")]
    i = 0
    for level in range(levels):
        for j in range(n):
            pairs.append((f"down.{i}.res", f"down_blocks.{level}.resnets.{j}", "res"))
            if attention[level]:
                pairs.append((f"down.{i}.attn", f"down_blocks.{level}.attentions.{j}", "attn"))
            i += 1
        if level < levels - 1:
            pairs.append((f"down.{i}.conv", f"down_blocks.{level}.downsamplers.0.conv", "conv"))
            i += 1
    pairs += [("mid.res", "mid_block.resnets.0", "res"), ("mid.attn", "mid_block.attentions.0", "attn"),
              ("mid_res", "mid_block.resnets.1", "res")]
    i = 0
    for up, level in enumerate(reversed(range(levels))):
        for j in range(n + 1):
            pairs.append((f"up.{i}.res", f"up_blocks.{up}.resnets.{j}", "res"))
            if attention[level]:
                pairs.append((f"up.{i}.attn", f"up_blocks.{up}.attentions.{j}", "attn"))
            i += 1
        if level > 0:
            pairs.append((f"up.{i}.conv", f"up_blocks.{up}.upsamplers.0.conv", "conv"))
            i += 1
    pairs += [("norm_out", "conv_norm_out", "norm"), ("conv_out", "conv_out", "conv")]
    return pairs


RES_NAMES = (("norm1", "norm1"), ("conv1", "conv1"), ("emb_proj", "time_emb_proj"),
             ("norm2", "norm2"), ("conv2", "conv2"), ("skip", "conv_shortcut"))


def time_rotation(dim: int) -> Tensor:
    """R with sinusoid(k + 1) = R · sinusoid(k) for noisecraft's [sin, cos] code of width ``dim``
    (float64)."""
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(10000.0, dtype=torch.float64))
                      * torch.arange(half, dtype=torch.float64) / half)
    # noisecraft's code computes its frequencies in float32: rotate by exactly those.
    freqs = freqs.float().double()
    cos, sin = torch.diag(torch.cos(freqs)), torch.diag(torch.sin(freqs))
    return torch.cat([torch.cat([cos, sin], 1), torch.cat([-sin, cos], 1)], 0)


def to_diffusers_state(state: dict[str, Tensor], c: dict[str, Any]) -> dict[str, Tensor]:
    """A noisecraft U-Net state dict → the UNet2DModel state dict of :func:`unet2d_config`."""
    out: dict[str, Tensor] = {}
    for nc, d, kind in _module_pairs(c):
        if kind == "res":
            for a, b in RES_NAMES:
                for p in ("weight", "bias"):
                    if f"{nc}.{a}.{p}" in state:
                        out[f"{d}.{b}.{p}"] = state[f"{nc}.{a}.{p}"]
        elif kind == "attn":
            w, bias = state[f"{nc}.qkv.weight"], state[f"{nc}.qkv.bias"]
            for name, wi, bi in zip(("to_q", "to_k", "to_v"), w.chunk(3), bias.chunk(3), strict=True):
                out[f"{d}.{name}.weight"], out[f"{d}.{name}.bias"] = wi[:, :, 0, 0], bi
            out[f"{d}.to_out.0.weight"] = state[f"{nc}.proj.weight"][:, :, 0, 0]
            out[f"{d}.to_out.0.bias"] = state[f"{nc}.proj.bias"]
            out[f"{d}.group_norm.weight"] = state[f"{nc}.norm.weight"]
            out[f"{d}.group_norm.bias"] = state[f"{nc}.norm.bias"]
        elif kind == "time":
            w = state[f"{nc}.weight"]
            out[f"{d}.weight"] = (w.double() @ time_rotation(w.shape[1])).to(w.dtype)
            out[f"{d}.bias"] = state[f"{nc}.bias"]
        else:
            out[f"{d}.weight"], out[f"{d}.bias"] = state[f"{nc}.weight"], state[f"{nc}.bias"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def from_diffusers_state(state: dict[str, Tensor], c: dict[str, Any]) -> dict[str, Tensor]:
    """The inverse of :func:`to_diffusers_state` (R is orthogonal: W_nc = W_d Rᵀ)."""
    out: dict[str, Tensor] = {}
    for nc, d, kind in _module_pairs(c):
        if kind == "res":
            for a, b in RES_NAMES:
                for p in ("weight", "bias"):
                    if f"{d}.{b}.{p}" in state:
                        out[f"{nc}.{a}.{p}"] = state[f"{d}.{b}.{p}"]
        elif kind == "attn":
            names = ("to_q", "to_k", "to_v")
            qkv = torch.cat([state[f"{d}.{x}.weight"] for x in names])
            out[f"{nc}.qkv.weight"] = qkv[:, :, None, None]
            out[f"{nc}.qkv.bias"] = torch.cat([state[f"{d}.{x}.bias"] for x in names])
            out[f"{nc}.proj.weight"] = state[f"{d}.to_out.0.weight"][:, :, None, None]
            out[f"{nc}.proj.bias"] = state[f"{d}.to_out.0.bias"]
            out[f"{nc}.norm.weight"] = state[f"{d}.group_norm.weight"]
            out[f"{nc}.norm.bias"] = state[f"{d}.group_norm.bias"]
        elif kind == "time":
            w = state[f"{d}.weight"]
            out[f"{nc}.weight"] = (w.double() @ time_rotation(w.shape[1]).T).to(w.dtype)
            out[f"{nc}.bias"] = state[f"{d}.bias"]
        else:
            out[f"{nc}.weight"], out[f"{nc}.bias"] = state[f"{d}.weight"], state[f"{d}.bias"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def to_unet2d(net: torch.nn.Module) -> Any:
    """A diffusers UNet2DModel holding ``net``'s weights (strictly; group counts checked)."""
    from diffusers import UNet2DModel

    c = net.config
    check_exportable(c, c.get("T", REFERENCE_T))
    unet = UNet2DModel.from_config(unet2d_config(c))
    state = {k: v.detach().float().cpu() for k, v in net.state_dict().items()}
    try:
        unet.load_state_dict(to_diffusers_state(state, c), strict=True)
    except RuntimeError as e:
        raise ValueError(f"the net does not map onto a UNet2DModel ({str(e).splitlines()[0]})") from None
    for (nc, _, _), a, b in _norm_pairs(net, unet, c):
        if a.num_groups != b.num_groups:
            raise ValueError(f"norm_groups {c['norm_groups']}: {nc} normalises {a.num_channels} "
                             f"channels in {a.num_groups} groups, UNet2DModel in {b.num_groups}")
    return unet.eval()


def _norm_pairs(net: Any, unet: Any, c: dict[str, Any]) -> list[Any]:
    mods, dmods = dict(net.named_modules()), dict(unet.named_modules())
    out = []
    for nc, d, kind in _module_pairs(c):
        names = {"res": [("norm1", "norm1"), ("norm2", "norm2")], "attn": [("norm", "group_norm")],
                 "norm": [("", "")]}.get(kind, [])
        for a, b in names:
            out.append(((nc, d, kind), mods[f"{nc}.{a}".rstrip(".")], dmods[f"{d}.{b}".rstrip(".")]))
    return out


def scheduler_config(run: Any) -> dict[str, Any]:
    """The DDPMScheduler config of a run's schedule, prediction and sampling clip."""
    spec, T = run.schedule.to_dict(), run.schedule.T
    config: dict[str, Any] = {"num_train_timesteps": T}
    if spec["kind"] == "linear":
        config.update(beta_schedule="linear", beta_start=spec["beta_start"], beta_end=spec["beta_end"])
    elif spec["kind"] == "quadratic":
        config.update(beta_schedule="scaled_linear", beta_start=spec["beta_start"],
                      beta_end=spec["beta_end"])
    elif spec["kind"] == "cosine" and spec["s"] == 0.008 and spec["max_beta"] == 0.999:
        config.update(beta_schedule="squaredcos_cap_v2")
    else:
        config.update(trained_betas=run.schedule.betas.tolist())
    clip = run.config.sampling.clip
    if clip is not None and clip[0] != -clip[1]:
        raise ValueError(f"sampling clip {list(clip)} is not symmetric; diffusers' "
                         "clip_sample_range clamps to [-r, r]")
    if run.config.prediction not in DIFFUSERS_PREDICTIONS:
        raise ValueError(f"prediction {run.config.prediction!r} has no diffusers scheduler "
                         f"counterpart; runs with prediction {', '.join(DIFFUSERS_PREDICTIONS)} "
                         "export")
    config.update(prediction_type=DIFFUSERS_PREDICTIONS[run.config.prediction],
                  clip_sample=clip is not None,
                  clip_sample_range=float(clip[1]) if clip is not None else 1.0,
                  variance_type="learned_range" if run.denoiser.learned_variance else "fixed_small",
                  timestep_spacing="trailing", steps_offset=0)
    return config


def export_diffusers(run: Any, out: str | os.PathLike[str]) -> Path:
    """Write ``run`` (a :class:`noisecraft.run.LoadedRun`) as a DDPMPipeline folder at ``out``.

    ``out`` must not exist; the folder appears whole (written beside it, then renamed)."""
    from diffusers import DDPMPipeline, DDPMScheduler

    target = Path(out)
    if target.exists():
        raise ValueError(f"{target} already exists; export writes a new folder")
    if run.config.latent is not None:
        raise ValueError(f"{run.run_dir} is a latent run; only pixel U-Net runs export as "
                         "DDPMPipeline folders for now")
    check_exportable(run.config.net, run.schedule.T)
    unet = to_unet2d(run.net)
    scheduler = DDPMScheduler(**scheduler_config(run))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
