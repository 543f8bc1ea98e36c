"""diffusers pipeline folders read as runs: :func:`load_pipeline_folder`, what
:func:`noisecraft.load_run` dispatches to for a folder with ``model_index.json``.

A ``DDPMPipeline``/``DDIMPipeline`` folder holds ``model_index.json``, ``unet/`` (a ``UNet2DModel``:
``config.json`` + ``diffusion_pytorch_model.safetensors``) and ``scheduler/scheduler_config.json``.
It becomes a :class:`DiffusersRun` (a :class:`noisecraft.run.LoadedRun`) so every command that
takes a run works on it unchanged. The conventions mapped, each once:

Schedule (``scheduler_config.json`` → :class:`noisecraft.Schedule`, the same formula in float64;
diffusers rounds β to float32, a relative difference below 6e-8):

    trained_betas                    → Schedule.from_betas(trained_betas)
    beta_schedule "linear"           → Schedule.linear(T, beta_start, beta_end)
    beta_schedule "scaled_linear"    → Schedule.quadratic(T, beta_start, beta_end)  (√β linear)
    beta_schedule "squaredcos_cap_v2"→ Schedule.cosine(T, s=0.008, max_beta=0.999)
    num_train_timesteps              → T

Prediction: ``prediction_type`` epsilon → "eps", v_prediction → "v", sample → "x0".
``clip_sample`` (with ``clip_sample_range`` r) → the Denoiser's ``clip=(−r, r)``, which clamps x̂_0
and recomputes ε̂ from it. DDPMScheduler's step reads only the clamped x̂_0, so it is exactly
this; DDIMScheduler recomputes ε̂ only under ``use_clipped_model_output=True`` (by default it
pairs the clamped x̂_0 with the raw ε̂, a mixed reading noisecraft's Denoiser does not make).
``variance_type`` (DDPMScheduler): fixed_small(_log) → β̃ (noisecraft's ddpm default),
fixed_large(_log) → σ²_{t|s} (the ddpm sampler's ``variance="beta"``, recorded in
``source["mapped"]["ddpm_variance"]``), learned_range → the net's learned variance (the same
interpolation log σ² = f log β_t + (1 − f) log β̃_t, f = (v + 1)/2).
Options with no noisecraft counterpart (``thresholding``, ``rescale_betas_zero_snr``, the
``learned`` variance, a ``sigmoid`` beta_schedule, scheduler keys this module does not know) are
refused with a ValueError naming the key.

Time: noisecraft's t counts noising steps (x_t noised t times, ᾱ_t = ``alphas_cumprod[t − 1]``);
diffusers indexes ``alphas_cumprod`` by its timestep k, so k = t − 1 and the UNet is called as
``net(x_t, t) = unet(x_t, t − 1).sample`` (:class:`DiffusersUNet`; fractional t is passed on,
diffusers' sinusoidal embedding takes any float).

Grids (:func:`diffusers_grid`): diffusers visits timesteps k_0 > … > k_{n−1} given by
``timestep_spacing`` and ``steps_offset`` (leading: k_i = (n − 1 − i)·⌊T/n⌋ + steps_offset;
trailing: round(T − i·T/n) − 1; linspace: round(linspace(0, T − 1, n)) reversed) and its last
step lands on ᾱ = 1. In noisecraft's t this is the grid (k_0 + 1, …, k_{n−1} + 1, 0).
noisecraft's own ``respaced`` grid is diffusers' "trailing" spacing.

Weights are read with safetensors only and loaded strictly into ``UNet2DModel.from_config``: no
``from_pretrained``, so no network access and no pickle; a folder with only ``.bin`` weights is
refused naming the file. :attr:`DiffusersRun.source` records where each part came from (paths,
sha256 of every file read, the diffusers values mapped); ``nll`` and ``evaluate`` write it beside
their numbers.

A ``StableDiffusionPipeline`` folder (:func:`load_sd_folder`) is a text-conditional latent run:
the ``UNet2DConditionModel`` as ``net(x_t, t, text=...) = unet(x_t, t − 1,
encoder_hidden_states=text).sample`` (:class:`DiffusersTextUNet`), the ``AutoencoderKL`` as the
run's autoencoder with its ``scaling_factor`` and no shift (the pipeline decodes
``vae.decode(z / scaling_factor)``), CLIP and its tokenizer as the text encoder
(:class:`noisecraft.conditioning.ClipTextEncoder`: padded to max_length, the encoded empty prompt
as the unconditional branch). A ``PNDMScheduler`` or ``EulerDiscreteScheduler`` config maps its
schedule, prediction and timesteps; their PLMS / Euler steps and σ grids are not reproduced
(noisecraft's samplers draw: ddim by default, euler for an Euler folder). The safety checker,
feature extractor and image encoder are never read: ``source["ignored"]`` names them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .autoencoders import diffusers_module
from .errors import RunError
from .io import read_json
from .run import INFERENCE_MEMORY_FORMAT, LoadedRun, build_denoiser

MODEL_INDEX = "model_index.json"
UNET_CONFIG = "unet/config.json"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
UNET_PICKLE = "unet/diffusion_pytorch_model.bin"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"

PIPELINES = ("DDPMPipeline", "DDIMPipeline")
SD_PIPELINES = ("StableDiffusionPipeline",)
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler")
# EulerDiscreteScheduler options that only shape diffusers' own σ grid for its Euler steps (not
# the model): read and recorded, not reproduced (noisecraft's samplers walk their own grids).
EULER_GRID_KEYS = {"interpolation_type", "use_karras_sigmas", "use_exponential_sigmas",
                   "use_beta_sigmas", "sigma_min", "sigma_max", "final_sigmas_type"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
VARIANCES = {"fixed_small": "beta_tilde", "fixed_small_log": "beta_tilde", "fixed_large": "beta",
             "fixed_large_log": "beta", "learned_range": "learned"}
SPACINGS = ("leading", "trailing", "linspace")
# Scheduler keys read below; any other key (besides diffusers' own "_..." bookkeeping) is refused.
SCHEDULER_KEYS = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                  "prediction_type", "clip_sample", "clip_sample_range", "variance_type",
                  "thresholding", "dynamic_thresholding_ratio", "sample_max_value",
                  "timestep_spacing", "steps_offset", "set_alpha_to_one", "rescale_betas_zero_snr",
                  "skip_prk_steps", "timestep_type", *EULER_GRID_KEYS}
# The scheduler classes' own defaults (diffusers 0.42; tests/test_diffusers_runs.py checks them
# against the installed diffusers), so a folder reads without importing diffusers.
_COMMON_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "clip_sample": True, "prediction_type": "epsilon", "thresholding": False,
    "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
    "timestep_spacing": "leading", "steps_offset": 0, "rescale_betas_zero_snr": False}
SCHEDULER_DEFAULTS: dict[str, dict[str, Any]] = {
    "DDPMScheduler": {**_COMMON_DEFAULTS, "variance_type": "fixed_small"},
    "DDIMScheduler": {**_COMMON_DEFAULTS, "set_alpha_to_one": True},
    # PNDM (Stable Diffusion's usual scheduler) never clips; only its schedule, prediction and
    # timesteps are read: noisecraft's samplers draw (its PLMS/PRK steps are not reproduced).
    "PNDMScheduler": {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                      "beta_schedule": "linear", "trained_betas": None, "skip_prk_steps": False,
                      "set_alpha_to_one": False, "prediction_type": "epsilon",
                      "timestep_spacing": "leading", "steps_offset": 0},
    "EulerDiscreteScheduler": {
        "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
        "beta_schedule": "linear", "trained_betas": None, "prediction_type": "epsilon",
        "interpolation_type": "linear", "use_karras_sigmas": False, "use_exponential_sigmas": False,
        "use_beta_sigmas": False, "sigma_min": None, "sigma_max": None,
        "timestep_spacing": "linspace", "timestep_type": "discrete", "steps_offset": 0,
        "rescale_betas_zero_snr": False, "final_sigmas_type": "zero"}}
# The data spec of a folder: diffusers records no training data, so commands that default to
# the run's own data (nll, explain) say so by this name unless given --data.
NO_DATA = "<none: a diffusers folder records no training data>"
# The pipelines' own defaults (DDPMPipeline.__call__ / DDIMPipeline.__call__).
DEFAULT_SAMPLING = {"DDPMPipeline": ("ddpm", 1000), "DDIMPipeline": ("ddim", 50),
                    "StableDiffusionPipeline": ("ddim", 50)}


def is_pipeline_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a diffusers pipeline folder (it has ``model_index.json``)."""
    return (Path(path) / MODEL_INDEX).is_file()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- the scheduler
