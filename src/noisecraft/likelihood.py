"""Negative log-likelihood in bits per dimension: by the variational bound and by the ODE.

Units and the bits/dim convention
---------------------------------
:func:`nll` returns one number per example, in **bits per dimension**: an NLL in nats divided by
D · ln 2, where D is the number of scalars in one example (C · H · W for an image).

- ``discrete=False`` (continuous data): the value is −log₂ p(x) / D, with p the model's density
  in the units of x itself. It depends on the scaling of x: the same data in [0, 255] instead of
  [−1, 1] scores log₂ 127.5 bits/dim more.
- ``discrete=True`` (8-bit data): x must hold the 256 levels k ∈ {0, …, 255} scaled as
  x = 2k/255 − 1, so the bins have width Δ = 2/255. The value is −log₂ P(k) / D for a
  probability mass P over the 256^D possible images — the number the literature reports
  (Ho et al. 2020: 3.70 on CIFAR-10), the same whatever the scaling, and at most 8 for a model
  no better than uniform.

  * ``method="vlb"``: P is the model's own discrete distribution, the discretised Gaussian
    decoder p(x_0 | x_1) of Ho et al. (bins [x − 1/255, x + 1/255], the end bins open to ±∞).
  * ``method="ode"``: uniform dequantisation. With y = x + u, u ~ U(−Δ/2, Δ/2)^D,
    Jensen gives log P(k) ≥ E_u[log p(y)] + D log Δ, so (one draw of u per call, an unbiased
    estimate of this upper bound)

        bits/dim = −log₂ p(y) / D − log₂ Δ = −log₂ p(y) / D + log₂ 127.5    (log₂ 127.5 ≈ 6.994).

Method "vlb"
------------
The exact T-term bound of Ho et al. (2020), eq. (5), L = L_T + Σ_{t=2..T} L_{t-1} + L_0 with
L_T = KL(q(x_T|x_0) ‖ N(0, I)), L_{t-1} = KL(q(x_{t-1}|x_t,x_0) ‖ p_θ(x_{t-1}|x_t)) at one draw
x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε per t, and L_0 = −log p_θ(x_0|x_1): an unbiased estimate of the bound.
The terms come from :mod:`noisecraft.losses` (``prior_kl`` and ``bound_term``), in nats.
:func:`bound_estimate` is the same bound from ``strata`` network calls instead of T (stratified
sampling of t, still unbiased), in bits per dimension: what the explain page's histogram shows.

Method "ode"
------------
The probability-flow ODE (Song et al. 2021), written in u = log(σ/α) = −λ/2, where λ is the log-SNR:

    dx/du = σ ε̂(x, t(u)) − σ² x   (= α σ v̂),          d log p_u(x_u)/du = −∇·(dx/du),

with α² = sigmoid(λ), σ² = sigmoid(−λ) and t(u) = ``schedule.t_from_log_snr(−2u)``. In this
variable the drift stays of order one over the whole path, so the adaptive solver
(:func:`noisecraft.ode.dopri5`) takes steps of similar size from the data end to the noise end.
Integrating from t_start to T,

    log p(x) = log N(x_T; 0, I) + ∫ ∇·(dx/du) du,       ∇·(dx/du) = σ ∇·ε̂ − σ² D.

The divergence ∇·ε̂ is exact (D backward passes; for small D) or Hutchinson's estimate
z^T (∂ε̂/∂x) z with E[z z^T] = I (Rademacher or Gaussian z, drawn once per solve so the
integrand stays smooth for the adaptive solver). The σ² D part is added exactly.

*The start.* λ(0) = +∞ (σ = 0), where ε̂ is 0/0, so the flow starts at ``t_start`` > 0, by
default where σ(t) = 10⁻³; the data point is treated as x at t_start. For any t_start the flow
defines a normalised density, so the dequantisation bound above stays a bound; for continuous
data the result is log p_{t_start}(x), which differs from log p_0(x) by O(σ² / s²) nats per
dimension for data structure on the scale s (≈ 10⁻⁵ at s = 0.2).

*The end.* N(0, I) is the model's prior at t = T. The true q(x_T) has mean √ᾱ_T E[x_0] and
covariance ᾱ_T Cov[x_0] + (1 − ᾱ_T) I, so for a standard schedule (ᾱ_T ≈ 4·10⁻⁵ for the linear
one) log N(x_T; 0, I) − log q(x_T) = O(√ᾱ_T ‖E x_0‖ ‖x_T‖) nats for one point (the mean shift,
≈ 10⁻³ for data of unit scale) and O(ᾱ_T) on average over the data. Flow-matching runs
(``Schedule.flow``, ᾱ_T ≈ 10⁻⁹ at its clipped end) integrate the same ODE: a flow velocity is
read into ε̂ by the Denoiser, and their prior mismatch is 100× smaller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .checks import positive_int
from .denoiser import Denoiser
from .ode import dopri5
from .process import resolve_variance
from .samplers import as_denoiser
from .schedule import Schedule

METHODS = ("vlb", "ode")
DIVERGENCES = ("rademacher", "gaussian", "exact")

BIN_WIDTH = 2 / 255
"""Δ, the width of one 8-bit level in data scaled to [−1, 1]."""

DEQUANTISATION_BITS = math.log2(1 / BIN_WIDTH)
"""−log₂ Δ = log₂ 127.5: added per dimension to −log₂ p(y)/D under uniform dequantisation."""

SIGMA_START = 1e-3
"""σ(t_start) of the ODE's default start."""


