"""The forward process q and the reverse step p_θ, written as the equations read.

Forward (Ho et al. 2020, eqs. 2 and 4):

    q(x_t | x_{t-1}) = N(√α_t x_{t-1}, β_t I),
    q(x_t | x_0)     = N(√ᾱ_t x_0, (1 − ᾱ_t) I).

Reverse: p_θ(x_s | x_t) = N(μ_θ, σ² I) for s < t (s = t − 1 unless the grid is respaced), with
μ_θ the posterior mean of q(x_s | x_t, x_0) with the network's x̂_0 plugged in,

    μ_θ(x_t, t) = c_0 x̂_0 + c_t x_t        (``Schedule.posterior_coefficients(t, s)``),

and σ² one of
    ``"beta"``:       σ²_{t|s} = 1 − ᾱ_t/ᾱ_s                 (β_t when s = t − 1),
    ``"beta_tilde"``: β̃_{t|s} = σ²_{t|s} (1 − ᾱ_s)/(1 − ᾱ_t)   (β̃_t when s = t − 1),
    ``"learned"``:    log σ² = f log σ²_{t|s} + (1 − f) log β̃_{t|s}, f = ``Denoised.variance_fraction``
                      (Nichol & Dhariwal 2021, eq. 15).

The last step (s = 0) has β̃_{t|0} = 0: given x_0 there is nothing left to sample, and log β̃ is −∞.
Like the Improved-DDPM and DDPM code, we replace β̃ there by the posterior variance of the next
step of the same width, q(x_t | x_{t+(t−s)}, x_0) — β̃_2 for the step 1 → 0 — or by σ²_{t|s} when
t + (t − s) lies beyond T. This keeps the learned log-variance and the decoder likelihood finite;
samplers conventionally return the mean at s = 0 and add no noise there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import Denoised
from .schedule import Schedule, TimeLike, broadcast_to

VARIANCES = ("beta", "beta_tilde", "learned")
"""The reverse-step variances σ² of p_θ (module docstring); the one list of them."""


def resolve_variance(variance: str | None, learned: bool) -> str:
    """``variance`` checked against :data:`VARIANCES`; ``None`` (unset) means ``"learned"`` when
    the network outputs a variance (``learned``), else ``"beta_tilde"``: the one default of
    ``ddpm``, ``nll(method="vlb")`` and the bound's terms."""
    if variance is None:
        return "learned" if learned else "beta_tilde"
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    if variance == "learned" and not learned:
        raise ValueError("variance='learned' needs a Denoiser built with learned_variance=True")
    return variance


def noise_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise with x's shape, dtype and device, drawn from ``generator`` if given."""
    if generator is None:
        return torch.randn_like(x)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
    return z.to(x.device)


def _check_noise(noise: Tensor | None, x: Tensor, generator: torch.Generator | None) -> Tensor:
    if noise is None:
        return noise_like(x, generator)
    if generator is not None:
        raise ValueError("pass either noise or generator, not both")
    if noise.shape != x.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but x has {tuple(x.shape)}")
    return noise


