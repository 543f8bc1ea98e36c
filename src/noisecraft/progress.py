"""The one progress bar of every command and library call: a tqdm bar on stderr with an ETA,
or nothing at all when switched off (``--no-progress``, ``progress=False``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class Bar:
    """``Bar(total, desc, unit)``: ``update(k)``, ``close()``, ``n`` (the count so far),
    ``set_postfix(...)``; calling it (``bar(*anything)``) counts one, so it serves as a
    sampler callback. ``enabled=False`` draws nothing and counts nothing."""

    def __init__(self, total: int | None, desc: str, unit: str = "step", *, enabled: bool = True,
                 initial: int = 0, leave: bool = True):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                             dynamic_ncols=True, leave=leave)

    @property
    def n(self) -> int:
        return int(self._bar.n) if self._bar is not None else 0

    def update(self, k: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(k)

    def set_postfix(self, **values: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def __call__(self, *_: Any) -> None:
        self.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def counting(callback: Callable[..., Any] | None, bar: Bar | None) -> Callable[..., Any] | None:
    """``callback`` that also advances ``bar`` by one sampler step (either may be None)."""
    if bar is None:
        return callback

    def step(*args: Any) -> None:
        bar.update(1)
        if callback is not None:
            callback(*args)

    return step
