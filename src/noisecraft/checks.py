"""The one family of argument checks: each returns the value (converted) or raises the one
ValueError naming the argument and the value. Booleans are not numbers here (``True`` is not 1
steps), and a float is not an integer.

Used by the library's public functions, the backbones' constructors (``nets.config`` re-exports
them) and the config dataclasses; the command line's argparse converters parse text into these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum] (either bound may be None)."""
    if (not _is_int(value) or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        what = ("a positive integer" if minimum == 1 and maximum is None
                else "a non-negative integer" if minimum == 0 and maximum is None
                else f"an integer >= {minimum}" if maximum is None and minimum is not None
                else f"an integer in [{minimum}, {maximum}]" if minimum is not None
                else f"an integer <= {maximum}" if maximum is not None else "an integer")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    return integer(name, value, minimum=1)


def optional_positive_int(name: str, value: Any) -> int | None:
    return None if value is None else positive_int(name, value)


def number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in the interval low..high (closed unless ``*_open``)."""
    ok = _is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is None and high is None:
            what = "a finite number"
        else:
            lo = "(" if low_open or low is None else "["
            hi = ")" if high_open or high is None else "]"   # ±inf are never admitted
            what = (f"a number in {lo}{low if low is not None else '-inf'}, "
                    f"{high if high is not None else 'inf'}{hi}")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def positive_number(name: str, value: Any) -> float:
    return number(name, value, 0, low_open=True)


def probability(name: str, value: Any) -> float:
    """A number in [0, 1) (a dropout rate: 1 would drop everything)."""
    return number(name, value, 0, 1, high_open=True)


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def int_tuple(name: str, value: Any, allow_empty: bool = False) -> tuple[int, ...]:
    """A non-empty (unless ``allow_empty``) sequence of positive integers, as a tuple."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list of positive integers, got {value!r}")
    items = tuple(positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))
    if not items and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return items
