"""The one place where a network's output is read.

A backbone knows nothing of diffusion: ``net(x_t, t, **cond)`` returns a tensor. ``Denoiser``
reads that tensor as ε, x_0 or v and derives the other two once, using x_t = α x_0 + σ ε with
(α, σ) = ``schedule.marginal(t)``:

    prediction="eps":  x̂_0 = (x_t − σ ε̂) / α
    prediction="x0":   ε̂ = (x_t − α x̂_0) / σ
    prediction="v":    v = α ε − σ x_0,  so  x̂_0 = α x_t − σ v̂  and  ε̂ = σ x_t + α v̂.
    prediction="flow": the rectified-flow velocity on the straight path (below).
    prediction="edm":  EDM's preconditioned output F (below).
    prediction="consistency": x̂_0 = c_skip(t) x_t/α + c_out(t) F (below).

Flow matching at the network's boundary
---------------------------------------
Any x_t = α x_0 + σ ε (α² + σ² = 1) is, divided by α + σ, a point of the straight path

    x^flow = (1 − τ) x_0 + τ ε = c x_t,   c = 1/(α + σ),   τ = σ/(α + σ),

(``Schedule.flow`` makes τ = t/T at integer t). A ``"flow"`` network is called with x^flow
and predicts the velocity v^flow = dx^flow/dτ = ε − x_0 (Liu et al. 2022; Lipman et al. 2022;
SD3), so x̂_0 = x^flow − τ v̂ and ε̂ = x^flow + (1 − τ) v̂. Both are the VP reading's x̂_0 and
ε̂ (the same x_0 and ε), so samplers, guidance, the likelihood and inversion, which read only
x̂_0, ε̂ and (α, σ), run on flow models unchanged.

EDM's preconditioning at the network's boundary
-----------------------------------------------
Karras et al. (2022, "Elucidating the design space…", Table 1 and eq. 7) write the denoiser in
the variance-exploding scale x = x_t/α, σ̃ = σ/α (σ̃ is EDM's σ) as

    D(x; σ̃) = c_skip x + c_out F(c_in x, c_noise),
    c_skip = σ_d²/(σ̃² + σ_d²),  c_out = σ̃ σ_d/√(σ̃² + σ_d²),  c_in = 1/√(σ̃² + σ_d²),

with σ_d = ``sigma_data`` (:data:`SIGMA_DATA` = 0.5, EDM's value for pixels in [−1, 1]) and
c_noise = ¼ ln σ̃. D is x̂_0, and ε̂ follows from x_t = α x̂_0 + σ ε̂. With r = √(σ² + α² σ_d²)
(= α √(σ̃² + σ_d²)) everything is a plain function of (x_t, α, σ) with no division by α or σ:

    network input c_in x = x_t / r       (unit variance when the data's is σ_d²),
    x̂_0 = (α σ_d² x_t + σ σ_d r F) / r²,   ε̂ = (σ x_t − α σ_d r F) / r²,
    target F* = (σ x_0 − α σ_d² ε) / (σ_d r).

The network is called with the library's t, not c_noise: t is the one time variable every
backbone embeds (§2.1 of the design; its sinusoidal embedding expects t ∈ [0, T]) and c_noise is a
monotone function of t, so nothing is lost, and guidance intervals, experts routed by t and
exported runs keep reading one t. Only the input scaling c_in and the output mix (c_skip, c_out)
are EDM's. With σ_d = 1 the parameterisation is v-prediction with F = −v (r = 1).

EDM's loss weight λ(σ̃) = (σ̃² + σ_d²)/(σ̃ σ_d)² = 1/c_out² on ‖D − x_0‖² is exactly the unit
weight on ‖F − F*‖² (D − x_0 = c_out (F − F*)), so :func:`noisecraft.losses.simple` on an
``"edm"`` Denoiser *is* EDM's weighted loss; no separate weighting is needed.
Consistency models at the network's boundary
--------------------------------------------
A consistency model f(x_t, t) maps every point of a probability-flow ODE path to its end x_0
(Song et al. 2023). Its parameterisation (their eq. 8, EDM's c_skip/c_out in σ̃ = σ/α):

    x̂_0 = c_skip(t) x_t/α + c_out(t) F,   c_skip = σ_d²/(σ̃² + σ_d²),   c_out = σ_d σ̃/√(σ̃² + σ_d²),

so at t = 0 (σ̃ = 0, α = 1: the boundary, the library's ε_min) c_skip = 1 and c_out = 0 and
f(x, 0) = x exactly, whatever the network says. σ_d = ``CONSISTENCY_SIGMA_DATA``. The network is
fed c_in x = x_t/r as EDM's is (Song et al.'s code does the same), so with σ_d = 0.5 a network
trained with ``"edm"`` reads identically as a consistency model: distillation starts from the
teacher's own x̂_0 (``noisecraft.distill``'s ``init="teacher"``).

Samplers, losses and likelihoods take a ``Denoiser``; none of them looks at a prediction string.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .schedule import Schedule, broadcast_to

PREDICTIONS = ("eps", "x0", "v", "flow", "edm", "consistency")

SIGMA_DATA = 0.5
"""EDM's σ_d, the data's standard deviation assumed by ``prediction="edm"`` (EDM's value for
pixels in [−1, 1]); a Denoiser's ``sigma_data`` overrides it."""

