"""What every section of the explain page shares: the run, its held-out data, the settings, and
the one way a section draws samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import data


def held_out(run: Any, n: int, data_spec: str | None = None) -> tuple[Tensor, Tensor | None]:
    """Up to ``n`` held-out examples of a loaded run's data (or of ``data_spec``: a run that records
    none, such as a diffusers folder, or other data), preprocessed as the run was trained
    (``noisecraft.data.held_out``), and their labels when the run is class-conditional (else None)."""
    pre = run.preprocess
    options: dict[str, Any] = {}
    if pre.kind == "image":
        options = {"image_size": pre.image_size, "channels": pre.channels}
    x, labels = data.held_out(data_spec or run.config.data.spec, n, **options)
    return x, (labels if run.num_classes is not None else None)


@dataclass
class Context:
    """What the sections share: the run, held-out data in model space, and the settings."""

    run: Any
    held_out: Tensor
    labels: Tensor | None
    seed: int
    n_samples: int
    steps: int
    yardstick: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def image(self) -> bool:
        return self.run.preprocess.kind == "image"

    def cond(self, n: int) -> dict[str, Any]:
        labels = self.run.default_labels(n)
        return {} if labels is None else {"labels": torch.as_tensor(labels, dtype=torch.long)}

    def pictures(self, x: Tensor) -> np.ndarray:
        return self.run.to_output(x.float().cpu())


def draw(ctx: Context, sampler: str, n: int, steps: int, callback: Any = None,
         x_T: Tensor | None = None) -> Tensor:
    """``n`` samples of the run with ``sampler`` (the page's seed and default labels)."""
    from ..samplers import sample

    return sample(ctx.run.denoiser, (n, *ctx.run.shape), ctx.run.schedule, sampler=sampler,
                  steps=steps, seed=ctx.seed, callback=callback, x_T=x_T, **ctx.cond(n)).float()


class Recorder:
    """A sampler callback that keeps x_t and x̂_0 at ``keep`` evenly spaced steps for the first
    ``examples`` samples, and every step's x̂_0 and x_t for all of them."""

    def __init__(self, total: int, keep: int = 7, examples: int = 3):
        self.at = set(np.linspace(0, total - 1, keep).round().astype(int).tolist())
        self.examples = examples
        self.ts: list[float] = []
        self.x_t: list[Tensor] = []
        self.x0: list[Tensor] = []
        self.all_x0: list[tuple[float, Tensor]] = []
        self.path: list[Tensor] = []

    def __call__(self, i: int, t: float, x_t: Tensor, x0_hat: Tensor) -> None:
        self.all_x0.append((float(t), x0_hat.detach().float().cpu()))
        self.path.append(x_t.detach().float().cpu())
        if i in self.at:
            self.ts.append(float(t))
            self.x_t.append(x_t[: self.examples].detach().float().cpu())
            self.x0.append(x0_hat[: self.examples].detach().float().cpu())