@dataclass(frozen=True)
class FlowLogProb:
    """The probability-flow ODE's answer for a batch of points (see :func:`ode_log_prob`)."""

    log_prob: Tensor        # (batch,) log p(x) in nats, float64
    prior_log_prob: Tensor  # (batch,) log N(x_T; 0, I) in nats
    x_T: Tensor             # the points carried to t = T
    nfe: Tensor             # (batch,) network evaluations (forward passes) per example


def nll(model: Any, x: Tensor, schedule: Schedule, method: str = "vlb",
        prediction: str | None = None,
        discrete: bool = True, *, divergence: str = "rademacher", probes: int = 1,
        rtol: float = 1e-5, atol: float = 1e-5, t_start: float | None = None,
        variance: str | None = None, batch_size: int = 256,
        generator: torch.Generator | None = None, **cond: Any) -> Tensor:
    """Negative log-likelihood of each example of ``x``, in bits per dimension.

    The units, the 8-bit convention and the dequantisation are stated once, in this module's
    docstring (``help(noisecraft.likelihood)``): ``discrete=True`` gives −log₂ P(k)/D for 8-bit
    data scaled to [−1, 1] (bins of width 2/255); ``discrete=False`` gives −log₂ p(x)/D.

    Args:
        model: a :class:`~noisecraft.Denoiser` over ``schedule`` (read without its x̂_0 clamp:
            :meth:`~noisecraft.Denoiser.unclipped`), or a raw network that is wrapped as
            ``Denoiser(model, schedule, prediction)``.
        x: the data, shape (batch, ...), without NaN; in [−1, 1] on the 8-bit grid when
            ``discrete``.
        schedule: the noise schedule the model was trained with.
        method: ``"vlb"`` (the T-term variational bound) or ``"ode"`` (probability-flow ODE).
        prediction: what a raw network predicts (``"eps"``, ``"x0"``, ``"v"`` or ``"flow"``;
            unset: eps).
            A Denoiser carries its own; then leave it unset or give the same value.
        discrete: 8-bit data (True) or continuous data (False).
        divergence, probes: ``"ode"``: the divergence estimator, ``"rademacher"`` or
            ``"gaussian"`` Hutchinson probes (``probes`` of them, averaged) or ``"exact"``.
        rtol, atol: ``"ode"``: the solver's tolerances.
        t_start: ``"ode"``: where the flow starts (default: σ(t_start) = 10⁻³).
        variance: ``"vlb"``: the reverse-step variance, one of
            :data:`noisecraft.process.VARIANCES` (unset: learned when the network outputs it,
            else β̃_t; :func:`noisecraft.process.resolve_variance`).
        batch_size: the most rows handed to the network at once (``"vlb"`` packs several t
            into one call; ``"ode"`` solves ``x`` in slices of this size).
        generator: the source of the noise draws (x_t for the bound, probes and dequantisation
            for the ODE).
        **cond: conditioning passed to the network; tensors with a leading batch dimension are
            sliced along with ``x``.

    Returns:
        A float64 tensor of shape (batch,): bits per dimension.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    _check_data(x, discrete)
    # The likelihood is the network's density: a Denoiser's x̂_0 clamp (a sampler's choice) is
    # dropped, so nll(run.denoiser, …) is what `noisecraft nll` reports.
    denoiser = as_denoiser(model, schedule, prediction)
    if type(denoiser) is Denoiser:
        denoiser = denoiser.unclipped()
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    dims = math.prod(x.shape[1:])
    if method == "vlb":
        ode_only = {"divergence": (divergence, "rademacher"), "probes": (probes, 1),
                    "rtol": (rtol, 1e-5), "atol": (atol, 1e-5), "t_start": (t_start, None)}
        for name, (value, default) in ode_only.items():
            if value != default:
                raise ValueError(f"{name}={value!r} applies to method='ode' only")
        variance = resolve_variance(variance, denoiser.learned_variance)
    elif variance is not None:
        raise ValueError(f"variance={variance!r} applies to method='vlb' only; the ODE has no "
                         "reverse-step variance")
    out = []
    for lo in range(0, x.shape[0], batch_size):
        xs = x[lo:lo + batch_size]
        cs = _slice_cond(cond, x.shape[0], slice(lo, lo + batch_size))
        if method == "vlb":
            nats = vlb_nats(denoiser, xs, discrete=discrete, variance=variance,
                            batch_size=batch_size, generator=generator, **cs)
            out.append(nats / (dims * math.log(2)))
            continue
        if discrete:
            xs = dequantise(xs, generator)
        flow = ode_log_prob(denoiser, xs, divergence=divergence, probes=probes, rtol=rtol,
                            atol=atol, t_start=t_start, generator=generator, **cs)
        bits = -flow.log_prob / (dims * math.log(2))
        out.append(bits + DEQUANTISATION_BITS if discrete else bits)
    return torch.cat(out)


def dequantise(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """y = x + u, u ~ U(−Δ/2, Δ/2) per scalar, Δ = 2/255: each 8-bit level spread over its bin."""
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64,
                   device=_generator_device(generator, x.device)).to(x.device)
    return (x.double() + (u - 0.5) * BIN_WIDTH).to(torch.promote_types(x.dtype, torch.float32))


def ode_log_prob(denoiser: Denoiser, x: Tensor, *, divergence: str = "rademacher",
                 probes: int = 1, rtol: float = 1e-5, atol: float = 1e-5,
                 t_start: float | None = None, generator: torch.Generator | None = None,
                 **cond: Any) -> FlowLogProb:
    """log p(x) in nats under the probability-flow ODE of ``denoiser`` (continuous x).

    See the module docstring for the ODE, the start and the end. The network runs in x's dtype
    (float32 at least); the solver's error control covers x and the log-density together.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of "
                         f"{', '.join(DIVERGENCES)}")
    if not (isinstance(probes, int) and probes >= 1):
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    schedule = denoiser.schedule
    batch, event = x.shape[0], x.shape[1:]
    dims = math.prod(event)
    dtype = torch.promote_types(x.dtype, torch.float32)
    u0, u1 = _ode_interval(schedule, t_start)
    if divergence == "exact":
        z = None
    else:
        shape = (probes, batch, dims)
        dev = _generator_device(generator, x.device)
        if divergence == "rademacher":
            z = torch.randint(0, 2, shape, generator=generator, device=dev).to(dtype) * 2 - 1
        else:
            z = torch.randn(shape, generator=generator, device=dev, dtype=dtype)
        z = z.to(x.device)
    forward_passes = torch.zeros(batch, dtype=torch.int64, device=x.device)

    def flow(u: Tensor, state: Tensor, idx: Tensor) -> Tensor:
        t = schedule.t_from_log_snr(-2 * u)
        sigma2 = torch.sigmoid(2 * u)                    # σ² = sigmoid(−λ)
        s = sigma2.sqrt().to(dtype).reshape(-1, *([1] * len(event)))
        xs = state[:, :dims].reshape(-1, *event)
        with torch.enable_grad():
            xs = xs.detach().requires_grad_(True)
            eps = denoiser(xs, t, **_slice_cond(cond, batch, idx)).eps
            div_eps = _divergence(eps, xs, None if z is None else z[:, idx])
        forward_passes[idx] += 1
        drift = s * eps.detach() - s * s * xs.detach()
        div = s.flatten() * div_eps - sigma2.to(dtype) * dims
        return torch.cat([drift.flatten(1), div[:, None]], dim=1)

    state0 = torch.cat([x.to(dtype).flatten(1), x.new_zeros(batch, 1, dtype=dtype)], dim=1)
    sol = dopri5(flow, state0, u0, u1, rtol=rtol, atol=atol)
    x_T = sol.y[:, :dims].reshape(batch, *event)
    delta = sol.y[:, dims].double()
    prior = -0.5 * x_T.double().flatten(1).pow(2).sum(1) - 0.5 * dims * math.log(2 * math.pi)
    return FlowLogProb(log_prob=prior + delta, prior_log_prob=prior, x_T=x_T, nfe=forward_passes)


