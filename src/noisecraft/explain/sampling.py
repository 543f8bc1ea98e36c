"""Sections 3, 7 and 8 of the explain page: sampling, what its compute buys, and SDE against ODE
paths — with the numbers they show: :class:`count_calls`, :func:`quality_vs_nfe` and
:func:`principal_plane`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import grids, viz
from ..denoiser import Denoised
from ..metrics.distances import sliced_wasserstein
from .context import Context, Recorder, draw
from .page import Section, fig, table


class count_calls:  # noqa: N801 - used like a function: count_calls(denoiser)
    """A denoiser that counts its evaluations (``calls``) and passes everything through."""

    def __init__(self, denoiser: Any):
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self.learned_variance = getattr(denoiser, "learned_variance", False)
        self.calls = 0

    def __call__(self, x_t: Tensor, t: Any, **cond: Any) -> Denoised:
        self.calls += 1
        return self.denoiser(x_t, t, **cond)


def principal_plane(x: Tensor) -> tuple[Tensor, Tensor]:
    """(mean (D,), the first two principal directions (D, 2)) of the rows of ``x``, float64."""
    flat = x.reshape(x.shape[0], -1).double()
    mean = flat.mean(0)
    _, _, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    return mean, vh[:2].T


def drawing_plane(ctx: Context) -> tuple[Tensor, Tensor, str]:
    """(mean, two directions, their description): where the path pictures are drawn — the
    held-out pictures' principal plane, or a vector run's first two coordinates."""
    if ctx.image:
        mean, plane = principal_plane(ctx.held_out)
        return mean, plane, "the first two principal components of the held-out data"
    mean = torch.zeros(ctx.run.shape[0], dtype=torch.float64)
    return mean, torch.eye(ctx.run.shape[0], dtype=torch.float64)[:, :2], "the first two coordinates"


@dataclass
class NfeRow:
    sampler: str
    steps: int
    nfe: float            # network evaluations per image
    score: float
    seconds_per_image: float


def quality_vs_nfe(denoiser: Any, shape: Sequence[int], samplers_steps: dict[str, Sequence[int]],
                   score: Callable[[Tensor], float], n: int, seed: int = 0,
                   cond: dict[str, Any] | None = None) -> list[NfeRow]:
    """Sample ``n`` examples with every (sampler, steps), counting network evaluations and
    wall time, and score them with ``score`` (higher or lower is better: the caller's metric)."""
    from ..noise import ExampleNoise
    from ..samplers import SAMPLERS

    rows = []
    for name, step_list in samplers_steps.items():
        fn = SAMPLERS[name]
        for steps in step_list:
            counted = count_calls(denoiser)
            noise = ExampleNoise(seed, n)
            x_T = noise.randn(tuple(shape))
            grid = grids.make(fn.default_grid, denoiser.schedule, steps)
            start = time.perf_counter()
            x = fn(counted, x_T, grid, noise=noise, cond=cond)
            elapsed = time.perf_counter() - start
            rows.append(NfeRow(name, steps, float(counted.calls), score(x), elapsed / n))
    return rows


def section_reverse(ctx: Context) -> tuple[Section, Recorder]:
    figures, kept = [], None
    for sampler in ("ddpm", "ddim"):
        rec = Recorder(ctx.steps)
        out = draw(ctx, sampler, 3, ctx.steps, rec)
        if kept is None:
            kept = rec
        if ctx.image:
            image = viz.reverse_process(np.stack([ctx.pictures(x) for x in rec.x_t]),
                                        np.stack([ctx.pictures(x) for x in rec.x0]), rec.ts)
        else:
            image = viz.line_chart([(f"seed {e}", [p[e, 0] for p in rec.path],
                                     [p[e, -1] for p in rec.path]) for e in range(out.shape[0])],
                                   title=f"{sampler}: x_t paths")
        kind = ("ancestral: x_s ~ p_θ(x_s | x_t) = N(c_0 x̂_0 + c_t x_t, β̃ I), fresh noise each "
                "step" if sampler == "ddpm" else "deterministic: x_s = α_s x̂_0 + σ_s ε̂, the "
                "probability-flow ODE's first-order step")
        figures.append(fig(image, f"{sampler.upper()}, {ctx.steps} steps, three seeds ({kind}). "
                                  "Each pair of rows shows x_t and the network's x̂_0 = "
                                  "(x_t − σ_t ε̂)/α_t at the same step: x̂_0 is a blurry average "
                                  "early and sharpens as t falls."))
    assert kept is not None
    return Section("reverse", "3. Reverse: sampling", figures), kept


def default_yardstick(run: Any) -> str:
    """digits / mnist (the small classifiers) where they fit the run's pictures, else sliced W2."""
    from ..metrics.classifier import cache_file

    pre, spec = run.preprocess, str(run.config.data.spec).lower()
    if pre.kind == "image" and spec == "digits" and tuple(pre.shape) == (1, 8, 8):
        return "digits"
    if pre.kind == "image" and "mnist" in spec and tuple(pre.shape) == (1, 28, 28) \
            and cache_file("mnist").exists():
        return "mnist"
    return "sliced-wasserstein"


def yardstick(ctx: Context) -> tuple[str, Callable[[Tensor], float], str]:
    """(what the score means, the score function, its short name) for the page's yardstick."""
    if ctx.yardstick in ("digits", "mnist"):
        from ..metrics.classifier import class_report

        def score(x: Tensor) -> float:
            return class_report(ctx.pictures(x), ctx.yardstick)["fraction_confident"]

        return (f"fraction of samples the {ctx.yardstick} classifier reads with confidence "
                ">= 0.9 (higher is better)", score, "confident fraction")
    ref = ctx.held_out

    def sw(x: Tensor) -> float:
        return sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))

    return "sliced Wasserstein-2 distance to held-out data (lower is better)", sw, "sliced W2"


