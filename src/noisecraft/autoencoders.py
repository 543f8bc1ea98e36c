"""The autoencoder contract of latent diffusion, and the two kinds of folder that satisfy it.

An autoencoder maps an image x ∈ [−1, 1]^(c×H×W) to a diagonal Gaussian posterior
q(z|x) = N(mean, exp(logvar)) over a latent image (C, H/f, W/f), and back:

    encode(x) -> (mean, logvar)        decode(z) -> x

Diffusion runs on the *scaled* latent z_s = (z − shift) · scale, where ``scale`` makes the latents
of the data roughly unit-variance (Stable Diffusion's 0.18215); ``to_latent`` and ``from_latent``
apply and undo it. :func:`load_autoencoder` opens either

- a noisecraft autoencoder run directory (``noisecraft train-autoencoder``: ``config.json`` with
  ``"kind": "autoencoder"`` + ``model.safetensors``; its scale is the one measured at its last
  checkpoint), or
- a diffusers ``AutoencoderKL`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``;
  its ``scaling_factor`` and ``shift_factor``). The weights are read here with safetensors and
  loaded strictly into ``diffusers.AutoencoderKL.from_config(config)``: no network access, no
  pickle, and a file that does not fit is an error naming it. Needs the ``[latent]`` extra.

Both come back as :class:`LoadedAutoencoder`, whose ``sha256`` (of config.json and the weights)
keys the latent cache and is recorded by latent runs. Never imports the trainer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .config import (
    DataConfig,
    Settings,
    _build,
    _to_jsonable,
    checkpoint_every_setting,
    log_every_setting,
    num_workers_setting,
    registry,
    sample_every_setting,
    seed_setting,
    setting,
)
from .errors import RunError
from .io import checkpoint_file, read_json, read_safetensors
from .latentscale import scale_latent, unscale_latent

CONFIG = "config.json"
NOISECRAFT_WEIGHTS = "model.safetensors"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
AE_CONFIG_VERSION = 1
RECONSTRUCTION_LOSSES = ("l1", "l2")


# --------------------------------------------------------------------------- a trained AE's config
@dataclass
class AutoencoderBuildConfig(Settings):
    """What ``noisecraft train-autoencoder`` builds a new autoencoder from (``stored``: where
    its config.json keeps each, for the resume check)."""

    flag_prefix: ClassVar[str | None] = None  # not `noisecraft train` flags

    data: str | None = setting(None, "image dataset spec (required for a new run; with --resume: "
                               "the run's own)", stored=lambda c: c.data.spec)
    preset: str | None = setting(None, "network size: ae32 (28/32 px) or ae64 (64 px) (default: "
                                 "by image size)", choices=registry("nets.autoencoder",
                                                                    "AUTOENCODER_PRESETS"),
                                 stored=lambda c: c.preset)
    latent_channels: int = setting(4, "latent channels C", range="[1, inf)",
                                   stored=lambda c: c.net["latent_channels"])
    factor: int = setting(4, "downsampling factor f", choices=registry("nets.autoencoder", "FACTORS"),
                          stored=lambda c: c.net["factor"])
    image_size: int | None = setting(None, "resize + centre-crop images to this size (default: the "
                                     "data's own)", range="[1, inf)", stored=lambda c: c.data.image_size)
    channels: int | None = setting(None, "convert images to 1, 3 or 4 channels", choices=(1, 3, 4),
                                   stored=lambda c: c.data.channels)
    flip: bool = setting(False, "random left-right flips",
                         stored=lambda c: bool((c.data.preprocess or {}).get("flip")))


@dataclass
class AutoencoderTrainConfig(Settings):
    """``noisecraft train-autoencoder``'s optimisation settings.

    Per example the loss is Σ_pixels rec(x, x̂) + ``kl_weight`` · Σ_latent KL(q(z|x) ‖ N(0, I)),
    divided by the number of pixel values; rec is |x − x̂| (l1) or (x − x̂)² (l2). x̂ decodes a
    posterior sample (the reparameterisation trick), as in LDM's first stage. With
    ``adversarial_weight`` > 0 a PatchGAN discriminator D joins after ``adversarial_start`` steps
    and the batch mean of the loss gains −``adversarial_weight`` · λ · mean D(x̂), λ LDM's
    adaptive weight (``noisecraft.train.autoencoder`` has the equations).
    """

    flag_prefix: ClassVar[str | None] = None

    steps: int = setting(2000, "optimizer steps", range="[1, inf)", resumable=True)
    batch_size: int = setting(64, "examples per step", range="[1, inf)")
    lr: float = setting(1e-3, "AdamW learning rate", range="(0, inf)")
    warmup: int = setting(100, "linear LR warm-up steps", range="[0, inf)")
    kl_weight: float = setting(1e-4, "weight of the KL term against the summed reconstruction "
                               "error", range="[0, inf)")
    reconstruction: str = setting("l1", "reconstruction loss", choices=RECONSTRUCTION_LOSSES)
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0 = off); the "
                               "discriminator's too", range="[0, inf)")
    adversarial_weight: float = setting(0.0, "weight of the patch-adversarial (PatchGAN, hinge) "
                                        "term, times LDM's adaptive weight (0 = off: no "
                                        "discriminator is built)", range="[0, inf)")
    adversarial_start: int = setting(0, "optimizer steps before the discriminator and the "
                                     "adversarial term switch on (LDM's disc_start; e.g. half of "
                                     "--steps)", range="[0, inf)")
    seed: int = seed_setting()
    log_every: int = log_every_setting()
    sample_every: int = sample_every_setting("reconstruction")
    checkpoint_every: int = checkpoint_every_setting()
    num_workers: int = num_workers_setting()


@dataclass
class AutoencoderRunConfig:
    """``config.json`` of an autoencoder run: the net (``KLAutoencoder.config``), the data, training."""

    net: dict[str, Any]
    data: DataConfig
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)
    preset: str | None = None
    kind: str = "autoencoder"
    version: int = AE_CONFIG_VERSION

    def to_json(self) -> str:
        return json.dumps(_to_jsonable(dataclasses.asdict(self)), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: Any, source: str = CONFIG) -> AutoencoderRunConfig:
        if not isinstance(d, dict) or d.get("kind") != "autoencoder":
            raise RunError(f"{source}: not a noisecraft autoencoder config "
                           "(no \"kind\": \"autoencoder\")")
        if d.get("version") != AE_CONFIG_VERSION:
            raise RunError(f"{source}: autoencoder config version {d.get('version')!r} is not "
                           f"supported (this noisecraft reads version {AE_CONFIG_VERSION})")
        return _build(cls, d, source, "")


# --------------------------------------------------------------------------- the contract
@dataclass
class LoadedAutoencoder:
    """An autoencoder behind the one contract (module docstring), frozen, in eval mode."""

    module: nn.Module
    kind: str  # "noisecraft" | "diffusers"
    path: Path
    sha256: str
    scale_factor: float
    shift_factor: float = 0.0
    latent_channels: int = 0
    factor: int = 1

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device: str | torch.device) -> LoadedAutoencoder:
        self.module.to(device)
        return self

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(C, H', W') of the latent of one (c, H, W) image."""
        if self.kind == "noisecraft":
            return tuple(self.module.latent_shape(tuple(image_shape)))  # type: ignore[operator]
        _, h, w = image_shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"{self.path}: images of {h}×{w} pixels do not divide by the "
                             f"autoencoder's downsampling factor {self.factor}; use --image-size")
        return (self.latent_channels, h // self.factor, w // self.factor)

    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, c, H, W) in [−1, 1] → (mean, logvar) of q(z|x), unscaled."""
        if self.kind == "noisecraft":
            return self.module.encode(x)  # type: ignore[operator]
        dist = self.module.encode(x).latent_dist  # type: ignore[operator]
        return dist.mean, dist.logvar

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Unscaled z (N, C, H', W') → x (N, c, H, W), about [−1, 1]."""
        if self.kind == "noisecraft":
            return self.module.decode(z)  # type: ignore[operator]
        return self.module.decode(z).sample  # type: ignore[operator]

    def to_latent(self, x: Tensor, sample: bool = False,
                  generator: torch.Generator | None = None) -> Tensor:
        """The scaled latent (z − shift) · scale of x: z the posterior mean, or a draw from q(z|x)."""
        mean, logvar = self.encode(x)
        z = mean
        if sample:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * eps
        return scale_latent(z, self.scale_factor, self.shift_factor)

    def from_latent(self, z: Tensor) -> Tensor:
        """Scaled latents → images: decode(z / scale + shift)."""
        return self.decode(unscale_latent(z, self.scale_factor, self.shift_factor))