def vlb_nats(denoiser: Denoiser, x0: Tensor, *, discrete: bool = True,
             variance: str | None = None, batch_size: int = 256,
             generator: torch.Generator | None = None, **cond: Any) -> Tensor:
    """The T-term bound L_T + Σ_{t=1..T} L_{t-1} of each example, in nats, shape (batch,).

    One draw of x_t per example and t. Several t share one network call (up to ``batch_size``
    rows), and each t gets its own noise stream drawn in increasing t, so the estimate does not
    depend on ``batch_size``.
    """
    from . import losses  # the bound's terms live with the other objectives

    schedule = denoiser.schedule
    batch = x0.shape[0]
    with torch.no_grad():
        total = losses.prior_kl(schedule, x0).double()
        per_call = max(1, batch_size // max(batch, 1))
        for lo in range(1, schedule.T + 1, per_call):
            ts = list(range(lo, min(lo + per_call, schedule.T + 1)))
            noise = torch.stack([
                torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                            device=_generator_device(generator, x0.device)) for _ in ts
            ]).to(x0.device)
            rows = noise.shape[0] * batch
            t = torch.tensor(ts, dtype=torch.float64, device=x0.device).repeat_interleave(batch)
            terms = losses.bound_term(
                denoiser, x0.repeat(len(ts), *([1] * (x0.ndim - 1))), t,
                noise=noise.reshape(rows, *x0.shape[1:]), variance=variance, discrete=discrete,
                **_repeat_cond(cond, batch, len(ts)))
            total = total + terms.double().reshape(len(ts), batch).sum(0)
    return total


