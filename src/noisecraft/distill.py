"""Consistency distillation (Song, Dhariwal, Chen & Sutskever 2023, Algorithm 2).

A consistency model f_θ(x_t, t) (``Denoiser(prediction="consistency")``: f(x, 0) = x exactly)
learns to map every point of the teacher's probability-flow ODE path to the path's end. On a
grid T = t_0 > t_1 > … > t_N = 0, with x_{t_n} = α x_0 + σ ε from the data and one step of the
teacher's ODE solver back to t_{n+1},

    x̂_{t_{n+1}} = solver step(x_{t_n}; t_n → t_{n+1}),
    L = ‖f_θ(x_{t_n}, t_n) − f_θ⁻(x̂_{t_{n+1}}, t_{n+1})‖²,   θ⁻ ← μ θ⁻ + (1 − μ) θ,

where θ⁻ (the target network, no gradient) is the run's EMA with decay μ and no warm-up, and
the solver step is the library's own (``SAMPLERS[solver].step``). The default is Euler (= DDIM)
on the respaced grid, not the paper's Heun on Karras's: our schedules start at σ̃_T = σ/α of
157 (linear) to 3·10⁴ (flow), where Heun's corrector multiplies an O(1) change of ε̂ by Δσ̃/2
(the first respaced step of a flow teacher lands ~10× outside the data; distillation then
diverges), and a Karras grid spends most of its nodes at τ > 0.99 (measured on the mixture,
tests/test_distill.py: mean endpoint error 1.6 with Heun/Karras vs 0.54 with Euler/respaced
after the same 1,500 steps). At
n = N − 1 the target is f_θ⁻(x̂_0, 0) = x̂_0 itself, which anchors the chain. The distilled run
samples with the ``consistency`` sampler (one network call per step; ``--steps 1`` is one call).

Squared L2 replaces the paper's LPIPS (a feature metric for pictures only); one grid index n per
batch (the paper draws one per example) lets one solver step serve the whole batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import grids, samplers
from .checks import number
from .denoiser import Denoiser
from .io import atomic_write
from .process import q_sample

MADE_BY_FILE = "distill.json"  # the run's record of its teacher and grid (see train.setup)

INITS = ("teacher", "fresh")
"""Where a distilled student's weights start (:func:`distill`'s ``init``)."""

SOLVERS = ("ddim", "euler", "heun")
"""The one-step ODE solvers a teacher step may use (no history between steps)."""


def teacher_step(teacher: Denoiser, x_t: Tensor, t: float, s: float, solver: str = "euler",
                 cond: dict[str, Any] | None = None) -> Tensor:
    """One step of ``solver`` on the teacher's probability-flow ODE from t to s < t."""
    samplers.check_sampler(solver, SOLVERS)
    grid = torch.tensor([t, s, 0.0] if s > 0 else [t, 0.0], dtype=torch.float64)
    w = samplers.Walk(teacher, x_t, grid, cond)
    with torch.no_grad():
        return samplers.SAMPLERS[solver].step(w, 0, x_t.to(w.dtype), w.denoise(x_t, 0), None)[0]


def consistency_loss(student: Denoiser, target: Denoiser, teacher: Denoiser, x0: Tensor,
                     grid: Tensor, n: int, *, noise: Tensor | None = None, solver: str = "euler",
                     generator: torch.Generator | None = None,
                     cond: dict[str, Any] | None = None) -> Tensor:
    """Per-example ‖f_θ(x_{t_n}, t_n) − f_θ⁻(x̂_{t_{n+1}}, t_{n+1})‖² (mean over dimensions)
    between grid points n and n + 1 of ``grid`` (decreasing, ending at 0). ``student`` and
    ``target`` are consistency readings of θ and θ⁻."""
    if not 0 <= n < grid.numel() - 1:
        raise ValueError(f"n = {n!r} is not a step of a grid with {grid.numel() - 1} steps")
    t, s = float(grid[n]), float(grid[n + 1])
    x_t, _ = q_sample(student.schedule, x0, torch.full((x0.shape[0],), t, dtype=torch.float64,
                                                        device=x0.device),
                      noise=noise, generator=generator if noise is None else None)
    cond = dict(cond or {})
    x_s = teacher_step(teacher, x_t, t, s, solver, cond).to(x_t.dtype)
    with torch.no_grad():
        aim = target(x_s, s, **cond).x0
    return (student(x_t, t, **cond).x0 - aim).flatten(1).pow(2).mean(1)


