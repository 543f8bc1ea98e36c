"""Named architectures and the JSON round trip: ``build(name, **overrides)`` and ``from_config``.

A net's ``.config`` is ``{"arch": <name>, <constructor arguments>}``; ``from_config`` calls that
architecture's constructor with exactly those arguments, so ``from_config(net.config)`` rebuilds
the same parameter layout. Unknown names and keys are errors, never silently ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .dit import DiT
from .experts import Experts
from .linear import LinearDenoiser, LinearDiffusion
from .mlp import MLP
from .unet import UNet

ARCHITECTURES: dict[str, type[nn.Module]] = {net.arch: net for net in (UNet, DiT, MLP, LinearDenoiser,
                                                                      LinearDiffusion, Experts)}

PRESETS: dict[str, dict[str, Any]] = {
    # CPU demo on scikit-learn's 8×8 digits: ~0.43M parameters.
    "tiny": dict(arch="unet", in_channels=1, image_size=8, base_channels=24, channel_mult=(1, 2),
                 num_res_blocks=1, attention_resolutions=(4,), norm_groups=8),
    # MNIST-sized greyscale images (28×28; 32×32 works too): ~3.9M parameters.
    "mnist": dict(arch="unet", in_channels=1, image_size=28, base_channels=48, channel_mult=(1, 2, 2),
                  num_res_blocks=2, attention_resolutions=(7,), dropout=0.1),
    # The MNIST CPU recipe's net (README, BENCHMARKS.md "Quality per CPU-minute"): one block per
    # level and self-attention only in the middle, ~1.14M parameters, ~70 images/s trained on
    # one CPU thread.
    "mnist-cpu": dict(arch="unet", in_channels=1, image_size=28, base_channels=32,
                      channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=()),
    # Ho et al. 2020, the CIFAR-10 model: 35.7M parameters (35,746,307, as diffusers' ddpm-cifar10-32).
    "ddpm-cifar10": dict(arch="unet", in_channels=3, image_size=32, base_channels=128,
                         channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
                         dropout=0.1, num_heads=1, time_conditioning="add"),
    # Log-mel spectrograms (1 × n_mels × frames, 64×128 by default). Four levels, few channels
    # at full resolution (where a spectrogram has many pixels) and self-attention only in the
    # middle (8×16 at 64×128), so a CPU can train it.
    "audio": dict(arch="unet", in_channels=1, image_size=64, base_channels=16,
                  channel_mult=(1, 2, 4, 4), num_res_blocks=1, attention_resolutions=(),
                  norm_groups=8),
    # Diffusion Transformers (Peebles & Xie 2023, Table 1), sized here for the paper's 256-px
    # ImageNet latents (32×32×4, patch 2: 256 tokens); new_run_config resizes them to the data.
    "dit-s/2": dict(arch="dit", in_channels=4, image_size=32, patch_size=2, hidden_size=384,
                    depth=12, num_heads=6),
    "dit-b/2": dict(arch="dit", in_channels=4, image_size=32, patch_size=2, hidden_size=768,
                    depth=12, num_heads=12),
    # A CPU-sized DiT for 8×8 digits (16 tokens) and 28–32 px pictures (196–256 tokens).
    "dit-tiny": dict(arch="dit", in_channels=1, image_size=8, patch_size=2, hidden_size=128,
                     depth=4, num_heads=4),
    # 2-D toy data (moons, rings, Gaussian mixtures); in_channels=D for D-column tabular rows.
    "mlp": dict(arch="mlp", in_channels=2, image_size=None, width=128, depth=3),
    # "Linear Diffusion", solved in closed form by `noisecraft train` (no SGD): 20 Gaussian
    # components, each with its PCA basis and per-t linear noise regressor, sized for 8×8 digits
    # (nets/linear.py; BENCHMARKS.md "Linear baseline"). The affine net trained by SGD: "affine".
    "linear": dict(arch="linear-diffusion", in_channels=1, image_size=8, num_components=20),
    "affine": dict(arch="linear", in_channels=1, image_size=8, num_basis=16),
}

# The preset a run gets when none is named, by the data's kind (``Preprocess.kind``).
DEFAULT_PRESETS: dict[str, str] = {"image": "tiny", "audio": "audio", "vector": "mlp"}


def config_keys(arch: str) -> list[str]:
    """The arguments an architecture's config accepts (besides ``arch``)."""
    return list(inspect.signature(ARCHITECTURES[arch].__init__).parameters)[1:]


