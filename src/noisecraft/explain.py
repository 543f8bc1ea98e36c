"""``noisecraft explain``: one self-contained HTML page that shows what diffusion does, with the
user's own trained run (figures as inline PNG, no JavaScript, no network).

The page is assembled by :func:`report` from sections; every number on it comes from a small
function here, in :mod:`noisecraft.spectral` or in the rest of the library, each with its own test:

- :func:`loss_by_noise_level` — ε-MSE and the bound's terms L_{t−1} at chosen t on held-out data;
- :func:`exact_reverse_conditional` — q(x_{t−1} | x_t) of 1-D mixture data on a grid;
- :func:`sliced_wasserstein` — the toy-run yardstick for quality against NFE;
- :func:`count_calls` / :func:`quality_vs_nfe` — network evaluations and the quality they buy;
- :func:`principal_plane` — the first two principal components, for SDE and ODE paths.
"""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import grids, spectral, viz
from .analytic import GaussianMixture
from .denoiser import Denoised
from .schedule import Schedule

SECTIONS = ("schedule", "forward", "reverse", "loss", "spectral", "means", "compute", "sde-ode",
            "likelihood")
STANDARD_SCHEDULES = ("linear", "quadratic", "cosine", "sigmoid")
# Stratified t for the likelihood histogram: the full bound costs T network calls per example
# (1000 for the demo: 65 s of CPU for 128 examples, measured), 50 strata cost 51.
LIKELIHOOD_STRATA = 50


# =========================================================================== numbers
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
    from . import losses

    dims = math.prod(x0.shape[1:])
    eps_mse, bound = [], []
    for t in ts:
        t = int(t)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        alpha, sigma = (v.item() for v in denoiser.schedule.marginal(float(t)))
        d = denoiser(alpha * x0 + sigma * noise, float(t), **cond)
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


@torch.no_grad()
def bound_estimate(denoiser: Any, x0: Tensor, strata: int = 50, *,
                   generator: torch.Generator | None = None, discrete: bool = False,
                   **cond: Any) -> Tensor:
    """An unbiased estimate of the variational bound L_T + Σ_{t=1..T} L_{t−1} per example, in
    bits per dimension, from ``strata`` network calls instead of T.

    The decoder term (t = 1) is computed exactly; t = 2..T is split into ``strata`` equal runs of
    integers, one t drawn uniformly in each (per example), and its term weighted by the run's length
    (stratified Monte Carlo over t, so E[estimate] = the full bound of
    :func:`noisecraft.likelihood.vlb_nats`). Each term uses one draw of x_t as the full bound does.
    """
    from . import losses

    T = denoiser.schedule.T
    if isinstance(strata, bool) or not isinstance(strata, int) or strata < 1:
        raise ValueError(f"strata must be an integer >= 1, got {strata!r}")
    strata = min(strata, T - 1) if T > 1 else 0
    dims = math.prod(x0.shape[1:])
    total = losses.prior_kl(denoiser.schedule, x0).double()
    total = total + losses.bound_term(denoiser, x0, 1, generator=generator, discrete=discrete,
                                      **cond).double()
    edges = np.linspace(2, T + 1, strata + 1).round().astype(int) if strata else []
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        if hi <= lo:
            continue
        # t drawn per example, so the examples' estimates are independent
        t = torch.randint(int(lo), int(hi), (x0.shape[0],), generator=generator)
        term = losses.bound_term(denoiser, x0, t.to(x0.device), generator=generator,
                                 discrete=discrete, **cond)
        total = total + (hi - lo) * term.double()
    return total / (dims * math.log(2))


