"""Argument checks shared by the backbones' constructors, and the JSON form of their configs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def optional_positive_int(name: str, value: Any) -> int | None:
    return None if value is None else positive_int(name, value)


def int_tuple(name: str, value: Any, allow_empty: bool = False) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list of positive integers, got {value!r}")
    items = tuple(positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))
    if not items and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return items


def probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def jsonable(config: dict[str, Any]) -> dict[str, Any]:
    """Tuples become lists so that ``config == json.loads(json.dumps(config))``."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def sample_shape(in_channels: int, image_size: int | None) -> tuple[int, ...]:
    """The per-example shape of x for nets that flatten it: (C,) for vectors, (C, S, S) for images."""
    in_channels = positive_int("in_channels", in_channels)
    if image_size is None:
        return (in_channels,)
    image_size = positive_int("image_size", image_size)
    return (in_channels, image_size, image_size)