@dataclass(frozen=True)
class SchedulerMapping:
    """What a diffusers scheduler config says, in noisecraft's terms."""

    schedule: Any  # noisecraft.Schedule
    prediction: str
    clip: tuple[float, float] | None
    ddpm_variance: str  # "beta_tilde" | "beta" | "learned"
    timestep_spacing: str
    steps_offset: int
    set_alpha_to_one: bool
    scheduler_class: str
    mapped: dict[str, Any] = field(default_factory=dict)  # the diffusers values read


def map_scheduler(config: dict[str, Any], source: str = SCHEDULER_CONFIG) -> SchedulerMapping:
    """A diffusers DDPM/DDIM scheduler config → Schedule, prediction, clip and grid conventions
    (the module docstring's table). Missing keys take that scheduler class's diffusers defaults."""
    from .schedule import Schedule

    cls = config.get("_class_name")
    if cls not in SCHEDULERS:
        raise ValueError(f"{source}: scheduler {cls!r} is not read; noisecraft maps "
                         f"{', '.join(SCHEDULERS)}")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in SCHEDULER_KEYS)
    if unknown:
        raise ValueError(f"{source}: scheduler option {unknown[0]!r} has no noisecraft mapping")
    c = {**SCHEDULER_DEFAULTS[cls], **{k: v for k, v in config.items() if not k.startswith("_")}}
    for key in ("thresholding", "rescale_betas_zero_snr"):
        if c.get(key):
            raise ValueError(f"{source}: {key}={c[key]!r} is not supported (noisecraft's "
                             f"Denoiser has no counterpart); only {key}=false loads")
    if c.get("timestep_type", "discrete") != "discrete":
        raise ValueError(f"{source}: timestep_type={c['timestep_type']!r} feeds the UNet a "
                         "continuous σ code, not the timestep index; only 'discrete' loads")
    T = c["num_train_timesteps"]
    if c.get("trained_betas") is not None:
        schedule = Schedule.from_betas(c["trained_betas"])
        if schedule.T != T:
            raise ValueError(f"{source}: trained_betas has {schedule.T} values but "
                             f"num_train_timesteps is {T}")
    elif c["beta_schedule"] == "linear":
        schedule = Schedule.linear(T, c["beta_start"], c["beta_end"])
    elif c["beta_schedule"] == "scaled_linear":
        schedule = Schedule.quadratic(T, c["beta_start"], c["beta_end"])
    elif c["beta_schedule"] == "squaredcos_cap_v2":
        schedule = Schedule.cosine(T, s=0.008, max_beta=0.999)
    else:
        raise ValueError(f"{source}: beta_schedule {c['beta_schedule']!r} is not supported; "
                         "noisecraft maps linear, scaled_linear, squaredcos_cap_v2 and trained_betas")
    if c["prediction_type"] not in PREDICTIONS:
        raise ValueError(f"{source}: prediction_type {c['prediction_type']!r} is not one of "
                         f"{', '.join(PREDICTIONS)}")
    variance = c.get("variance_type") or "fixed_small"
    if variance not in VARIANCES:
        raise ValueError(f"{source}: variance_type {variance!r} is not supported; noisecraft maps "
                         f"{', '.join(VARIANCES)}")
    if c["timestep_spacing"] not in SPACINGS:
        raise ValueError(f"{source}: timestep_spacing {c['timestep_spacing']!r} is not one of "
                         f"{', '.join(SPACINGS)}")
    r = float(c.get("clip_sample_range", 1.0))
    clip = (-r, r) if c.get("clip_sample") and cls != "PNDMScheduler" else None  # PNDM never clips
    mapped = {k: c[k] for k in sorted(c) if k in SCHEDULER_KEYS and k != "trained_betas"}
    if c.get("trained_betas") is not None:
        mapped["trained_betas"] = f"{len(c['trained_betas'])} values"
    return SchedulerMapping(schedule=schedule, prediction=PREDICTIONS[c["prediction_type"]],
                            clip=clip, ddpm_variance=VARIANCES[variance],
                            timestep_spacing=c["timestep_spacing"],
                            steps_offset=int(c.get("steps_offset", 0)),
                            set_alpha_to_one=bool(c.get("set_alpha_to_one", True)),
                            scheduler_class=cls, mapped=mapped)


