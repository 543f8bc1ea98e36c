"""A run's configuration: plain dataclasses that round-trip through ``config.json``.

``config.json`` holds everything needed to rebuild a trained model without the training code's
help: the network (``nets.from_config``), the schedule (``Schedule.to_dict``), the prediction
type, the data spec with its preprocessing (``Preprocess.to_dict``) and the sampling defaults.
Unknown keys are an error naming the key — a typo must not fall back to a default silently.

Settings are declared once
--------------------------
A user-facing field is declared with :func:`setting`, which keeps everything about it in the
field's ``metadata``; the Python default, the checks and the ``noisecraft train`` flag all come
from there::

    ema_decay: float = setting(0.999, "EMA decay per optimizer step", range="[0, 1)")

- ``help``: one line for ``--help``; the CLI appends "(default …)" from the field's own default
  (a field whose default is None explains None in its help instead).
- ``choices``: the valid values, or a zero-argument callable returning them, so that a library
  registry is read where it lives (``choices=registry("samplers", "SAMPLERS")``).
- ``range``: an interval such as ``"[0, 1)"`` or ``"[1, inf)"`` for a number (for a tuple: each
  element).
- ``resumable``: ``train --resume`` may change this field; any other given flag must equal the
  run's value, or the resume is refused (exit 2, naming the flag and both values).
- ``flag``: the flag's name without ``--`` (default: the field name with ``_`` → ``-``).
- ``stored``: for a field that config.json does not hold under its own name (:class:`BuildConfig`),
  a function ``RunConfig -> value``: what the resume check compares with.
- ``metavar``: argparse's metavar (a tuple for tuple fields).

A dataclass that subclasses :class:`Settings` checks every such field in ``__post_init__``
(type from the annotation, choices, range): override ``__post_init__`` for cross-field checks
and call ``super().__post_init__()`` first. ``noisecraft train`` gets a flag for every setting
of :class:`BuildConfig` and of every :class:`Settings` field of :class:`RunConfig` whose class
has ``flag_prefix`` not None (the prefix is put before each flag name): to add a section, add
``name: NewConfig = field(default_factory=NewConfig)`` to RunConfig — no CLI code changes.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .checks import integer, number
from .data.mel import AudioConfig
from .data.transforms import KINDS as DATA_KINDS  # one home: Preprocess's kinds
from .denoiser import SIGMA_DATA
from .errors import RunError
from .samplers import DEFAULT_STEPS

CONFIG_VERSION = 1
LR_SCHEDULES = ("constant", "cosine")
"""The learning-rate schedules after warm-up (``noisecraft.train.lr_at`` implements them)."""
COMPILE_MODES = ("auto", "on", "off")
PRECISIONS = ("auto", "bf16", "fp32")
# One range for every trainer's seed: a signed 64-bit integer, what torch generators and the
# derived per-rank seeds are sure to take (the autoencoder trainer once took any size)
SEED_RANGE = "[0, 9223372036854775807]"
"""``TrainConfig.compile``: torch.compile the network on CUDA only (auto), always, or never."""
LATENT_POSTERIORS = ("mean", "sample")
"""What a latent run trains on: the posterior mean of each latent, or a fresh draw from q(z|x)."""


# --------------------------------------------------------------------------- the scheme
def setting(default: Any = dataclasses.MISSING, help: str = "", *,
            default_factory: Any = dataclasses.MISSING,
            choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
            range: str | None = None, resumable: bool = False, flag: str | None = None,
            stored: Callable[[Any], Any] | None = None, metavar: Any = None) -> Any:
    """A dataclass field that carries its help, choices, range and resume rule (module docstring)."""
    if not help:
        raise ValueError("a setting needs its help text")
    if range is not None:
        Interval.parse(range)  # a typo in a range is a bug: fail at import
    metadata = {"help": help, "choices": choices, "range": range, "resumable": resumable,
                "flag": flag, "stored": stored, "metavar": metavar}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def registry(module: str, name: str) -> Callable[[], tuple[Any, ...]]:
    """``choices`` read lazily from ``noisecraft.<module>.<name>`` (the keys of a dict)."""
    def keys() -> tuple[Any, ...]:
        return tuple(getattr(importlib.import_module(f"noisecraft.{module}"), name))
    return keys


@dataclass(frozen=True)
class Interval:
    """A number range parsed from text such as ``"[0, 1)"``; ``inf`` for an open end."""

    lo: float
    hi: float
    lo_closed: bool
    hi_closed: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> Interval:
        text = text.strip()
        if len(text) < 5 or text[0] not in "[(" or text[-1] not in "])" or "," not in text:
            raise ValueError(f"bad range {text!r}; write e.g. '[0, 1)'")
        lo, hi = (_bound(part) for part in text[1:-1].split(","))
        return cls(lo, hi, text[0] == "[", text[-1] == "]", text)

    def __contains__(self, value: float) -> bool:
        above = value >= self.lo if self.lo_closed else value > self.lo
        below = value <= self.hi if self.hi_closed else value < self.hi
        return above and below

    def describe(self, integer: bool) -> str:
        """"an integer >= 1", "a number > 0", "a number in [0, 1)"."""
        what = "an integer" if integer else "a number"
        lo = int(self.lo) if integer and math.isfinite(self.lo) else self.lo
        if math.isinf(self.hi):
            return f"{what} {'>=' if self.lo_closed else '>'} {lo:g}"
        return f"{what} in {self.text}"


# The training-loop settings every trainer has (noisecraft train and train-autoencoder), declared
# once; each call makes a fresh dataclass field.
def seed_setting() -> Any:
    return setting(0, "seed for weights, noise and data order", range=SEED_RANGE)


def log_every_setting() -> Any:
    return setting(50, "log the loss every N steps", range="[1, inf)", resumable=True)


def sample_every_setting(grid: str) -> Any:
    return setting(500, f"write a {grid} grid every N steps and at the end (0 = never)",
                   range="[0, inf)", resumable=True)


def checkpoint_every_setting() -> Any:
    return setting(500, "save a checkpoint every N steps (0 = only at the end)",
                   range="[0, inf)", resumable=True)


def num_workers_setting() -> Any:
    return setting(0, "DataLoader workers", range="[0, inf)", resumable=True)


def _bound(text: str) -> float:
    """An end of a range: an int when written as one, so that large integer bounds (64-bit seeds)
    compare exactly (as a float, 9223372036854775807 rounds up to 2⁶³ and lets 2⁶³ in)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def choices_of(f: dataclasses.Field) -> tuple[Any, ...] | None:
    """The valid values of a setting (a registry read now), or None."""
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return tuple(choices() if callable(choices) else choices)


