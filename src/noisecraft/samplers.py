"""Samplers: plain functions from x_T to x_0 over an explicit time grid, one registry.

Every sampler has the signature

    fn(denoiser, x_T, grid, *, noise=None, callback=None, cond=None, **options) -> x_0

- ``denoiser`` is a :class:`~noisecraft.Denoiser` (or anything returning a ``Denoised`` record and
  carrying a ``schedule``); samplers read only x̂_0, ε̂ (and the variance fraction) from it.
- ``grid`` is a strictly decreasing tensor t_0 > t_1 > … > t_N = 0 (see :mod:`noisecraft.grids`);
  step i goes from t = t_i to s = t_{i+1}. Each sampler names the grid it defaults to in
  ``fn.default_grid``: ``respaced`` for ddpm, ddim and sde (the grids they were defined on),
  ``log-snr`` for euler, heun and dpmpp-2m, ``karras`` for edm (EDM's own). Measured with
  ``benchmarks/sampler_accuracy.py`` (mean distance to the exact probability-flow ODE solution,
  Gaussian-mixture problem): at 25 steps log-SNR-uniform vs Karras (ρ = 7) is 9.7e-3 vs 2.3e-2
  (dpmpp-2m) and 1.7e-2 vs 1.3e-2 (heun) on the linear schedule, 2.3e-2 vs 1.8e-1 and 2.7e-2 vs
  8.6e-2 on the cosine one. Karras's ρ = 7 was tuned for EDM's σ ∈ [0.002, 80]; here σ̃ = σ/α spans
  [0.01, 157] (linear) and [0.006, 2·10⁴] (cosine), where ρ = 7 spends more nodes at high noise,
  where the flow is nearly straight, than uniform-λ spacing (the ρ → ∞ limit of Karras's formula)
  does.
- ``noise`` is a :mod:`noisecraft.noise` source; stochastic samplers draw from it only
  (``None``: the global RNG).
- ``callback(i, t, x_t, x0_hat)`` is called after step i with the new time t = t_{i+1}, the new
  state x_t and the x̂_0 that step i used (the last call has t = 0 and x_t = the result).
- ``cond`` holds the conditioning keyword arguments passed to every denoiser call.

Each sampler is ONE step function from t to s (``ddim_step``, ``heun_step``, …, also
``SAMPLERS[name].step``) driven by the one :func:`walk` over a :class:`Walk` (the grid and its
marginals); the multistep DPM-Solver++(2M) passes its history from step to step explicitly, and
EDM's sampler moves x up to a noisier t̂ before its reading with ``edm_step.start`` (the walk
calls a step's ``start``, when it has one, before the denoiser).
:func:`noisecraft.editing.encode` runs the deterministic samplers' same steps on the reversed
grid (``Walk(..., up=True)``), so every update formula is written once.

Notation: (α_t, σ_t) = ``schedule.marginal(t)`` with x_t = α_t x_0 + σ_t ε; σ̃_t = σ_t/α_t;
λ_t = log(α_t/σ_t) (half the schedule's log-SNR); α_{t|s} = α_t/α_s, σ²_{t|s} = 1 − ᾱ_t/ᾱ_s and
β̃_{t|s} = σ²_{t|s} σ_s²/σ_t² (the variance of q(x_s | x_t, x_0)). The step onto s = 0 returns
x̂_0 in every sampler. The update arithmetic runs in float32 or x_T's dtype when wider; the
denoiser sees x_t in x_T's dtype and the result is cast back to it. No sampler keeps state
between calls. Linear combinations a·u + c·w are written ``torch.add(a * u, w, alpha=c)``: one
full-size pass fewer per term than ``a * u + c * w`` (tests/test_speed_sampler_ops.py counts them).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import grids, process
from .checks import number
from .denoiser import Denoised, Denoiser
from .noise import BatchNoise, ExampleNoise, NoiseSource
from .schedule import Schedule

Callback = Callable[[int, float, Tensor, Tensor], None]
Sampler = Callable[..., Tensor]

SAMPLERS: dict[str, Sampler] = {}

DEFAULT_STEPS = 50
"""The default number of grid steps of every sampler, inversion and edit: its one home."""


def _register(name: str, grid: str, step: Step) -> Callable[[Sampler], Sampler]:
    """Put a sampler in :data:`SAMPLERS`, run it without autograd and record its default grid
    (``fn.default_grid``) and its one step function (``fn.step``, which inversion reuses)."""
    if grid not in grids.GRIDS:
        raise ValueError(f"unknown grid {grid!r}")

    def add(fn: Sampler) -> Sampler:
        wrapped = torch.no_grad()(fn)
        wrapped.default_grid = grid  # type: ignore[attr-defined]
        wrapped.step = step  # type: ignore[attr-defined]
        SAMPLERS[name] = wrapped
        return wrapped

    return add


class Walk:
    """What every step needs once per call: the grid t_0, …, t_N with its marginals as Python
    floats (so step coefficients cost no device work), a denoiser call in the right dtypes and
    the noise source. Step i goes from t = t_i to s = t_{i+1}.

    ``up=False`` (sampling): ``grid`` is a decoding grid T ≥ t_0 > … > t_N = 0 (checked by
    :func:`noisecraft.grids.check`). ``up=True`` (inversion, :func:`noisecraft.editing.encode`):
    the same grid is walked backwards, 0 = t_0 < t_1 < … < t_N, so every step has s > t.
    """

    def __init__(self, denoiser: Denoiser, x: Tensor, grid: Tensor, cond: dict[str, Any] | None,
                 noise: NoiseSource | None = None, *, up: bool = False, name: str = "x_T"):
        if not isinstance(x, Tensor) or x.ndim < 2:
            raise ValueError(f"{name} must be a tensor with a batch dimension, got "
                             + (f"shape {tuple(x.shape)}" if isinstance(x, Tensor)
                                else type(x).__name__))
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
        self.schedule = denoiser.schedule
        g = grids.check(grid, self.schedule)
        if up:
            g = g.flip(0)
        self.up = up
        self.t = g.tolist()
        alpha, sigma = self.schedule.marginal(g)
        self.alpha, self.sigma = alpha.tolist(), sigma.tolist()
        self.denoiser = denoiser
        self.cond = dict(cond or {})
        self.in_dtype = x.dtype
        self.dtype = torch.promote_types(x.dtype, torch.float32)
        self.event_shape = tuple(x.shape[1:])
        self.device = x.device
        if noise is not None and noise.batch != x.shape[0]:
            raise ValueError(f"the noise source draws for a batch of {noise.batch} but {name} has "
                             f"batch {x.shape[0]}")
        self.noise = noise if noise is not None else BatchNoise(x.shape[0])
        self._beta_tilde: list[float] | None = None

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def denoise(self, x: Tensor, i: int, t: float | None = None) -> Denoised:
        """The reading at (x, t_i), or at (x, t) when a step moved off the grid (EDM's churn)."""
        return self.denoiser(x.to(self.in_dtype), self.t[i] if t is None else t, **self.cond)

    def randn(self) -> Tensor:
        return self.noise.randn(self.event_shape, dtype=self.dtype, device=self.device)

    def half_log_snr(self, i: int) -> float:
        """λ_{t_i} = log(α/σ); +∞ at t = 0."""
        s = self.sigma[i]
        return math.log(self.alpha[i]) - math.log(s) if s > 0 else math.inf

    def sigma_tilde(self, i: int) -> float:
        """σ̃_{t_i} = σ/α."""
        return self.sigma[i] / self.alpha[i]

    def beta_tilde(self, i: int) -> float:
        """β̃_{t|s} of step i (a downward step): the variance of q(x_s | x_t, x_0), from
        :meth:`Schedule.posterior_coefficients`, computed for the whole grid on first use."""
        if self.up:
            raise ValueError("β̃_{t|s} is the variance of a reverse step; an upward walk has none")
        if self._beta_tilde is None:
            g = torch.tensor(self.t, dtype=torch.float64)
            self._beta_tilde = self.schedule.posterior_coefficients(g[:-1], g[1:])[2].tolist()
        return self._beta_tilde[i]


# A step t_i → t_{i+1}: (walk, i, x_{t_i}, the denoiser's reading at (x_{t_i}, t_i), the carried
# history or None on the first step, **options) -> (x_{t_{i+1}}, the history for the next step).
Step = Callable[..., tuple[Tensor, Any]]


def walk(step: Step, w: Walk, x: Tensor, callback: Callback | None = None, *, first: int = 0,
         denoised: Denoised | None = None, **options: Any) -> Tensor:
    """The one walk over a grid: steps ``first``, …, N − 1 of ``w`` by ``step``, in float32 or
    wider, each after one denoiser call at its start (``denoised``, when given, is the reading at
    step ``first``'s start, already made), calling ``callback(i, t_{i+1}, x, x̂_0)`` after each.
    Returns the result in ``x``'s dtype."""
    out_dtype = x.dtype
    x = x.to(w.dtype)
    carry = None
    # A step may move x before its reading (``step.start``: EDM's churn raises the noise to t̂).
    start = getattr(step, "start", None)
    for i in range(first, w.steps):
        t = w.t[i]
        if start is not None and not (i == first and denoised is not None):
            x, t = start(w, i, x, **options)
        d = denoised if (i == first and denoised is not None) else w.denoise(x, i, t)
        x, carry = step(w, i, x, d, carry, **options)
        if callback is not None:
            callback(i, w.t[i + 1], x, d.x0)
    return x.to(out_dtype)


# ---------------------------------------------------------------------------- DDPM ancestral
def ddpm_step(w: Walk, i: int, x: Tensor, d: Denoised, carry: None, *, variance: str
              ) -> tuple[Tensor, None]:
    """x_s ~ p_θ(x_s | x_t) (:func:`noisecraft.process.reverse_mean_log_variance`); the mean on
    the step onto s = 0."""
    mean, log_var = process.reverse_mean_log_variance(w.schedule, d, x, w.t[i], w.t[i + 1],
                                                      variance)
    return (mean + torch.exp(0.5 * log_var) * w.randn() if w.t[i + 1] > 0 else mean), None


@_register("ddpm", grid="respaced", step=ddpm_step)
def ddpm(denoiser: Denoiser, x_T: Tensor, grid: Tensor, *, noise: NoiseSource | None = None,
         callback: Callback | None = None, cond: dict[str, Any] | None = None,
         variance: str | None = None) -> Tensor:
    """Ancestral sampling (Ho et al. 2020): x_s ~ p_θ(x_s | x_t) on each grid step t → s,

        x_s = c_0 x̂_0 + c_t x_t + ς z,   c_0 = α_s σ²_{t|s}/σ_t²,  c_t = α_{t|s} σ_s²/σ_t²,

    the mean and ς² from :func:`noisecraft.process.reverse_mean_log_variance` (the one reverse
    step): ς² = β̃_{t|s} (``variance="beta_tilde"``), σ²_{t|s} (``"beta"``; β_t on the full
    grid) or the learned interpolation (``"learned"``, Nichol & Dhariwal 2021). Unset: learned
    when the Denoiser has learned variances, else β̃. No noise is added on the step onto s = 0.
    """
    variance = process.resolve_variance(variance, getattr(denoiser, "learned_variance", False))
    w = Walk(denoiser, x_T, grid, cond, noise)
    return walk(ddpm_step, w, x_T, callback, variance=variance)


# ---------------------------------------------------------------------------- DDIM
def ddim_step(w: Walk, i: int, x: Tensor, d: Denoised, carry: None, *, eta: float = 0.0
              ) -> tuple[Tensor, None]:
    """x_s = α_s x̂_0 + √(σ_s² − η² β̃_{t|s}) ε̂ + η √β̃_{t|s} z (η = 0 also runs upward, s > t)."""
    stoch = eta**2 * w.beta_tilde(i) if eta > 0 else 0.0                    # η² β̃_{t|s}
    x = torch.add(w.alpha[i + 1] * d.x0, d.eps, alpha=math.sqrt(max(w.sigma[i + 1]**2 - stoch, 0.0)))
    if stoch > 0:
        x.add_(w.randn(), alpha=math.sqrt(stoch))
    return x, None


@_register("ddim", grid="respaced", step=ddim_step)
def ddim(denoiser: Denoiser, x_T: Tensor, grid: Tensor, *, noise: NoiseSource | None = None,
         callback: Callback | None = None, cond: dict[str, Any] | None = None,
         eta: float = 0.0) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12):

        x_s = α_s x̂_0 + √(σ_s² − η² β̃_{t|s}) ε̂ + η √β̃_{t|s} z.

    η = 0 is deterministic (the first-order solver of the probability-flow ODE); η = 1 is
    ancestral sampling with ς² = β̃_{t|s}.
    """
    number("eta", eta, 0, 1)
    return walk(ddim_step, Walk(denoiser, x_T, grid, cond, noise), x_T, callback, eta=eta)


# ---------------------------------------------------------------------------- probability-flow ODE
# Euler and Heun integrate the probability-flow ODE written in y = x/α and σ̃ = σ/α (Karras et al.
# 2022, eq. 4 with s(t) = α): dy/dσ̃ = (y − x̂_0)/σ̃ = ε̂. In these variables the ODE is the
# variance-exploding one, whose solution near a data point is close to a straight line in σ̃:
# far better conditioned than dx/dt with the VP drift.


def euler_step(w: Walk, i: int, x: Tensor, d: Denoised, carry: None) -> tuple[Tensor, None]:
    """x_s = α_s (x_t/α_t + (σ̃_s − σ̃_t) ε̂)."""
    a_t, a_s = w.alpha[i], w.alpha[i + 1]
    ds = w.sigma_tilde(i + 1) - w.sigma_tilde(i)
    return torch.add(x * (a_s / a_t), d.eps, alpha=a_s * ds), None


@_register("euler", grid="log-snr", step=euler_step)
def euler(denoiser: Denoiser, x_T: Tensor, grid: Tensor, *, noise: NoiseSource | None = None,
          callback: Callback | None = None, cond: dict[str, Any] | None = None) -> Tensor:
    """Euler's method on dy/dσ̃ = ε̂ (y = x/α, σ̃ = σ/α):

        x_s = α_s (x_t/α_t + (σ̃_s − σ̃_t) ε̂).

    One Euler step in these variables is exactly one deterministic DDIM step.
    """
    return walk(euler_step, Walk(denoiser, x_T, grid, cond, noise), x_T, callback)


def heun_step(w: Walk, i: int, x: Tensor, d: Denoised, carry: None) -> tuple[Tensor, None]:
    """The Euler predictor to s, then the trapezoidal corrector with ε̂ at s (Euler onto s = 0)."""
    return _heun_to(w, i + 1, x * (w.alpha[i + 1] / w.alpha[i]), d.eps,
                    w.sigma_tilde(i + 1) - w.sigma_tilde(i)), None


def _heun_to(w: Walk, j: int, x_scaled: Tensor, eps: Tensor, ds: float) -> Tensor:
    """One Heun step of dy/dσ̃ = ε̂ onto grid node s = t_j from y (``x_scaled`` = α_s y), where
    the reading was ``eps``, over ``ds`` = σ̃_s − σ̃ (shared by ``heun`` and ``edm``)."""
    a_s = w.alpha[j]
    x_pred = torch.add(x_scaled, eps, alpha=a_s * ds)
    if w.t[j] == 0:
        return x_pred
    eps_s = w.denoise(x_pred, j).eps
    return torch.add(x_scaled, eps + eps_s, alpha=0.5 * a_s * ds)


@_register("heun", grid="log-snr", step=heun_step)
def heun(denoiser: Denoiser, x_T: Tensor, grid: Tensor, *, noise: NoiseSource | None = None,
         callback: Callback | None = None, cond: dict[str, Any] | None = None) -> Tensor:
    """Heun's method (EDM, Karras et al. 2022, Algorithm 1) on dy/dσ̃ = ε̂:

        ȳ = y_t + (σ̃_s − σ̃_t) ε̂(t),   y_s = y_t + (σ̃_s − σ̃_t) (ε̂(t) + ε̂(s; α_s ȳ)) / 2,

    with y = x/α. The step onto s = 0 (σ̃ = 0, where ε̂ is undefined) is an Euler step.
    Two denoiser calls per step except the last.
    """
    return walk(heun_step, Walk(denoiser, x_T, grid, cond, noise), x_T, callback)


History = tuple[Tensor, float] | None


def dpmpp_2m_step(w: Walk, i: int, x: Tensor, d: Denoised, history: History, *, eta: float = 0.0
                  ) -> tuple[Tensor, History]:
    """x_s = (σ_s/σ_t) e^{−ηh} x_t − α_s (e^{−(1+η)h} − 1) D + σ_s √(1 − e^{−2ηh}) z.

    η = 0: the DPM-Solver++(2M) ODE step; η = 1: SDE-DPM-Solver++(2M) (the ``sde`` sampler).
    ``history`` = (x̂_0, h) of the previous step (None on the first), returned for the next one;
    x̂_0 on the step onto s = 0."""
    if w.t[i + 1] == 0:
        return d.x0, None
    h = w.half_log_snr(i + 1) - w.half_log_snr(i)
    if history is None:
        D = d.x0
    else:
        x0_prev, h_prev = history
        r = h_prev / h
        D = torch.sub((1 + 0.5 / r) * d.x0, x0_prev, alpha=0.5 / r)
    decay = w.sigma[i + 1] / w.sigma[i] * (math.exp(-eta * h) if eta else 1.0)
    x = torch.sub(decay * x, D, alpha=w.alpha[i + 1] * math.expm1(-(1 + eta) * h))
    if eta:
        x.add_(w.randn(), alpha=w.sigma[i + 1] * math.sqrt(-math.expm1(-2 * eta * h)))
    return x, (d.x0, h)


@_register("dpmpp-2m", grid="log-snr", step=dpmpp_2m_step)
def dpmpp_2m(denoiser: Denoiser, x_T: Tensor, grid: Tensor, *, noise: NoiseSource | None = None,
             callback: Callback | None = None, cond: dict[str, Any] | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), data prediction, multistep in λ:

        x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) D,   h = λ_s − λ_t,
        D = (1 + 1/(2r)) x̂_0(t) − 1/(2r) x̂_0(t_prev),   r = h_prev/h,

    with D = x̂_0(t) (first order) on the first step and on the step onto s = 0, where h = ∞.
    The one piece of history, (x̂_0(t_prev), h_prev), is passed from step to step explicitly.
    """
    return walk(dpmpp_2m_step, Walk(denoiser, x_T, grid, cond, noise), x_T, callback)