def diffusion_timesteps(mapping: SchedulerMapping, steps: int) -> list[int]:
    """The timestep indices k_0 > … > k_{n−1} diffusers' ``set_timesteps(steps)`` visits."""
    import numpy as np

    T = mapping.schedule.T
    if not 1 <= steps <= T:
        raise ValueError(f"steps = {steps!r} must lie in [1, T] = [1, {T}]")
    if mapping.timestep_spacing == "leading":
        k = np.arange(0, steps) * (T // steps)
        k = k[::-1] + mapping.steps_offset
    elif mapping.timestep_spacing == "trailing":
        k = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    else:
        k = np.linspace(0, T - 1, steps).round()[::-1]
    return [int(v) for v in k]


def diffusers_grid(mapping: SchedulerMapping, steps: int, sampler: str = "ddim") -> Tensor:
    """The noisecraft time grid on which ``sampler`` ("ddim" or "ddpm") reproduces diffusers'
    DDIMScheduler/DDPMScheduler with ``steps`` inference steps: (k_0 + 1, …, k_{n−1} + 1, 0).

    DDPMScheduler steps from each visited k to the next one (then to ᾱ = 1). DDIMScheduler steps
    from k to k − ⌊T/n⌋ whatever the next visited k is, and to its ``final_alpha_cumprod`` at
    the end; a spacing where those differ (trailing or linspace with n not dividing T), or
    ``set_alpha_to_one=false`` (whose last step stops at ᾱ_1, not at x̂_0), has no grid and is
    refused naming the value.
    """
    k = diffusion_timesteps(mapping, steps)
    if sampler == "ddim":
        ratio = mapping.schedule.T // steps
        for a, b in zip(k, k[1:], strict=False):
            if a - ratio != b:
                raise ValueError(f"diffusers' DDIM steps from timestep {a} to {a - ratio}, not to "
                                 f"its next timestep {b} (timestep_spacing "
                                 f"{mapping.timestep_spacing!r}, {steps} steps): no noisecraft grid")
        if not mapping.set_alpha_to_one:
            raise ValueError("set_alpha_to_one=false: diffusers' DDIM ends at ᾱ_1, not at x̂_0; "
                             "no noisecraft grid ends there")
    elif sampler != "ddpm":
        raise ValueError(f"sampler {sampler!r}: diffusers grids are defined for ddim and ddpm")
    if len(set(k)) != len(k) or k[-1] < 0 or k[0] >= mapping.schedule.T:
        raise ValueError(f"diffusers timesteps {k} are not a valid grid for T = {mapping.schedule.T}")
    return torch.tensor([v + 1 for v in k] + [0], dtype=torch.float64)


# --------------------------------------------------------------------------- the UNet
class DiffusersUNet(nn.Module):
    """``net(x_t, t) = unet(x_t, t − 1).sample``: noisecraft's t (noising steps taken) is diffusers'
    timestep index plus one (module docstring)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        if cond:
            raise ValueError(f"a diffusers UNet2DModel folder is unconditional; got "
                             f"{', '.join(sorted(cond))}")
        t = torch.as_tensor(t, device=x.device)
        return self.unet(x, t - 1).sample


def _check_unet_config(config: Any, source: str) -> None:
    if not isinstance(config, dict) or config.get("_class_name") != "UNet2DModel":
        name = config.get("_class_name") if isinstance(config, dict) else None
        raise RunError(f"{source}: not a UNet2DModel config (_class_name {name!r})")
    for key, allowed in (("time_embedding_type", ("positional", None)),
                         ("class_embed_type", (None,)), ("num_class_embeds", (None,))):
        if config.get(key, None) not in allowed:
            raise RunError(f"{source}: {key}={config[key]!r} is not supported (noisecraft reads "
                           "unconditional UNet2DModels with positional time embeddings)")


def load_unet(folder: Path, T: int, native: bool = True
              ) -> tuple[nn.Module, dict[str, Any], dict[str, Any] | None]:
    """(net, the UNet2DModel config, the noisecraft net config or None). With ``native`` and a
    config that has an exact noisecraft counterpart (:func:`noisecraft.diffusers_export.native_config`),
    the weights are converted into noisecraft's own UNet and diffusers is not imported; otherwise
    ``UNet2DModel.from_config`` holds them, wrapped as :class:`DiffusersUNet`. Either way the
    safetensors file is loaded strictly."""

    from .diffusers_export import from_diffusers_state, native_config

    config_path, weights = folder / UNET_CONFIG, folder / UNET_WEIGHTS
    if not config_path.is_file():
        raise RunError(f"{config_path}: missing")
    tensors = _read_safetensors(weights, Path(UNET_PICKLE).name)  # refuses a pickle-only folder
    config = read_json(config_path)
    _check_unet_config(config, str(config_path))
    own = native_config(config, T) if native else None
    if own is not None:
        from . import nets

        net = nets.from_config(own)
        try:
            net.load_state_dict(from_diffusers_state(tensors, own), strict=True)
        except (KeyError, RuntimeError) as e:
            raise RunError(f"{weights}: does not fit the UNet2DModel in {config_path} "
                           f"({str(e).splitlines()[0]})") from None
        return net, config, own
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise RunError(f"{folder} is a diffusers pipeline folder whose UNet has no noisecraft "
                       "counterpart; reading it needs the diffusers package: "
                       "pip install 'noisecraft[latent]'") from None
    unet = diffusers_module(UNet2DModel, config, tensors, config_path, weights)
    return DiffusersUNet(unet), dict(unet.config), None


# --------------------------------------------------------------------------- the run
@dataclass
class DiffusersRun(LoadedRun):
    """A diffusers pipeline folder as a :class:`~noisecraft.run.LoadedRun`, with ``source``: where
    each part came from and the diffusers values mapped (module docstring)."""

    source: dict[str, Any] = field(default_factory=dict)
    mapping: SchedulerMapping | None = None
    clip: Any = None  # noisecraft.conditioning.ClipTextEncoder, for a Stable-Diffusion folder

    def text_encoder(self) -> Any:
        """A Stable-Diffusion folder's own CLIP encoder (loaded with it); else the run's."""
        return self.clip if self.clip is not None else super().text_encoder()

    def diffusers_grid(self, steps: int, sampler: str = "ddim") -> Tensor:
        """The grid on which noisecraft's ``sampler`` walks diffusers' own timesteps."""
        assert self.mapping is not None
        return diffusers_grid(self.mapping, steps, sampler)

    def grid(self, sampler: str, steps: int) -> Tensor | None:
        """The grid sampling should walk to reproduce the folder's pipeline: diffusers' own
        timesteps for ddim and ddpm where they form a grid, else None (noisecraft's default
        grid for the sampler); :meth:`LoadedRun.generate_tensor` walks it, so ``noisecraft
        sample FOLDER`` is the folder's own pipeline."""
        try:
            return self.diffusers_grid(steps, sampler)
        except ValueError:
            return None


def load_pipeline_folder(folder: str | os.PathLike[str], device: str | torch.device = "cpu",
                         native: bool = True) -> DiffusersRun:
    """A DDPMPipeline/DDIMPipeline folder as a run (module docstring). Errors name the file.
    ``native``: convert the UNet into noisecraft's own where the layout is an exact counterpart
    (:func:`load_unet`); False keeps diffusers' UNet2DModel."""
    from .config import DataConfig, RunConfig, SamplingConfig, TrainConfig
    from .data import Preprocess
    from .devices import check_device
    from .threads import apply_default_threads

    apply_default_threads()
    device = check_device(device)
    path = Path(folder)
    index = read_json(path / MODEL_INDEX)
    pipeline = index.get("_class_name") if isinstance(index, dict) else None
    if pipeline in SD_PIPELINES:
        return load_sd_folder(path, index, device)
    if pipeline not in PIPELINES:
        raise RunError(f"{path / MODEL_INDEX}: pipeline {pipeline!r} is not read; noisecraft reads "
                       f"{', '.join(PIPELINES)} folders (a UNet2DModel and a scheduler) and "
                       f"{', '.join(SD_PIPELINES)} folders")
    for part, cls in (("unet", "UNet2DModel"), ("scheduler", None)):
        entry = index.get(part)
        if not (isinstance(entry, list) and len(entry) == 2) or (cls and entry[1] != cls):
            raise RunError(f"{path / MODEL_INDEX}: {part!r} is {entry!r}, expected "
                           f"[\"diffusers\", \"{cls or 'DDPMScheduler'}\"]")
    scheduler_path = path / SCHEDULER_CONFIG
    if not scheduler_path.is_file():
        raise RunError(f"{scheduler_path}: missing")
    scheduler_config = read_json(scheduler_path)
    try:
        mapping = map_scheduler(scheduler_config, str(scheduler_path))
    except ValueError as e:
        raise RunError(str(e)) from None
    net, unet_config, own = load_unet(path, mapping.schedule.T, native)
    learned = mapping.ddpm_variance == "learned"
    channels, out_channels = int(unet_config["in_channels"]), int(unet_config["out_channels"])
    if out_channels != channels * (2 if learned else 1):
        raise RunError(f"{path / UNET_CONFIG}: out_channels {out_channels} with in_channels "
                       f"{channels} does not fit variance_type "
                       f"{mapping.mapped.get('variance_type')!r}")
    size = unet_config["sample_size"]
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    preprocess = Preprocess(kind="image", channels=channels, height=height, width=width,
                            image_size=height if height == width else None)
    sampler, steps = DEFAULT_SAMPLING[pipeline]
    files = {name: file_sha256(path / name)
             for name in (MODEL_INDEX, UNET_CONFIG, UNET_WEIGHTS, SCHEDULER_CONFIG)}
    config = RunConfig(
        net=own if own is not None else {
            "arch": "diffusers.UNet2DModel", "learned_variance": learned,
            **{k: v for k, v in unet_config.items() if not k.startswith("_")}},
        schedule=mapping.schedule.to_dict(), prediction=mapping.prediction,
        data=DataConfig(spec=NO_DATA, kind="image", shape=[channels, height, width],
                        image_size=preprocess.image_size, channels=channels,
                        preprocess=preprocess.to_dict()),
        # The folder records no training settings; a learned variance is read as trained by
        # the hybrid loss (Improved DDPM), which is what RunConfig requires of such nets.
        train=TrainConfig(loss="hybrid" if learned else "simple"),
        sampling=SamplingConfig(sampler=sampler, steps=min(steps, mapping.schedule.T),
                                clip=mapping.clip))
    denoiser, schedule = build_denoiser(net, config)
    net.to(device, memory_format=INFERENCE_MEMORY_FORMAT).eval().requires_grad_(False)
    source = {
        "kind": "diffusers", "path": str(path.resolve()), "pipeline": pipeline,
        "diffusers_version": index.get("_diffusers_version"),
        "unet": "UNet2DModel", "scheduler": mapping.scheduler_class,
        "net": ("converted into noisecraft's UNet (exact layout counterpart; no diffusers at run "
                "time)" if own is not None else "diffusers UNet2DModel, wrapped"),
        "sha256": files, "mapped": {**mapping.mapped, "ddpm_variance": mapping.ddpm_variance},
        "schedule": schedule.to_dict() if schedule.to_dict()["kind"] != "custom"
        else {"kind": "custom", "T": schedule.T},
        "prediction": mapping.prediction, "clip": list(mapping.clip) if mapping.clip else None,
        "time": "net(x_t, t) = unet(x_t, t - 1): diffusers' timestep index is t - 1",
        "step": "unknown: a diffusers folder records no training step (reported as 0)",
    }
    return DiffusersRun(run_dir=path, config=config, net=net, denoiser=denoiser, schedule=schedule,
                        preprocess=preprocess, step=0, source=source, mapping=mapping)


# --------------------------------------------------------------------------- Stable Diffusion
SD_PARTS = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel",
            "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"), "scheduler": None}