# ---------------------------------------------------------------------------- the command
def _trainer_class() -> type:
    from .train.trainer import Trainer

    class ConsistencyTrainer(Trainer):
        """A :class:`Trainer` whose loss is :func:`consistency_loss`; its EMA is θ⁻."""

        teacher: Denoiser
        grid: Tensor
        solver: str
        init_state: dict[str, Tensor] | None = None

        def _initial_weights(self, net: Any) -> None:
            if self.init_state is not None:
                net.load_state_dict(self.init_state)

        def _loss(self, denoiser: Any, batch: dict[str, Any], gen: torch.Generator,
                  ctx: Any) -> Tensor:
            x0 = batch["x"].to(ctx.device)
            n = int(torch.randint(self.grid.numel() - 1, (1,), generator=gen, device=gen.device))
            target = Denoiser(self.ema.net, denoiser.schedule, "consistency")
            return consistency_loss(denoiser, target, self.teacher, x0, self.grid, n,
                                    solver=self.solver, generator=gen).mean()

    return ConsistencyTrainer


def distill(run: str | Path, out: str | Path, *, intervals: int = 18, grid: str = "respaced",
            solver: str = "euler", target_decay: float = 0.95, init: str = "teacher",
            steps: int | None = None, batch_size: int | None = None, lr: float | None = None,
            max_time: str | None = None, device: str | torch.device | None = None,
            progress: bool = True) -> Any:
    """``noisecraft distill RUN --out OUT``: train OUT, a consistency model of RUN's
    probability-flow ODE (RUN's network architecture, schedule, data units) on RUN's own data,
    with ``intervals`` = N steps of the ``grid`` grid, ``solver`` steps of the teacher and the
    target EMA decay μ = ``target_decay``. ``init``: "teacher" starts from the teacher's (EMA)
    weights, as Song et al. do — for an ``edm`` teacher with σ_d = 0.5 the consistency reading
    of those weights is exactly the teacher's x̂_0, a one-step model from the first step;
    "fresh" from the seeded initialisation. RUN's train settings apply unless ``steps``,
    ``batch_size``, ``lr`` or ``max_time`` are given. OUT samples with the ``consistency``
    sampler, 2 steps by default. Writes OUT/distill.json. Returns the TrainResult."""
    import dataclasses

    from . import data as nc_data
    from .run import load_run
    from .schedule import Schedule

    number("intervals", intervals, 1, None)
    number("target_decay", target_decay, 0, 1, high_open=True)
    samplers.check_sampler(solver, SOLVERS)
    if init not in INITS:
        raise ValueError(f"init {init!r} is not one of {', '.join(INITS)}")
    teacher = load_run(run, device=device or "cpu")
    cfg = teacher.config
    if cfg.data.num_classes is not None or cfg.condition.kind != "none" or cfg.latent is not None:
        raise ValueError(f"{run}: distill handles unconditional pixel or vector runs")
    schedule = Schedule.from_dict(cfg.schedule)
    t_grid = grids.make(grid, schedule, intervals)
    d = cfg.data
    options = ({"image_size": d.image_size, "channels": d.channels} if d.kind == "image" else {})
    dataset = nc_data.load(d.spec, **options)
    given = {k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("lr", lr),
                               ("max_time", max_time)) if v is not None}
    config = dataclasses.replace(
        cfg, prediction="consistency",
        train=dataclasses.replace(cfg.train, ema_decay=target_decay, ema_warmup=False, **given),
        sampling=dataclasses.replace(cfg.sampling, sampler="consistency", steps=2))
    trainer = _trainer_class()(config, out, dataset, device=device, progress=progress)
    trainer.teacher, trainer.grid, trainer.solver = teacher.denoiser, t_grid, solver
    if init == "teacher":
        trainer.init_state = teacher.net.state_dict()
    record = {"teacher": str(Path(run).resolve()), "teacher_step": teacher.step,
              "intervals": intervals, "grid": t_grid.tolist(), "solver": solver,
              "target_decay": target_decay, "init": init}
    # Written first: it marks the run as distill's, which `train --resume` then refuses.
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out) / MADE_BY_FILE, json.dumps(record, indent=1) + "\n")
    return trainer.fit()