FEW_STEPS = (1, 2, 4)


def nfe_plan(prediction: str, T: int) -> dict[str, tuple[int, ...]]:
    """Steps per sampler for section 7, none above T. Every sampler that can spend 1, 2 or 4
    network evaluations does (ddim, euler, dpmpp-2m: one per step; heun: 2N − 1, so 1 and 3),
    so a distilled or reflowed run's few-step quality sits beside DDIM and DPM-Solver++(2M) at
    the same counts; ``consistency`` only on a ``prediction="consistency"`` run (on any other
    its jumps land on the blurry posterior mean)."""
    plan = {"ddpm": (10, 25, 50), "ddim": (*FEW_STEPS, 5, 10, 25, 50),
            "euler": (*FEW_STEPS, 5, 10, 25), "heun": (1, 2, 3, 5, 13),
            "dpmpp-2m": (*FEW_STEPS, 5, 10, 25), "sde": (10, 25, 50)}
    if prediction == "consistency":
        plan["consistency"] = FEW_STEPS
    return {k: tuple(s for s in v if s <= T) for k, v in plan.items()}


def section_compute(ctx: Context) -> Section:
    what, score, short = yardstick(ctx)
    plan = nfe_plan(ctx.run.config.prediction, ctx.run.schedule.T)
    cond = ctx.cond(ctx.n_samples)
    rows = quality_vs_nfe(ctx.run.denoiser, ctx.run.shape, plan, score, ctx.n_samples, ctx.seed,
                          cond or None)
    series = []
    for name in plan:
        rs = [r for r in rows if r.sampler == name]
        series.append((name, [r.nfe for r in rs], [r.score for r in rs]))
    chart = viz.line_chart(series, title=short + " vs network evaluations", xlabel="NFE per image",
                           log_x=True, markers=True)
    tab = table(["sampler", "steps", "NFE", short, "ms / image"],
                [(r.sampler, r.steps, f"{r.nfe:.0f}", f"{r.score:.3f}",
                  f"{1000 * r.seconds_per_image:.2f}") for r in rows])
    return Section("compute", "7. Compute and quality", [
        fig(chart, f"Quality against the number of network evaluations (NFE) per image for "
                   f"each sampler, {ctx.n_samples} samples each: {what}. Higher-order ODE "
                   "solvers (Heun, DPM-Solver++(2M)) reach a given quality with fewer "
                   "evaluations; stochastic samplers (DDPM, SDE) need more steps but correct "
                   "their own errors. At 1, 2 and 4 evaluations a curved ODE is far off; a "
                   "reflowed (straight) or distilled (consistency) run is not."),
    ], note="Time per image on this machine (CPU, batch of "
            f"{ctx.n_samples}):<br>" + tab)


def section_sde_ode(ctx: Context) -> Section:
    n = 4
    g = torch.Generator().manual_seed(ctx.seed + 7)
    x_T = torch.randn((n, *ctx.run.shape), generator=g)
    mean, plane, what = drawing_plane(ctx)

    def project(x: Tensor) -> np.ndarray:
        return ((x.reshape(x.shape[0], -1).double() - mean) @ plane).numpy()

    series = []
    for sampler in ("sde", "ddim"):
        paths: list[Tensor] = [x_T.clone()]
        draw(ctx, sampler, n, ctx.steps,
             lambda i, t, x, x0, keep=paths: keep.append(x.float().cpu()), x_T=x_T)
        proj = np.stack([project(p) for p in paths])          # (steps+1, n, 2)
        for e in range(n):
            series.append((f"{sampler}" if e == 0 else "", proj[:, e, 0], proj[:, e, 1]))
    data = project(ctx.held_out)
    series.append(("data", data[:, 0], data[:, 1]))
    series.insert(0, series.pop())              # data first: drawn below the paths
    chart = viz.line_chart(series, title="SDE (ragged) and ODE (smooth) from the same x_T",
                           xlabel="PC 1" if ctx.image else "x_1", dots=("data",))
    return Section("sde-ode", "8. SDE and ODE", [
        fig(chart, f"The same four starts x_T under the reverse SDE "
                   f"(dx = [f x − g² ∇log p_t] dt + g dw̄, solved by SDE-DPM-Solver++(2M), an "
                   f"exponential integrator that stays in range on coarse grids) and the "
                   f"probability-flow ODE "
                   f"(dx = [f x − ½ g² ∇log p_t] dt, DDIM), {ctx.steps} steps each, projected "
                   f"onto {what}. Both carry the noise distribution to the data distribution; "
                   "the ODE does it deterministically (the map that encode inverts), the SDE "
                   "with fresh noise at every step, ending at different points."),
    ])
