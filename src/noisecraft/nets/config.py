"""Argument checks shared by the backbones' constructors (the library's one family,
:mod:`noisecraft.checks`, re-exported), and the JSON form of their configs."""

from __future__ import annotations

from typing import Any

from ..checks import (  # noqa: F401  (re-exported for the backbones)
    boolean,
    int_tuple,
    optional_positive_int,
    positive_int,
    positive_number,
    probability,
)


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
