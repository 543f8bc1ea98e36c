"""Held-out examples: what a trained model is measured on (the explain page, the benchmarks)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import positive_int


def held_out(spec: str, n: int, *, image_size: int | None = None, channels: int | None = None
             ) -> tuple[Tensor, Tensor]:
    """The first ``n`` examples of ``spec``'s test split — of the whole data set where the spec
    has no test split — in model space: (x float32 (≤ n, ...), labels int64 (≤ n,), ``NO_LABEL``
    where an example has none), in the order ``load`` gives with its default seed, so the same
    spec and n give the same examples.

    ``image_size`` and ``channels`` are the run's picture preprocessing (None for other kinds).
    """
    from . import load  # the package's spec resolver (this module is imported by the package)

    positive_int("held_out: n", n)
    options = {k: v for k, v in (("image_size", image_size), ("channels", channels)) if v is not None}
    try:
        ds = load(spec, split="test", **options)
    except (ValueError, FileNotFoundError):  # no test split for this spec: use all of it
        ds = load(spec, split="all", **options)
    xs, labels = [], []
    for item in ds:
        if len(xs) >= n:
            break
        xs.append(item["x"])
        labels.append(int(item["label"]))
    if not xs:
        raise ValueError(f"no held-out data found for {spec!r}")
    return torch.stack(xs).float(), torch.tensor(labels, dtype=torch.long)
