"""A run's configuration: plain dataclasses that round-trip through ``config.json``.

``config.json`` holds everything needed to rebuild a trained model without the training code's
help: the network (``nets.from_config``), the schedule (``Schedule.to_dict``), the prediction
type, the data spec with its preprocessing (``Preprocess.to_dict``) and the sampling defaults.
Unknown keys are an error naming the key — a typo must not fall back to a default silently.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import RunError

CONFIG_VERSION = 1
LR_SCHEDULES = ("constant", "cosine")
DATA_KINDS = ("image", "vector")


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# torch.manual_seed takes a 64-bit integer; a larger seed fails deep inside with an overflow.
MAX_SEED = 2**63 - 1


def _at_most(name: str, value: int, limit: int, why: str) -> None:
    """A size bound, checked before anything is allocated or seeded from ``value``."""
    if value > limit:
        raise ValueError(f"{name} {value} is too large: at most {limit} ({why})")


def _finite(name: str, value: Any, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        lo_s = "" if lo is None else f"{'(' if lo_open else '['}{lo}, "
        hi_s = "" if hi is None else f"{hi}{')' if hi_open else ']'}"
        where = f" in {lo_s or '(-inf, '}{hi_s or 'inf)'}" if lo is not None or hi is not None else ""
        raise ValueError(f"{name} must be a finite number{where}, got {value!r}")


@dataclass
class DataConfig:
    """What was trained on and how it was transformed.

    ``preprocess`` is ``Preprocess.to_dict()`` of the dataset, so sampling can undo the
    scaling and write uint8 images of the data's own size and channels. ``shape`` is one
    example's shape, (C, H, W) for images or (D,) for vectors.
    """

    spec: str
    kind: str = "image"
    shape: list[int] = field(default_factory=list)
    num_classes: int | None = None
    image_size: int | None = None
    channels: int | None = None
    preprocess: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(f"data kind must be one of {', '.join(DATA_KINDS)}, got {self.kind!r}")
        if self.num_classes is not None:
            _positive_int("num_classes", self.num_classes)
        for name in ("image_size", "channels"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))


@dataclass
class TrainConfig:
    """Optimisation settings. ``steps`` counts optimizer steps (each of ``accum`` micro-batches).

    ``batch_size`` is per process; the global batch is ``batch_size × accum × world size``.
    ``label_dropout`` is the fraction of labels replaced by the null label −1 in class-conditional
    runs (for classifier-free guidance). ``grad_clip`` 0 switches clipping off.
    """

    steps: int = 10_000
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 500
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    accum: int = 1
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    label_dropout: float = 0.0
    seed: int = 0
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 1000
    num_workers: int = 0

    def __post_init__(self) -> None:
        _positive_int("steps", self.steps)
        _positive_int("batch_size", self.batch_size)
        _finite("lr", self.lr, 0, None, lo_open=True)
        _positive_int("warmup", self.warmup, 0)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                             f"got {self.lr_schedule!r}")
        _finite("weight_decay", self.weight_decay, 0)
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]
        if len(self.adam_betas) != 2:
            raise ValueError(f"adam_betas must be two numbers, got {self.adam_betas!r}")
        for b in self.adam_betas:
            _finite("adam_betas", b, 0, 1, hi_open=True)
        _finite("grad_clip", self.grad_clip, 0)  # 0 switches clipping off
        _positive_int("accum", self.accum)
        _finite("ema_decay", self.ema_decay, 0, 1, hi_open=True)
        if not isinstance(self.ema_warmup, bool):
            raise ValueError(f"ema_warmup must be true or false, got {self.ema_warmup!r}")
        _finite("label_dropout", self.label_dropout, 0, 1, hi_open=True)
        _positive_int("seed", self.seed, 0)
        _at_most("seed", self.seed, MAX_SEED, "a 64-bit seed")
        _positive_int("log_every", self.log_every)
        _positive_int("sample_every", self.sample_every, 0)  # 0: never
        _positive_int("checkpoint_every", self.checkpoint_every, 0)  # 0: only at the end
        _positive_int("num_workers", self.num_workers, 0)


@dataclass
class SamplingConfig:
    """Defaults for ``noisecraft sample`` and the periodic sample grids during training."""

    sampler: str = "ddim"
    steps: int = 50
    n: int = 64
    clip: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _positive_int("sampling steps", self.steps)
        _positive_int("sampling n", self.n)
        if self.clip is not None:
            self.clip = tuple(self.clip)  # type: ignore[assignment]
            if len(self.clip) != 2 or not self.clip[0] < self.clip[1]:
                raise ValueError(f"clip must be (lo, hi) with lo < hi, got {self.clip!r}")


@dataclass
class RunConfig:
    """Everything ``config.json`` holds. ``net`` is ``nets`` config dict (``net.config``)."""

    net: dict[str, Any]
    schedule: dict[str, Any]
    prediction: str
    data: DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        from .denoiser import PREDICTIONS

        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; choose one of "
                             f"{', '.join(PREDICTIONS)}")

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
