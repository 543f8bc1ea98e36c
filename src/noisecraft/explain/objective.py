"""Sections 4 and 9 of the explain page: the loss by noise level and the likelihood bound — with
the numbers they show, :func:`loss_by_noise_level` and :func:`bound_share` (the stratified bound
itself is :func:`noisecraft.likelihood.bound_estimate`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import losses, viz
from ..likelihood import bound_estimate
from ..process import q_sample
from ..scoring import likelihood_denoiser
from .context import Context
from .page import Section, fig

# Stratified t for the likelihood histogram: the full bound costs T network calls per example
# (1000 for the demo: 65 s of CPU for 128 examples, measured), 50 strata cost 51.
LIKELIHOOD_STRATA = 50


@torch.no_grad()
def loss_by_noise_level(denoiser: Any, x0: Tensor, ts: Sequence[int], *,
                        generator: torch.Generator | None = None, discrete: bool = False,
                        **cond: Any) -> dict[str, np.ndarray]:
    """At each integer t in ``ts``, with x_t ~ q(x_t | x_0) on the held-out ``x0``:

    - ``eps_mse``: E‖ε − ε̂(x_t, t)‖²/D, the simple loss;
    - ``bound_bits``: the bound's term L_{t−1} = KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)) in
      bits per dimension (the decoder −log p_θ(x_0|x_1) at t = 1), from :func:`losses.bound_term`.

    Returns float64 arrays of length len(ts) (means over the examples) and ``t``.
    """
    dims = math.prod(x0.shape[1:])
    eps_mse, bound = [], []
    for t in ts:
        t = int(t)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        x_t, _ = q_sample(denoiser.schedule, x0, float(t), noise=noise)
        d = denoiser(x_t, float(t), **cond)
        eps_mse.append(float((d.eps.double() - noise.double()).pow(2).flatten(1).mean(1).mean()))
        term = losses.bound_term(denoiser, x0, t, noise=noise, discrete=discrete, **cond)
        bound.append(float(term.double().mean()) / (dims * math.log(2)))
    return {"t": np.asarray(ts, np.float64), "eps_mse": np.asarray(eps_mse),
            "bound_bits": np.asarray(bound)}


def bound_share(t: np.ndarray, bound_bits: np.ndarray) -> tuple[np.ndarray, float]:
    """(cumulative share of Σ_{t[0] ≤ s ≤ t} L_{s−1} at each sampled t, the estimated sum over
    all integers t[0]..t[-1]).

    ``t`` are increasing integers and ``bound_bits`` the terms there; the sum over the unsampled
    integers is the trapezoid rule between samples (exact for terms linear in t).
    """
    t, b = np.asarray(t, np.float64), np.asarray(bound_bits, np.float64)
    if t.ndim != 1 or t.shape != b.shape or t.size < 2 or (np.diff(t) <= 0).any():
        raise ValueError("bound_share needs increasing t and one term per t")
    # Σ over integers in (t_i, t_{i+1}] by the trapezoid rule: (t_{i+1} − t_i)(b_i + b_{i+1})/2
    # counts b_{i+1} fully and b_i not at all at unit spacing, as the integer sum does.
    pieces = np.r_[b[0], 0.5 * (b[1:] + b[:-1]) * np.diff(t) + 0.5 * (b[1:] - b[:-1])]
    cum = np.cumsum(pieces)
    return cum / cum[-1], float(cum[-1])


def section_loss(ctx: Context) -> Section:
    T = ctx.run.schedule.T
    ts = sorted({1, 2, *np.linspace(1, T, 24).round().astype(int).tolist()})
    g = torch.Generator().manual_seed(ctx.seed + 1)
    cond = {} if ctx.labels is None else {"labels": ctx.labels}
    # the density's own reading, unclipped, as `noisecraft nll` scores (clipping is a sampler's)
    res = loss_by_noise_level(likelihood_denoiser(ctx.run), ctx.held_out, ts, generator=g, **cond)
    t = res["t"]
    # the KL terms (t ≥ 2) are ≥ 0; the decoder term of a continuous density may be negative
    share, total = bound_share(t[1:], res["bound_bits"][1:])
    mse = viz.line_chart([("eps-MSE", t, res["eps_mse"])], title="E|eps - eps_hat|^2 / D",
                         xlabel="t", log_y=True)
    vlb = viz.line_chart([("L_{t-1} (bits/dim)", t, res["bound_bits"])],
                         title="bound term per step", xlabel="t", log_y=True)
    cum = viz.line_chart([("cumulative share", t[1:], share)],
                         title="share of the bound from steps <= t", xlabel="t")
    return Section("loss", "4. Loss by noise level", [
        fig(mse, f"The trained model's ε-prediction error on {ctx.held_out.shape[0]} held-out "
                 "examples, x_t ~ q(x_t | x_0), one draw per example and t. It is largest at small "
                 "t, where ε is nearly invisible in x_t = α_t x_0 + σ_t ε, and falls towards 0 as "
                 "t → T, where x_t is almost ε itself."),
        fig(vlb, "The variational bound's term L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | "
                 "x_t)) in bits per dimension (t = 1: the decoder −log p_θ(x_0 | x_1)). With "
                 "fixed variances it is the ε-MSE weighted by β_t²/(2σ²α_t(1−ᾱ_t)) — heavily "
                 "towards small t."),
        fig(cum, f"Cumulative share of the KL terms Σ_{{t≥2}} L_{{t−1}} ≈ {total:.3g} bits/dim "
                 f"(trapezoid over the sampled t; the decoder term is {res['bound_bits'][0]:.3g} "
                 "bits/dim and the prior term is not included): most of the bound is earned in the "
                 "last few low-noise steps, which is why the simple loss, flat in t, trains better "
                 "samples than the bound."),
    ])


def section_likelihood(ctx: Context) -> Section:
    x = ctx.held_out[: ctx.n_samples]
    discrete = False
    if ctx.image:
        shifted = x.flip(-2)                      # upside down
        shift_name = "flipped upside down"
    else:
        shifted = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
        shift_name = "with N(0, 0.5²) noise added"
    g = torch.Generator().manual_seed(ctx.seed + 11)
    cond = {} if ctx.labels is None else {"labels": ctx.labels[: x.shape[0]]}
    den = likelihood_denoiser(ctx.run)  # unclipped, as `noisecraft nll` scores
    a = bound_estimate(den, x, LIKELIHOOD_STRATA, generator=g, discrete=discrete, **cond)
    b = bound_estimate(den, shifted, LIKELIHOOD_STRATA, generator=g, discrete=discrete, **cond)
    chart = viz.histogram_chart([("held-out data", a.numpy()), (shift_name, b.numpy())], bins=20,
                                title="negative log-likelihood bound (bits/dim)",
                                xlabel="bits/dim")
    return Section("likelihood", "9. Likelihood: is this typical?", [
        fig(chart, f"The variational bound −log p_θ(x) ≤ L_T + Σ_t L_{{t−1}} of each example "
                   f"in bits per dimension (continuous density of the model-space values; the "
                   f"decoder term exactly, the other T − 1 terms by stratified sampling of "
                   f"{LIKELIHOOD_STRATA} t, an unbiased estimate), for {x.shape[0]} held-out "
                   "examples and the same "
                   f"examples {shift_name}: median {a.median().item():.2f} vs "
                   f"{b.median().item():.2f} bits/dim. Shifted data sits in the right tail: "
                   "the model finds it less likely."),
    ])