UNIFORM_SIGMA_REL = 1 / math.sqrt(12)
"""The longest EMA length σ_rel: the power-function profile of exponent 0, the plain average."""


def parse_sigma_rels(text: str | None, name: str = "ema_profiles") -> tuple[float, ...]:
    """'0.05,0.1' → (0.05, 0.1); None → (): EMA lengths σ_rel, each in (0, 1/√12], no repeats
    (``noisecraft.posthoc`` holds their maths)."""
    if text is None:
        return ()
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{name} must be comma-separated EMA lengths sigma_rel, e.g. "
                         f"0.05,0.1, got {text!r}") from None
    bad = [v for v in values if not 0 < v <= UNIFORM_SIGMA_REL]
    if bad:
        raise ValueError(f"{name}: EMA length sigma_rel must be in (0, {UNIFORM_SIGMA_REL:.4f}] "
                         f"(1/sqrt(12) is the uniform average), got {bad[0]!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} lists a length twice: {text!r}")
    return values


def is_setting(f: dataclasses.Field) -> bool:
    return "help" in f.metadata


def settings_of(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if is_setting(f)]


def value_kind(hint: Any) -> tuple[type, int | None, bool]:
    """(scalar type, tuple length or None, whether None is allowed) of a setting's annotation:
    ``int``, ``float``, ``bool``, ``str``, ``tuple[float, float]``, each optionally ``| None``."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise TypeError(f"a setting must have one type (optionally | None), got {hint!r}")
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if not args or any(a is not args[0] for a in args):
            raise TypeError(f"a tuple setting must hold one type, got {hint!r}")
        return args[0], len(args), optional
    if hint not in (int, float, bool, str):
        raise TypeError(f"a setting must be int, float, bool, str or a tuple of one, got {hint!r}")
    return hint, None, optional


def check_value(name: str, value: Any, f: dataclasses.Field, hint: Any) -> Any:
    """``value`` checked against the setting ``f`` (tuples come back as tuples); ValueError
    naming ``name`` otherwise."""
    kind, length, optional = value_kind(hint)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} must be set, got None")
    if length is not None:
        if not isinstance(value, list | tuple) or len(value) != length:
            raise ValueError(f"{name} must be {length} values, got {value!r}")
        return tuple(_check_scalar(name, v, kind, f) for v in value)
    return _check_scalar(name, value, kind, f)


def _check_scalar(name: str, value: Any, kind: type, f: dataclasses.Field) -> Any:
    rng = Interval.parse(f.metadata["range"]) if f.metadata.get("range") else None
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
    elif kind in (int, float):
        numeric = (isinstance(value, int) if kind is int else isinstance(value, int | float))
        if isinstance(value, bool) or not numeric or not math.isfinite(value) or (
                rng is not None and value not in rng):
            what = rng.describe(kind is int) if rng else ("an integer" if kind is int
                                                          else "a finite number")
            raise ValueError(f"{name} must be {what}, got {value!r}")
    elif not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    valid = choices_of(f)
    if valid is not None and value not in valid:
        raise ValueError(f"unknown {name} {value!r}; choose one of "
                         f"{', '.join(map(str, valid))}")
    return value


class Settings:
    """Base of the config dataclasses: ``__post_init__`` checks each :func:`setting` field."""

    flag_prefix: ClassVar[str | None] = ""
    """Put before each flag name of this class in ``noisecraft train``; None: no train flags."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in settings_of(type(self)):
            value = check_value(f.name, getattr(self, f.name), f, hints[f.name])
            object.__setattr__(self, f.name, value)


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    integer(name, value, minimum=minimum)