# ---------------------------------------------------------------------------- helpers
@torch.no_grad()
def bound_estimate(denoiser: Any, x0: Tensor, strata: int = 50, *,
                   generator: torch.Generator | None = None, discrete: bool = False,
                   **cond: Any) -> Tensor:
    """An unbiased estimate of the variational bound L_T + Σ_{t=1..T} L_{t−1} per example, in
    bits per dimension, from ``strata`` network calls instead of T.

    The decoder term (t = 1) is computed exactly; t = 2..T is split into ``strata`` equal runs of
    integers, one t drawn uniformly in each (per example), and its term weighted by the run's length
    (stratified Monte Carlo over t, so E[estimate] = the full bound of
    :func:`vlb_nats`). Each term uses one draw of x_t as the full bound does.
    """
    from . import losses  # the bound's terms live with the other objectives

    T = denoiser.schedule.T
    positive_int("strata", strata)
    strata = min(strata, T - 1) if T > 1 else 0
    dims = math.prod(x0.shape[1:])
    total = losses.prior_kl(denoiser.schedule, x0).double()
    total = total + losses.bound_term(denoiser, x0, 1, generator=generator, discrete=discrete,
                                      **cond).double()
    edges = (torch.linspace(2, T + 1, strata + 1, dtype=torch.float64).round().long().tolist()
             if strata else [])
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        if hi <= lo:
            continue
        # t drawn per example, so the examples' estimates are independent
        t = torch.randint(int(lo), int(hi), (x0.shape[0],), generator=generator)
        term = losses.bound_term(denoiser, x0, t.to(x0.device), generator=generator,
                                 discrete=discrete, **cond)
        total = total + (hi - lo) * term.double()
    return total / (dims * math.log(2))


