"""Straightness (Liu et al. 2022, eq. 4) of a run's probability-flow ODE paths: what reflow
lowers and what ``explain`` draws. The path z_τ in the straight-path coordinates
z = x_t/(α + σ), τ = σ/(α + σ) (z_1 ≈ x_T, z_0 = x_0; any VP path rescales onto them):

    S = ∫₀¹ E ‖(z_1 − z_0) − ż_τ‖² dτ,   ż_τ = ε̂ − x̂_0,

zero exactly when every path is a straight line travelled at constant speed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import samplers
from .checks import number
from .denoiser import Denoiser
from .schedule import Schedule


def straightness_grid(schedule: Schedule, steps: int) -> Tensor:
    """``steps`` + 1 times from T to 0 uniform in τ = σ/(α + σ) (t = τT on ``Schedule.flow``),
    mapped to t through the schedule's own log-SNR inverse: λ = 2 log((1 − τ)/τ)."""
    number("steps", steps, 1, None)
    alpha, sigma = schedule.marginal(torch.tensor(float(schedule.T), dtype=torch.float64))
    tau = torch.linspace(float(sigma / (alpha + sigma)), 0.0, steps + 1, dtype=torch.float64)
    t = schedule.t_from_log_snr(2 * torch.log((1 - tau[1:-1]) / tau[1:-1]))
    return torch.cat([torch.tensor([float(schedule.T)], dtype=torch.float64), t,
                      torch.zeros(1, dtype=torch.float64)])


def straightness(denoiser: Denoiser, x_T: Tensor, *, steps: int = 100,
                 cond: dict[str, Any] | None = None) -> Tensor:
    """S per example (module docstring), by the ``euler`` sampler on a τ-uniform grid: one Euler
    step is exactly z_s = z_t + (τ_s − τ_t)(ε̂ − x̂_0) (DDIM in z), so the path's velocity on
    step i is its chord (z_i − z_{i+1})/Δτ_i, and S = Σ Δτ_i ‖(z_1 − z_0)/τ_T − ż_i‖² / τ_T, summed
    over dimensions (mean per example over the path). Accurate to the solver's O(1/steps)."""
    grid = straightness_grid(denoiser.schedule, steps)
    alpha, sigma = denoiser.schedule.marginal(grid)
    scale, tau = 1 / (alpha + sigma), sigma / (alpha + sigma)
    path = [x_T.double() * scale[0]]

    def record(i: int, t: float, x: Tensor, x0_hat: Tensor) -> None:
        path.append(x.double() * scale[i + 1])

    samplers.euler(denoiser, x_T, grid, callback=record, cond=cond)
    z = torch.stack(path)                                                    # (steps + 1, B, …)
    dtau = (tau[:-1] - tau[1:]).to(z)                                        # > 0
    velocity = (z[:-1] - z[1:]) / dtau.view(-1, *[1] * (z.ndim - 1))        # ż = dz/dτ
    straight = (z[0] - z[-1]) / dtau.sum()             # (z_1 − z_0)/τ_T, τ_T = 1 − O(1/T²)
    dev = (straight - velocity).flatten(2).pow(2).sum(-1)                    # (steps, B)
    return (dtau[:, None] * dev).sum(0) / dtau.sum()