@dataclass
class DataConfig:
    """What was trained on and how it was transformed.

    ``preprocess`` is ``Preprocess.to_dict()`` of the dataset, so sampling can undo the
    scaling and write uint8 images of the data's own size and channels. ``shape`` is one
    example's shape, (C, H, W) for images or (D,) for vectors. Filled in from the dataset
    (``new_run_config``), not from flags: the flags that shape it are :class:`BuildConfig`'s.
    """

    spec: str
    kind: str = "image"
    shape: list[int] = field(default_factory=list)
    num_classes: int | None = None
    image_size: int | None = None
    channels: int | None = None
    preprocess: dict[str, Any] | None = None
    skip_bad: bool = False  # unreadable files are skipped (counted and named) instead of fatal

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(f"data kind must be one of {', '.join(DATA_KINDS)}, got {self.kind!r}")
        if self.num_classes is not None:
            _positive_int("num_classes", self.num_classes)
        for name in ("image_size", "channels"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))


def _audio_stored(config: RunConfig, name: str) -> int | None:
    """An audio feature setting as config.json records it (None for a run that is not audio)."""
    return ((config.data.preprocess or {}).get("audio") or {}).get(name)


@dataclass
class BuildConfig(Settings):
    """What ``noisecraft train`` builds a new run from: data, network, schedule, objective's
    parametrisation. config.json records each of them in its own place (``stored``); the
    defaults here are also those of :func:`noisecraft.train.new_run_config`."""

    data: str | None = setting(
        None, "dataset spec: digits, moons, swissroll, gmm8, checkerboard, a folder, .npz, IDX "
        "folder or shard pattern (required for a new run; with --resume: the run's own)",
        stored=lambda c: c.data.spec)
    net: str | None = setting(
        None, "network preset (default: tiny for images, audio for spectrograms, mlp for vectors)",
        choices=registry("nets", "PRESETS"), metavar="PRESET", stored=lambda c: _preset_of(c.net))
    schedule: str = setting("linear", "noise schedule", choices=registry("schedule", "SCHEDULES"),
                            stored=lambda c: c.schedule.get("kind"))
    timesteps: int = setting(1000, "diffusion steps T", range="[1, inf)", metavar="T",
                             stored=lambda c: c.schedule.get("T"))
    prediction: str = setting("eps", "what the net predicts (flow: the velocity eps - x0 of "
                              "the straight path; flow matching is --schedule flow --prediction "
                              "flow --time-sampler logit-normal; edm: EDM's preconditioned F "
                              "(with --sigma-data), with --time-sampler log-normal)",
                              choices=registry("denoiser", "PREDICTIONS"),
                              stored=lambda c: c.prediction)
    sigma_data: float = setting(
        SIGMA_DATA, "with --prediction edm: sigma_data, the data's standard deviation that EDM's "
        "preconditioning assumes (0.5 for pixels in [-1, 1]; about 1 for latents scaled to unit "
        "variance)", range="(0, inf)", stored=lambda c: c.sigma_data)
    learned_variance: bool = setting(
        False, "the net also outputs the reverse-step variance (Improved DDPM's interpolation "
        "between beta and beta_tilde); train it with --loss hybrid or vlb",
        stored=lambda c: bool(c.net.get("learned_variance", False)))
    experts: int = setting(
        1, "noise-level experts (eDiff-I): K copies of --net, expert k trained and used only on "
        "t in (T k/K, T (k+1)/K]", range="[1, inf)", metavar="K",
        stored=lambda c: c.net["experts"] if c.net.get("arch") == "experts" else 1)
    experts_shared_init: bool = setting(
        False, "with --experts: all experts start from the same weights",
        stored=lambda c: c.net.get("arch") == "experts" and c.net["shared_init"])
    class_cond: bool = setting(False, "condition on the data's labels",
                               stored=lambda c: c.data.num_classes is not None)
    image_size: int | None = setting(None, "resize + centre-crop images to this size (default: "
                                     "the data's own)", range="[1, inf)",
                                     stored=lambda c: c.data.image_size)
    channels: int | None = setting(None, "convert images to 1, 3 or 4 channels (default: the "
                                   "data's own)", choices=(1, 3, 4),
                                   stored=lambda c: c.data.channels)
    flip: bool = setting(False, "random left-right flips",
                         stored=lambda c: bool((c.data.preprocess or {}).get("flip")))
    skip_bad: bool = setting(False, "skip files that cannot be read (truncated or corrupt "
                             "pictures, bad WAV files), counting and naming them in one warning, "
                             "instead of stopping", stored=lambda c: c.data.skip_bad)
    n_mels: int | None = setting(
        None, f"audio: mel bands, the spectrogram's height (default {AudioConfig.n_mels})",
        range="[1, inf)", stored=lambda c: _audio_stored(c, "n_mels"))
    frames: int | None = setting(
        None, f"audio: spectrogram frames, its width; a clip is (frames - 1) * hop-length samples "
        f"(default {AudioConfig.frames})", range="[2, inf)", stored=lambda c: _audio_stored(c, "frames"))
    n_fft: int | None = setting(
        None, f"audio: FFT size, which is also the window's length (default {AudioConfig.n_fft})",
        range="[1, inf)", stored=lambda c: _audio_stored(c, "n_fft"))
    hop_length: int | None = setting(
        None, f"audio: samples between frames, at most n-fft / 2 (default {AudioConfig.hop_length})",
        range="[1, inf)", stored=lambda c: _audio_stored(c, "hop_length"))
    autoencoder: str | None = setting(
        None, "latent diffusion: train in the latent space of this autoencoder (a `noisecraft "
        "train-autoencoder` run or a diffusers AutoencoderKL folder); the latents are encoded once "
        "and cached", metavar="AE_DIR", stored=lambda c: c.latent.autoencoder if c.latent else None)
    latent_posterior: str = setting(
        "mean", "with --autoencoder: train on the posterior mean of each latent, or on a fresh "
        "draw from the posterior each time", choices=LATENT_POSTERIORS,
        stored=lambda c: c.latent.posterior if c.latent else "mean")