# --------------------------------------------------------------------------- loading
def folder_sha256(*files: Path) -> str:
    """sha256 over the files' names and bytes: the identity of an autoencoder folder."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def autoencoder_kind(path: str | os.PathLike[str]) -> str:
    """'diffusers' or 'noisecraft' for an autoencoder folder; anything else raises RunError."""
    p = Path(path)
    if not p.exists():
        raise RunError(f"autoencoder folder {p} does not exist")
    if not p.is_dir():
        raise RunError(f"autoencoder {p} is not a folder")
    if not (p / CONFIG).is_file():
        raise RunError(f"{p / CONFIG}: missing; {p} is neither a noisecraft autoencoder run nor a "
                       "diffusers AutoencoderKL folder")
    if (p / DIFFUSERS_WEIGHTS).is_file():
        return "diffusers"
    config = read_json(p / CONFIG)
    if isinstance(config, dict) and config.get("kind") == "autoencoder":
        return "noisecraft"
    if isinstance(config, dict) and config.get("_class_name") == "AutoencoderKL":
        raise RunError(f"{p / DIFFUSERS_WEIGHTS}: missing (a diffusers AutoencoderKL folder needs "
                       "its safetensors weights; .bin files are pickles and are not read)")
    if isinstance(config, dict) and "net" in config and "schedule" in config:
        raise RunError(f"{p} is a diffusion run, not an autoencoder; pass the folder written by "
                       "`noisecraft train-autoencoder` or a diffusers AutoencoderKL folder")
    raise RunError(f"{p / CONFIG}: neither a noisecraft autoencoder config (\"kind\": \"autoencoder\")"
                   " nor a diffusers AutoencoderKL config")


def load_autoencoder(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                     ) -> LoadedAutoencoder:
    """Open a noisecraft autoencoder run or a diffusers AutoencoderKL folder (module docstring).

    A missing, corrupt or mismatched file raises :class:`RunError` naming it.
    """
    p = Path(path)
    kind = autoencoder_kind(p)
    ae = _load_diffusers(p) if kind == "diffusers" else _load_noisecraft(p)
    ae.module.to(device).eval().requires_grad_(False)
    return ae


def read_autoencoder_config(path: str | os.PathLike[str]) -> AutoencoderRunConfig:
    p = Path(path) / CONFIG
    return AutoencoderRunConfig.from_dict(read_json(p), source=str(p))


def _load_noisecraft(p: Path) -> LoadedAutoencoder:
    from .nets.autoencoder import autoencoder_from_config

    config = read_autoencoder_config(p)
    try:
        module = autoencoder_from_config(config.net)
    except (ValueError, TypeError) as e:
        raise RunError(f"{p / CONFIG}: bad 'net' entry ({e})") from None
    weights = checkpoint_file(p, NOISECRAFT_WEIGHTS)
    tensors, meta = read_safetensors(weights)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise RunError(f"{weights}: does not fit the autoencoder in config.json "
                       f"({str(e).splitlines()[0]})") from None
    try:
        scale = float(meta["scale_factor"])
    except (KeyError, ValueError):
        raise RunError(f"{weights}: no scale_factor in its metadata (not an autoencoder "
                       "checkpoint?)") from None
    return LoadedAutoencoder(module=module, kind="noisecraft", path=p,
                             sha256=folder_sha256(p / CONFIG, weights), scale_factor=scale,
                             latent_channels=module.latent_channels, factor=module.factor)


def _load_diffusers(p: Path) -> LoadedAutoencoder:
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise RunError(f"{p} is a diffusers AutoencoderKL folder; reading it needs the diffusers "
                       "package: pip install 'noisecraft[latent]'") from None
    from safetensors.torch import load as safetensors_load

    config = read_json(p / CONFIG)
    if not isinstance(config, dict) or config.get("_class_name") != "AutoencoderKL":
        raise RunError(f"{p / CONFIG}: not an AutoencoderKL config (_class_name "
                       f"{config.get('_class_name') if isinstance(config, dict) else None!r})")
    weights = p / DIFFUSERS_WEIGHTS
    try:
        tensors = safetensors_load(weights.read_bytes())
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise RunError(f"{weights}: not a readable safetensors file ({type(e).__name__})") from None
    module = diffusers_module(AutoencoderKL, config, tensors, p / CONFIG, weights)
    cfg = module.config
    return LoadedAutoencoder(module=module, kind="diffusers", path=p,
                             sha256=folder_sha256(p / CONFIG, weights),
                             scale_factor=float(cfg.scaling_factor),
                             shift_factor=float(cfg.shift_factor or 0.0),
                             latent_channels=int(cfg.latent_channels),
                             factor=2 ** (len(cfg.block_out_channels) - 1))


def diffusers_module(cls: Any, config: dict[str, Any], tensors: dict[str, Tensor],
                     config_path: Path, weights: Path) -> nn.Module:
    """``cls.from_config(config)`` (a diffusers model class) with ``tensors`` loaded strictly: the
    one place a diffusers module is built from a folder's files; errors name the file."""
    try:
        module = cls.from_config(config)
    except Exception as e:  # diffusers validates the config with assorted error types
        raise RunError(f"{config_path}: diffusers cannot build a {cls.__name__} from it "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise RunError(f"{weights}: does not fit the {cls.__name__} in {config_path} "
                       f"({str(e).splitlines()[0]})") from None
    return module