def _divergence(eps: Tensor, x: Tensor, z: Tensor | None) -> Tensor:
    """∇·ε̂ per example: exact (one backward pass per dimension) or Hutchinson over probes z."""
    batch = x.shape[0]
    flat = eps.flatten(1)
    if z is None:
        dims = flat.shape[1]
        div = flat.new_zeros(batch)
        for i in range(dims):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < dims - 1)
            div = div + g.flatten(1)[:, i]
        return div.detach()
    est = flat.new_zeros(batch)
    for k in range(z.shape[0]):
        zk = z[k]
        (g,) = torch.autograd.grad(flat, x, zk, retain_graph=k < z.shape[0] - 1)
        est = est + (g.flatten(1) * zk).sum(1)     # z^T J z, since g = J^T z
    return (est / z.shape[0]).detach()


def _ode_interval(schedule: Schedule, t_start: float | None) -> tuple[float, float]:
    """(u0, u1) with u = −λ/2, from t_start to T."""
    if t_start is None:
        lam_start = math.log((1 - SIGMA_START**2) / SIGMA_START**2)
    else:
        if not (isinstance(t_start, int | float) and 0 < t_start < schedule.T):
            raise ValueError(f"t_start must lie in (0, T) = (0, {schedule.T}), got {t_start!r}")
        lam_start = schedule.log_snr(float(t_start)).item()
    lam_end = schedule.log_snr(float(schedule.T)).item()
    if not lam_start > lam_end:
        raise ValueError(f"the flow would start at log-SNR {lam_start!r}, not above λ(T) = {lam_end!r}")
    return -lam_start / 2, -lam_end / 2


def _check_data(x: Tensor, discrete: bool) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (batch, ...) with batch >= 1, got {tuple(x.shape)}")
    bad = ~torch.isfinite(x)
    if bad.any():
        i = int(bad.flatten(1).any(1).nonzero()[0])
        raise ValueError(f"x[{i}] contains {x[i][bad[i]].flatten()[0].item()} (NaN or infinite "
                         "values have no likelihood)")
    if not discrete:
        return
    outside = (x < -1) | (x > 1)
    if outside.any():
        i = int(outside.flatten(1).any(1).nonzero()[0])
        raise ValueError(f"x[{i}] holds {x[i][outside[i]].flatten()[0].item()!r}, outside [-1, 1]; "
                         "discrete=True expects 8-bit data scaled to [-1, 1] (use discrete=False "
                         "for continuous data)")
    levels = (x.double() + 1) * 127.5
    off = (levels - levels.round()).abs() > 1e-3
    if off.any():
        i = int(off.flatten(1).any(1).nonzero()[0])
        raise ValueError(f"x[{i}] holds {x[i][off[i]].flatten()[0].item()!r}, not one of the 256 "
                         "levels 2k/255 - 1; discrete=True expects 8-bit data (quantise it, or "
                         "use discrete=False)")


def _generator_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def _slice_cond(cond: dict[str, Any], batch: int, index: Tensor | slice) -> dict[str, Any]:
    """The conditioning of some rows: tensors with a leading batch dimension are indexed."""
    return {k: v[index] if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == batch else v
            for k, v in cond.items()}


def _repeat_cond(cond: dict[str, Any], batch: int, times: int) -> dict[str, Any]:
    """The conditioning tiled ``times`` over, to match x tiled the same way."""
    return {k: v.repeat(times, *([1] * (v.ndim - 1)))
            if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == batch else v
            for k, v in cond.items()}