# ---------------------------------------------------------------------------- reverse SDE
def sde_step(w: Walk, i: int, x: Tensor, d: Denoised, history: History
             ) -> tuple[Tensor, History]:
    """:func:`dpmpp_2m_step` with η = 1: SDE-DPM-Solver++(2M)."""
    return dpmpp_2m_step(w, i, x, d, history, eta=1.0)


@_register("sde", grid="respaced", step=sde_step)
def sde(denoiser: Denoiser, x_T: Tensor, grid: Tensor, *, noise: NoiseSource | None = None,
        callback: Callback | None = None, cond: dict[str, Any] | None = None) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", §5 and app. B; k-diffusion's
    ``sample_dpmpp_2m_sde``): an exponential integrator of the reverse-time VP SDE
    (Song et al. 2021) in the data-prediction form. Written in λ = log(α/σ), the SDE's linear
    part and its noise are integrated exactly over each step; only x̂_0 is extrapolated:

        x_s = (σ_s/σ_t) e^{−h} x_t + α_s (1 − e^{−2h}) D + σ_s √(1 − e^{−2h}) z,   h = λ_s − λ_t,

    with D as in :func:`dpmpp_2m` (x̂_0(t) on the first step). Its first-order form (D = x̂_0(t))
    is exactly ancestral sampling with β̃_{t|s} (the ``ddpm`` sampler): the second-order D is
    what this sampler adds. The step onto s = 0 returns x̂_0 (Tweedie's denoising step).

    Why the data-prediction form: the coefficient on x_t is (σ_s/σ_t) e^{−h} ≤ 1 and D is made
    of x̂_0, which stays near the data's range, so no step amplifies x_t, however coarse. The
    noise-prediction form (SDE-DPM-Solver-1,
    x_s = (α_s/α_t) x_t − 2σ_s (e^h − 1) ε̂ + σ_s √(e^{2h} − 1) z) multiplies x_t by α_s/α_t,
    ~3,000 on the cosine schedule's first of 10 respaced steps (α_T = 4.9e-5), and relies on
    ε̂'s cancellation: on the Gaussian-mixture benchmark its paths reach ~10³ times the data's
    spread (``benchmarks/sde_accuracy.py``, BENCHMARKS.md). The former Euler–Maruyama step,
    x_s = (1 + B/2) x_t − (B/σ_t) ε̂ + √B z with B = log ᾱ_s − log ᾱ_t, has B ≈ 16 on that
    first step and sends x_t to ~8 times the data's spread before later steps pull it back.
    """
    return walk(sde_step, Walk(denoiser, x_T, grid, cond, noise), x_T, callback)


# ---------------------------------------------------------------------------- EDM's stochastic Heun
def churn(w: Walk, i: int, S_churn: float, S_tmin: float, S_tmax: float
          ) -> tuple[float, float, float]:
    """EDM's raised noise level at step i (Karras et al. 2022, Algorithm 2, lines 4–5):
    (t̂, α̂, σ̂) with σ̂ = σ̃(t̂) = σ̃_i (1 + γ_i), γ_i = min(S_churn/N, √2 − 1) when S_tmin ≤ σ̃_i ≤ S_tmax,
    else 0 (then t̂ = t_i). σ̃(t̂) is capped at σ̃(T): above T the schedule has no noise level (and
    a grid starting at T is not churned on its first step). t̂ comes from the schedule's own
    inverse, ``t_from_log_snr(−2 log σ̃)``."""
    sig = w.sigma_tilde(i)
    gamma = min(S_churn / w.steps, math.sqrt(2) - 1) if S_tmin <= sig <= S_tmax else 0.0
    if gamma <= 0 or w.up:
        return w.t[i], w.alpha[i], sig
    lam = max(-2 * math.log(sig * (1 + gamma)), w.schedule.log_snr(w.schedule.T).item())
    t_hat = w.schedule.t_from_log_snr(lam).item()
    if t_hat <= w.t[i]:
        return w.t[i], w.alpha[i], sig
    return t_hat, w.schedule.marginal(t_hat)[0].item(), math.exp(-0.5 * lam)


def edm_raise(w: Walk, i: int, x: Tensor, *, S_churn: float = 0.0, S_tmin: float = 0.0,
              S_tmax: float = math.inf, S_noise: float = 1.0) -> tuple[Tensor, float]:
    """Before step i's reading: x̂ at t̂ = :func:`churn`, ŷ = y_i + √(σ̃(t̂)² − σ̃_i²) S_noise z in
    y = x/α (Algorithm 2, line 6); with S_noise = 1 this is the forward process q(x_t̂ | x_{t_i})."""
    t_hat, a_hat, sig_hat = churn(w, i, S_churn, S_tmin, S_tmax)
    if t_hat == w.t[i]:
        return x, t_hat
    sig = w.sigma_tilde(i)
    x_hat = torch.add(x * (a_hat / w.alpha[i]), w.randn(),
                      alpha=a_hat * math.sqrt(max(sig_hat**2 - sig**2, 0.0)) * S_noise)
    return x_hat, t_hat


def edm_step(w: Walk, i: int, x: Tensor, d: Denoised, carry: None, *, S_churn: float = 0.0,
             S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0
             ) -> tuple[Tensor, None]:
    """The Heun step of :func:`heun_step` from (x̂, t̂) (made by :func:`edm_raise` before the
    reading ``d``) onto t_{i+1} (Algorithm 2, lines 7–11)."""
    t_hat, a_hat, sig_hat = churn(w, i, S_churn, S_tmin, S_tmax)
    return _heun_to(w, i + 1, x * (w.alpha[i + 1] / a_hat), d.eps,
                    w.sigma_tilde(i + 1) - sig_hat), None


edm_step.start = edm_raise  # type: ignore[attr-defined]


@_register("edm", grid="karras", step=edm_step)
def edm(denoiser: Denoiser, x_T: Tensor, grid: Tensor, *, noise: NoiseSource | None = None,
        callback: Callback | None = None, cond: dict[str, Any] | None = None,
        S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf,
        S_noise: float = 1.0) -> Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2; ``edm_sampler`` of NVlabs/edm)
    on dy/dσ̃ = ε̂ in y = x/α, σ̃ = σ/α, over the Karras grid by default. Each step i first adds
    noise to go *up* from σ̃_i to σ̂ = σ̃_i (1 + γ_i),

        γ_i = min(S_churn/N, √2 − 1) if S_tmin ≤ σ̃_i ≤ S_tmax else 0,
        ŷ = y_i + √(σ̂² − σ̃_i²) S_noise z,

    then takes one Heun step of the ODE from σ̂ to σ̃_{i+1} (Euler onto σ̃ = 0). σ̂ is carried
    to the one time variable by the schedule's inverse (t̂ = ``t_from_log_snr(−2 log σ̂)``) and
    capped at σ̃(T). S_tmin, S_tmax are in σ̃ (EDM's σ) units, as in the paper. With
    S_churn = 0 (the default, as in ``generate.py``) the sampler *is* :func:`heun` (Algorithm 1)
    on the same grid. 2N − 1 denoiser calls for N steps, churned or not.
    """
    number("S_churn", S_churn, 0)
    number("S_noise", S_noise, 0)
    if not (isinstance(S_tmin, int | float) and isinstance(S_tmax, int | float)
            and 0 <= S_tmin <= S_tmax):
        raise ValueError(f"S_tmin and S_tmax must satisfy 0 <= S_tmin <= S_tmax, got "
                         f"S_tmin={S_tmin!r}, S_tmax={S_tmax!r}")
    return walk(edm_step, Walk(denoiser, x_T, grid, cond, noise), x_T, callback, S_churn=S_churn,
                S_tmin=S_tmin, S_tmax=S_tmax, S_noise=S_noise)


# ---------------------------------------------------------------------------- consistency
def consistency_step(w: Walk, i: int, x: Tensor, d: Denoised, carry: None) -> tuple[Tensor, None]:
    """x_s = α_s x̂_0 + σ_s z: jump to the path's end, then re-noise to s (x̂_0 onto s = 0)."""
    if w.t[i + 1] == 0:
        return d.x0, None
    return torch.add(w.alpha[i + 1] * d.x0, w.randn(), alpha=w.sigma[i + 1]), None


@_register("consistency", grid="respaced", step=consistency_step)
def consistency(denoiser: Denoiser, x_T: Tensor, grid: Tensor, *,
                noise: NoiseSource | None = None, callback: Callback | None = None,
                cond: dict[str, Any] | None = None) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): x̂_0 = f(x_t, t), then
    x_s = α_s x̂_0 + σ_s z with fresh z at the next grid time s, …, and x̂_0 at the last.

    One denoiser call per step: ``steps=1`` is the one-step sampler x_0 = f(x_T, T). Made for a
    ``prediction="consistency"`` run, whose x̂_0 is the ODE path's end; on any other Denoiser it
    is ancestral sampling that forgets x_t (the posterior mean is not a path's end).
    """
    return walk(consistency_step, Walk(denoiser, x_T, grid, cond, noise), x_T, callback)


# ---------------------------------------------------------------------------- the front
_STANDARD_ARGS = {"denoiser", "x_T", "grid", "noise", "callback", "cond"}


def check_sampler(name: str, allowed: Sequence[str] | None = None) -> str:
    """``name`` if it is a key of :data:`SAMPLERS` (and of ``allowed``, when given: e.g. the
    invertible ones of :data:`noisecraft.editing.ENCODERS`); else the one ValueError that names
    it and the choices. Every sampler name the library or a command takes is checked here."""
    choices = list(SAMPLERS) if allowed is None else [n for n in allowed if n in SAMPLERS]
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(choices)}")
    if name not in choices:
        raise ValueError(f"sampler {name!r} does not apply here; choose one of {', '.join(choices)}")
    return name


def check_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` (a copy) if each is an option of sampler ``name``, else the one ValueError
    naming the first unknown one and the sampler's own."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(options_of(name)))
    if unknown:
        raise ValueError(f"sampler {name!r} has no option {unknown[0]!r}; its options are "
                         f"{options_of(name) or 'none'}")
    return options


def options_of(name: str) -> list[str]:
    """The sampler-specific options of sampler ``name`` (e.g. ``["eta"]`` for DDIM)."""
    check_sampler(name)
    return [p for p in inspect.signature(SAMPLERS[name]).parameters if p not in _STANDARD_ARGS]


def _model_device(model: Any) -> torch.device:
    net = model.net if isinstance(model, Denoiser) else model
    if isinstance(net, torch.nn.Module):
        for p in net.parameters():
            return p.device
    return torch.device("cpu")


def as_denoiser(model: Any, schedule: Schedule, prediction: str | None = None,
                clip: tuple[float, float] | None = None) -> Denoiser:
    """The one coercion to a :class:`Denoiser` (``sample``, ``nll``): a raw network is wrapped as
    ``Denoiser(model, schedule, prediction or "eps", clip)``; a Denoiser is returned as it is,
    and then ``prediction`` and ``clip`` must be unset (None) or equal its own, and ``schedule``
    must be its own."""
    if not isinstance(model, Denoiser):
        if not callable(model):
            raise ValueError(f"model must be a network (a callable) or a Denoiser, got "
                             f"{type(model).__name__}")
        return Denoiser(model, schedule, prediction or "eps", clip)
    if prediction is not None and prediction != model.prediction:
        raise ValueError(f"prediction={prediction!r} conflicts with the Denoiser's own prediction "
                         f"{model.prediction!r}; leave prediction unset when passing a Denoiser")
    if clip is not None and tuple(clip) != (tuple(model.clip) if model.clip else None):
        raise ValueError(f"clip={clip!r} conflicts with the Denoiser's own clip {model.clip!r}; "
                         "leave clip unset when passing a Denoiser")
    if model.schedule != schedule:
        raise ValueError(f"schedule {schedule!r} differs from the Denoiser's own schedule "
                         f"{model.schedule!r}")
    return model


_as_denoiser = as_denoiser  # the former private name, for code written against it


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a sequence of integers, got {shape!r}") from None
    if len(out) < 2 or any(n < 1 for n in out) or out != tuple(shape):
        raise ValueError(f"shape must be (batch, *event_shape) with positive integers, got {shape!r}")
    return out


def sample(model: Any, shape: Sequence[int], schedule: Schedule, sampler: str = "ddim",
           steps: int | None = None, prediction: str | None = None,
           generator: torch.Generator | None = None, callback: Callback | None = None,
           x_T: Tensor | None = None, *, seed: int | None = None, seed_offset: int = 0,
           grid: Tensor | str | None = None, clip: tuple[float, float] | None = None,
           options: dict[str, Any] | None = None, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None, **cond: Any) -> Tensor:
    """Draw x_0 of shape ``shape`` = (batch, *event_shape) with sampler ``sampler``.

    Args:
        model: a raw network ``net(x_t, t, **cond)`` (wrapped as ``Denoiser(model, schedule,
            prediction or "eps", clip)``) or a :class:`~noisecraft.Denoiser`, whose own
            prediction, clip and schedule then rule (passing conflicting ones is an error).
        schedule: the noise schedule the network was trained with.
        sampler: a key of :data:`SAMPLERS`.
        steps: the number of steps (:data:`DEFAULT_STEPS` when neither ``steps`` nor a grid
            tensor is given).
        generator: a ``torch.Generator`` for plain batched noise (x_T and every stochastic step).
        callback: ``callback(i, t, x_t, x0_hat)`` after each step (see :mod:`noisecraft.samplers`).
        x_T: the starting noise; drawn as N(0, I) from the noise source when omitted.
        seed: per-example noise (:class:`~noisecraft.noise.ExampleNoise`): example i's sample
            depends only on (seed, seed_offset + i), not on the batch it was drawn in.
        seed_offset: the global index of this batch's first example, for ``seed``.
        grid: the time grid: a name in :data:`noisecraft.grids.GRIDS`, a tensor from T to 0, or
            ``None`` for the sampler's default (``SAMPLERS[sampler].default_grid``).
        clip: clamp x̂_0 to (lo, hi) (only with a raw network).
        options: sampler-specific options, e.g. ``{"eta": 0.5}`` for DDIM or
            ``{"variance": "beta"}`` for DDPM.
        device, dtype: where and in what dtype x_T is drawn when it is not given (default: the
            model's device, float32).
        **cond: conditioning passed to every network call (``labels=...``).
    """
    fn = SAMPLERS[check_sampler(sampler)]
    shape = _check_shape(shape)
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a noisecraft.Schedule, got {type(schedule).__name__}")
    denoiser = as_denoiser(model, schedule, prediction, clip)
    options = check_options(sampler, options)

    if isinstance(grid, Tensor) or (grid is not None and not isinstance(grid, str)):
        t_grid = grids.check(grid, schedule)
        if steps is not None and steps != t_grid.numel() - 1:
            raise ValueError(f"steps = {steps!r} conflicts with the given grid of "
                             f"{t_grid.numel() - 1} steps; pass one or the other")
    else:
        t_grid = grids.make(grid or fn.default_grid, schedule, DEFAULT_STEPS if steps is None else steps)

    if seed is not None and generator is not None:
        raise ValueError("pass either seed (per-example noise) or generator (batched noise), not both")
    if seed is None and seed_offset != 0:
        raise ValueError(f"seed_offset = {seed_offset!r} needs a seed")
    noise: NoiseSource = (ExampleNoise(seed, shape[0], seed_offset) if seed is not None
                          else BatchNoise(shape[0], generator))

    if x_T is None:
        dtype = dtype or torch.float32
        x_T = noise.randn(shape[1:], dtype=dtype, device=device or _model_device(denoiser))
    else:
        if not isinstance(x_T, Tensor):
            raise ValueError(f"x_T must be a tensor, got {type(x_T).__name__}")
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape = {shape}")
        if dtype is not None and x_T.dtype != dtype:
            raise ValueError(f"dtype = {dtype} conflicts with x_T's dtype {x_T.dtype}")
        if device is not None and x_T.device != torch.device(device):
            raise ValueError(f"device = {device} conflicts with x_T's device {x_T.device}")
        if not x_T.is_floating_point():
            raise ValueError(f"x_T must be a floating-point tensor, got {x_T.dtype}")
        if torch.isnan(x_T).any():
            raise ValueError("x_T contains NaN")
    return fn(denoiser, x_T, t_grid, noise=noise, callback=callback, cond=cond, **options)
