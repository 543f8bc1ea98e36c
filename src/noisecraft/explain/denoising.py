"""Sections 5 and 6 of the explain page: what the denoiser learns — the spectral order in which it
fills in detail, and on a 1-D two-mode density, where everything is closed form, the ideal
denoiser, its ODE paths and one reverse step against the exact conditional."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .. import grids, spectral, viz
from ..analytic import GaussianMixture, exact_reverse_conditional
from ..process import reverse_mean_log_variance
from ..schedule import Schedule
from .context import Context, Recorder
from .noising import high_noise_text
from .page import Section, fig


def section_spectral(ctx: Context, rec: Recorder) -> Section:
    sch = ctx.run.schedule
    if not ctx.image:
        return Section("spectral", "5. Spectral bands",
                       note="Spectra need image data; this run models vectors.")
    data_p = spectral.radial_power_spectrum(ctx.held_out)
    bands = np.arange(data_p.numel())
    picks = np.linspace(0, len(rec.all_x0) - 1, 6).round().astype(int)
    series = [("data", bands[1:], data_p[1:].numpy())]
    for k in picks:
        t, x0 = rec.all_x0[k]
        series.append((f"x0_hat, t={t:.0f}", bands[1:],
                       spectral.radial_power_spectrum(x0)[1:].numpy()))
    spec = viz.line_chart(series, title="radial power spectrum", xlabel="frequency (cycles/image)",
                          log_y=True)
    ts = torch.arange(1, sch.T + 1, dtype=torch.float64)
    snr_series = []
    for name, s in (("this run", sch), ("linear", Schedule.linear(sch.T)),
                    ("cosine", Schedule.cosine(sch.T))):
        r = spectral.forward_snr(s, ts, data_p)
        for b in (1, len(bands) - 1):
            snr_series.append((f"{name}, band {b}", ts.numpy() / sch.T, r[:, b].numpy()))
    snr = viz.line_chart(snr_series, title="SNR_t(k) = SNR(t) P(k)", xlabel="t / T", log_y=True)
    half = spectral.half_power_time(sch, data_p)
    half_text = ", ".join(f"band {b}: t={half[b].item():.0f}" for b in range(1, len(bands)))
    return Section("spectral", "5. Spectral bands", [
        fig(spec, "Radially averaged power spectrum P(k) = E|X(k)|² (orthonormal DFT) of the "
                  "network's x̂_0 along one DDPM run, against held-out data. Low frequencies reach "
                  "the data's power first; high frequencies are filled in last: coarse "
                  "structure, then detail."),
        fig(snr, "The forward process per frequency: X_t(k) = α_t X_0(k) + σ_t E(k), so "
                 "SNR_t(k) = SNR(t)·P(k). Data power falls with k, so fine detail drowns early; "
                 f"{high_noise_text(sch.T)}. Half-power times "
                 f"(SNR_t(k) = 1) of this run: {half_text}."),
    ])


def bimodal() -> GaussianMixture:
    """The page's 1-D two-mode density 0.35 N(−1.2, 0.25²) + 0.65 N(1, 0.3²)."""
    return GaussianMixture([0.35, 0.65], torch.tensor([[-1.2], [1.0]]), [0.25, 0.3])


def _normal_pdf(x: Tensor, mean: float, var: float) -> Tensor:
    return torch.exp(-0.5 * (x - mean) ** 2 / var) / math.sqrt(2 * math.pi * var)


