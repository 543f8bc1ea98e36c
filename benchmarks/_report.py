"""Shared by the benchmark scripts: put a script's table into BENCHMARKS.md between its markers,
and the sliced 1-Wasserstein distance the 2-D sampler benchmarks report (written once here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def write_section(name: str, text: str, *, start: str | None = None, end: str | None = None,
                  path: Path = BENCHMARKS) -> None:
    """Replace the block between ``<!-- name -->`` and ``<!-- /name -->`` (or append it).

    Written through a temporary file and ``os.replace`` so an interrupted run never leaves a
    half-written BENCHMARKS.md.
    """
    start = start or f"<!-- {name} -->"
    end = end or f"<!-- /{name} -->"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}\n{end}"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    print(f"wrote {path}")


def sliced_w1(a: Any, b: Any, directions: int = 64) -> float:
    """Mean over ``directions`` fixed random unit directions of the 1-D Wasserstein-1 distance
    between the projections of two equal-size samples (sorted differences). Torch tensors use
    directions from torch's generator seeded 0, numpy arrays numpy's (the figures recorded in
    BENCHMARKS.md were made so; the two draw different directions)."""
    if isinstance(a, np.ndarray):
        d = np.random.default_rng(0).standard_normal((a.shape[1], directions))
        d /= np.linalg.norm(d, axis=0)
        return float(np.abs(np.sort(a @ d, 0) - np.sort(b @ d, 0)).mean())
    import torch

    d = torch.randn(a.shape[1], directions, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    d /= d.norm(dim=0)
    return ((a @ d).sort(0).values - (b @ d).sort(0).values).abs().mean().item()