CONSISTENCY_SIGMA_DATA = 0.5
"""σ_d of the consistency parameterisation (Song et al. 2023 use 0.5 for data in [−1, 1])."""


def consistency_coefficients(alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(c_skip/α, c_out) at (α_t, σ_t): x̂_0 = (c_skip/α) x_t + c_out F (module docstring).
    At σ = 0 they are (1, 0) exactly: the boundary condition f(x, 0) = x."""
    sd2 = CONSISTENCY_SIGMA_DATA**2
    st = sigma / alpha                                                         # σ̃ = σ/α
    return sd2 / (st**2 + sd2) / alpha, CONSISTENCY_SIGMA_DATA * st / (st**2 + sd2).sqrt()


_DERIVED = ("x0", "eps", "v")


@dataclass(frozen=True, init=False, eq=False)
class Denoised:
    """What a network said about x_t, in every parametrisation.

    ``output`` is the raw prediction (the channels that are ε̂, x̂_0 or v̂), the tensor that the
    regression losses compare with :meth:`Denoiser.target`. ``variance_fraction`` is set for
    networks with learned variances (Improved DDPM): f ∈ [0, 1] with
    log σ² = f log β_t + (1 − f) log β̃_t for the reverse step.

    ``x0``, ``eps`` and ``v`` are read as attributes. Those not passed to the constructor are
    derived on first access, once, by ``derive(name, record)`` and then kept: a sampler that
    reads only x̂_0 and ε̂ never pays for v̂ (a full-size pass over x_t per term), and an
    ε-prediction reading costs nothing until x̂_0 is asked for. The record is immutable.
    """

    x0: Tensor
    eps: Tensor
    v: Tensor
    output: Tensor
    variance_fraction: Tensor | None

    def __init__(self, x0: Tensor | None = None, eps: Tensor | None = None,
                 v: Tensor | None = None, output: Tensor | None = None,
                 variance_fraction: Tensor | None = None, *,
                 derive: Callable[[str, Denoised], Tensor] | None = None):
        given = {"x0": x0, "eps": eps, "v": v}
        if derive is None and any(value is None for value in given.values()):
            raise ValueError("Denoised needs x0, eps and v, or a derive function for the missing ones")
        if output is None:
            raise ValueError("Denoised needs the raw network output")
        for name, value in given.items():
            if value is not None:
                object.__setattr__(self, name, value)
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "variance_fraction", variance_fraction)
        object.__setattr__(self, "_derive", derive)

    def __getattr__(self, name: str) -> Tensor:
        # Called only for attributes not yet set: the derived fields on first access.
        if name not in _DERIVED:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = self.__dict__["_derive"](name, self)
        object.__setattr__(self, name, value)
        return value


class Denoiser:
    """Wraps ``net`` so that ``denoiser(x_t, t, **cond)`` returns a :class:`Denoised`.

    Args:
        net: any callable ``net(x_t, t, **cond) -> Tensor`` with the shape of x_t (twice the
            channels, along dim 1, when ``learned_variance``).
        schedule: the :class:`Schedule` whose ``marginal(t)`` defines x_t.
        prediction: what the network's output is: ``"eps"``, ``"x0"``, ``"v"``, ``"flow"``
            (the velocity ε − x_0 of the straight path, fed x_t/(α + σ)) or ``"edm"`` (EDM's
            preconditioned F, fed x_t/√(σ² + α² σ_d²)): module docstring.
        clip: ``(lo, hi)`` clamps x̂_0 (then ε̂ and v̂ are recomputed from the clamped x̂_0).
            Off by default; ``(-1, 1)`` suits pixel data scaled to [−1, 1].
        learned_variance: the network also outputs the Improved-DDPM variance interpolation.
        sigma_data: σ_d of ``prediction="edm"`` (default :data:`SIGMA_DATA`); ignored otherwise.

    Arithmetic is done in float32 or the input's dtype when wider; the network itself runs in
    whatever dtype (or autocast) the caller chose. ``t`` is a float tensor of shape (batch,) or a
    scalar; the network receives it as float32 of shape (batch,).
    """

    def __init__(self, net: Callable[..., Tensor], schedule: Schedule, prediction: str = "eps",
                 clip: tuple[float, float] | None = None, learned_variance: bool = False,
                 sigma_data: float = SIGMA_DATA):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of "
                             f"{', '.join(PREDICTIONS)}")
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a noisecraft.Schedule, got {type(schedule).__name__}")
        if clip is not None:
            lo, hi = clip
            if not lo < hi:
                raise ValueError(f"clip must be (lo, hi) with lo < hi, got {clip!r}")
        if not (isinstance(sigma_data, int | float) and 0 < sigma_data < math.inf):
            raise ValueError(f"sigma_data must be a finite number > 0, got {sigma_data!r}")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.clip = clip
        self.learned_variance = learned_variance
        self.sigma_data = float(sigma_data)

    def unclipped(self) -> Denoiser:
        """This reading without the x̂_0 clamp: the density the network defines (a clamp is a
        sampler's choice). ``self`` when there is none."""
        if self.clip is None:
            return self
        return Denoiser(self.net, self.schedule, self.prediction, clip=None,
                        learned_variance=self.learned_variance, sigma_data=self.sigma_data)

    def __repr__(self) -> str:
        return (f"Denoiser({type(self.net).__name__}, {self.schedule!r}, "
                f"prediction={self.prediction!r}, clip={self.clip!r})")

    def expand_time(self, t: Tensor | float, x_t: Tensor) -> Tensor:
        """``t`` as a float64 tensor of shape (batch,) on x_t's device."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must be a scalar or have shape (batch,) = ({x_t.shape[0]},), "
                             f"got {tuple(t.shape)}")
        return t

    def __call__(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Denoised:
        if x_t.ndim < 2:
            raise ValueError(f"x_t must have a batch dimension, got shape {tuple(x_t.shape)}")
        t = self.expand_time(t, x_t)
        marginal = self.schedule.marginal(t)
        out = self.net(self.net_input(x_t, t, marginal), t.to(torch.float32), **cond)
        return self._read(out, x_t, t, marginal)

    def net_input(self, x_t: Tensor, t: Tensor,
                  marginal: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """What the network is fed at (x_t, t): x_t / :func:`input_scale` (in x_t's dtype, so
        the network runs in the dtype the caller chose). ``marginal``: (α, σ) at t when the
        caller has them."""
        if self.prediction not in ("flow", "edm", "consistency"):
            return x_t
        alpha, sigma = marginal if marginal is not None else self.schedule.marginal(t)
        scale = input_scale(self.prediction, alpha, sigma, self.sigma_data)
        return x_t * broadcast_to(1 / scale, x_t)

    def read(self, out: Tensor, x_t: Tensor, t: Tensor | float) -> Denoised:
        """Interpret a raw network output ``out`` computed at (:meth:`net_input` of x_t, t)."""
        t = self.expand_time(t, x_t)
        return self._read(out, x_t, t, self.schedule.marginal(t))

    def _read(self, out: Tensor, x_t: Tensor, t: Tensor, marginal: tuple[Tensor, Tensor]
              ) -> Denoised:
        expected = list(x_t.shape)
        if self.learned_variance:
            expected[1] *= 2
        if list(out.shape) != expected:
            raise ValueError(f"the network returned shape {tuple(out.shape)}, expected "
                             f"{tuple(expected)} for input {tuple(x_t.shape)}"
                             + (" (twice the channels: learned variance)"
                                if self.learned_variance else ""))
        dtype = torch.promote_types(x_t.dtype, torch.float32)
        out = out.to(dtype)
        x = x_t.to(dtype)
        frac = None
        if self.learned_variance:
            out, raw_var = out.chunk(2, dim=1)
            frac = (raw_var + 1) / 2
        alpha, sigma = marginal
        a, s = broadcast_to(alpha, x, dtype), broadcast_to(sigma, x, dtype)
        return Denoised(output=out, variance_fraction=frac,
                        derive=_Reading(self.prediction, self.clip, x, a, s, out, self.sigma_data),
                        **_given(self.prediction, self.clip, out))

    def target(self, x0: Tensor, eps: Tensor, t: Tensor | float) -> Tensor:
        """The regression target for this prediction type: ε, x_0, v = α ε − σ x_0, the
        flow velocity ε − x_0 or EDM's F* = (σ x_0 − α σ_d² ε)/(σ_d r)."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        if self.prediction == "flow":
            dtype = torch.promote_types(x0.dtype, torch.float32)
            return eps.to(dtype) - x0.to(dtype)
        t = self.expand_time(t, x0)
        if self.prediction == "consistency":  # the F that makes x̂_0 = x_0 (t > 0: c_out > 0)
            dtype = torch.promote_types(x0.dtype, torch.float32)
            alpha, sigma = self.schedule.marginal(t)
            skip, out = consistency_coefficients(alpha, sigma)
            x_t = broadcast_to(alpha, x0, dtype) * x0 + broadcast_to(sigma, x0, dtype) * eps
            return (x0 - broadcast_to(skip, x0, dtype) * x_t) / broadcast_to(out, x0, dtype)
        dtype = torch.promote_types(x0.dtype, torch.float32)
        alpha, sigma = self.schedule.marginal(t)
        a, s = broadcast_to(alpha, x0, dtype), broadcast_to(sigma, x0, dtype)
        if self.prediction == "edm":
            return _edm_target(x0.to(dtype), eps.to(dtype), a, s, self.sigma_data)
        return a * eps - s * x0


def input_scale(prediction: str, alpha: Tensor, sigma: Tensor, sigma_data: float = SIGMA_DATA
                ) -> Tensor | float:
    """x_t over what the network is fed: α + σ for ``"flow"`` (x^flow = x_t/(α + σ)), r for
    ``"edm"`` (EDM's c_in x_t/α = x_t/r) and for ``"consistency"`` (with its own σ_d, as Song et
    al. feed c_in x), 1 otherwise."""
    if prediction == "flow":
        return alpha + sigma
    if prediction == "edm":
        return _edm_r(alpha, sigma, sigma_data)
    if prediction == "consistency":
        return _edm_r(alpha, sigma, CONSISTENCY_SIGMA_DATA)
    return 1.0


def _edm_r(alpha: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """r = √(σ² + α² σ_d²) = α √(σ̃² + σ_d²): 1/r is EDM's c_in in the x_t scale."""
    return torch.sqrt(sigma**2 + (alpha * sigma_data) ** 2)


def _edm_target(x0: Tensor, eps: Tensor, a: Tensor, s: Tensor, sigma_data: float) -> Tensor:
    """F = (σ x_0 − α σ_d² ε)/(σ_d r): EDM's (x_0 − c_skip x)/c_out with x = x_t/α."""
    return torch.sub(s * x0, a * eps, alpha=sigma_data**2) / (sigma_data * _edm_r(a, s, sigma_data))


def from_eps(eps: Tensor, x: Tensor, a: Tensor, s: Tensor, *, prediction: str = "eps",
             clip: tuple[float, float] | None = None,
             variance_fraction: Tensor | None = None, output: Tensor | None = None,
             sigma_data: float = SIGMA_DATA) -> Denoised:
    """The reading whose ε̂ is ``eps`` at x_t = ``x`` (α = ``a``, σ = ``s``, already broadcast):
    what a guided mix of two readings is. x̂_0 and v̂ are derived only when read. ``output``
    defaults to the unclipped field in ``prediction`` (ε̂ itself for ε-prediction: no cost)."""
    unclipped = _Reading("eps", None, x, a, s, eps, sigma_data)
    if output is None:
        output = eps if prediction == "eps" else unclipped(
            prediction, Denoised(eps=eps, output=eps, derive=unclipped))
    return Denoised(output=output, variance_fraction=variance_fraction,
                    derive=_Reading("eps", clip, x, a, s, eps), **_given("eps", clip, eps))


def _given(prediction: str, clip: tuple[float, float] | None, out: Tensor) -> dict[str, Tensor]:
    """The field that the network's output already is: ε̂ or x̂_0 unclipped; none for v̂ or a
    flow velocity, and none under ``clip`` (x̂_0 is clamped and ε̂ recomputed from it)."""
    return {prediction: out} if prediction in ("eps", "x0") and clip is None else {}


@dataclass(frozen=True)
class _Reading:
    """Derives the fields of one reading on request, each from x_t = α x_0 + σ ε:

        x̂_0 = (x_t − σ ε̂)/α  or  α x_t − σ v̂;   ε̂ = (x_t − α x̂_0)/σ  or  σ x_t + α v̂;
        v̂ = α ε̂ − σ x̂_0.

    A flow velocity v̂ (x^flow = c x_t, c = 1/(α + σ)): x̂_0 = c (x_t − σ v̂), ε̂ = c (x_t + α v̂);
    asked for by the name ``"flow"``, the velocity is ε̂ − x̂_0. EDM's F (r = √(σ² + α² σ_d²)):
    x̂_0 = (α σ_d² x_t + σ σ_d r F)/r², ε̂ = (σ x_t − α σ_d r F)/r²; by the name ``"edm"``,
    F = (σ x̂_0 − α σ_d² ε̂)/(σ_d r). With ``clip``, x̂_0 is clamped first and ε̂, v̂ follow from
    the clamped x̂_0.
    """

    prediction: str
    clip: tuple[float, float] | None
    x: Tensor
    a: Tensor
    s: Tensor
    out: Tensor
    sigma_data: float = SIGMA_DATA

    def __call__(self, name: str, d: Denoised) -> Tensor:
        # addcmul(u, p, q, value=c) = u + c·p·q in one pass over the tensor instead of three.
        x, a, s, out = self.x, self.a, self.s, self.out
        if name == "x0":
            if self.prediction == "eps":
                x0 = torch.addcmul(x, s, out, value=-1).div_(a)
            elif self.prediction == "x0":
                x0 = out
            elif self.prediction == "flow":
                x0 = torch.addcmul(x, s, out, value=-1).div_(a + s)
            elif self.prediction == "edm":
                sd, r = self.sigma_data, _edm_r(a, s, self.sigma_data)
                x0 = torch.add(sd**2 * a * x, s * r * out, alpha=sd).div_(r**2)
            elif self.prediction == "consistency":
                skip, c_out = consistency_coefficients(a, s)
                x0 = torch.addcmul(skip * x, c_out, out)
            else:
                x0 = torch.addcmul(a * x, s, out, value=-1)
            return x0.clamp(*self.clip) if self.clip is not None else x0
        if name == "eps":
            if self.clip is None and self.prediction == "v":
                return torch.addcmul(s * x, a, out)
            if self.clip is None and self.prediction == "flow":
                return torch.addcmul(x, a, out).div_(a + s)
            if self.clip is None and self.prediction == "edm":
                r = _edm_r(a, s, self.sigma_data)
                return torch.sub(s * x, a * r * out, alpha=self.sigma_data).div_(r**2)
            return torch.addcmul(x, a, d.x0, value=-1).div_(s)
        if name == "flow":
            return d.eps - d.x0
        if name == "edm":
            return _edm_target(d.x0, d.eps, a, s, self.sigma_data)
        if name == "consistency":
            skip, c_out = consistency_coefficients(a, s)
            return torch.addcmul(d.x0, skip, x, value=-1).div_(c_out)
        return torch.addcmul(a * d.eps, s, d.x0, value=-1)
