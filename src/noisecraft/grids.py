"""Time grids: where a sampler evaluates the denoiser on its way from t = T down to t = 0.

A grid is a strictly decreasing float64 tensor (t_0 = T, t_1, …, t_N = 0) of length steps + 1 in
the library's one time variable t (see :mod:`noisecraft.schedule`). Grids are plain functions of
the schedule, so any sampler runs on any grid:

- :func:`respaced` — integer t evenly spaced in t ("trailing" respacing; DDPM/DDIM).
- :func:`log_snr_uniform` — evenly spaced in λ = log(ᾱ_t/(1 − ᾱ_t)) (DPM-Solver).
- :func:`karras` — Karras et al. (2022) ρ-spacing in σ̃ = σ_t/α_t = exp(−λ/2) (EDM).

The two continuous grids run from T to ``t_min`` (1 by default: the first noising step, the
smallest noise level a discrete-time network was trained on) and then jump to 0; the sampler's
last step onto t = 0 returns the denoiser's x̂_0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .checks import number, positive_int
from .schedule import Schedule


def _check_steps(steps: int) -> int:
    return positive_int("steps", steps)


def _check_t_min(schedule: Schedule, t_min: float, steps: int) -> float:
    number("t_min", t_min, 0, low_open=True)
    if steps > 1 and t_min >= schedule.T:
        raise ValueError(f"t_min must lie in (0, T) = (0, {schedule.T}) for a grid of {steps} steps, "
                         f"got {t_min!r}")
    return float(t_min)


def respaced(schedule: Schedule, steps: int) -> Tensor:
    """``steps`` + 1 integer times t_i = round(T − i·T/steps), i = 0..steps.

    This is the "trailing" respacing of Lin et al. (2024, "Common diffusion noise schedules and
    sample steps are flawed"), which diffusers calls ``timestep_spacing="trailing"``: it always
    starts at t = T, where x_T is (nearly) pure noise, unlike the original DDIM "leading" spacing
    that never visits T. Since the spacing T/steps is ≥ 1 the rounded values stay distinct.
    """
    steps = _check_steps(steps)
    if steps > schedule.T:
        raise ValueError(f"steps = {steps} exceeds T = {schedule.T}: a respaced (integer) grid "
                         "cannot take more steps than the schedule has")
    return torch.linspace(schedule.T, 0, steps + 1, dtype=torch.float64).round()


def _continuous_grid(schedule: Schedule, lam: Tensor, t_min: float) -> Tensor:
    """t(λ) for λ nodes running from λ(T) to λ(t_min), with T and t_min pinned exactly, then 0."""
    t = schedule.t_from_log_snr(lam)
    t[0], t[-1] = schedule.T, t_min
    return torch.cat([t, t.new_zeros(1)])


def log_snr_uniform(schedule: Schedule, steps: int, t_min: float = 1.0) -> Tensor:
    """λ evenly spaced from λ(T) to λ(t_min) over ``steps`` nodes, then t = 0.

    With steps = 1 the grid is (T, 0).
    """
    steps = _check_steps(steps)
    t_min = _check_t_min(schedule, t_min, steps)
    if steps == 1:
        return torch.tensor([float(schedule.T), 0.0], dtype=torch.float64)
    lam_max, lam_min = schedule.log_snr(t_min).item(), schedule.log_snr(schedule.T).item()
    lam = torch.linspace(lam_min, lam_max, steps, dtype=torch.float64)
    return _continuous_grid(schedule, lam, t_min)


def karras(schedule: Schedule, steps: int, rho: float = 7.0, t_min: float = 1.0) -> Tensor:
    """Karras et al. (2022, eq. 5) in σ̃ = σ_t/α_t = exp(−λ/2), over ``steps`` nodes, then t = 0:

        σ̃_i = (σ̃_max^{1/ρ} + i/(steps − 1) · (σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ,

    with σ̃_max = σ̃(T), σ̃_min = σ̃(t_min); t_i = ``schedule.t_from_log_snr(−2 log σ̃_i)``.
    Large ρ crowds the nodes towards low noise.
    """
    steps = _check_steps(steps)
    if not (isinstance(rho, int | float) and rho > 0 and math.isfinite(rho)):
        raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
    t_min = _check_t_min(schedule, t_min, steps)
    if steps == 1:
        return torch.tensor([float(schedule.T), 0.0], dtype=torch.float64)
    s_max = torch.exp(-0.5 * schedule.log_snr(schedule.T)).item()
    s_min = torch.exp(-0.5 * schedule.log_snr(t_min)).item()
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sig = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _continuous_grid(schedule, -2 * torch.log(sig), t_min)


GRIDS: dict[str, Callable[..., Tensor]] = {
    "respaced": respaced,
    "log-snr": log_snr_uniform,
    "karras": karras,
}


def make(name: str, schedule: Schedule, steps: int) -> Tensor:
    """The grid called ``name`` (a key of :data:`GRIDS`) with ``steps`` steps."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose one of {', '.join(GRIDS)}")
    return GRIDS[name](schedule, steps)


def check(grid: Tensor, schedule: Schedule) -> Tensor:
    """Validate a grid for ``schedule``; return it as a float64 CPU tensor.

    A grid is 1-D, at least two long, finite, strictly decreasing, starts in (0, T] and ends at
    exactly 0 (samplers return x_0). It may start below T (e.g. to denoise a partly noised input).
    """
    if not isinstance(grid, Tensor):
        grid = torch.as_tensor(grid, dtype=torch.float64)
    g = grid.detach().to(device="cpu", dtype=torch.float64)
    if g.ndim != 1 or g.numel() < 2:
        raise ValueError(f"a time grid must be 1-D with at least 2 entries, got shape {tuple(g.shape)}")
    if not torch.isfinite(g).all():
        raise ValueError(f"the time grid contains NaN or inf: {g.tolist()}")
    steps = g.diff()
    if (steps >= 0).any():
        i = int(torch.nonzero(steps >= 0)[0])
        raise ValueError(f"the time grid must decrease strictly, but t[{i}] = {g[i].item()!r} is "
                         f"followed by t[{i + 1}] = {g[i + 1].item()!r}")
    if not 0 < g[0].item() <= schedule.T:
        raise ValueError(f"the time grid must start in (0, T] = (0, {schedule.T}], "
                         f"got t[0] = {g[0].item()!r}")
    if g[-1].item() != 0:
        raise ValueError(f"the time grid must end at t = 0, got t[-1] = {g[-1].item()!r}")
    return g