def exact_reverse_conditional(mixture: GaussianMixture, schedule: Schedule, t: int, x_t: float,
                              xs: Tensor) -> Tensor:
    """The density q(x_{t−1} | x_t) of 1-D mixture data on the points ``xs`` (float64).

    Bayes on the grid: q(x_{t−1} | x_t) ∝ q(x_t | x_{t−1}) p_{t−1}(x_{t−1}), with p_{t−1} the
    mixture's marginal at t − 1 and q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t); normalised by the
    trapezoid rule over ``xs`` (which must cover the mass).
    """
    if mixture.dim != 1:
        raise ValueError(f"exact_reverse_conditional needs 1-D data, got dimension {mixture.dim}")
    xs = xs.double().reshape(-1)
    a_prev, s_prev = (v.item() for v in schedule.marginal(float(t - 1)))
    log_alpha = (schedule.log_alpha_bar(float(t)) - schedule.log_alpha_bar(float(t - 1))).item()
    beta = -math.expm1(log_alpha)
    log_prior = mixture.log_prob(xs[:, None], a_prev, s_prev)
    log_lik = -0.5 * (x_t - math.exp(0.5 * log_alpha) * xs) ** 2 / beta
    log_p = log_prior + log_lik
    p = torch.exp(log_p - log_p.max())
    return p / torch.trapezoid(p, xs)


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 128,
                       generator: torch.Generator | None = None) -> float:
    """The sliced 2-Wasserstein distance √(E_θ W_2²(θ·a, θ·b)) over ``projections`` random unit
    directions θ; each 1-D W_2 compares the quantiles of the two projected samples at the
    same 257 levels (so a and b may differ in size)."""
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"sliced_wasserstein: dimensions differ, {a.shape[1]} vs {b.shape[1]}")
    theta = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    q = torch.linspace(0, 1, 257, dtype=torch.float64)
    qa = torch.quantile(a @ theta, q, dim=0)
    qb = torch.quantile(b @ theta, q, dim=0)
    return float(torch.sqrt(torch.trapezoid((qa - qb) ** 2, q, dim=0).mean()))


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
    from .noise import ExampleNoise
    from .samplers import SAMPLERS

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


# =========================================================================== the page
@dataclass
class Figure:
    png: bytes
    caption: str


@dataclass
class Section:
    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    note: str = ""


def _fig(image: Any, caption: str) -> Figure:
    return Figure(viz.png_bytes(image), caption)