def section_means(ctx: Context) -> Section:
    from ..denoiser import Denoiser
    from ..samplers import SAMPLERS

    sch = ctx.run.schedule
    mix = bimodal()
    T = sch.T
    xs = torch.linspace(-3, 3, 241, dtype=torch.float64)
    curves = []
    for f in (0.02, 0.1, 0.25, 0.5, 0.9):
        t = round(f * T)
        a, s = sch.marginal(float(t))
        curves.append((f"t={t}", xs.numpy(), mix.posterior_mean(xs[:, None], a, s)[:, 0].numpy()))
    curve = viz.line_chart(curves, title="E[x0 | x_t] for bimodal 1-D data", xlabel="x_t")
    # paths of x̂_0 along the probability-flow ODE from a few starts
    den = Denoiser(mix.net(sch, "x0"), sch, "x0")   # the ideal denoiser: x̂_0 = E[x_0 | x_t]
    starts = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    path: list[tuple[float, Tensor]] = []
    SAMPLERS["ddim"](den, starts, grids.respaced(sch, min(100, T)),
                     callback=lambda i, t, x, x0: path.append((t, x0[:, 0].clone())))
    ts = np.array([p[0] for p in path])
    slides = viz.line_chart([("x0_hat" if k == 0 else "", ts, np.array([p[1][k].item() for p in path]))
                             for k in range(starts.shape[0])],
                            title="x0_hat along ODE paths", xlabel="t")
    # one reverse step at t_mid from x_t: the exact conditional, the model's Gaussian step with the
    # ideal x̂_0 (process.reverse_mean_log_variance, as the ddpm sampler takes it) and the
    # posteriors q(x_{t−1} | x_t, x_0) at the two modes (Schedule.posterior)
    t_mid = round(0.3 * T)
    x_t = 0.2
    xt = torch.tensor([[x_t]], dtype=torch.float64)
    grid = torch.linspace(-3, 3, 601, dtype=torch.float64)
    exact = exact_reverse_conditional(mix, sch, t_mid, x_t, grid)
    denoised = den(xt, float(t_mid))
    x0_hat = denoised.x0.item()
    mean, log_var = reverse_mean_log_variance(sch, denoised, xt, float(t_mid), variance="beta_tilde")
    m_model, var = mean.item(), log_var.exp().item()
    posts = [("q(x_{t-1} | x_t)", grid.numpy(), exact.numpy()),
             ("p(x_{t-1} | x_t), ideal x0_hat", grid.numpy(), _normal_pdf(grid, m_model, var).numpy())]
    modes = []
    for x0v in (-1.2, 1.0):
        m, v = sch.posterior(torch.tensor([[x0v]], dtype=torch.float64), xt, float(t_mid))
        modes.append(m.item())
        posts.append((f"q(x_{{t-1}} | x_t, x0={x0v})", grid.numpy(),
                      _normal_pdf(grid, m.item(), v.item()).numpy()))
    lo = min(modes[0], m_model) - 6 * math.sqrt(var)
    hi = max(modes[1], m_model) + 6 * math.sqrt(var)
    post = viz.line_chart(posts, title=f"reverse step at t={t_mid}, x_t={x_t}", xlabel="x_{t-1}",
                          limits=(lo, hi, 0, float(max(p[2].max() for p in posts)) * 1.05))
    run_note = ("This run models " + ("images" if ctx.image else f"{ctx.run.shape[0]}-D vectors")
                + ": the curves here are the exact ones for a 1-D two-mode density "
                "0.35 N(−1.2, 0.25²) + 0.65 N(1, 0.3²), where every quantity is closed form.")
    return Section("means", "6. Means and modes", [
        fig(curve, "The ideal denoiser E[x_0 | x_t] = Σ_k r_k(x_t) E[x_0 | x_t, k] against x_t. "
                   "At high noise it maps every x_t near the grey average of the data; as t falls "
                   "it becomes a step between the modes, and at t → 0 it is the identity."),
        fig(slides, "x̂_0 along nine probability-flow (DDIM) paths: each starts near the data "
                    "mean and slides onto one mode as t falls; the mean never settles between "
                    "the modes."),
        fig(post, f"One reverse step: the exact q(x_{{t−1}} | x_t) (Bayes on a grid), the "
                  f"Gaussian p(x_{{t−1}} | x_t) = N(c_0 x̂_0 + c_t x_t, β̃_t) with the ideal "
                  f"x̂_0 = {x0_hat:.3f}, and the posteriors q(x_{{t−1}} | x_t, x_0) for x_0 at "
                  "each mode. The exact conditional is the average of the posteriors over "
                  "q(x_0 | x_t); the model's step is not that average — only its mean is "
                  "(c_0 E[x_0 | x_t] + c_t x_t), while its variance is one posterior's β̃_t. "
                  "For small steps the average is itself nearly Gaussian and the two agree."),
    ], note=run_note)
