"""Classifier-free guidance and autoguidance as a Denoiser wrapping a Denoiser.

With the conditional prediction ε̂_c = ε̂(x_t, t, c) and the unconditional one ε̂_u, guidance of
scale w (Ho & Salimans 2021) predicts

    ε̂_w = ε̂_u + w (ε̂_c − ε̂_u) = ε̂_c + (w − 1)(ε̂_c − ε̂_u).

**The space.** Guidance is combined on ε̂. At a fixed (x_t, t) the three readings of a network
are affine in one another with the same x_t term (x̂_0 = (x_t − σ ε̂)/α, v̂ = α ε̂ − σ x̂_0), and
the weights (1 − w, w) sum to 1, so mixing ε̂, x̂_0 or v̂ gives the *same* guided prediction: one
space is declared only so that the arithmetic is done once, and ε̂ is the one in which
w (ε̂_c − ε̂_u) is w σ_t times the score difference ∇log p(c | x_t) — guidance's meaning. What
does depend on the space is what is *not* affine, and there the choice is x̂_0:

- ``rescale`` = φ (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
  flawed", §3.4) matches the per-example standard deviation of the guided x̂_0 to the
  conditional one: x̂_0 ← x̂_0 (φ std(x̂_0,c)/std(x̂_0,w) + 1 − φ). The paper applies it to its
  network's raw prediction (v in its experiments), diffusers' ``rescale_noise_cfg`` to ε̂; here
  it is applied to x̂_0, the predicted image where over-exposure shows, so that φ means the same
  for ε-, x_0- and v-networks. ε̂ is then recomputed from the rescaled x̂_0 at the same x_t.
- ``clip`` (the wrapped denoiser's) is applied once, to the guided x̂_0: clipping each branch
  first would not keep their extrapolation inside the range.

**One forward pass.** The conditional and unconditional branches run as one batch of 2n: x_t and
t repeated, each keyword concatenated with its *null counterpart* (see ``null``). The network
owns its null embedding (§2.5 of DESIGN.md): labels −1 select it; for text the null condition is
the empty prompt's embedding, which only the text encoder can make, so it comes through ``null``.

**Autoguidance** (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):
``unconditional=`` a weaker Denoiser of the same task (a smaller net, an earlier checkpoint) that
plays ε̂_u *with the same condition*; then the branches are two different networks and two
forward passes.

**Guidance interval** (Kynkäänniemi et al. 2024): ``interval=(t_lo, t_hi)`` applies guidance only
where t_lo ≤ t ≤ t_hi, in the library's one time variable t; elsewhere the conditional
prediction is returned, and when no example of a call lies inside, the unconditional pass is not
run at all. The paper states its intervals in EDM's σ = σ_t/α_t: :func:`interval_from_sigma`
converts with the schedule's inverse.

A ``Guided`` is a :class:`~noisecraft.Denoiser` (schedule, prediction, clip, learned_variance
are the wrapped one's), so every sampler and the likelihood code take it unchanged. It draws no
randomness and every example's prediction depends on that example only, so per-example seeds
stay independent of the batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .checks import number
from .conditions import NULL_LABEL
from .denoiser import Denoised, Denoiser, from_eps
from .schedule import Schedule, broadcast_to

NullCondition = Mapping[str, Any] | Callable[..., Mapping[str, Any]]


def null_labels(**cond: Any) -> dict[str, Any]:
    """The default null condition: ``labels`` → −1 (the nets' learned null row).

    Any other keyword has no null counterpart that can be made here (the empty prompt's text
    embedding needs the text encoder): pass ``Guided(..., null=...)`` for those.
    """
    out: dict[str, Any] = {}
    for name, value in cond.items():
        if value is None:
            out[name] = None
        elif name == "labels":
            out[name] = torch.full_like(torch.as_tensor(value), NULL_LABEL)
        else:
            raise ValueError(f"Guided does not know the null condition of {name!r}; pass "
                             f"null={{...}} or null=callable giving the unconditional keywords")
    return out


def interval_from_sigma(schedule: Schedule, sigma_lo: float, sigma_hi: float
                        ) -> tuple[float, float]:
    """(t_lo, t_hi) for a guidance interval stated in EDM's σ = σ_t/α_t (Kynkäänniemi et al.).

    σ̃ = σ_t/α_t means log-SNR λ = −2 log σ̃, so t = ``schedule.t_from_log_snr(−2 log σ̃)``.
    σ_lo = 0 gives t = 0; σ_hi beyond the schedule's largest σ̃ (or ``math.inf``) gives t = T.
    """
    for name, s in (("sigma_lo", sigma_lo), ("sigma_hi", sigma_hi)):
        if not (isinstance(s, int | float) and not isinstance(s, bool) and s == math.inf):
            number(name, s, 0)  # ≥ 0; +∞ (no upper end) is allowed here
    if not sigma_lo < sigma_hi:
        raise ValueError(f"the σ interval must have sigma_lo < sigma_hi, got ({sigma_lo}, {sigma_hi})")
    lam_T = schedule.log_snr(schedule.T).item()

    def to_t(s: float) -> float:
        if s == 0:
            return 0.0
        lam = -2.0 * math.log(s)
        return float(schedule.T) if lam <= lam_T else schedule.t_from_log_snr(lam).item()

    return to_t(sigma_lo), to_t(sigma_hi)


def _check_interval(interval: Any, T: int) -> tuple[float, float] | None:
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be (t_lo, t_hi), got {interval!r}") from None
    if not 0 <= lo < hi or math.isnan(hi):
        raise ValueError(f"interval must satisfy 0 ≤ t_lo < t_hi, got {interval!r}")
    if lo > T:
        raise ValueError(f"interval {interval!r} starts beyond T = {T}: guidance would never apply")
    return lo, hi


def _unclipped(denoiser: Denoiser) -> Denoiser:
    """The same denoiser without x̂_0 clipping (Guided clips once, after mixing)."""
    if getattr(denoiser, "clip", None) is None:
        return denoiser
    twin = copy.copy(denoiser)
    twin.clip = None
    return twin


def _batch_of(name: str, value: Tensor, n: int) -> Tensor:
    value = torch.as_tensor(value)
    if value.ndim == 0 or value.shape[0] not in (1, n):
        raise ValueError(f"condition {name!r} must have a leading batch dimension of {n} (or 1), "
                         f"got shape {tuple(value.shape)}")
    return value.expand(n, *value.shape[1:]) if value.shape[0] == 1 else value


def _as_tensors(cond: Mapping[str, Any]) -> dict[str, Any] | None:
    """The keywords with every non-None value as a tensor, or None if one is not tensor-like."""
    try:
        return {k: None if v is None else torch.as_tensor(v) for k, v in cond.items()}
    except (TypeError, ValueError, RuntimeError):
        return None


def _batchable(n: int, first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    """Whether two keyword sets can run as one batch of 2n: the same keys, each value a tensor
    with a leading batch of n or 1 in both (other dimensions equal), or None in both."""
    if set(first) != set(second):
        return False
    for name in first:
        a, b = first[name], second[name]
        if a is None or b is None:
            if (a is None) != (b is None):
                return False
            continue
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.ndim == 0 or b.ndim == 0 \
                or a.shape[0] not in (1, n) or b.shape[0] not in (1, n) or a.shape[1:] != b.shape[1:]:
            return False
    return True


def paired(denoiser: Denoiser, x_t: Tensor, t: Tensor, first: Mapping[str, Any],
           second: Mapping[str, Any]) -> tuple[Denoised, Denoised]:
    """``denoiser`` at (x_t, t) under two conditions, as one forward pass of 2n when the keyword
    sets can be concatenated (see ``_batchable``), else two passes. Only ε̂ of the batched pass
    is split (what a mix needs); each half derives x̂_0 and v̂ on request."""
    n = x_t.shape[0]
    tensors = _as_tensors(first), _as_tensors(second)
    if tensors[0] is None or tensors[1] is None or not _batchable(n, *tensors):
        return denoiser(x_t, t, **first), denoiser(x_t, t, **second)
    a, b = tensors
    both = {}
    for name, value in a.items():
        both[name] = None if value is None else torch.cat(
            [_batch_of(name, value, n), _batch_of(name, b[name], n).to(value.device)])
    d = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), **both)
    eps = torch.chunk(d.eps, 2)
    output = torch.chunk(d.output, 2)
    frac = (torch.chunk(d.variance_fraction, 2) if d.variance_fraction is not None
            else (None, None))
    x, a, s = _marginal(denoiser.schedule, x_t, t, eps[0].dtype)
    first_d, second_d = (from_eps(eps[i], x, a, s, variance_fraction=frac[i], output=output[i])
                         for i in (0, 1))
    return first_d, second_d


def _marginal(schedule: Schedule, x_t: Tensor, t: Tensor, dtype: torch.dtype
              ) -> tuple[Tensor, Tensor, Tensor]:
    """x_t, α_t and σ_t in ``dtype``, broadcast to x_t's shape."""
    x = x_t.to(dtype)
    alpha, sigma = schedule.marginal(t)
    return x, broadcast_to(alpha, x, dtype), broadcast_to(sigma, x, dtype)


def check_rescalable(shape: tuple[int, ...] | torch.Size, rescale: float) -> None:
    """The rule of ``rescale``: it matches the std of x̂_0 over one example's elements, the
    spread of a picture's intensities (Lin et al. 2024), so it is defined for data with spatial
    axes, (batch, channels, *spatial) — pictures, latents, spectrograms — of at least 2 values
    per example. On vectors (batch, D) the coordinates are different features, not samples of
    one intensity distribution, and their std is no exposure (for D = 2 it is one coordinate
    difference, and the factor is unbounded where it nears 0); one value has no std at all
    (the former code returned NaN). Both are refused with a ValueError naming the shape."""
    event = tuple(shape[1:])
    if len(event) < 2 or math.prod(event) < 2:
        raise ValueError(f"guidance rescale = {rescale:g} matches the std of x̂_0 across a "
                         f"picture's values and needs data with spatial axes (batch, channels, "
                         f"*spatial) of at least 2 values; these examples have shape {event}: "
                         "use rescale = 0 for vector data")


class Guided(Denoiser):
    """Classifier-free guidance (or autoguidance) of ``denoiser`` with scale ``scale``.

    Args:
        denoiser: the conditional :class:`~noisecraft.Denoiser`.
        scale: w ≥ 0. w = 1 returns the conditional prediction, w = 0 the unconditional one
            (each from one plain pass, bit-for-bit); w > 1 extrapolates away from the
            unconditional branch.
        rescale: φ ∈ [0, 1], the std-matching of Lin et al. 2024 on x̂_0 (module docstring);
            defined on data with spatial axes only (:func:`check_rescalable`).
        interval: ``(t_lo, t_hi)``: guide only where t_lo ≤ t ≤ t_hi (per example); the
            conditional prediction elsewhere. See :func:`interval_from_sigma`.
        unconditional: autoguidance: a weaker Denoiser over the same schedule called with the
            *same* condition as the unconditional branch (two forward passes). ``None``: the
            wrapped network under the null condition, batched with the conditional call.
        null: the contract with condition providers (labels, text). Given the conditional
            keywords ``cond`` of a call, the unconditional ones are ``null(**cond)`` (a callable)
            or the mapping itself, with the same keys. Each null value is a tensor whose leading
            dimension is the batch or 1 (broadcast: e.g. the empty prompt's embedding computed
            once) and whose other dimensions equal the conditional value's, so the two can be
            concatenated along dim 0 (a text provider pads both to one token length, mask False
            on padding); or None where the conditional value is None too. Default:
            :func:`null_labels` (labels → −1; other keywords are an error).
    """

    def __init__(self, denoiser: Denoiser, scale: float, *, rescale: float = 0.0,
                 interval: tuple[float, float] | None = None,
                 unconditional: Denoiser | None = None, null: NullCondition | None = None):
        if not isinstance(denoiser, Denoiser):
            raise ValueError(f"Guided wraps a noisecraft.Denoiser, got {type(denoiser).__name__}")
        number("guidance scale", scale, 0)
        number("guidance rescale", rescale, 0, 1)
        if unconditional is not None:
            if not isinstance(unconditional, Denoiser):
                raise ValueError(f"unconditional must be a noisecraft.Denoiser, got "
                                 f"{type(unconditional).__name__}")
            if unconditional.schedule != denoiser.schedule:
                raise ValueError(f"the unconditional (autoguidance) denoiser uses schedule "
                                 f"{unconditional.schedule!r}, not the guided one's "
                                 f"{denoiser.schedule!r}")
            if null is not None:
                raise ValueError("null does not apply with unconditional= (autoguidance calls the "
                                 "weaker denoiser with the same condition)")
        if null is not None and not (callable(null) or isinstance(null, Mapping)):
            raise ValueError(f"null must be a mapping or a callable, got {type(null).__name__}")
        self.inner = denoiser
        self.scale = float(scale)
        self.rescale = float(rescale)
        self.interval = _check_interval(interval, denoiser.schedule.T)
        self.unconditional = unconditional
        self.null = null if null is not None else null_labels
        # What samplers, losses and the likelihood read from a Denoiser.
        self.net = denoiser.net
        self.schedule = denoiser.schedule
        self.prediction = denoiser.prediction
        self.clip = denoiser.clip
        self.learned_variance = denoiser.learned_variance

    def __repr__(self) -> str:
        extra = "".join([f", rescale={self.rescale}" if self.rescale else "",
                         f", interval={self.interval}" if self.interval else "",
                         f", unconditional={self.unconditional!r}" if self.unconditional else ""])
        return f"Guided({self.inner!r}, scale={self.scale}{extra})"

    def with_null(self, null: NullCondition) -> Guided:
        """The same guidance with another unconditional condition (e.g. a negative prompt's
        embedding for one batch); ``null`` as in the constructor. Not for autoguidance."""
        if self.unconditional is not None:
            raise ValueError("null does not apply with unconditional= (autoguidance)")
        if not (callable(null) or isinstance(null, Mapping)):
            raise ValueError(f"null must be a mapping or a callable, got {type(null).__name__}")
        twin = copy.copy(self)
        twin.null = null
        return twin

    # ------------------------------------------------------------------ the two branches
    def null_condition(self, n: int, cond: Mapping[str, Any]) -> dict[str, Any]:
        """The unconditional keywords for a batch of ``n`` with conditional keywords ``cond``."""
        null = self.null(**cond) if callable(self.null) else self.null
        if set(null) != set(cond):
            raise ValueError(f"the null condition has keywords {sorted(null)} but the call has "
                             f"{sorted(cond)}; give a null counterpart for each")
        out = {}
        for name, value in cond.items():
            nv = null[name]
            if (value is None) != (nv is None):
                raise ValueError(f"condition {name!r}: the conditional and null values must both "
                                 "be tensors or both be None")
            out[name] = None if nv is None else _batch_of(name, nv, n)
        return out

    def branches(self, x_t: Tensor, t: Tensor, cond: Mapping[str, Any]
                 ) -> tuple[Denoised, Denoised]:
        """(conditional, unconditional) unclipped predictions at (x_t, t)."""
        cond_net = _unclipped(self.inner)
        if self.unconditional is not None:
            return cond_net(x_t, t, **cond), _unclipped(self.unconditional)(x_t, t, **cond)
        return paired(cond_net, x_t, t, cond, self.null_condition(x_t.shape[0], cond))

    # ------------------------------------------------------------------ the guided prediction
    def __call__(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Denoised:
        if x_t.ndim < 2:
            raise ValueError(f"x_t must have a batch dimension, got shape {tuple(x_t.shape)}")
        t = self.expand_time(t, x_t)
        inside = self.inside(t)
        w = self.scale
        if w == 1 or not bool(inside.any()):
            return self.inner(x_t, t, **cond)
        if w == 0 and bool(inside.all()):
            if self.unconditional is not None:
                return self.unconditional(x_t, t, **cond)
            return self.inner(x_t, t, **self.null_condition(x_t.shape[0], cond))
        c, u = self.branches(x_t, t, cond)
        dtype = c.eps.dtype
        # ε̂_c + (w − 1)(ε̂_c − ε̂_u): exactly ε̂_c where w is 1 (outside the interval).
        w_ex = broadcast_to(torch.where(inside, w, 1.0), c.eps, dtype)
        eps = c.eps + (w_ex - 1) * (c.eps - u.eps)
        return self.finish(eps, x_t, t, c)

    def inside(self, t: Tensor) -> Tensor:
        """Which examples' t lie in the guidance interval (all when there is none)."""
        if self.interval is None:
            return torch.ones_like(t, dtype=torch.bool)
        lo, hi = self.interval
        return (t >= lo) & (t <= hi)

    def finish(self, eps: Tensor, x_t: Tensor, t: Tensor, conditional: Denoised) -> Denoised:
        """From a guided ε̂: x̂_0, the rescale against the conditional x̂_0, clip, v̂ and output
        (the variance fraction of learned-variance nets is the conditional branch's)."""
        x, a, s = _marginal(self.schedule, x_t, t, eps.dtype)
        if self.rescale > 0:
            check_rescalable(x_t.shape, self.rescale)
            x0 = (x - s * eps) / a
            dims = tuple(range(1, x0.ndim))
            std_c = conditional.x0.std(dim=dims, keepdim=True)
            std_g = x0.std(dim=dims, keepdim=True)
            # A flat guided x̂_0 has no spread to match: factor 1 there, not ∞.
            ratio = torch.where(std_g > 0, std_c / torch.where(std_g > 0, std_g, 1.0), 1.0)
            x0 = x0 * (self.rescale * ratio + (1 - self.rescale))
            eps = (x - a * x0) / s
        # x̂_0 and v̂ are derived only if the sampler reads them (clip applied to x̂_0 first).
        return from_eps(eps, x, a, s, prediction=self.prediction, clip=self.clip,
                        variance_fraction=conditional.variance_fraction)

    def read(self, out: Tensor, x_t: Tensor, t: Tensor | float) -> Denoised:
        raise TypeError("Guided mixes two predictions; it cannot read one raw network output. "
                        "Call it, or call .inner.read")


class ConditionMix(Denoiser):
    """A Denoiser whose ε̂ is (1 − w) ε̂(x_t, c_a) + w ε̂(x_t, c_b): the path between two
    conditions (classes, prompts) of :func:`noisecraft.editing.interpolate`.

    Mixing ε̂ mixes scores, ∇log p = (1 − w)∇log p_a + w∇log p_b, the score of the geometric
    mixture p_a^{1−w} p_b^{w} (up to normalisation at each t). As in :class:`Guided` only ε̂ is
    mixed (the readings are affine in one another, so mixing x̂_0 or v̂ would give the same), the
    two conditions run as one batched forward pass where their keywords concatenate (see
    :func:`paired`), x̂_0 and v̂ are derived only when a sampler reads them, and the wrapped
    denoiser's ``clip`` applies once, to the mixed x̂_0. ``weight`` is a number or a (batch,)
    tensor; ``cond_a``, ``cond_b`` are keyword dicts (``{"labels": …}``) that override the
    call's own keywords.
    """

    def __init__(self, denoiser: Denoiser, cond_a: Mapping[str, Any], cond_b: Mapping[str, Any],
                 weight: float | Tensor):
        if not callable(denoiser) or not isinstance(getattr(denoiser, "schedule", None), Schedule):
            raise ValueError(f"ConditionMix wraps a noisecraft.Denoiser (or a wrapper of one with "
                             f"a schedule), got {type(denoiser).__name__}")
        self.inner = denoiser
        self.cond_a, self.cond_b, self.weight = dict(cond_a), dict(cond_b), weight
        self.net = getattr(denoiser, "net", None)
        self.schedule = denoiser.schedule
        self.prediction = getattr(denoiser, "prediction", "eps")
        self.clip = getattr(denoiser, "clip", None)
        self.learned_variance = getattr(denoiser, "learned_variance", False)

    def __repr__(self) -> str:
        return f"ConditionMix({self.inner!r}, {self.cond_a!r}, {self.cond_b!r})"

    def __call__(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Denoised:
        if x_t.ndim < 2:
            raise ValueError(f"x_t must have a batch dimension, got shape {tuple(x_t.shape)}")
        t = self.expand_time(t, x_t)
        da, db = paired(_unclipped(self.inner), x_t, t, {**cond, **self.cond_a},
                        {**cond, **self.cond_b})
        dtype = da.eps.dtype
        w = torch.as_tensor(self.weight, dtype=dtype, device=x_t.device)
        w = broadcast_to(w, da.eps, dtype) if w.ndim else w
        eps = torch.lerp(da.eps, db.eps.to(dtype), w)                   # (1 − w) ε̂_a + w ε̂_b
        x, a, s = _marginal(self.schedule, x_t, t, dtype)
        return from_eps(eps, x, a, s, prediction=self.prediction, clip=self.clip,
                        variance_fraction=da.variance_fraction)

    def read(self, out: Tensor, x_t: Tensor, t: Tensor | float) -> Denoised:
        raise TypeError("ConditionMix mixes two predictions; it cannot read one raw network "
                        "output. Call it, or call .inner.read")