def render_html(title: str, intro: str, sections: Sequence[Section]) -> str:
    """The page: a heading, an introduction, and each section with its figures and captions."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;"
             "line-height:1.45}figure{display:inline-block;margin:0.6em;vertical-align:top;"
             "max-width:480px}figcaption{font-size:0.9em;color:#333}img{image-rendering:pixelated;"
             "max-width:100%}h2{border-bottom:1px solid #ccc}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:0.9em}</style>",
             "</head><body>", f"<h1>{html.escape(title)}</h1>", f"<p>{intro}</p>", "<nav><ul>"]
    parts += [f'<li><a href="#{s.key}">{html.escape(s.title)}</a></li>' for s in sections]
    parts.append("</ul></nav>")
    for s in sections:
        parts.append(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>')
        if s.note:
            parts.append(f"<p>{s.note}</p>")
        for f in s.figures:
            data = base64.b64encode(f.png).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(s.title)}" src="data:image/png;base64,'
                         f'{data}"><figcaption>{f.caption}</figcaption></figure>')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# --------------------------------------------------------------------------- sections
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
        _fig(betas, "β_t, the variance added by step t of q(x_t | x_{t−1}) = N(√(1−β_t) x_{t−1}, "
                    "β_t I), for this run's schedule and the four standard ones with the same T."),
        _fig(abar, "ᾱ_t = Π_{s≤t} (1 − β_s): the share of the signal's variance left in "
                   "x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε. The cosine and sigmoid schedules keep signal "
                   "longer than the linear one."),
        _fig(lsnr, "log-SNR λ(t) = log ᾱ_t/(1 − ᾱ_t), the one number that fixes how hard "
                   "denoising is at t; samplers and likelihoods only ever see the schedule "
                   "through it."),
    ], note=f"This run: <code>{spec}</code>, T = {T}.")


def _forward_times(T: int) -> list[int]:
    return sorted({0, *(round(f * T) for f in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0))})


def section_forward(ctx: Context) -> Section:
    sch = ctx.run.schedule
    ts = _forward_times(sch.T)
    g = torch.Generator().manual_seed(ctx.seed)
    x0 = ctx.held_out[:4]
    snr_text = ", ".join(f"t={t}: {sch.snr(float(t)).item():.3g}" for t in ts if t > 0)
    if ctx.image:
        rows = []
        for i in range(x0.shape[0]):
            eps = torch.randn(x0.shape[1:], generator=g)
            frames = []
            for t in ts:
                a, s = (v.item() for v in sch.marginal(float(t)))
                frames.append(a * x0[i] + s * eps)
            rows.append(ctx.pictures(torch.stack(frames)))
        image = viz.labelled_rows(rows, [f"t={t}" for t in ts])
    else:
        pts = []
        for t in ts[1::2]:
            a, s = (v.item() for v in sch.marginal(float(t)))
            xt = a * ctx.held_out + s * torch.randn(ctx.held_out.shape, generator=g)
            pts.append((f"t={t}", xt[:, 0].numpy(), xt[:, -1].numpy()))
        image = viz.line_chart(pts, title="x_t ~ q(x_t | x_0), dims 1 and D", markers=True)
    return Section("forward", "2. Forward: q(x_t | x_0)", [
        _fig(image, f"Held-out data noised in closed form, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, with "
                    f"one ε per row. SNR(t) = ᾱ_t/(1 − ᾱ_t): {snr_text}. Below SNR ≈ 1 the "
                    "noise dominates, and by t = T almost nothing of x_0 is left."),
    ])


class _Recorder:
    def __init__(self, total: int, keep: int = 7, examples: int = 3):
        self.at = set(np.linspace(0, total - 1, keep).round().astype(int).tolist())
        self.examples, self.ts, self.x_t, self.x0 = examples, [], [], []
        self.all_x0: list[tuple[float, Tensor]] = []
        self.path: list[Tensor] = []

    def __call__(self, i: int, t: float, x_t: Tensor, x0_hat: Tensor) -> None:
        self.all_x0.append((float(t), x0_hat.detach().float().cpu()))
        self.path.append(x_t.detach().float().cpu())
        if i in self.at:
            self.ts.append(float(t))
            self.x_t.append(x_t[: self.examples].detach().float().cpu())
            self.x0.append(x0_hat[: self.examples].detach().float().cpu())


def _draw(ctx: Context, sampler: str, n: int, steps: int, callback: Any = None,
          x_T: Tensor | None = None) -> Tensor:
    from .samplers import sample

    return sample(ctx.run.denoiser, (n, *ctx.run.shape), ctx.run.schedule, sampler=sampler,
                  steps=steps, seed=ctx.seed, callback=callback, x_T=x_T, **ctx.cond(n)).float()


def section_reverse(ctx: Context) -> tuple[Section, _Recorder]:
    figures, kept = [], None
    for sampler in ("ddpm", "ddim"):
        rec = _Recorder(ctx.steps)
        out = _draw(ctx, sampler, 3, ctx.steps, rec)
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
        figures.append(_fig(image, f"{sampler.upper()}, {ctx.steps} steps, three seeds ({kind}). "
                                   "Each pair of rows shows x_t and the network's x̂_0 = "
                                   "(x_t − σ_t ε̂)/α_t at the same step: x̂_0 is a blurry average "
                                   "early and sharpens as t falls."))
    return Section("reverse", "3. Reverse: sampling", figures), kept


def section_loss(ctx: Context) -> Section:
    T = ctx.run.schedule.T
    ts = sorted({1, 2, *np.linspace(1, T, 24).round().astype(int).tolist()})
    g = torch.Generator().manual_seed(ctx.seed + 1)
    cond = {} if ctx.labels is None else {"labels": ctx.labels}
    res = loss_by_noise_level(ctx.run.denoiser, ctx.held_out, ts, generator=g, **cond)
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
        _fig(mse, f"The trained model's ε-prediction error on {ctx.held_out.shape[0]} held-out "
                  "examples, x_t ~ q(x_t | x_0), one draw per example and t. It is largest at small "
                  "t, where ε is nearly invisible in x_t = α_t x_0 + σ_t ε, and falls towards 0 as "
                  "t → T, where x_t is almost ε itself."),
        _fig(vlb, "The variational bound's term L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | "
                  "x_t)) in bits per dimension (t = 1: the decoder −log p_θ(x_0 | x_1)). With "
                  "fixed variances it is the ε-MSE weighted by β_t²/(2σ²α_t(1−ᾱ_t)) — heavily "
                  "towards small t."),
        _fig(cum, f"Cumulative share of the KL terms Σ_{{t≥2}} L_{{t−1}} ≈ {total:.3g} bits/dim "
                  f"(trapezoid over the sampled t; the decoder term is {res['bound_bits'][0]:.3g} "
                  "bits/dim and the prior term is not included): most of the bound is earned in the "
                  "last few low-noise steps, which is why the simple loss, flat in t, trains better "
                  "samples than the bound."),
    ])


def section_spectral(ctx: Context, rec: _Recorder) -> Section:
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
        _fig(spec, "Radially averaged power spectrum P(k) = E|X(k)|² (orthonormal DFT) of the "
                   "network's x̂_0 along one DDPM run, against held-out data. Low frequencies reach "
                   "the data's power first; high frequencies are filled in last: coarse "
                   "structure, then detail."),
        _fig(snr, "The forward process per frequency: X_t(k) = α_t X_0(k) + σ_t E(k), so "
                  "SNR_t(k) = SNR(t)·P(k). Data power falls with k, so fine detail drowns early; "
                  "the cosine schedule keeps SNR(t) higher for longer, giving more of the steps "
                  f"to high noise. Half-power times (SNR_t(k) = 1) of this run: {half_text}."),
    ])


def _bimodal() -> GaussianMixture:
    return GaussianMixture([0.35, 0.65], torch.tensor([[-1.2], [1.0]]), [0.25, 0.3])


def section_means(ctx: Context) -> Section:
    sch = ctx.run.schedule
    mix = _bimodal()
    T = sch.T
    xs = torch.linspace(-3, 3, 241, dtype=torch.float64)
    curves = []
    for f in (0.02, 0.1, 0.25, 0.5, 0.9):
        t = round(f * T)
        a, s = sch.marginal(float(t))
        curves.append((f"t={t}", xs.numpy(), mix.posterior_mean(xs[:, None], a, s)[:, 0].numpy()))
    curve = viz.line_chart(curves, title="E[x0 | x_t] for bimodal 1-D data", xlabel="x_t")
    # paths of x̂_0 along the probability-flow ODE from a few starts
    from .denoiser import Denoiser
    from .samplers import SAMPLERS

    den = Denoiser(mix.net(sch, "x0"), sch, "x0")
    starts = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    path: list[tuple[float, Tensor]] = []
    SAMPLERS["ddim"](den, starts, grids.respaced(sch, min(100, T)),
                     callback=lambda i, t, x, x0: path.append((t, x0[:, 0].clone())))
    ts = np.array([p[0] for p in path])
    slides = viz.line_chart([("x0_hat" if k == 0 else "", ts, np.array([p[1][k].item() for p in path]))
                             for k in range(starts.shape[0])],
                            title="x0_hat along ODE paths", xlabel="t")
    t_mid = round(0.3 * T)
    a, s = (v.item() for v in sch.marginal(float(t_mid)))
    x_t = 0.2
    grid = torch.linspace(-3, 3, 601, dtype=torch.float64)
    exact = exact_reverse_conditional(mix, sch, t_mid, x_t, grid)
    c0, ct, var = (v.item() for v in sch.posterior_coefficients(float(t_mid)))
    x0_hat = mix.posterior_mean(torch.tensor([[x_t]], dtype=torch.float64), a, s).item()
    learned = torch.exp(-0.5 * (grid - (c0 * x0_hat + ct * x_t)) ** 2 / var) / math.sqrt(
        2 * math.pi * var)
    posts = [("q(x_{t-1} | x_t)", grid.numpy(), exact.numpy()),
             ("p(x_{t-1} | x_t), ideal x0_hat", grid.numpy(), learned.numpy())]
    for x0v in (-1.2, 1.0):
        m = c0 * x0v + ct * x_t
        posts.append((f"q(x_{{t-1}} | x_t, x0={x0v})", grid.numpy(),
                      (torch.exp(-0.5 * (grid - m) ** 2 / var) / math.sqrt(2 * math.pi * var))
                      .numpy()))
    lo = min(c0 * -1.2 + ct * x_t, c0 * x0_hat + ct * x_t) - 6 * math.sqrt(var)
    hi = max(c0 * 1.0 + ct * x_t, c0 * x0_hat + ct * x_t) + 6 * math.sqrt(var)
    post = viz.line_chart(posts, title=f"reverse step at t={t_mid}, x_t={x_t}", xlabel="x_{t-1}",
                          limits=(lo, hi, 0, float(max(p[2].max() for p in posts)) * 1.05))
    run_note = ("This run models " + ("images" if ctx.image else f"{ctx.run.shape[0]}-D vectors")
                + ": the curves here are the exact ones for a 1-D two-mode density "
                "0.35 N(−1.2, 0.25²) + 0.65 N(1, 0.3²), where every quantity is closed form.")
    return Section("means", "6. Means and modes", [
        _fig(curve, "The ideal denoiser E[x_0 | x_t] = Σ_k r_k(x_t) E[x_0 | x_t, k] against x_t. "
                    "At high noise it maps every x_t near the grey average of the data; as t falls "
                    "it becomes a step between the modes, and at t → 0 it is the identity."),
        _fig(slides, "x̂_0 along nine probability-flow (DDIM) paths: each starts near the data "
                     "mean and slides onto one mode as t falls; the mean never settles between "
                     "the modes."),
        _fig(post, f"One reverse step: the exact q(x_{{t−1}} | x_t) (Bayes on a grid), the "
                   f"Gaussian p(x_{{t−1}} | x_t) = N(c_0 x̂_0 + c_t x_t, β̃_t) with the ideal "
                   f"x̂_0 = {x0_hat:.3f}, and the posteriors q(x_{{t−1}} | x_t, x_0) for x_0 at "
                   "each mode. The model's step is the average of the posteriors over "
                   "q(x_0 | x_t): for small steps it matches the exact conditional."),
    ], note=run_note)


def _yardstick(ctx: Context) -> tuple[str, Callable[[Tensor], float], str]:
    if ctx.yardstick in ("digits", "mnist"):
        from .metrics.classifier import class_report

        def score(x: Tensor) -> float:
            return class_report(ctx.pictures(x), ctx.yardstick)["fraction_confident"]

        return (f"fraction of samples the {ctx.yardstick} classifier reads with confidence "
                ">= 0.9 (higher is better)", score, "confident fraction")
    ref = ctx.held_out

    def sw(x: Tensor) -> float:
        return sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))

    return "sliced Wasserstein-2 distance to held-out data (lower is better)", sw, "sliced W2"


def section_compute(ctx: Context) -> Section:
    what, score, short = _yardstick(ctx)
    plan = {"ddpm": (10, 25, 50), "ddim": (5, 10, 25, 50), "euler": (5, 10, 25),
            "heun": (3, 5, 13), "dpmpp-2m": (5, 10, 25), "sde": (10, 25, 50)}
    plan = {k: tuple(s for s in v if s <= ctx.run.schedule.T) for k, v in plan.items()}
    cond = ctx.cond(ctx.n_samples)
    rows = quality_vs_nfe(ctx.run.denoiser, ctx.run.shape, plan, score, ctx.n_samples, ctx.seed,
                          cond or None)
    series = []
    for name in plan:
        rs = [r for r in rows if r.sampler == name]
        series.append((name, [r.nfe for r in rs], [r.score for r in rs]))
    chart = viz.line_chart(series, title=short + " vs network evaluations", xlabel="NFE per image",
                           log_x=True, markers=True)
    table = _table(["sampler", "steps", "NFE", short, "ms / image"],
                   [(r.sampler, r.steps, f"{r.nfe:.0f}", f"{r.score:.3f}",
                     f"{1000 * r.seconds_per_image:.2f}") for r in rows])
    return Section("compute", "7. Compute and quality", [
        _fig(chart, f"Quality against the number of network evaluations (NFE) per image for "
                    f"each sampler, {ctx.n_samples} samples each: {what}. Higher-order ODE "
                    "solvers (Heun, DPM-Solver++(2M)) reach a given quality with fewer "
                    "evaluations; stochastic samplers (DDPM, SDE) need more steps but correct "
                    "their own errors."),
    ], note="Time per image on this machine (CPU, batch of "
            f"{ctx.n_samples}):<br>" + table)


def section_sde_ode(ctx: Context) -> Section:
    n = 4
    g = torch.Generator().manual_seed(ctx.seed + 7)
    x_T = torch.randn((n, *ctx.run.shape), generator=g)
    if ctx.image:
        mean, plane = principal_plane(ctx.held_out)
        what = "the first two principal components of the held-out data"
    else:
        mean = torch.zeros(ctx.run.shape[0], dtype=torch.float64)
        plane = torch.eye(ctx.run.shape[0], dtype=torch.float64)[:, :2]
        what = "the first two coordinates"

    def project(x: Tensor) -> np.ndarray:
        return ((x.reshape(x.shape[0], -1).double() - mean) @ plane).numpy()

    series = []
    for sampler in ("sde", "ddim"):
        paths: list[Tensor] = [x_T.clone()]
        _draw(ctx, sampler, n, ctx.steps,
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
        _fig(chart, f"The same four starts x_T under the reverse SDE (Euler–Maruyama, "
                    f"dx = [f x − g² ∇log p_t] dt + g dw̄) and the probability-flow ODE "
                    f"(dx = [f x − ½ g² ∇log p_t] dt, DDIM), {ctx.steps} steps each, projected "
                    f"onto {what}. Both carry the noise distribution to the data distribution; "
                    "the ODE does it deterministically (the map that encode inverts), the SDE "
                    "with fresh noise at every step, ending at different points."),
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
    a = bound_estimate(ctx.run.denoiser, x, LIKELIHOOD_STRATA, generator=g, discrete=discrete,
                       **cond)
    b = bound_estimate(ctx.run.denoiser, shifted, LIKELIHOOD_STRATA, generator=g,
                       discrete=discrete, **cond)
    chart = viz.histogram_chart([("held-out data", a.numpy()), (shift_name, b.numpy())], bins=20,
                                title="negative log-likelihood bound (bits/dim)",
                                xlabel="bits/dim")
    return Section("likelihood", "9. Likelihood: is this typical?", [
        _fig(chart, f"The variational bound −log p_θ(x) ≤ L_T + Σ_t L_{{t−1}} of each example "
                    f"in bits per dimension (continuous density of the model-space values; the "
                    f"decoder term exactly, the other T − 1 terms by stratified sampling of "
                    f"{LIKELIHOOD_STRATA} t, an unbiased estimate), for {x.shape[0]} held-out "
                    "examples and the same "
                    f"examples {shift_name}: median {a.median().item():.2f} vs "
                    f"{b.median().item():.2f} bits/dim. Shifted data sits in the right tail: "
                    "the model finds it less likely."),
    ])


# --------------------------------------------------------------------------- driver
def _held_out(run: Any, n: int) -> tuple[Tensor, Tensor | None]:
    from . import data

    cfg = run.config.data
    options: dict[str, Any] = {}
    if run.preprocess.kind == "image":
        options = {"image_size": run.preprocess.image_size, "channels": run.preprocess.channels}
    try:
        ds = data.load(cfg.spec, split="test", **options)
    except (ValueError, FileNotFoundError):
        ds = data.load(cfg.spec, split="all", **options)
    xs, labels = [], []
    for i, item in enumerate(ds):
        if i >= n:
            break
        xs.append(item["x"])
        labels.append(item.get("label"))
    if not xs:
        raise ValueError(f"no held-out data found for {cfg.spec!r}")
    lab = None
    if run.num_classes is not None and all(v is not None for v in labels):
        lab = torch.tensor(labels, dtype=torch.long)
    return torch.stack(xs).float(), lab


def default_yardstick(run: Any) -> str:
    """digits / mnist (the small classifiers) where they fit the run's pictures, else sliced W2."""
    from .metrics.classifier import cache_file

    pre, spec = run.preprocess, str(run.config.data.spec).lower()
    if pre.kind == "image" and spec == "digits" and tuple(pre.shape) == (1, 8, 8):
        return "digits"
    if pre.kind == "image" and "mnist" in spec and tuple(pre.shape) == (1, 28, 28) \
            and cache_file("mnist").exists():
        return "mnist"
    return "sliced-wasserstein"


