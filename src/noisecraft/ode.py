"""An adaptive Dormand–Prince 5(4) ODE solver over torch, with a step size per example.

``dopri5(func, y0, u0, u1)`` integrates dy/du = func(u, y, idx) for a batch of independent
problems y0 of shape (batch, n) from u0 to u1 (u0 < u1). Each example keeps its own step size
and error control, so a hard example does not make the easy ones take small steps; at every
stage the examples still running are evaluated together in one call, with their own times
``u`` (shape (m,)) and their row numbers ``idx`` in the original batch (so the caller can pick
per-example extras such as probes or labels).

Error control (Hairer, Nørsett & Wanner, §II.4): a step is accepted when

    ‖err / (atol + rtol · max(|y|, |y_new|))‖_rms ≤ 1,

with err the difference of the embedded 5th- and 4th-order solutions; the next step is
h · clamp(0.9 · ‖·‖^(-1/5), 0.2, 10). First-same-as-last: the 7th stage of an accepted step is
the 1st stage of the next one, so an accepted step costs six evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# Dormand & Prince (1980), the tableau of scipy's RK45 and torchdiffeq's dopri5.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))

ODEFunc = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ODESolution:
    """The state at u1 and the work done, per example."""

    y: Tensor          # (batch, n) at u = u1
    nfe: Tensor        # (batch,) int64: evaluations of func that included this example
    steps: Tensor      # (batch,) int64: accepted steps
    rejected: Tensor   # (batch,) int64: rejected steps


def _rms(x: Tensor) -> Tensor:
    return x.pow(2).mean(dim=1).sqrt()


def dopri5(func: ODEFunc, y0: Tensor, u0: float, u1: float, *, rtol: float = 1e-5,
           atol: float = 1e-5, max_steps: int = 10_000) -> ODESolution:
    """Integrate dy/du = func(u, y, idx) from ``u0`` to ``u1`` for each row of ``y0``.

    Args:
        func: ``func(u, y, idx) -> dy/du`` with u of shape (m,), y of shape (m, n) and idx the
            (m,) row numbers of those examples in ``y0``.
        y0: the initial states, shape (batch, n), floating point.
        u0, u1: the interval, u0 < u1.
        rtol, atol: relative and absolute tolerances (> 0).
        max_steps: a bound on the steps (accepted or rejected) of any one example; exceeding it
            raises ``RuntimeError`` (the integrand is stiff or not finite).
    """
    if y0.ndim != 2 or not y0.is_floating_point():
        raise ValueError(f"y0 must be a floating tensor of shape (batch, n), got {tuple(y0.shape)} "
                         f"{y0.dtype}")
    if not u1 > u0:
        raise ValueError(f"the interval must have u0 < u1, got u0={u0!r}, u1={u1!r}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be > 0, got rtol={rtol!r}, atol={atol!r}")
    batch, device = y0.shape[0], y0.device
    time_dtype = torch.float64
    y = y0.clone()
    u = torch.full((batch,), float(u0), dtype=time_dtype, device=device)
    nfe = torch.zeros(batch, dtype=torch.int64, device=device)
    steps = torch.zeros_like(nfe)
    rejected = torch.zeros_like(nfe)
    every = torch.arange(batch, device=device)

    def call(idx: Tensor, uu: Tensor, yy: Tensor) -> Tensor:
        nfe[idx] += 1
        out = func(uu, yy, idx)
        if out.shape != yy.shape:
            raise ValueError(f"the ODE function returned shape {tuple(out.shape)} for a state of "
                             f"shape {tuple(yy.shape)}")
        return out.to(yy.dtype)

    k1 = call(every, u, y)
    h = _initial_step(call, every, u, y, k1, float(u1) - float(u0), rtol, atol)
    tries = torch.zeros_like(nfe)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    while bool(active.any()):
        idx = torch.nonzero(active).squeeze(1)
        ui, yi, hi = u[idx], y[idx], h[idx]
        # Land exactly on u1: never step past it.
        hi = torch.minimum(hi, u1 - ui)
        hy = hi.to(y.dtype)[:, None]
        ks = [k1[idx]]
        for stage in range(1, 7):
            dy = sum(a * k for a, k in zip(_A[stage], ks, strict=False) if a != 0.0)
            ks.append(call(idx, ui + _C[stage] * hi, yi + hy * dy))
        y_new = yi + hy * sum(b * k for b, k in zip(_B5, ks, strict=True) if b != 0.0)
        err = hy * sum(e * k for e, k in zip(_E, ks, strict=True) if e != 0.0)
        scale = atol + rtol * torch.maximum(yi.abs(), y_new.abs())
        norm = _rms(err / scale).to(time_dtype)
        finite = torch.isfinite(y_new).all(dim=1) & torch.isfinite(norm)
        ok = (norm <= 1) & finite
        factor = (0.9 * norm.clamp(min=1e-10) ** -0.2).clamp(0.2, 10.0)
        factor = torch.where(ok, factor, factor.clamp(max=1.0))
        factor = torch.where(finite, factor, torch.full_like(factor, 0.2))
        acc = idx[ok]
        y[acc] = y_new[ok]
        u[acc] = torch.where(hi[ok] >= u1 - ui[ok], torch.full_like(hi[ok], u1), ui[ok] + hi[ok])
        k1[acc] = ks[6][ok]
        steps[acc] += 1
        rejected[idx[~ok]] += 1
        h[idx] = hi * factor
        tries[idx] += 1
        active[acc] = u[acc] < u1
        if bool((tries[idx] >= max_steps).any()):
            raise RuntimeError(f"dopri5 took {max_steps} steps without reaching u1 = {u1!r}; the "
                               "integrand may be stiff or not finite (lower rtol/atol?)")
    return ODESolution(y=y, nfe=nfe, steps=steps, rejected=rejected)


def _initial_step(call: Callable[[Tensor, Tensor, Tensor], Tensor], idx: Tensor, u: Tensor,
                  y: Tensor, f0: Tensor, span: float, rtol: float, atol: float) -> Tensor:
    """Hairer's starting step (Hairer, Nørsett & Wanner, §II.4, algorithm (4.14)), per example."""
    scale = atol + rtol * y.abs()
    d0 = _rms(y / scale).to(torch.float64)
    d1 = _rms(f0 / scale).to(torch.float64)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = h0.clamp(max=span)
    f1 = call(idx, u + h0, y + h0.to(y.dtype)[:, None] * f0)
    d2 = _rms((f1 - f0) / scale).to(torch.float64) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     (0.01 / dmax.clamp(min=1e-300)) ** 0.2)
    return torch.minimum(100 * h0, h1).clamp(max=span)