def _time(t: TimeLike, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(f"t must be a scalar or have shape (batch,) = ({x.shape[0]},), "
                         f"got {tuple(t.shape)}")
    return t


def q_sample_from(schedule: Schedule, x_s: Tensor, s: TimeLike, t: TimeLike,
                  noise: Tensor | None = None, generator: torch.Generator | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Draw x_t ~ q(x_t | x_s) = N(α_{t|s} x_s, σ²_{t|s} I) for s ≤ t; returns ``(x_t, ε)``.

    α_{t|s} = √(ᾱ_t/ᾱ_s) and σ²_{t|s} = 1 − ᾱ_t/ᾱ_s, both from the schedule's log ᾱ (so
    σ²_{t|s} keeps its precision where ᾱ_t/ᾱ_s is near 1). The one forward transition: q(x_t | x_0)
    is s = 0 (:func:`q_sample`), one step is s = t − 1 (:func:`q_step`), and RePaint's move back
    up (:func:`noisecraft.editing.inpaint`) is any s < t. ``s``, ``t`` ∈ [0, T] (fractional
    allowed), numbers or per-example tensors of shape (batch,).
    """
    t = _time(t, x_s)
    s = _time(s, x_s)
    if bool((s > t).any()):
        sb, tb = torch.broadcast_tensors(s, t)
        i = sb > tb
        raise ValueError(f"q(x_t | x_s) needs s <= t, got s = {sb[i].flatten()[0].item()!r} > "
                         f"t = {tb[i].flatten()[0].item()!r}")
    return _transition(schedule.log_alpha_bar(t) - schedule.log_alpha_bar(s), x_s, noise,
                       generator)


def _transition(log_ratio: Tensor, x_s: Tensor, noise: Tensor | None,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """x_t = √r x_s + √(1 − r) ε with log r = ``log_ratio`` = log ᾱ_t/ᾱ_s: the arithmetic of
    every forward transition, written once."""
    noise = _check_noise(noise, x_s, generator)
    dtype = torch.promote_types(x_s.dtype, torch.float32)
    a = broadcast_to(torch.exp(0.5 * log_ratio), x_s, dtype)
    b = broadcast_to(torch.sqrt(-torch.expm1(log_ratio)), x_s, dtype)
    return a * x_s.to(dtype) + b * noise.to(dtype), noise


def q_step(schedule: Schedule, x_prev: Tensor, t: TimeLike, noise: Tensor | None = None,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One forward step x_{t-1} → x_t = √α_t x_{t-1} + √β_t ε; returns ``(x_t, ε)``.

    ``t`` is an integer in {1, …, T}, as a number or a per-example tensor of shape (batch,).
    :func:`q_sample_from` with s = t − 1 (α_t = ᾱ_t/ᾱ_{t-1}: the off-by-one stays in Schedule).
    """
    t = _time(t, x_prev)
    bad_t = torch.isnan(t) | (t != t.round()) | (t < 1) | (t > schedule.T)
    if bad_t.any():
        bad = t[bad_t].flatten()[0].item()
        raise ValueError(f"q_step needs an integer step t in {{1, …, {schedule.T}}}, got t = {bad!r}")
    return q_sample_from(schedule, x_prev, t - 1, t, noise, generator)


def q_sample(schedule: Schedule, x0: Tensor, t: TimeLike, noise: Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw x_t ~ q(x_t | x_0) in closed form: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε; returns ``(x_t, ε)``.

    ``t`` ∈ [0, T] (fractional t allowed), a number or a per-example tensor of shape (batch,).
    :func:`q_sample_from` with s = 0 (ᾱ_0 = 1), without its s ≤ t check (one host sync fewer
    per training batch).
    """
    return _transition(schedule.log_alpha_bar(_time(t, x0)), x0, noise, generator)


def _step_log_variances(schedule: Schedule, t: Tensor, s: Tensor, beta_tilde: Tensor
                        ) -> tuple[Tensor, Tensor]:
    """(log σ²_{t|s}, log β̃_{t|s}) with β̃ at s = 0 replaced as the module docstring says."""
    log_var_beta = torch.log(-torch.expm1(schedule.log_alpha_bar(t) - schedule.log_alpha_bar(s)))
    last = s == 0
    if not last.any():
        return log_var_beta, torch.log(beta_tilde)
    # The last step: the posterior variance of the next step of the same width (IDDPM's clip).
    T = schedule.T
    t_next = (2 * t - s).clamp(max=T)
    has_next = t_next > t
    pair_t = torch.where(has_next, t_next, torch.full_like(t, T))
    pair_s = torch.where(has_next, t, torch.full_like(t, max(T - 1, 0)))
    _, _, next_beta_tilde = schedule.posterior_coefficients(pair_t, pair_s)
    log_next = torch.where(has_next, torch.log(next_beta_tilde), log_var_beta)
    return log_var_beta, torch.where(last, log_next, torch.log(beta_tilde))


def reverse_mean_log_variance(schedule: Schedule, denoised: Denoised, x_t: Tensor, t: TimeLike,
                              s: TimeLike | None = None, variance: str | None = None
                              ) -> tuple[Tensor, Tensor]:
    """p_θ(x_s | x_t) = N(mean, exp(log σ²) I): **the** reverse step, used by the ``ddpm``
    sampler, the bound's terms (:mod:`noisecraft.losses`) and so ``nll(method="vlb")``.

    Arguments as :func:`reverse_mean_variance`; returns log σ² (exact where σ² would underflow).
    """
    variance = resolve_variance(variance, denoised.variance_fraction is not None)
    if denoised.x0.shape != x_t.shape:
        raise ValueError(f"denoised.x0 has shape {tuple(denoised.x0.shape)} but x_t has "
                         f"{tuple(x_t.shape)}")
    t = _time(t, x_t)
    s = t - 1 if s is None else _time(s, x_t)
    dtype = torch.promote_types(x_t.dtype, torch.float32)
    c0, ct, beta_tilde = schedule.posterior_coefficients(t, s)
    mean = (broadcast_to(c0, x_t, dtype) * denoised.x0.to(dtype)
            + broadcast_to(ct, x_t, dtype) * x_t.to(dtype))
    t, s, beta_tilde = torch.broadcast_tensors(t, s, beta_tilde)
    log_var_beta, log_beta_tilde = _step_log_variances(schedule, t, s, beta_tilde)
    if variance == "beta":
        return mean, broadcast_to(log_var_beta, x_t, dtype)
    if variance == "beta_tilde":
        return mean, broadcast_to(log_beta_tilde, x_t, dtype)
    f = denoised.variance_fraction
    assert f is not None  # resolve_variance refused "learned" without it
    hi, lo = broadcast_to(log_var_beta, x_t, dtype), broadcast_to(log_beta_tilde, x_t, dtype)
    return mean, f.to(dtype) * hi + (1 - f.to(dtype)) * lo


def reverse_mean_variance(schedule: Schedule, denoised: Denoised, x_t: Tensor, t: TimeLike,
                          s: TimeLike | None = None, variance: str | None = None
                          ) -> tuple[Tensor, Tensor]:
    """Mean and variance of the reverse step p_θ(x_s | x_t) = N(μ_θ, σ² I), s < t (default t − 1).

    Args:
        schedule: the schedule that defines x_t.
        denoised: the :class:`Denoised` record of the network at (x_t, t).
        x_t: the current state, shape (batch, …).
        t, s: numbers or per-example tensors of shape (batch,), 0 ≤ s < t ≤ T.
        variance: ``"beta"``, ``"beta_tilde"`` or ``"learned"`` (see the module docstring);
            by default ``"learned"`` when the record carries a variance fraction, else
            ``"beta_tilde"``.

    Returns:
        ``(mean, variance)``: the mean has x_t's shape; the variance broadcasts against it —
        shape (batch, 1, …) for the fixed choices, x_t's shape for ``"learned"``.
    """
    mean, log_var = reverse_mean_log_variance(schedule, denoised, x_t, t, s, variance)
    return mean, torch.exp(log_var)