# Parts a StableDiffusionPipeline folder may name that play no part in drawing a picture: they
# are never read (nothing is filtered or blacked out), and source["ignored"] lists them.
SD_IGNORED = ("safety_checker", "feature_extractor", "image_encoder")
SD_UNET_WEIGHTS = UNET_WEIGHTS
# UNet2DConditionModel options that need inputs a StableDiffusionPipeline's text path does not
# give (class labels, added embeddings, a time condition): refused naming the key.
SD_UNET_REFUSED = ("class_embed_type", "num_class_embeds", "addition_embed_type",
                   "encoder_hid_dim", "time_cond_proj_dim")
# StableDiffusionPipeline was trained with 10% of captions dropped (the v1 model cards); the
# folder does not record it, but RunConfig needs a dropout > 0 to allow guidance.
SD_CAPTION_DROPOUT = 0.1


class DiffusersTextUNet(nn.Module):
    """``net(x_t, t, text=, text_mask=, text_pooled=) = unet(x_t, t − 1,
    encoder_hidden_states=text).sample``: diffusers' timestep index is t − 1 (module docstring);
    the CLIP tokens are the cross-attention context. A mask that is not all True (a caller's
    own padding) goes in as ``encoder_attention_mask``; ``text_pooled`` is not read by a
    StableDiffusionPipeline UNet."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor | float, text: Tensor | None = None,
                text_mask: Tensor | None = None, text_pooled: Tensor | None = None) -> Tensor:
        if text is None:
            raise ValueError("a Stable-Diffusion UNet needs text= (the CLIP tokens); the "
                             "unconditional branch is the encoded empty prompt")
        t = torch.as_tensor(t, device=x.device)
        mask = None if text_mask is None or bool(text_mask.all()) else text_mask
        return self.unet(x, t - 1, encoder_hidden_states=text.to(x.dtype),
                         encoder_attention_mask=mask).sample


def _read_safetensors(weights: Path, pickle_name: str) -> dict[str, Tensor]:
    from safetensors.torch import load as safetensors_load

    if not weights.is_file():
        pickled = weights.parent / pickle_name
        if pickled.is_file():
            raise RunError(f"{pickled}: pickled weights are not read (unpickling can run code); "
                           f"convert them to {weights.name}")
        raise RunError(f"{weights}: missing")
    try:
        tensors = safetensors_load(weights.read_bytes())
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise RunError(f"{weights}: not a readable safetensors file ({type(e).__name__})") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise RunError(f"{weights}: tensor {bad[0]!r} holds NaN or Inf values")
    return tensors


def load_text_unet(folder: Path) -> tuple[DiffusersTextUNet, dict[str, Any]]:
    """The folder's UNet2DConditionModel, built by ``from_config`` and loaded strictly from
    safetensors, wrapped as :class:`DiffusersTextUNet`."""
    from diffusers import UNet2DConditionModel

    config_path = folder / UNET_CONFIG
    if not config_path.is_file():
        raise RunError(f"{config_path}: missing")
    config = read_json(config_path)
    if not isinstance(config, dict) or config.get("_class_name") != "UNet2DConditionModel":
        name = config.get("_class_name") if isinstance(config, dict) else None
        raise RunError(f"{config_path}: not a UNet2DConditionModel config (_class_name {name!r})")
    for key in SD_UNET_REFUSED:
        if config.get(key) is not None:
            raise RunError(f"{config_path}: {key}={config[key]!r} is not supported (a "
                           "StableDiffusionPipeline UNet is conditioned on text only)")
    tensors = _read_safetensors(folder / SD_UNET_WEIGHTS, "diffusion_pytorch_model.bin")
    unet = diffusers_module(UNet2DConditionModel, config, tensors, config_path,
                            folder / SD_UNET_WEIGHTS)
    return DiffusersTextUNet(unet), dict(unet.config)


def load_sd_folder(path: Path, index: dict[str, Any], device: str | torch.device = "cpu"
                   ) -> DiffusersRun:
    """A StableDiffusionPipeline folder as a text-conditional latent run (README, "Models from
    diffusers"): the UNet2DConditionModel as ``net(x_t, t, text=...)`` at diffusers' t − 1, the
    AutoencoderKL as the latent autoencoder (its ``scaling_factor``; no shift, as the pipeline
    applies none), CLIP + its tokenizer as the text encoder
    (:class:`noisecraft.conditioning.ClipTextEncoder`), the scheduler mapped as for DDIM folders.
    The safety checker and feature extractor are ignored (``source["ignored"]``)."""
    from .autoencoders import DIFFUSERS_WEIGHTS, load_autoencoder
    from .conditioning import load_clip_encoder
    from .config import (
        ConditionConfig,
        DataConfig,
        LatentConfig,
        RunConfig,
        SamplingConfig,
        TrainConfig,
    )
    from .data import Preprocess
    from .devices import check_device
    from .threads import apply_default_threads

    apply_default_threads()
    device = check_device(device)
    pipeline = index["_class_name"]
    for part, cls in SD_PARTS.items():
        entry = index.get(part)
        ok = isinstance(entry, list) and len(entry) == 2 and (
            cls is None or entry[1] in ((cls,) if isinstance(cls, str) else cls))
        if not ok or not (path / part).is_dir():
            raise RunError(f"{path / MODEL_INDEX}: a {pipeline} folder needs {part!r} "
                           f"({cls or 'a scheduler'}) and the folder {path / part}; got {entry!r}")
    unknown = sorted(k for k in index if not k.startswith("_") and k not in SD_PARTS
                     and k not in SD_IGNORED and k != "requires_safety_checker")
    if unknown:
        raise RunError(f"{path / MODEL_INDEX}: part {unknown[0]!r} is not read by noisecraft")
    ignored = [k for k in SD_IGNORED if isinstance(index.get(k), list) and index[k][0] is not None]
    scheduler_path = path / SCHEDULER_CONFIG
    if not scheduler_path.is_file():
        raise RunError(f"{scheduler_path}: missing")
    try:
        mapping = map_scheduler(read_json(scheduler_path), str(scheduler_path))
    except ValueError as e:
        raise RunError(str(e)) from None
    if mapping.clip is not None:
        raise RunError(f"{scheduler_path}: clip_sample=true clips latents to ±"
                       f"{mapping.clip[1]:g}; Stable-Diffusion folders are read unclipped only")
    net, unet_config = load_text_unet(path)
    ae = load_autoencoder(path / "vae", device=device)
    clip = load_clip_encoder(path / "text_encoder", path / "tokenizer")
    dim = int(unet_config["cross_attention_dim"])
    if clip.dim != dim:
        raise RunError(f"{path / 'text_encoder'}: hidden_size {clip.dim} does not fit the UNet's "
                       f"cross_attention_dim {dim}")
    channels = int(unet_config["in_channels"])
    if channels != ae.latent_channels or int(unet_config["out_channels"]) != channels:
        raise RunError(f"{path / UNET_CONFIG}: in/out_channels {channels}/"
                       f"{unet_config['out_channels']} do not fit the VAE's latent_channels "
                       f"{ae.latent_channels}")
    size = unet_config["sample_size"]
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    height, width = h * ae.factor, w * ae.factor  # diffusers' default height/width
    rgb = int(ae.module.config.in_channels)
    preprocess = Preprocess(kind="image", channels=rgb, height=height, width=width,
                            image_size=height if height == width else None)
    sampler, steps = DEFAULT_SAMPLING[pipeline]
    if mapping.scheduler_class == "EulerDiscreteScheduler":
        sampler = "euler"  # noisecraft's Euler on its own grid (diffusers' σ grid not reproduced)
    vae_shift = float(ae.module.config.shift_factor or 0.0)
    latent = LatentConfig(autoencoder=str(path / "vae"), sha256=ae.sha256, kind="diffusers",
                          posterior="mean", scale_factor=ae.scale_factor, shift_factor=0.0,
                          shape=[channels, h, w])
    config = RunConfig(
        net={"arch": "diffusers.UNet2DConditionModel", "text_dim": dim,
             **{k: v for k, v in unet_config.items() if not k.startswith("_")}},
        schedule=mapping.schedule.to_dict(), prediction=mapping.prediction,
        data=DataConfig(spec=NO_DATA, kind="image", shape=[rgb, height, width],
                        image_size=preprocess.image_size, channels=rgb,
                        preprocess=preprocess.to_dict()),
        train=TrainConfig(loss="simple"),
        sampling=SamplingConfig(sampler=sampler, steps=min(steps, mapping.schedule.T), clip=None),
        condition=ConditionConfig(kind="text", text_encoder=str(path / "text_encoder"),
                                  caption_dropout=SD_CAPTION_DROPOUT,
                                  text_encoder_sha256=clip.sha256),
        latent=latent)
    denoiser, schedule = build_denoiser(net, config)
    net.to(device, memory_format=INFERENCE_MEMORY_FORMAT).eval().requires_grad_(False)
    clip.model.to(device)
    files = [MODEL_INDEX, UNET_CONFIG, SD_UNET_WEIGHTS, SCHEDULER_CONFIG, "vae/config.json",
             f"vae/{DIFFUSERS_WEIGHTS}", "text_encoder/config.json", "text_encoder/model.safetensors",
             *sorted(f"tokenizer/{f.name}" for f in (path / "tokenizer").iterdir() if f.is_file())]
    source = {
        "kind": "diffusers", "path": str(path.resolve()), "pipeline": pipeline,
        "diffusers_version": index.get("_diffusers_version"),
        "unet": "UNet2DConditionModel", "scheduler": mapping.scheduler_class,
        "net": "diffusers UNet2DConditionModel, wrapped",
        "sha256": {name: file_sha256(path / name) for name in files},
        "mapped": {**mapping.mapped, "ddpm_variance": mapping.ddpm_variance},
        "schedule": schedule.to_dict() if schedule.to_dict()["kind"] != "custom"
        else {"kind": "custom", "T": schedule.T},
        "prediction": mapping.prediction, "clip": None,
        "time": "net(x_t, t, text=...) = unet(x_t, t - 1, encoder_hidden_states=text)",
        "text": f"CLIP last hidden state, padded to {clip.max_tokens} tokens; the encoded empty "
                "prompt is the unconditional branch",
        "latent": {"scaling_factor": ae.scale_factor, "shift_factor": 0.0,
                   **({"vae_shift_factor_ignored": vae_shift} if vae_shift else {})},
        "ignored": ignored,
        "caption_dropout": f"{SD_CAPTION_DROPOUT} assumed (not recorded by the folder)",
        "step": "unknown: a diffusers folder records no training step (reported as 0)",
    }
    return DiffusersRun(run_dir=path, config=config, net=net, denoiser=denoiser, schedule=schedule,
                        preprocess=preprocess, step=0, autoencoder=ae, source=source,
                        mapping=mapping, clip=clip)