def from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network from its ``.config``: ``{"arch": "unet" | "dit" | "mlp" | "linear", ...}``."""
    if not isinstance(config, Mapping):
        raise ValueError(f"a network config must be a dict, got {type(config).__name__}")
    if "arch" not in config:
        raise ValueError(f"a network config needs an 'arch' key, one of {', '.join(ARCHITECTURES)}")
    arch = config["arch"]
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    valid = config_keys(arch)
    args = {k: v for k, v in config.items() if k != "arch"}
    unknown = [k for k in args if k not in valid]
    if unknown:
        raise ValueError(f"unknown {arch} config key(s) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(valid)}")
    _check_size(arch, args)
    return ARCHITECTURES[arch](**args)


# Bounds on a network's size, checked before its weights are allocated: a config.json (which
# anyone can hand over) must not make loading it exhaust memory. Per-key bounds keep the
# parameter count itself cheap to take (on the meta device, which allocates nothing).
SIZE_LIMITS = {"in_channels": 4096, "image_size": 4096, "base_channels": 4096, "width": 65536,
               "depth": 256, "num_res_blocks": 64, "num_heads": 1024, "num_basis": 65536,
               "num_classes": 100_000, "T": 100_000, "patch_size": 4096, "hidden_size": 65536,
               "num_components": 65536}
MAX_PARAMETERS = 4_000_000_000  # 16 GB of float32 weights, 4x Stable Diffusion XL's U-Net


def _check_size(arch: str, args: Mapping[str, Any]) -> None:
    for key, limit in SIZE_LIMITS.items():
        value = args.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            raise ValueError(f"{arch} {key} = {value} is too large: at most {limit}")
    mult = args.get("channel_mult")
    if isinstance(mult, (list, tuple)) and (len(mult) > 16 or any(
            isinstance(m, int) and m > 64 for m in mult)):
        raise ValueError(f"{arch} channel_mult {list(mult)} is too large: at most 16 levels of "
                         "at most 64x")
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in ARCHITECTURES[arch](**args).parameters())
    except (ValueError, TypeError):
        return  # the real constructor below reports the bad argument itself
    if n > MAX_PARAMETERS:
        raise ValueError(f"this {arch} would have {n:,} parameters, more than the "
                         f"{MAX_PARAMETERS:,} noisecraft builds")


def build(name: str, **overrides: Any) -> nn.Module:
    """The preset ``name`` with ``overrides`` (e.g. in_channels, image_size, num_classes, T).

    Presets: ``tiny``, ``mnist``, ``ddpm-cifar10``, ``audio``, ``dit-s/2``, ``dit-b/2``,
    ``dit-tiny``, ``mlp``, ``linear`` (see ``PRESETS``).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown network preset {name!r}; valid: {', '.join(PRESETS)}")
    config = dict(PRESETS[name])
    if "arch" in overrides and overrides["arch"] != config["arch"]:
        raise ValueError(f"preset {name!r} is a {config['arch']}; it cannot be overridden to "
                         f"arch {overrides['arch']!r}")
    valid = config_keys(config["arch"])
    unknown = [k for k in overrides if k != "arch" and k not in valid]
    if unknown:
        raise ValueError(f"unknown override(s) {', '.join(map(repr, unknown))} for preset {name!r} "
                         f"({config['arch']}); valid: {', '.join(valid)}")
    if (config["arch"] == "unet" and "image_size" in overrides
            and "attention_resolutions" not in overrides):
        config["attention_resolutions"] = _same_attention_levels(config, overrides["image_size"])
    config.update(overrides)
    return from_config(config)


def _same_attention_levels(preset: dict[str, Any], image_size: Any) -> list[int]:
    """A resized U-Net preset keeps attention at the same depth: the 16×16 level of a 32×32 net
    is the 8×8 level of a 16×16 one. Sizes that do not divide are left to the constructor's checks.
    """
    factors = [preset["image_size"] // r for r in preset["attention_resolutions"]]
    if (not isinstance(image_size, int) or isinstance(image_size, bool)
            or any(image_size < f or image_size % f for f in factors)):
        return list(preset["attention_resolutions"])
    return [image_size // f for f in factors]
