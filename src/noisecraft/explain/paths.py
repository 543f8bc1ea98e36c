"""Section 10 of the explain page: the run's probability-flow ODE paths in straight-path
coordinates, and how straight they are (Liu et al.'s S, :func:`noisecraft.reflow.straightness`).

With z = x_t/(α_t + σ_t) and τ = σ_t/(α_t + σ_t) the forward process is the straight line
z = (1 − τ) x_0 + τ ε for every schedule, so a path that is a straight line in (τ, z) is one a
single Euler step follows exactly: that is what reflow buys and distillation exploits."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import samplers, viz
from ..straightness import straightness, straightness_grid
from .context import Context
from .page import Section, fig
from .sampling import drawing_plane

PATHS = 4        # starts x_T drawn; S is their mean


def ode_paths(ctx: Context, x_T: Tensor, steps: int) -> tuple[np.ndarray, Tensor]:
    """(τ at each of the ``steps`` + 1 grid times, z along the Euler ODE path (steps + 1, B, …)),
    on the τ-uniform grid that ``straightness`` integrates on (the same solver, the same path)."""
    grid = straightness_grid(ctx.run.schedule, steps)
    alpha, sigma = ctx.run.schedule.marginal(grid)
    scale, tau = 1 / (alpha + sigma), sigma / (alpha + sigma)
    path = [x_T.double() * scale[0]]
    samplers.euler(ctx.run.denoiser, x_T, grid, cond=ctx.cond(x_T.shape[0]) or None,
                   callback=lambda i, t, x, x0: path.append(x.double().cpu() * scale[i + 1]))
    return tau.numpy(), torch.stack(path)


def section_paths(ctx: Context) -> Section:
    g = torch.Generator().manual_seed(ctx.seed + 11)
    x_T = torch.randn((PATHS, *ctx.run.shape), generator=g)
    steps = ctx.steps
    s = straightness(ctx.run.denoiser, x_T, steps=steps, cond=ctx.cond(PATHS) or None)
    tau, z = ode_paths(ctx, x_T, steps)
    mean, plane, what = drawing_plane(ctx)
    what = ("its projection on " if ctx.image else "its ") + what
    # an affine projection keeps straight lines straight, so the picture shows what S measures
    proj = ((z.flatten(2) - mean) @ plane).numpy()                    # (steps + 1, B, 2)
    series = []
    for k, name in enumerate(("1", "2")):
        for e in range(PATHS):
            series.append((f"{'PC' if ctx.image else 'z_'}{name}" if e == 0 else "",
                           tau, proj[:, e, k]))
    chart = viz.line_chart(series, title="ODE paths in straight-path coordinates",
                           xlabel="tau = sigma/(alpha + sigma)   (0 = data)")  # the chart font is ASCII
    per = ", ".join(f"{v:.3g}" for v in s.tolist())
    return Section("paths", "10. Straightness of the ODE paths", [
        fig(chart, f"The probability-flow ODE from {PATHS} starts x_T to data, in the "
                   "straight-path coordinates z = x_t/(α_t+σ_t) against τ = σ_t/(α_t+σ_t), where "
                   f"the forward process is the line z = (1−τ) x_0 + τ ε (τ_T = {tau[0]:.3g} at "
                   f"t = T: 1 only when ᾱ_T = 0); each curve is {what}. "
                   f"Straightness S = {s.mean().item():.4g} (mean over the {PATHS} paths: {per}), "
                   f"Liu et al.'s S = ∫₀¹ ‖(z_1 − z_0) − ż_τ‖² dτ summed over dimensions, by "
                   f"{steps} Euler ODE steps uniform in τ. S = 0 exactly when every path is a "
                   "straight line (a reflowed run, or Gaussian data), which one Euler step "
                   "follows with no error; a curved run needs more steps."),
    ])