# The label dropout of `noisecraft train --class-cond` when --label-dropout is not given: a run
# that cannot be guided (no null condition trained) is a poor default (Ho & Salimans use 0.1-0.2).
CLASS_COND_LABEL_DROPOUT = 0.1


def resolve_label_dropout(value: float | None, class_conditional: bool) -> float:
    """The label dropout a run trains with: unset (None) is :data:`CLASS_COND_LABEL_DROPOUT` for
    a class-conditional run (so it can be guided) and 0 otherwise; a positive value needs a
    class-conditional run (there are no labels to drop)."""
    if value is None:
        return CLASS_COND_LABEL_DROPOUT if class_conditional else 0.0
    if value > 0 and not class_conditional:
        raise ValueError(f"label_dropout {value:g} (--label-dropout) needs a class-conditional run "
                         "(--class-cond)")
    return float(value)


MAX_TIME_CLOCKS = ("cpu", "wall")
"""What ``train --max-time`` counts (``noisecraft.train.trainer.clock``)."""
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration_seconds(text: str, name: str = "max_time (--max-time)") -> float:
    """The seconds in a duration written as a number and a unit: ``90s``, ``10m``, ``1.5h``,
    ``2d`` (a bare number is seconds); ValueError naming ``name`` and the text otherwise."""
    import re

    match = re.fullmatch(r"\s*(\d+\.?\d*|\.\d+)\s*([smhd]?)\s*", text) if isinstance(text, str) else None
    seconds = float(match[1]) * DURATION_UNITS[match[2] or "s"] if match else math.nan
    if not (0 < seconds < math.inf):
        raise ValueError(f"{name} {text!r} is not a duration: write a positive number with a unit "
                         "s, m, h or d, e.g. 90s, 10m, 1.5h")
    return seconds


