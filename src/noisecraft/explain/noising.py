"""Sections 1–2 of the explain page: the noise schedule and the forward process q(x_t | x_0)."""

from __future__ import annotations

import html

import torch

from .. import viz
from ..process import q_sample
from ..schedule import SCHEDULES, Schedule
from .context import Context
from .page import Section, fig

STANDARD_SCHEDULES = SCHEDULES  # every named schedule, flow matching's included
# Where "high noise" starts for the captions: log-SNR −5 is SNR ≈ 0.7 %, x_t ≈ 99.7 % noise.
HIGH_NOISE_LOG_SNR = -5.0


def high_noise_share(schedule: Schedule, below: float = HIGH_NOISE_LOG_SNR) -> float:
    """The fraction of the steps t = 1..T whose log-SNR is below ``below``: how much of a sampler's
    full walk a schedule spends at high noise."""
    t = torch.arange(1, schedule.T + 1, dtype=torch.float64)
    return float((schedule.log_snr(t) < below).double().mean())


def high_noise_text(T: int) -> str:
    """The linear and cosine schedules' :func:`high_noise_share` at ``T`` as a caption sentence,
    its comparison read from the numbers (at T = 1000 the cosine schedule gives far fewer steps to
    high noise; at small T the linear one never reaches it)."""
    lin = high_noise_share(Schedule.linear(T))
    cos = high_noise_share(Schedule.cosine(T))
    how = "fewer steps to high noise than" if cos < lin else (
        "more steps to high noise than" if cos > lin else "as many steps to high noise as")
    return (f"with T = {T}, the cosine schedule gives {how} the linear one: steps with log-SNR "
            f"< {HIGH_NOISE_LOG_SNR:g} are {100 * lin:.1f} % of a linear schedule and "
            f"{100 * cos:.1f} % of a cosine one")


def section_schedule(ctx: Context) -> Section:
    sch = ctx.run.schedule
    T = sch.T
    t = torch.arange(1, T + 1, dtype=torch.float64)
    named = [("this run", sch)] + [(n, Schedule.from_name(n, T=T)) for n in STANDARD_SCHEDULES]
    x = t.numpy() / T
    betas = viz.line_chart([(n, x, s.betas.numpy()) for n, s in named], title="beta_t",
                           xlabel="t / T", log_y=True)
    abar = viz.line_chart([(n, x, s.alpha_bars.numpy()) for n, s in named], title="alpha-bar_t",
                          xlabel="t / T")
    lsnr = viz.line_chart([(n, x, s.log_snr(t).numpy()) for n, s in named],
                          title="log-SNR(t) = log(alpha-bar / (1 - alpha-bar))", xlabel="t / T")
    spec = html.escape(str(sch.to_dict()))
    return Section("schedule", "1. The noise schedule", [
        fig(betas, "β_t, the variance added by step t of q(x_t | x_{t−1}) = N(√(1−β_t) x_{t−1}, "
                   "β_t I), for this run's schedule and the named ones "
                   f"({', '.join(STANDARD_SCHEDULES)}) with the same T (flow: the straight path "
                   "x_t = (1 − t/T) x_0 + (t/T) ε, rescaled to the variance-preserving form)."),
        fig(abar, "ᾱ_t = Π_{s≤t} (1 − β_s): the share of the signal's variance left in "
                  "x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."),
        fig(lsnr, "log-SNR λ(t) = log ᾱ_t/(1 − ᾱ_t), the one number that fixes how hard "
                  "denoising is at t; samplers and likelihoods only ever see the schedule "
                  f"through it. Where the noise is spent: {high_noise_text(T)}."),
    ], note=f"This run: <code>{spec}</code>, T = {T}.")


def forward_times(T: int) -> list[int]:
    return sorted({0, *(round(f * T) for f in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0))})


def section_forward(ctx: Context) -> Section:
    sch = ctx.run.schedule
    ts = forward_times(sch.T)
    g = torch.Generator().manual_seed(ctx.seed)
    x0 = ctx.held_out[:4]
    snr_text = ", ".join(f"t={t}: {sch.snr(float(t)).item():.3g}" for t in ts if t > 0)
    if ctx.image:
        rows = []
        for i in range(x0.shape[0]):
            eps = torch.randn(x0.shape[1:], generator=g)   # one ε per row, shared by its frames
            batch = x0[i].expand(len(ts), *x0.shape[1:])
            frames, _ = q_sample(sch, batch, torch.tensor(ts), noise=eps.expand_as(batch))
            rows.append(ctx.pictures(frames))
        image = viz.labelled_rows(rows, [f"t={t}" for t in ts])
    else:
        pts = []
        for t in ts[1::2]:
            noise = torch.randn(ctx.held_out.shape, generator=g)
            xt, _ = q_sample(sch, ctx.held_out, float(t), noise=noise)
            pts.append((f"t={t}", xt[:, 0].numpy(), xt[:, -1].numpy()))
        image = viz.line_chart(pts, title="x_t ~ q(x_t | x_0), dims 1 and D", markers=True)
    return Section("forward", "2. Forward: q(x_t | x_0)", [
        fig(image, f"Held-out data noised in closed form, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, with "
                   f"one ε per row. SNR(t) = ᾱ_t/(1 − ᾱ_t): {snr_text}. Below SNR ≈ 1 the "
                   "noise dominates, and by t = T almost nothing of x_0 is left."),
    ])
