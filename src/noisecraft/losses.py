"""Training objectives and the variational bound; every loss returns one value per example.

Losses return tensors of shape (batch,); reducing them (mean, sum, across ranks) is the
trainer's business. They take a :class:`~noisecraft.Denoiser` and never a prediction string:
the regression target comes from ``Denoiser.target``.

Time sampling
-------------
Without an explicit ``t``, t is drawn from a :class:`TimeSampler` (uniform on {1, …, T} by
default) together with importance weights w_t = 1/(T p_t); the loss comes back multiplied by
w_t, so its mean over t ~ p estimates the uniform average over t without bias (except for
:class:`LogitNormalTimeSampler`, whose law weights the objective: w_t = 1). To let an
:class:`ImportanceTimeSampler` learn from the losses, draw t yourself (IDDPM's training loop)::

    t, w = sampler.sample(batch)
    loss = losses.vlb(denoiser, x0, t=t)      # unweighted, one value per example
    sampler.update(t, loss.detach())
    (loss * w).mean().backward()

The variational bound (Sohl-Dickstein et al. 2015; Ho et al. 2020, eq. 5)
-----------------------------------------------------------------------------
    −log p_θ(x_0) ≤ E_q[ L_T + Σ_{t=2}^{T} L_{t−1} + L_0 ],
    L_T     = KL(q(x_T | x_0) ‖ N(0, I))                           :func:`prior_kl`
    L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t))       :func:`bound_term` at t ≥ 2
    L_0     = −log p_θ(x_0 | x_1)                                  :func:`bound_term` at t = 1
with x_t ~ q(x_t | x_0) inside each term.

Units: :func:`prior_kl` and :func:`bound_term` return **nats per example, summed over all
dimensions of x_0**. The whole bound of one example is ``prior_kl(x0) + Σ_{t=1}^{T}
bound_term(x0, t)`` nats; bits per dimension divide that by D ln 2 with D = ``x0[0].numel()``.
:func:`vlb` returns bits/dim.

The decoder L_0 (``discrete``):
    ``discrete=True`` (default, Ho et al. 2020 §3.3): x_0 is 8-bit data scaled to [−1, 1], each
    value the centre of a bin of width 2/255; p_θ(x_0 | x_1) is the mass of N(μ_θ, σ_1²) on that
    bin, with the outer bins (x_0 < −0.999 and x_0 > 0.999) extended to −∞ and +∞. It is a
    probability, so L_0 ≥ 0 and the bound is a bound on the discrete data's NLL (Ho et al.
    report 3.70 bits/dim on CIFAR-10).
    ``discrete=False``: the Gaussian density −log N(x_0; μ_θ, σ_1² I), for continuous data; a
    density, so values can be negative and depend on the data's scale.
σ_1² at t = 1 is β̃_2 for ``"beta_tilde"`` (see :mod:`noisecraft.process` on the last step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from . import process
from .checks import number, positive_int
from .denoiser import Denoised, Denoiser
from .process import q_sample
from .schedule import Schedule

Weighting = Callable[[Denoiser, Tensor], Tensor]

_LOG_2PI = math.log(2 * math.pi)
_BIN_HALF_WIDTH = 1 / 255       # half of the 2/255 bin of 8-bit data in [−1, 1]
_EDGE = 0.999                   # beyond this, x_0 sits in an outer bin (Ho et al.'s threshold)


# ---------------------------------------------------------------------------- time samplers
class TimeSampler:
    """Draws t ∈ {1, …, T} with probabilities p_t and returns the weights 1/(T p_t)."""

    def __init__(self, T: int):
        positive_int("T", T)
        self.T = T

    def probabilities(self) -> Tensor:
        """p_t for t = 1..T (0-based), float64, summing to 1."""
        raise NotImplementedError

    def sample(self, batch: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """``(t, weights)``: int64 t of shape (batch,) in {1, …, T} and float32 weights 1/(T p_t)."""
        p = self.probabilities()
        gen_device = generator.device if generator is not None else torch.device("cpu")
        idx = torch.multinomial(p.to(gen_device), batch, replacement=True, generator=generator)
        weights = 1 / (self.T * p.to(gen_device)[idx])
        return (idx + 1).to(device), weights.to(device=device, dtype=torch.float32)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record the per-example losses observed at steps ``t`` (no-op for fixed samplers)."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep to continue exactly (JSON-ready; empty when stateless)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


class UniformTimeSampler(TimeSampler):
    """t uniform on {1, …, T}; every weight is 1."""

    def probabilities(self) -> Tensor:
        return torch.full((self.T,), 1 / self.T, dtype=torch.float64)

    def sample(self, batch: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        t = torch.randint(1, self.T + 1, (batch,), generator=generator, device=gen_device)
        return t.to(device), torch.ones(batch, dtype=torch.float32, device=device)


class ImportanceTimeSampler(TimeSampler):
    """Improved DDPM's importance sampling of t: p_t ∝ √E[L_t²] over the last ``history`` losses.

    Uniform until every t has ``history`` recorded losses; then p_t is mixed with the uniform
    law by ``uniform_prob`` so that no step's weight 1/(T p_t) can blow up (Nichol & Dhariwal
    2021, §3.3). The history lives on this process; in distributed training gather the losses
    of all ranks before :meth:`update`.
    """

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(T)
        positive_int("history", history)
        if not 0 <= uniform_prob <= 1:
            raise ValueError(f"uniform_prob must lie in [0, 1], got {uniform_prob!r}")
        self.history = history
        self.uniform_prob = uniform_prob
        self._losses = torch.zeros(T, history, dtype=torch.float64)
        self._counts = torch.zeros(T, dtype=torch.int64)

    @property
    def warmed_up(self) -> bool:
        return bool((self._counts >= self.history).all())

    def probabilities(self) -> Tensor:
        if not self.warmed_up:
            return torch.full((self.T,), 1 / self.T, dtype=torch.float64)
        p = self._losses.pow(2).mean(1).sqrt()
        if p.sum() == 0:  # all losses zero: nothing to prefer
            return torch.full((self.T,), 1 / self.T, dtype=torch.float64)
        p = p / p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record unweighted per-example losses (shape (batch,)) observed at steps t (batch,)."""
        t = torch.as_tensor(t).detach().cpu().reshape(-1)
        losses = torch.as_tensor(losses).detach().cpu().to(torch.float64).reshape(-1)
        if t.shape != losses.shape:
            raise ValueError(f"t has {t.numel()} entries but losses has {losses.numel()}")
        for step, loss in zip(t.tolist(), losses.tolist(), strict=True):
            if step != int(step) or not 1 <= step <= self.T:
                raise ValueError(f"t = {step!r} is not an integer step in {{1, …, {self.T}}}")
            if not math.isfinite(loss):
                raise ValueError(f"loss {loss!r} at t = {int(step)} is not finite")
            row = int(step) - 1
            self._losses[row, int(self._counts[row]) % self.history] = loss
            self._counts[row] += 1

    def state_dict(self) -> dict[str, Any]:
        """The loss history (exact: floats survive JSON) and the count per step."""
        return {"losses": self._losses.tolist(), "counts": self._counts.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            losses = torch.tensor(state["losses"], dtype=torch.float64)
            counts = torch.tensor(state["counts"], dtype=torch.int64)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not an importance time-sampler state ({e})") from None
        if losses.shape != self._losses.shape or counts.shape != self._counts.shape:
            raise ValueError(f"time-sampler state has shape {tuple(losses.shape)}, expected "
                             f"{tuple(self._losses.shape)} (T × history)")
        self._losses, self._counts = losses, counts


class LogitNormalTimeSampler(TimeSampler):
    """SD3's logit-normal law of t (Esser et al. 2024, eq. 19): τ = sigmoid(m + s·z), z ~ N(0, 1),
    put on the steps as t = ⌈T τ⌉, so

        p_t = Φ((logit(t/T) − m)/s) − Φ((logit((t − 1)/T) − m)/s),   logit(0) = −∞, logit(1) = +∞.

    It favours the middle of the path, where the velocity is hardest to predict: near τ = 0,
    x ≈ x_0 and the best prediction E[ε − x_0 | x] is ≈ −x, near τ = 1, x ≈ ε and it is
    ≈ x − E[x_0], both nearly given by the input. The law is a *weighting* of
    the objective, SD3's π(t), not an importance sample of the uniform one: every weight is 1.
    Defaults m = 0, s = 1 (SD3's best, "rf/lognorm(0.00, 1.00)").
    """

    def __init__(self, T: int, mean: float = 0.0, std: float = 1.0):
        super().__init__(T)
        number("logit-normal mean", mean)
        number("logit-normal std", std, 0, low_open=True)
        self.mean, self.std = float(mean), float(std)

    def probabilities(self) -> Tensor:
        edges = torch.arange(self.T + 1, dtype=torch.float64) / self.T
        cdf = torch.special.ndtr((torch.logit(edges) - self.mean) / self.std)  # logit(0) = −inf
        return cdf.diff()

    def sample(self, batch: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(batch, generator=generator, device=gen_device, dtype=torch.float64)
        tau = torch.sigmoid(self.mean + self.std * z)
        t = torch.ceil(self.T * tau).clamp(1, self.T).long()
        return t.to(device), torch.ones(batch, dtype=torch.float32, device=device)


class LogNormalTimeSampler(TimeSampler):
    """EDM's log-normal law of the noise level (Karras et al. 2022, Table 1): ln σ̃ ~ N(P_mean,
    P_std²) with σ̃ = σ/α (EDM's σ), P_mean = −1.2, P_std = 1.2, put on the steps by the
    schedule's own inverse as the first step whose noise level reaches the draw,

        t = min{t ∈ {1, …, T} : σ̃(t) ≥ σ̃}  (T when σ̃ > σ̃(T)),  so
        p_t = Φ(u_t) − Φ(u_{t−1}),  u_t = (ln σ̃(t) − P_mean)/P_std,  u_0 = −∞, u_T = +∞.

    The draws below σ̃(1) (0.01 on the linear schedule: 0.2 % of them) land on t = 1 and those
    above σ̃(T) on T: the schedule's ends clip the law. Steps stay integers, as every time sampler
    here draws them, so the bound and the importance weights keep their meaning. Like
    :class:`LogitNormalTimeSampler` it is a *weighting* of the objective (EDM's p_train), not an
    importance sample of the uniform one: every weight is 1. Built from the schedule
    (:func:`time_sampler`), since σ̃(t) is the schedule's.
    """

    needs_schedule = True

    def __init__(self, T: int, schedule: Schedule | None = None, mean: float = -1.2,
                 std: float = 1.2):
        super().__init__(T)
        if not isinstance(schedule, Schedule) or schedule.T != T:
            raise ValueError(f"the log-normal time sampler needs the run's Schedule with T = {T}, "
                             f"got {schedule!r}")
        number("log-normal P_mean", mean)
        number("log-normal P_std", std, 0, low_open=True)
        self.mean, self.std = float(mean), float(std)
        # ln σ̃(t) = −λ(t)/2 for t = 1..T, increasing.
        self._log_sigma = (-0.5 * schedule.log_snr(torch.arange(1, T + 1))).contiguous()

    def probabilities(self) -> Tensor:
        u = (self._log_sigma - self.mean) / self.std
        cdf = torch.special.ndtr(torch.cat([u[:-1], u.new_tensor([math.inf])]))
        return torch.cat([cdf[:1], cdf.diff()])

    def sample(self, batch: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(batch, generator=generator, device=gen_device, dtype=torch.float64)
        log_sigma = self.mean + self.std * z
        # The number of steps with σ̃(t) < σ̃ is t − 1.
        t = torch.searchsorted(self._log_sigma.to(gen_device), log_sigma) + 1
        return t.clamp(max=self.T).to(device), torch.ones(batch, dtype=torch.float32, device=device)


TIME_SAMPLERS: dict[str, type[TimeSampler]] = {"uniform": UniformTimeSampler,
                                               "importance": ImportanceTimeSampler,
                                               "logit-normal": LogitNormalTimeSampler,
                                               "log-normal": LogNormalTimeSampler}
"""The time samplers by name (``TrainConfig.time_sampler``); build one with :func:`time_sampler`."""


def time_sampler(name: str, schedule: Schedule) -> TimeSampler:
    """The time sampler ``name`` of :data:`TIME_SAMPLERS` with its defaults, for ``schedule``
    (the log-normal one reads the schedule's noise levels; the others only its T)."""
    if name not in TIME_SAMPLERS:
        raise ValueError(f"unknown time sampler {name!r}; choose one of {', '.join(TIME_SAMPLERS)}")
    cls = TIME_SAMPLERS[name]
    if getattr(cls, "needs_schedule", False):
        return cls(schedule.T, schedule)  # type: ignore[call-arg]
    return cls(schedule.T)


def _draw_time(schedule: Schedule, x0: Tensor, t: Tensor | float | None,
               time_sampler: TimeSampler | None, generator: torch.Generator | None
               ) -> tuple[Tensor, Tensor]:
    """(t of shape () or (batch,), importance weights of shape (batch,))."""
    batch = x0.shape[0]
    if t is not None:
        if time_sampler is not None:
            raise ValueError("pass either t or time_sampler, not both")
        # A scalar t stays scalar: the schedule is then evaluated once, not once per example.
        t = torch.as_tensor(t, device=x0.device)
        if t.ndim != 0 and t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape (batch,) = ({batch},), "
                             f"got {tuple(t.shape)}")
        return t, torch.ones(batch, dtype=torch.float32, device=x0.device)
    sampler = time_sampler if time_sampler is not None else UniformTimeSampler(schedule.T)
    if sampler.T != schedule.T:
        raise ValueError(f"the time sampler has T = {sampler.T} but the schedule has T = "
                         f"{schedule.T}")
    return sampler.sample(batch, generator=generator, device=x0.device)


def _check_steps(t: Tensor, T: int) -> None:
    t = t.double()
    bad = (t != t.round()) | (t < 1) | (t > T) | torch.isnan(t)
    if bad.any():
        raise ValueError(f"the bound needs integer steps t in {{1, …, {T}}}, got t = "
                         f"{t[bad].flatten()[0].item()!r}")


def _noised(denoiser: Denoiser, x0: Tensor, t: Tensor, noise: Tensor | None,
            generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    # The generator may already have drawn t; it only draws the noise when none was given.
    return q_sample(denoiser.schedule, x0, t, noise=noise,
                    generator=generator if noise is None else None)


def _mean_over_dims(x: Tensor) -> Tensor:
    return x.flatten(1).mean(1)


# ---------------------------------------------------------------------------- regression losses
@dataclass(frozen=True)
class MinSNR:
    """Min-SNR-γ weighting (Hang et al. 2023): the x_0-space weight min(SNR_t, γ), in target space.

    At a fixed x_t, an error Δ in x̂_0 comes with the error −(α/σ) Δ in ε̂ (x_t = α x̂_0 + σ ε̂),
    and the target is linear in (x_0, ε), so ‖target error‖² = k_t ‖Δ‖² with
    k_t = target(1, −α/σ, t)²: SNR for ε, 1 for x_0 and α²/σ² + 1 = 1/σ² for v. The weight
    min(SNR, γ)/k_t therefore gives min(SNR, γ)/SNR for ε, min(SNR, γ) for x_0 and
    min(SNR, γ)/(SNR + 1) for v, read off ``Denoiser.target`` without naming the prediction.
    """

    gamma: float

    def __post_init__(self) -> None:
        if not (self.gamma > 0 and math.isfinite(self.gamma)):
            raise ValueError(f"min-SNR gamma must be a finite number > 0, got {self.gamma!r}")

    def __call__(self, denoiser: Denoiser, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        snr = denoiser.schedule.snr(t)
        alpha, sigma = denoiser.schedule.marginal(t)
        unit = torch.ones_like(alpha)[:, None]
        k = denoiser.target(unit, (-alpha / sigma)[:, None], t).squeeze(1) ** 2
        return snr.clamp(max=self.gamma) / k


def min_snr(gamma: float = 5.0) -> MinSNR:
    """The min-SNR-γ weighting for :func:`simple` (γ = 5 in Hang et al. 2023)."""
    return MinSNR(gamma)


def simple(denoiser: Denoiser, x0: Tensor, *, t: Tensor | float | None = None,
           noise: Tensor | None = None, generator: torch.Generator | None = None,
           time_sampler: TimeSampler | None = None, weighting: Weighting | None = None,
           **cond: Any) -> Tensor:
    """L_simple = mean over dimensions of ‖target − output‖², one value per example.

    x_t = α(t) x_0 + σ(t) ε and target = ``denoiser.target(x_0, ε, t)`` (ε, x_0 or v, by the
    Denoiser's prediction). ``weighting(denoiser, t)`` multiplies each example (e.g.
    :func:`min_snr`); ``t`` defaults to a draw from ``time_sampler`` (uniform on {1, …, T}).
    """
    t, weights = _draw_time(denoiser.schedule, x0, t, time_sampler, generator)
    x_t, noise = _noised(denoiser, x0, t, noise, generator)
    denoised = denoiser(x_t, t, **cond)
    return _regression(denoiser, denoised, x0, noise, t, weighting) * weights.to(x_t.dtype)


def _regression(denoiser: Denoiser, denoised: Denoised, x0: Tensor, noise: Tensor, t: Tensor,
                weighting: Weighting | None) -> Tensor:
    output = denoised.output
    target = denoiser.target(x0, noise, t).to(output.dtype)
    loss = _mean_over_dims((target - output) ** 2)
    if weighting is not None:
        loss = loss * weighting(denoiser, t).to(device=loss.device, dtype=loss.dtype)
    return loss


# ---------------------------------------------------------------------------- the bound
def prior_kl(schedule: Schedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) in nats per example (summed over dimensions), shape (batch,).

    Per dimension: ½ (ᾱ_T x_0² + (1 − ᾱ_T) − 1 − log(1 − ᾱ_T)).
    """
    dtype = torch.promote_types(x0.dtype, torch.float32)
    log_abar = schedule.log_alpha_bar(schedule.T).item()
    abar, log_var = math.exp(log_abar), math.log(-math.expm1(log_abar))
    x = x0.to(dtype).flatten(1)
    return 0.5 * (abar * x**2 - abar - log_var).sum(1)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 − e^x) for x < 0, accurate at both ends (Mächler 2012); the clamps keep the
    unselected branch finite so that its gradient is not NaN."""
    x = x.clamp(max=-1e-300)
    near = torch.log(-torch.expm1(x.clamp(min=-math.log(2))))
    far = torch.log1p(-torch.exp(x.clamp(max=-math.log(2))))
    return torch.where(x > -math.log(2), near, far)


def _log_normal_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """log(Φ(hi) − Φ(lo)) for lo < hi, computed in the tail where both are small."""
    flip = lo > 0  # Φ(hi) − Φ(lo) = Φ(−lo) − Φ(−hi): stay in the left tail
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    return log_b + _log1mexp(torch.special.log_ndtr(a) - log_b)


def _decoder_nll(x0: Tensor, mean: Tensor, log_var: Tensor, discrete: bool) -> Tensor:
    """−log p_θ(x_0 | x_1) elementwise, in nats (see the module docstring)."""
    if not discrete:
        return 0.5 * (_LOG_2PI + log_var + (x0 - mean) ** 2 * torch.exp(-log_var))
    x, mu = x0.double(), mean.double()
    inv_std = torch.exp(-0.5 * log_var.double())
    hi = (x - mu + _BIN_HALF_WIDTH) * inv_std
    lo = (x - mu - _BIN_HALF_WIDTH) * inv_std
    log_p = torch.where(x < -_EDGE, torch.special.log_ndtr(hi),
                        torch.where(x > _EDGE, torch.special.log_ndtr(-lo), _log_normal_mass(lo, hi)))
    return (-log_p).to(mean.dtype)


def _check_discrete_range(x0: Tensor) -> None:
    out = (x0 < -1 - 1e-6) | (x0 > 1 + 1e-6)
    if out.any():
        raise ValueError(f"discrete=True needs 8-bit data scaled to [-1, 1], got the value "
                         f"{x0[out].flatten()[0].item()!r}; pass discrete=False for continuous data")


def _bound_from_denoised(schedule: Schedule, x0: Tensor, x_t: Tensor, t: Tensor,
                         denoised: Denoised, variance: str | None, discrete: bool) -> Tensor:
    """L_{t−1} (t ≥ 2) or L_0 (t = 1) per example, in nats summed over dimensions."""
    mean_p, log_var_p = process.reverse_mean_log_variance(schedule, denoised, x_t, t,
                                                         variance=variance)
    x0 = x0.to(mean_p.dtype)
    mean_q, var_q = schedule.posterior(x0, x_t, t)
    first = (t == 1).reshape(-1, *([1] * (x0.ndim - 1)))
    # q(x_0 | x_1, x_0) is a point mass (β̃_1 = 0): its row is replaced by the decoder below.
    log_var_q = torch.log(torch.where(first, torch.ones_like(var_q), var_q))
    kl = 0.5 * (log_var_p - log_var_q + torch.exp(log_var_q - log_var_p)
                + (mean_q - mean_p) ** 2 * torch.exp(-log_var_p) - 1)
    decoder = _decoder_nll(x0, mean_p, log_var_p.expand_as(mean_p), discrete)
    return torch.where(first, decoder, kl).flatten(1).sum(1)


def bound_term(denoiser: Denoiser, x0: Tensor, t: Tensor | int, *, noise: Tensor | None = None,
               generator: torch.Generator | None = None, variance: str | None = None,
               discrete: bool = True, **cond: Any) -> Tensor:
    """One term of the bound at step t, x_t ~ q(x_t | x_0), in nats per example, shape (batch,).

    t ≥ 2: L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)); t = 1: the decoder
    L_0 = −log p_θ(x_0 | x_1). ``t`` is an integer or a per-example tensor; ``variance`` as in
    :func:`noisecraft.process.reverse_mean_variance`. Units and ``discrete``: module docstring.
    """
    t, _ = _draw_time(denoiser.schedule, x0, t, None, None)
    x_t, _, denoised = _bound_forward(denoiser, x0, t, noise, generator, discrete, cond)
    return _bound_from_denoised(denoiser.schedule, x0, x_t, t, denoised, variance, discrete)


def _bound_forward(denoiser: Denoiser, x0: Tensor, t: Tensor, noise: Tensor | None,
                   generator: torch.Generator | None, discrete: bool, cond: dict[str, Any]
                   ) -> tuple[Tensor, Tensor, Denoised]:
    """Check t and x_0 for a bound term, draw x_t ~ q(x_t | x_0): (x_t, ε, the model's reading)."""
    _check_steps(t, denoiser.schedule.T)
    if discrete:
        _check_discrete_range(x0)
    x_t, noise = _noised(denoiser, x0, t, noise, generator)
    return x_t, noise, denoiser(x_t, t, **cond)


def vlb(denoiser: Denoiser, x0: Tensor, *, t: Tensor | int | None = None,
        noise: Tensor | None = None, generator: torch.Generator | None = None,
        time_sampler: TimeSampler | None = None, variance: str | None = None,
        discrete: bool = True, **cond: Any) -> Tensor:
    """A one-sample unbiased estimate of the whole bound, in bits/dim per example, shape (batch,).

    (T w_t · bound_term(x_0, t) + prior_kl(x_0)) / (D ln 2) with t ~ p_t and w_t = 1/(T p_t)
    (uniform: w_t = 1); its mean over t and ε is the bound. Given ``t``, w_t = 1.
    """
    schedule = denoiser.schedule
    t, weights = _draw_time(schedule, x0, t, time_sampler, generator)
    terms = bound_term(denoiser, x0, t, noise=noise, generator=generator, variance=variance,
                       discrete=discrete, **cond)
    nats = schedule.T * weights.to(terms.dtype) * terms + prior_kl(schedule, x0).to(terms.dtype)
    return nats / (x0[0].numel() * math.log(2))


def hybrid(denoiser: Denoiser, x0: Tensor, lambda_vlb: float = 0.001, *,
           t: Tensor | float | None = None, noise: Tensor | None = None,
           generator: torch.Generator | None = None, time_sampler: TimeSampler | None = None,
           weighting: Weighting | None = None, discrete: bool = True, **cond: Any) -> Tensor:
    """L_hybrid = L_simple + λ L_vlb for learned-variance Denoisers (Nichol & Dhariwal 2021).

    L_vlb is estimated at the same (t, ε) as T · L_{t−1} in bits/dim (so λ = 0.001 means what it
    means in Improved DDPM), with the mean μ_θ frozen: the bound trains only the variance
    channels and L_simple alone trains the mean. One value per example, shape (batch,).
    """
    if not denoiser.learned_variance:
        raise ValueError("hybrid needs a Denoiser with learned_variance=True; use simple otherwise")
    if not (lambda_vlb >= 0 and math.isfinite(lambda_vlb)):
        raise ValueError(f"lambda_vlb must be a finite number >= 0, got {lambda_vlb!r}")
    schedule = denoiser.schedule
    t, weights = _draw_time(schedule, x0, t, time_sampler, generator)
    x_t, noise, denoised = _bound_forward(denoiser, x0, t, noise, generator, discrete, cond)
    mse = _regression(denoiser, denoised, x0, noise, t, weighting)
    frozen = replace(denoised, x0=denoised.x0.detach(), eps=denoised.eps.detach(),
                     v=denoised.v.detach(), output=denoised.output.detach())
    bound = _bound_from_denoised(schedule, x0, x_t, t, frozen, "learned", discrete)
    bits_per_dim = bound / (x0[0].numel() * math.log(2))
    return (mse + lambda_vlb * schedule.T * bits_per_dim) * weights.to(mse.dtype)


# ---------------------------------------------------------------------------- by name
def _simple_objective(denoiser: Denoiser, x0: Tensor, t: Tensor, generator: torch.Generator | None,
                      discrete: bool, options: dict[str, float], cond: dict[str, Any]) -> Tensor:
    return simple(denoiser, x0, t=t, generator=generator, **cond)


def _min_snr_objective(denoiser: Denoiser, x0: Tensor, t: Tensor,
                       generator: torch.Generator | None, discrete: bool,
                       options: dict[str, float], cond: dict[str, Any]) -> Tensor:
    return simple(denoiser, x0, t=t, generator=generator,
                  weighting=min_snr(options.get("min_snr_gamma", 5.0)), **cond)


def _vlb_objective(denoiser: Denoiser, x0: Tensor, t: Tensor, generator: torch.Generator | None,
                   discrete: bool, options: dict[str, float], cond: dict[str, Any]) -> Tensor:
    return vlb(denoiser, x0, t=t, generator=generator, discrete=discrete, **cond)


def _hybrid_objective(denoiser: Denoiser, x0: Tensor, t: Tensor,
                      generator: torch.Generator | None, discrete: bool,
                      options: dict[str, float], cond: dict[str, Any]) -> Tensor:
    return hybrid(denoiser, x0, options.get("hybrid_lambda", 0.001), t=t, generator=generator,
                  discrete=discrete, **cond)


LOSSES: dict[str, Callable[..., Tensor]] = {"simple": _simple_objective,
                                            "min-snr": _min_snr_objective,
                                            "vlb": _vlb_objective, "hybrid": _hybrid_objective}
"""The training objectives by name (``TrainConfig.loss``); see :func:`objective`."""


def objective(name: str, denoiser: Denoiser, x0: Tensor, t: Tensor, *,
              generator: torch.Generator | None = None, discrete: bool = True,
              min_snr_gamma: float = 5.0, hybrid_lambda: float = 0.001, **cond: Any) -> Tensor:
    """The training loss ``name`` of :data:`LOSSES` at the given steps t, one unweighted value per
    example: ``simple``, ``min-snr`` (simple weighted by min-SNR-γ), ``vlb`` (bits/dim) or
    ``hybrid`` (simple + λ·vlb). Multiply by the time sampler's weights before averaging.
    ``discrete`` picks the bound's decoder (8-bit data) as in :func:`vlb`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    options = {"min_snr_gamma": min_snr_gamma, "hybrid_lambda": hybrid_lambda}
    return LOSSES[name](denoiser, x0, t, generator, discrete, options, cond)