@dataclass
class TrainConfig(Settings):
    """Optimisation settings. ``steps`` counts optimizer steps (each of ``accum`` micro-batches).

    ``batch_size`` is per process; the global batch is ``batch_size × accum × world size``.
    The defaults suit the runs this library is mostly used for — a few thousand steps on a CPU
    or one GPU: an EMA decay of 0.999 averages over ~1,000 steps (0.9999 would average over
    10,000, longer than the run, so the EMA would still be mostly its warm-up), a 100-step
    warm-up, and a sample grid and checkpoint every 500 steps.
    """

    steps: int = setting(2000, "total optimizer steps", range="[1, inf)", resumable=True)
    max_time: str | None = setting(
        None, "stop at --steps or when this much training time is used, whichever comes first, "
        "e.g. 90s, 10m, 1.5h, with a checkpoint there (default: no limit); training time is the "
        "optimizer steps with their data loading, not sample grids or checkpoints; state.json "
        "keeps the time used, so a resumed run continues the budget, and may extend it (a "
        "cosine --lr-schedule then spans the extended budget)",
        resumable=True, metavar="DURATION")
    max_time_clock: str = setting(
        "cpu", "what --max-time counts: cpu, this process's CPU seconds over all its threads "
        "(data loading in the process included, DataLoader workers not), for comparisons at "
        "equal compute on a CPU; or wall, elapsed seconds (use it on a GPU)",
        choices=MAX_TIME_CLOCKS, resumable=True)
    batch_size: int = setting(128, "examples per process per micro-batch", range="[1, inf)")
    lr: float = setting(2e-4, "peak AdamW learning rate", range="(0, inf)")
    warmup: int = setting(100, "linear LR warm-up steps", range="[0, inf)")
    lr_schedule: str = setting("constant", "after warm-up: constant, or cosine decay to 0 at "
                               "--steps or at the end of the --max-time budget, whichever "
                               "comes first", choices=LR_SCHEDULES)
    weight_decay: float = setting(0.0, "AdamW weight decay", range="[0, inf)")
    adam_betas: tuple[float, float] = setting((0.9, 0.999), "AdamW's (beta1, beta2)",
                                              range="[0, 1)", metavar=("B1", "B2"))
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0 = off)", range="[0, inf)")
    accum: int = setting(1, "micro-batches per optimizer step", range="[1, inf)")
    ema_decay: float = setting(0.999, "EMA decay per optimizer step", range="[0, 1)")
    ema_warmup: bool = setting(True, "EMA decay min(decay, (1 + n)/(10 + n)) over the first "
                               "updates, so early weights are forgotten")
    ema_profiles: str | None = setting(None, "power-function EMA profiles to track besides --ema-decay "
                                "(EDM2), as comma-separated lengths sigma_rel in (0, 0.2887], "
                                "e.g. 0.05,0.1 (default: none); with --snapshot-every, "
                                "`noisecraft ema` reconstructs any length afterwards",
                                metavar="SIGMA_RELS")
    snapshot_every: int = setting(0, "with --ema-profiles: keep a snapshot of the profiles every "
                                  "N steps and at --steps (phema-STEP.safetensors, each the size "
                                  "of the profiles; 0 = off)", range="[0, inf)", resumable=True)
    label_dropout: float | None = setting(
        None, "with --class-cond: fraction of labels replaced by the null label, for "
        f"classifier-free guidance (default {CLASS_COND_LABEL_DROPOUT:g} for class-conditional "
        "runs, 0 otherwise; RunConfig resolves it)", range="[0, 1)")
    loss: str = setting("simple", "training objective: simple (MSE on the prediction), min-snr "
                        "(min-SNR-gamma weighted MSE), vlb (the variational bound), hybrid "
                        "(simple + lambda vlb; with --learned-variance)",
                        choices=registry("losses", "LOSSES"))
    min_snr_gamma: float = setting(5.0, "gamma of --loss min-snr", range="(0, inf)")
    hybrid_lambda: float = setting(0.001, "lambda of --loss hybrid (weight of the bound)",
                                   range="[0, inf)")
    time_sampler: str = setting("uniform", "how t is drawn: uniform, importance (Improved "
                                "DDPM: p_t from the recent losses at t, reweighted to stay "
                                "unbiased), logit-normal (SD3: t/T = sigmoid(z), z ~ N(0, 1), "
                                "for flow matching with --schedule flow --prediction flow), or "
                                "log-normal (EDM: ln(sigma/alpha) ~ N(-1.2, 1.2^2))",
                                choices=registry("losses", "TIME_SAMPLERS"))
    seed: int = seed_setting()
    log_every: int = log_every_setting()
    sample_every: int = sample_every_setting("sample")
    checkpoint_every: int = checkpoint_every_setting()
    num_workers: int = num_workers_setting()
    precision: str = setting("auto", "the network's arithmetic in training: bf16 (autocast, "
                             "float32 weights and loss), fp32, or auto: bf16 on CUDA, fp32 on a "
                             "CPU (bf16 is ~1.6x faster on a CPU with native bf16, e.g. AVX512-BF16 "
                             "or AMX, and slower on one without)", choices=PRECISIONS)
    compile: str = setting("auto", "torch.compile the network: auto (on CUDA only: on a CPU "
                           "compiling costs more than it saves), on, off; a failed compile "
                           "falls back to eager with a warning", choices=COMPILE_MODES,
                           resumable=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_time is not None:
            duration_seconds(self.max_time)  # a bad duration fails here, not hours later
        parse_sigma_rels(self.ema_profiles)


@dataclass
class SamplingConfig(Settings):
    """Defaults for ``noisecraft sample``/``evaluate`` and the periodic grids during training.

    Not ``noisecraft train`` flags: ``new_run_config`` picks them by the data's kind (x̂_0
    clipped to [−1, 1] and 64-picture grids for images, 2,000 unclipped points for vectors).
    """

    flag_prefix: ClassVar[str | None] = None

    sampler: str = setting("ddim", "sampler", choices=registry("samplers", "SAMPLERS"))
    steps: int = setting(DEFAULT_STEPS, "sampling steps", range="[1, inf)")
    n: int = setting(64, "number of samples", range="[1, inf)")
    clip: tuple[float, float] | None = setting(None, "clamp x0-hat to (lo, hi) while sampling")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip is not None and not self.clip[0] < self.clip[1]:
            raise ValueError(f"clip must be (lo, hi) with lo < hi, got {self.clip!r}")


CONDITION_KINDS = ("none", "class", "text")
DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
"""The default frozen text encoder (``noisecraft.conditioning.load_text_encoder``)."""
DEFAULT_CAPTION_DROPOUT = 0.1


@dataclass
class ConditionConfig(Settings):
    """What a run is conditioned on, and for text where its captions and embeddings come from.

    ``kind``: none, class (the data's labels; ``--class-cond`` is the same) or text (captions
    through a frozen encoder, ``noisecraft.conditioning``). For text, config.json also records
    the encoder's weights hash (``text_encoder_sha256``, checked when sampling), the caption
    source ("template": ``caption_template`` over the labels with ``class_names``; "data": the
    data's own captions) and the caption dropout, so a run rebuilds with no network access.
    """

    kind: str = setting("none", "what the model is conditioned on: none, class (the data's "
                        "labels, as --class-cond), or text (captions through a frozen text "
                        "encoder and cross-attention; needs pip install noisecraft[text])",
                        choices=CONDITION_KINDS, flag="condition")
    text_encoder: str | None = setting(
        None, f"with --condition text: the frozen text encoder, {DEFAULT_TEXT_ENCODER} (the "
        f"default) or a local Hugging Face encoder folder", metavar="NAME_OR_DIR")
    caption_template: str | None = setting(
        None, "with --condition text: captions from the labels, e.g. 'a handwritten digit {name}' "
        "({label}: the integer, {name}: the class name); default: the data's own captions "
        "(.txt/.json members of shards, .txt sidecars in image folders)", metavar="TEMPLATE")
    caption_dropout: float | None = setting(
        None, f"with --condition text: fraction of captions replaced by the empty prompt (the "
        f"null condition), for classifier-free guidance (default {DEFAULT_CAPTION_DROPOUT})",
        range="[0, 1)")
    text_encoder_sha256: str | None = None
    caption_source: str | None = None
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind != "text":
            given = [f for f in ("text_encoder", "caption_template", "caption_dropout",
                                 "text_encoder_sha256", "caption_source", "class_names")
                     if getattr(self, f) is not None]
            if given:
                flag = "--" + given[0].replace("_", "-")
                raise ValueError(f"{given[0]} ({flag}) applies only to text conditioning "
                                 f"(--condition text), not to condition {self.kind!r}")
            return
        if self.caption_dropout is None:
            self.caption_dropout = DEFAULT_CAPTION_DROPOUT
        source = "template" if self.caption_template is not None else "data"
        if self.caption_source is None:
            self.caption_source = source
        if self.caption_source != source:
            raise ValueError(f"caption_source {self.caption_source!r} does not match "
                             f"caption_template {self.caption_template!r}")
        if self.caption_template is not None:
            from .data.captions import check_template

            check_template(self.caption_template, self.class_names or ["?"])


AUTOENCODER_KINDS = ("noisecraft", "diffusers")


@dataclass
class LatentConfig:
    """A latent run: diffusion on z_s = (z − shift) · scale_factor, z from the autoencoder's
    posterior q(z|x) (``posterior``: its mean, or a fresh draw each time an example is used).

    ``scale_factor`` is measured on the training latents, 1/std(z), so z_s has unit variance
    (Stable Diffusion's 0.18215, measured instead of fixed); ``shift_factor`` is the autoencoder's
    own (0 for noisecraft's). ``autoencoder`` is the folder, ``sha256`` its identity (config.json
    and weights); ``shape`` is one latent's (C, H', W').
    """

    autoencoder: str
    sha256: str
    kind: str = "noisecraft"
    posterior: str = "mean"
    scale_factor: float = 1.0
    shift_factor: float = 0.0
    shape: list[int] = field(default_factory=list)

    def to_model(self, z: Any) -> Any:
        """Autoencoder latents z → the network's z_s (:func:`noisecraft.latentscale.scale_latent`)."""
        from .latentscale import scale_latent

        return scale_latent(z, self.scale_factor, self.shift_factor)

    def from_model(self, z_s: Any) -> Any:
        """The network's z_s → autoencoder latents z (:func:`~noisecraft.latentscale.unscale_latent`)."""
        from .latentscale import unscale_latent

        return unscale_latent(z_s, self.scale_factor, self.shift_factor)

    def __post_init__(self) -> None:
        if self.kind not in AUTOENCODER_KINDS:
            raise ValueError(f"autoencoder kind must be one of {', '.join(AUTOENCODER_KINDS)}, "
                             f"got {self.kind!r}")
        if self.posterior not in LATENT_POSTERIORS:
            raise ValueError(f"latent posterior must be one of {', '.join(LATENT_POSTERIORS)}, "
                             f"got {self.posterior!r}")
        for name, lo in (("scale_factor", 0.0), ("shift_factor", -math.inf)):
            number(name, getattr(self, name), lo if lo == 0 else None, low_open=True)
        self.shape = list(self.shape)
        if len(self.shape) != 3:
            raise ValueError(f"latent shape must be (C, H, W), got {self.shape!r}")
        for s in self.shape:
            _positive_int("latent shape", s)


@dataclass
class RunConfig:
    """Everything ``config.json`` holds. ``net`` is ``nets`` config dict (``net.config``)."""

    net: dict[str, Any]
    schedule: dict[str, Any]
    prediction: str
    data: DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    version: int = CONFIG_VERSION
    latent: LatentConfig | None = None
    sigma_data: float = SIGMA_DATA  # EDM's σ_d (read by prediction "edm" only)

    def __post_init__(self) -> None:
        from .denoiser import PREDICTIONS

        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; choose one of "
                             f"{', '.join(PREDICTIONS)}")
        self.sigma_data = number("sigma_data", self.sigma_data, 0.0, low_open=True)
        if self.sigma_data != SIGMA_DATA:
            if self.prediction != "edm":
                raise ValueError(f"sigma_data {self.sigma_data:g} applies to prediction 'edm' "
                                 f"only (this run predicts {self.prediction!r})")
            if isinstance(self.net, dict) and self.net.get("arch") == "linear-diffusion":
                raise ValueError(f"the closed-form linear net reads EDM's F at sigma_data "
                                 f"{SIGMA_DATA:g}; it cannot take sigma_data {self.sigma_data:g}")
        if isinstance(self.condition, ConditionConfig) and isinstance(self.data, DataConfig):
            labelled = self.data.num_classes is not None
            if self.condition.kind == "none" and labelled:
                self.condition.kind = "class"  # configs written before `condition` existed
            if (self.condition.kind == "class") != labelled:
                raise ValueError(f"condition {self.condition.kind!r} does not match data."
                                 f"num_classes {self.data.num_classes!r}")
            if (self.condition.kind == "text") != isinstance(self.net.get("text_dim"), int):
                raise ValueError(f"condition {self.condition.kind!r} needs a net with text_dim "
                                 "exactly when it is 'text'")
        if isinstance(self.train, TrainConfig) and isinstance(self.data, DataConfig):
            dropout = resolve_label_dropout(self.train.label_dropout, self.data.num_classes is not None)
            if dropout != self.train.label_dropout:  # a copy: the caller's TrainConfig is theirs
                self.train = dataclasses.replace(self.train, label_dropout=dropout)
        learned = bool(self.net.get("learned_variance", False)) if isinstance(self.net, dict) else False
        loss = self.train.loss if isinstance(self.train, TrainConfig) else None
        if loss == "hybrid" and not learned:
            raise ValueError("loss 'hybrid' trains a learned variance: it needs a net with "
                             "learned_variance (--learned-variance)")
        if learned and loss in ("simple", "min-snr"):
            raise ValueError(f"a net with learned_variance needs loss 'hybrid' or 'vlb' (loss "
                             f"{loss!r} trains only the mean, leaving the variance untrained)")

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: Any, source: str = "config.json") -> RunConfig:
        """Rebuild from :meth:`to_dict`'s output. Unknown or missing keys and bad values raise
        :class:`RunError` naming ``source`` and the key."""
        if not isinstance(d, dict):
            raise RunError(f"{source}: expected a JSON object, got {type(d).__name__}")
        version = d.get("version")
        if version is None:
            raise RunError(f"{source}: missing key 'version' (not a noisecraft run config?)")
        if not isinstance(version, int) or version > CONFIG_VERSION or version < 1:
            raise RunError(f"{source}: config version {version!r} is not supported "
                           f"(this noisecraft reads version {CONFIG_VERSION})")
        return _build(cls, d, source, "")


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v) for v in value]
    return value


