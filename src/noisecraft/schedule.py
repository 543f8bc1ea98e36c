"""Noise schedules: β_t → ᾱ_t, the marginal q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0).

Time convention (the one time variable of the whole library)
------------------------------------------------------------
``t`` counts the noising steps taken: x_0 is data and x_t has been noised t times,
t ∈ {1, …, T}. The forward process is

    q(x_t | x_{t-1}) = N(√α_t x_{t-1}, β_t I),   α_t = 1 − β_t,
    q(x_t | x_0)     = N(√ᾱ_t x_0, (1 − ᾱ_t) I),  ᾱ_t = ∏_{s≤t} α_s,

so ``marginal(t) = (α(t), σ(t)) = (√ᾱ_t, √(1 − ᾱ_t))`` and ``marginal(0) = (1, 0)``.
The tensors ``betas``, ``alphas`` and ``alpha_bars`` are 0-based (β_t is ``betas[t-1]``);
that off-by-one stays inside this class and nothing else indexes them.

Fractional t (for continuous-time solvers) interpolates the log signal-to-noise ratio
λ(t) = log(α²/σ²) linearly between neighbouring integers, so α² + σ² = 1 always holds and
integer t reproduces the discrete values exactly. On (0, 1), where λ(0) = +∞, σ² is
interpolated linearly instead: σ²(t) = t (1 − ᾱ_1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .checks import positive_int

TimeLike = Tensor | float | int | Sequence[float]

SCHEDULES = ("linear", "quadratic", "cosine", "sigmoid", "flow")
"""The named schedules (:meth:`Schedule.from_name`); ``custom`` ones come from betas."""
_KINDS = (*SCHEDULES, "custom")


def _as_time(t: TimeLike, device: torch.device | None = None) -> Tensor:
    """``t`` as a float64 tensor, on ``device`` when given (else a tensor's own device, or the CPU)."""
    if isinstance(t, Tensor):
        return t.detach().to(device=device, dtype=torch.float64)
    return torch.as_tensor(t, dtype=torch.float64, device=device)


class Schedule:
    """An immutable variance schedule β_1..β_T held in float64.

    Build one with :meth:`linear`, :meth:`quadratic`, :meth:`cosine`, :meth:`sigmoid`,
    :meth:`flow` or :meth:`from_betas`. All methods accept ``t`` as a Python number or a tensor
    of any shape (on any device) and return float64 tensors on ``t``'s device.
    """

    __slots__ = ("_betas", "_log_alpha_bars", "_log_snr_knots", "_one_minus_abar1", "_spec",
                 "_tables")

    def __init__(self, betas: Tensor | Sequence[float], *, spec: dict[str, Any] | None = None):
        b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().clone()
        if b.ndim != 1:
            raise ValueError(f"betas must be a 1-D sequence, got shape {tuple(b.shape)}")
        if b.numel() < 1:
            raise ValueError("a schedule needs T >= 1 steps, got T = 0")
        if torch.isnan(b).any():
            i = int(torch.nonzero(torch.isnan(b))[0])
            raise ValueError(f"beta_{i + 1} is NaN")
        bad = (b <= 0) | (b >= 1)
        if bad.any():
            i = int(torch.nonzero(bad)[0])
            raise ValueError(f"beta_{i + 1} = {b[i].item()!r} is outside the open interval (0, 1)")
        self._betas = b
        # log ᾱ_t = Σ log(1 − β_s): log1p keeps tiny β exact.
        self._log_alpha_bars = torch.cumsum(torch.log1p(-b), 0)
        self._one_minus_abar1 = -torch.expm1(self._log_alpha_bars[0]).item()   # σ² at t = 1
        # λ at the integer knots 0..T; λ_0 = +∞ (no noise).
        lab = self._log_alpha_bars
        log_snr = lab - torch.log(-torch.expm1(lab))
        self._log_snr_knots = torch.cat([torch.tensor([math.inf], dtype=torch.float64), log_snr])
        if not (self._log_snr_knots[1:].diff() < 0).all():  # guaranteed by β > 0, but cheap
            raise ValueError("log-SNR must decrease strictly with t")
        self._spec = dict(spec) if spec else {"kind": "custom", "betas": b.tolist()}
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
        """β linear in t from ``beta_start`` to ``beta_end`` (Ho et al. 2020)."""
        T = _check_T(T)
        _check_beta_range(beta_start, beta_end)
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64) if T > 1 else (
            torch.tensor([beta_start], dtype=torch.float64))
        return cls(betas, spec={"kind": "linear", "T": T, "beta_start": beta_start,
                                "beta_end": beta_end})

    @classmethod
    def quadratic(cls, T: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> Schedule:
        """√β linear in t, so β grows quadratically from ``beta_start`` to ``beta_end``."""
        T = _check_T(T)
        _check_beta_range(beta_start, beta_end)
        root = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64)
        return cls(root**2, spec={"kind": "quadratic", "T": T, "beta_start": beta_start,
                                  "beta_end": beta_end})

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
        """ᾱ_t = f(t)/f(0), f(t) = cos²(π/2 · (t/T + s)/(1 + s)) (Nichol & Dhariwal 2021).

        β_t = 1 − ᾱ_t/ᾱ_{t-1}, clipped at ``max_beta`` to avoid the singularity at t = T.
        """
        T = _check_T(T)
        if not (s >= 0 and math.isfinite(s)):
            raise ValueError(f"cosine offset s must be a finite number >= 0, got {s!r}")
        _check_max_beta(max_beta)
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(min=1e-12, max=max_beta)
        return cls(betas, spec={"kind": "cosine", "T": T, "s": s, "max_beta": max_beta})

    @classmethod
    def sigmoid(cls, T: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                max_beta: float = 0.999) -> Schedule:
        """ᾱ from a sigmoid: ᾱ(u) ∝ σ(end/τ) − σ((u(end − start) + start)/τ), u = t/T.

        The schedule of Jabri, Fleet & Chen (2022) / Chen (2023), normalised so ᾱ(0) = 1,
        with β clipped at ``max_beta``.
        """
        T = _check_T(T)
        if not (end > start and tau > 0 and math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"sigmoid schedule needs start < end and tau > 0, got start={start!r}, "
                             f"end={end!r}, tau={tau!r}")
        _check_max_beta(max_beta)
        u = torch.arange(T + 1, dtype=torch.float64) / T
        v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
        v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
        abar = (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)
        betas = (1 - abar[1:] / abar[:-1]).clamp(min=1e-12, max=max_beta)
        return cls(betas, spec={"kind": "sigmoid", "T": T, "start": start, "end": end,
                                "tau": tau, "max_beta": max_beta})

    @classmethod
    def flow(cls, T: int = 1000, max_beta: float = 0.999) -> Schedule:
        """The rectified-flow / flow-matching path x = (1 − τ) x_0 + τ ε, τ = t/T, as a VP schedule.

        Every process x = a x_0 + s ε is a rescaled variance-preserving one: dividing by
        √(a² + s²) gives α = a/√(a² + s²), σ = s/√(a² + s²) with α² + σ² = 1 and the same
        log-SNR 2 log(a/s). So the straight path is the VP schedule

            ᾱ_t = (1 − τ)² / ((1 − τ)² + τ²),   λ(t) = 2 log((1 − τ)/τ),

        and a :class:`~noisecraft.Denoiser` with ``prediction="flow"`` rescales x_t by
        1/(α + σ) = √((1 − τ)² + τ²) at the network's boundary, so the network sees
        (1 − τ) x_0 + τ ε exactly at every integer t. At t = T the path reaches pure noise
        (ᾱ_T = 0, λ = −∞, β_T = 1); β is clipped at ``max_beta`` there, as the cosine schedule
        does, so ᾱ_T = ᾱ_{T−1}(1 − max_beta) > 0 (for T = 1000: τ(T) = 1 − 3·10⁻⁵) and every
        sampler, grid and the likelihood's prior stay finite. Fractional t interpolates λ
        linearly between the integers like every schedule (module docstring).
        """
        T = _check_T(T)
        _check_max_beta(max_beta)
        tau = torch.arange(T + 1, dtype=torch.float64) / T
        abar = (1 - tau) ** 2 / ((1 - tau) ** 2 + tau**2)
        betas = (1 - abar[1:] / abar[:-1]).clamp(min=1e-12, max=max_beta)
        return cls(betas, spec={"kind": "flow", "T": T, "max_beta": max_beta})

    @classmethod
    def from_betas(cls, betas: Tensor | Sequence[float]) -> Schedule:
        """Any β_1..β_T in (0, 1)."""
        return cls(betas)

    @classmethod
    def from_name(cls, name: str, T: int = 1000, **kwargs: Any) -> Schedule:
        """Build by name: ``linear``, ``quadratic``, ``cosine``, ``sigmoid`` or ``flow``."""
        builders = {"linear": cls.linear, "quadratic": cls.quadratic, "cosine": cls.cosine,
                    "sigmoid": cls.sigmoid, "flow": cls.flow}
        if name not in builders:
            raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(builders)}")
        return builders[name](T=T, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description that :meth:`from_dict` rebuilds exactly."""
        return dict(self._spec)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Schedule:
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind not in _KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; expected one of {', '.join(_KINDS)}")
        if kind == "custom":
            betas = spec.pop("betas", None)
            if betas is None or spec:
                raise ValueError(f"a custom schedule needs exactly the key 'betas', got extra "
                                 f"keys {sorted(spec)}")
            return cls.from_betas(betas)
        try:
            return getattr(cls, kind)(**spec)
        except TypeError as e:
            raise ValueError(f"bad parameters for the {kind} schedule: {e}") from None

    # ------------------------------------------------------------------ tables
    @property
    def T(self) -> int:
        return int(self._betas.numel())

    @property
    def betas(self) -> Tensor:
        """β_t for t = 1..T (0-based: β_t is ``betas[t-1]``)."""
        return self._betas.clone()

    @property
    def alphas(self) -> Tensor:
        """α_t = 1 − β_t."""
        return 1 - self._betas

    @property
    def alpha_bars(self) -> Tensor:
        """ᾱ_t = ∏_{s≤t} α_s, indexed like ``betas``."""
        return torch.exp(self._log_alpha_bars)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._spec.items() if k not in ("kind", "betas"))
        return f"Schedule.{self._spec['kind']}({params})" if params else f"Schedule(T={self.T})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and torch.equal(self._betas, other._betas)

    def __hash__(self) -> int:
        return hash(tuple(self._betas.tolist()))

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(λ knots 0..T, log ᾱ knots 0..T) on ``device``, cached."""
        if device not in self._tables:
            lab = torch.cat([torch.zeros(1, dtype=torch.float64), self._log_alpha_bars])
            self._tables[device] = (self._log_snr_knots.to(device), lab.to(device))
        return self._tables[device]

    @staticmethod
    def _time_stats(t: Tensor) -> list[Tensor]:
        """min t, max t and the largest fractional part: NaN if t holds NaN."""
        return [t.min(), t.max(), (t - t.floor()).max()]

    def _in_range(self, lo: float, hi: float, t: Tensor, name: str) -> None:
        if not (lo >= 0 and hi <= self.T):       # NaN fails both comparisons
            if torch.isnan(t).any():
                raise ValueError(f"{name} contains NaN")
            bad = t[(t < 0) | (t > self.T)].flatten()[0].item()
            raise ValueError(f"{name} = {bad!r} is outside [0, T] = [0, {self.T}]")

    def _check_t(self, t: Tensor, name: str = "t") -> bool:
        """Raise unless every t lies in [0, T]; return whether every t is an integer.

        The statistics come back in one ``tolist()``: one host sync per call on a GPU.
        """
        if t.numel() == 0:
            return True
        lo, hi, frac = torch.stack(self._time_stats(t)).tolist()
        self._in_range(lo, hi, t, name)
        return frac == 0

    # ------------------------------------------------------------------ the marginal
    def log_snr(self, t: TimeLike) -> Tensor:
        """λ(t) = log(ᾱ_t / (1 − ᾱ_t)); +∞ at t = 0; interpolated linearly between integers."""
        t = _as_time(t)
        return self._log_snr(t, self._check_t(t))

    def _log_snr(self, t: Tensor, integer: bool) -> Tensor:
        """:meth:`log_snr` of a checked ``t``; ``integer``: every t is an integer."""
        knots, _ = self._on(t.device)
        if integer:
            return knots[t.long()]
        T = self.T
        lo = t.floor().clamp(1, max(T - 1, 1)).long()
        hi = (lo + 1).clamp(max=T)
        k_lo = knots[lo]
        # Finite knots, so frac = 0 (an integer t) gives k_lo exactly.
        lam = k_lo + (t - lo) * (knots[hi] - k_lo)
        # On [0, 1): σ²(t) = t (1 − ᾱ_1), λ = log((1 − σ²)/σ²).
        sigma2 = t * self._one_minus_abar1
        lam_first = torch.log1p(-sigma2) - torch.log(sigma2)
        return torch.where(t < 1, lam_first, lam)

    def snr(self, t: TimeLike) -> Tensor:
        """SNR(t) = ᾱ_t / (1 − ᾱ_t) = α(t)² / σ(t)²."""
        return torch.exp(self.log_snr(t))

    def log_alpha_bar(self, t: TimeLike) -> Tensor:
        """log ᾱ(t) (exact at integers, log-SNR interpolation between)."""
        t = _as_time(t)
        return self._log_alpha_bar(t, self._check_t(t))

    def _log_alpha_bar(self, t: Tensor, integer: bool) -> Tensor:
        """:meth:`log_alpha_bar` of a checked ``t``; ``integer``: every t is an integer."""
        _, lab = self._on(t.device)
        if integer:
            return lab[t.long()]
        nearest = t.round()
        lam = self._log_snr(t, False)
        return torch.where(t == nearest, lab[nearest.long()], torch.nn.functional.logsigmoid(lam))

    def marginal(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """(α(t), σ(t)) = (√ᾱ_t, √(1 − ᾱ_t)): x_t = α(t) x_0 + σ(t) ε.

        Integer t gives the discrete DDPM values exactly; t = 0 gives (1, 0).
        """
        lab = self.log_alpha_bar(t)
        return torch.exp(0.5 * lab), torch.sqrt(-torch.expm1(lab))

    def t_from_log_snr(self, lam: TimeLike) -> Tensor:
        """The inverse of :meth:`log_snr`: the t ∈ [0, T] with λ(t) = ``lam``.

        ``lam`` must lie in [λ(T), +∞]; values a hair below λ(T) (1e-9 relative) clamp to T.
        """
        lam = _as_time(lam)
        if torch.isnan(lam).any():
            raise ValueError("log-SNR contains NaN")
        knots, _ = self._on(lam.device)
        lam_T = knots[-1]
        tol = 1e-9 * max(1.0, abs(lam_T.item()))
        if (lam < lam_T - tol).any():
            bad = lam[lam < lam_T - tol].flatten()[0].item()
            raise ValueError(f"log-SNR {bad!r} is below the schedule's minimum λ(T) = "
                             f"{lam_T.item()!r}")
        lam = lam.clamp(min=lam_T)
        T = self.T
        # knots[1..T] decrease; idx counts the knots k >= 1 with λ_k > lam, so t ∈ (idx, idx+1].
        desc = knots[1:]
        idx = torch.searchsorted(-desc.contiguous(), (-lam).contiguous(), right=False)
        lo = idx.clamp(1, max(T - 1, 1))
        hi = (lo + 1).clamp(max=T)
        span = knots[hi] - knots[lo]
        frac = torch.where(span != 0, (lam - knots[lo]) / torch.where(span != 0, span, 1.0),
                           torch.zeros_like(lam))
        t = lo.to(torch.float64) + frac
        # λ above λ(1): the first interval, σ² = t (1 − ᾱ_1).
        one_minus_abar1 = -math.expm1(self._log_alpha_bars[0].item())
        t_first = torch.sigmoid(-lam) / one_minus_abar1
        t = torch.where(lam > knots[1], t_first, t)
        return t.clamp(0, T)

    # ------------------------------------------------------------------ the posterior
    def posterior_coefficients(self, t: TimeLike, s: TimeLike | None = None
                               ) -> tuple[Tensor, Tensor, Tensor]:
        """Coefficients of q(x_s | x_t, x_0) = N(c0 x_0 + ct x_t, var) for s < t.

        With α_{t|s} = α(t)/α(s) and σ²_{t|s} = σ(t)² − α_{t|s}² σ(s)² = 1 − ᾱ_t/ᾱ_s:
            c0 = α(s) σ²_{t|s} / σ(t)²,  ct = α_{t|s} σ(s)² / σ(t)²,  var = σ²_{t|s} σ(s)² / σ(t)².
        For s = t − 1 these are the DDPM coefficients √ᾱ_{t-1} β_t/(1 − ᾱ_t),
        √α_t (1 − ᾱ_{t-1})/(1 − ᾱ_t) and β̃_t = β_t (1 − ᾱ_{t-1})/(1 − ᾱ_t).
        """
        t = _as_time(t)
        s = t - 1 if s is None else _as_time(s, t.device)
        t_integer, s_integer = self._check_pair(t, s)
        lab_t, lab_s = self._log_alpha_bar(t, t_integer), self._log_alpha_bar(s, s_integer)
        var_ts = -torch.expm1(lab_t - lab_s)          # σ²_{t|s}
        var_t = -torch.expm1(lab_t)                   # σ(t)²
        var_s = -torch.expm1(lab_s)                   # σ(s)²
        c0 = torch.exp(0.5 * lab_s) * var_ts / var_t
        ct = torch.exp(0.5 * (lab_t - lab_s)) * var_s / var_t
        var = var_ts * var_s / var_t
        return c0, ct, var

    def _check_pair(self, t: Tensor, s: Tensor) -> tuple[bool, bool]:
        """Raise unless 0 ≤ s < t ≤ T; return whether t, and s, are all integers (one sync)."""
        if t.numel() == 0 or s.numel() == 0:
            return True, True
        gap = (t - s).min()
        t_lo, t_hi, t_frac, s_lo, s_hi, s_frac, gap = torch.stack(
            [*self._time_stats(t), *self._time_stats(s), gap]).tolist()
        self._in_range(t_lo, t_hi, t, "t")
        self._in_range(s_lo, s_hi, s, "s")
        if not gap > 0:
            tb, sb = torch.broadcast_tensors(t, s)
            i = sb >= tb
            raise ValueError(f"the posterior q(x_s | x_t, x_0) needs s < t, got s = "
                             f"{sb[i].flatten()[0].item()!r} at t = {tb[i].flatten()[0].item()!r}")
        return t_frac == 0, s_frac == 0

    def posterior(self, x0: Tensor, x_t: Tensor, t: TimeLike, s: TimeLike | None = None
                  ) -> tuple[Tensor, Tensor]:
        """(mean, variance) of q(x_{t-1} | x_t, x_0) (or of q(x_s | x_t, x_0) when ``s`` is given).

            mean = √ᾱ_{t-1} β_t/(1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t-1})/(1 − ᾱ_t) · x_t,
            variance = β̃_t = β_t (1 − ᾱ_{t-1})/(1 − ᾱ_t).

        ``t`` is a number or a per-example tensor of shape (batch,); the variance comes back with
        shape (batch, 1, …) broadcastable against ``x_t``, in ``x_t``'s dtype (float32 at least).
        """
        if x0.shape != x_t.shape:
            raise ValueError(f"x0 has shape {tuple(x0.shape)} but x_t has {tuple(x_t.shape)}")
        c0, ct, var = self.posterior_coefficients(_as_time(t, x_t.device), s)
        dtype = torch.promote_types(x_t.dtype, torch.float32)
        c0, ct, var = (broadcast_to(c.to(x_t.device), x_t, dtype) for c in (c0, ct, var))
        return c0 * x0.to(dtype) + ct * x_t.to(dtype), var


def broadcast_to(coef: Tensor, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Reshape a per-example coefficient of shape () or (batch,) to broadcast against ``x``."""
    coef = coef.to(device=x.device, dtype=dtype or x.dtype)
    if coef.ndim == 0:
        return coef
    if coef.ndim != 1 or coef.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"a per-example coefficient must have shape (batch,) = ({x.shape[0]},), "
                         f"got {tuple(coef.shape)}")
    return coef.reshape(-1, *([1] * (x.ndim - 1)))


# Far beyond any published schedule (1000-4000 steps); larger T only exhausts memory.
MAX_T = 100_000


def _check_T(T: int) -> int:
    if isinstance(T, float) and T.is_integer():  # 1000.0 from JSON or arithmetic is 1000
        T = int(T)
    positive_int("T", T)
    if T > MAX_T:  # checked before the float64 tables of length T are allocated
        raise ValueError(f"T = {int(T)} diffusion steps is too many: at most {MAX_T}")
    return int(T)


def _check_beta_range(beta_start: float, beta_end: float) -> None:
    for name, b in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not (isinstance(b, int | float) and 0 < b < 1):
            raise ValueError(f"{name} must lie in (0, 1), got {b!r}")


def _check_max_beta(max_beta: float) -> None:
    if not (0 < max_beta < 1):
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