def report(run: Any, *, seed: int = 0, n_samples: int = 64, held_out: int = 128, steps: int = 50,
           sections: Sequence[str] = SECTIONS, progress: Callable[[str], None] | None = None
           ) -> tuple[str, dict[str, float]]:
    """The explain page for a loaded run (:func:`noisecraft.load_run`) and seconds per section."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    torch.manual_seed(seed)
    x, labels = _held_out(run, held_out)
    ctx = Context(run, x, labels, seed, n_samples, min(steps, run.schedule.T), default_yardstick(run))
    out: list[Section] = []
    rec = None
    if "compute" in sections and ctx.yardstick in ("digits", "mnist"):
        from .metrics.classifier import load_classifier

        load_classifier(ctx.yardstick)        # trains (with autograd) on first use, then cached
    with torch.no_grad():
        for key in SECTIONS:
            if key not in sections:
                continue
            start = time.perf_counter()
            if progress is not None:
                progress(key)
            if key in ("reverse", "spectral") and rec is None:
                reverse, rec = section_reverse(ctx)      # the spectral view reuses its x̂_0
                if key == "reverse":
                    out.append(reverse)
            if key == "spectral":
                out.append(section_spectral(ctx, rec))
            elif key != "reverse":
                out.append(_BUILDERS[key](ctx))
            ctx.timings[key] = time.perf_counter() - start
    title = f"noisecraft explain: {run.run_dir}"
    intro = (f"A diffusion model trained on <code>{html.escape(str(run.config.data.spec))}</code> "
             f"({run.preprocess.kind} data of shape {tuple(run.shape)}), step {run.step}, "
             f"{run.config.prediction}-prediction, T = {run.schedule.T}. Notation: x_t = α_t x_0 + "
             "σ_t ε with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t); ε̂ and x̂_0 are the network's predictions. "
             f"Held-out examples: {x.shape[0]}; seed {seed}.")
    return render_html(title, intro, out), ctx.timings


_BUILDERS: dict[str, Callable[[Context], Section]] = {
    "schedule": section_schedule,
    "forward": section_forward,
    "loss": section_loss,
    "means": section_means,
    "compute": section_compute,
    "sde-ode": section_sde_ode,
    "likelihood": section_likelihood,
}