def _build(cls: type, d: dict[str, Any], source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in d:
        if key not in fields:
            raise RunError(f"{source}: unknown key {prefix + key!r}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in d:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                raise RunError(f"{source}: missing key {prefix + name!r}")
            continue
        value = d[name]
        sub = _dataclass_in(hints[name])
        if sub is not None and value is not None:
            if not isinstance(value, dict):
                raise RunError(f"{source}: key {prefix + name!r} must be an object")
            value = _build(sub, value, source, f"{prefix}{name}.")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise RunError(f"{source}: {prefix.rstrip('.') or 'config'}: {e}") from None


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass in a type hint such as ``DataConfig`` or ``DataConfig | None``."""
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


# --------------------------------------------------------------------------- flags of `train`
def flag_sections() -> list[tuple[str | None, type]]:
    """The classes whose settings are ``noisecraft train`` flags, with the RunConfig attribute
    that holds each (None for :class:`BuildConfig`, whose fields say where they are stored)."""
    out: list[tuple[str | None, type]] = [(None, BuildConfig)]
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        cls = _dataclass_in(hints[f.name])
        if (cls is not None and issubclass(cls, Settings) and cls.flag_prefix is not None
                and settings_of(cls)):
            out.append((f.name, cls))
    return out


def flag_name(cls: type, f: dataclasses.Field) -> str:
    """The flag of setting ``f`` of ``cls``, without the leading ``--``."""
    return (cls.flag_prefix or "") + (f.metadata.get("flag") or f.name.replace("_", "-"))


def stored_value(config: RunConfig, attr: str | None, f: dataclasses.Field) -> Any:
    """The value a run's config.json holds for setting ``f`` (of section ``attr``)."""
    stored = f.metadata.get("stored")
    if stored is not None:
        return stored(config)
    return getattr(getattr(config, attr), f.name)  # type: ignore[arg-type]


def _preset_of(net_config: dict[str, Any]) -> str | None:
    """The preset that, sized like this net, gives exactly its config (None: a custom net)."""
    from .nets import PRESETS, build

    if net_config.get("arch") == "experts":  # noise-level experts: K copies of one preset
        net_config = net_config["expert"]
    sizing = {k: net_config.get(k) for k in ("in_channels", "image_size", "T", "num_classes",
                                              "learned_variance", "text_dim") if k in net_config}
    for name, preset in PRESETS.items():
        if preset["arch"] != net_config.get("arch"):
            continue
        try:
            if build(name, **sizing).config == net_config:
                return name
        except ValueError:
            continue
    return None
