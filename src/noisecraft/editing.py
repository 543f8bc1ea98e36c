"""Images as representations: inversion, interpolation, editing and inpainting.

All four are short functions over a :class:`~noisecraft.Denoiser` and a time grid from
:mod:`noisecraft.grids`; decoding goes through the samplers of :mod:`noisecraft.samplers`.

- :func:`encode` runs the probability-flow ODE *up* from x_0 to x_T on the sampler's own grid
  reversed, with that sampler's own step function (ddim, euler, heun, dpmpp-2m), so that
  :func:`decode` (the sampler on the same grid) returns x_0 up to the solver's error, which falls
  with the steps at the solver's order.
- :func:`slerp` / :func:`interpolate`: spherical interpolation between encoded x_T; between two
  conditions (classes, prompts) through :class:`ConditionMix`, a denoiser whose ε̂ is
  (1 − w) ε̂(·, c_a) + w ε̂(·, c_b): the score of p_a^{1−w} p_b^{w}, a geometric path of densities.
- :func:`sdedit` (Meng et al. 2022): draw x_t ~ q(x_t | x_0) at t = strength·T, then denoise,
  optionally under other conditions.
- :func:`inpaint`: replacement conditioning on the ancestral sampler (Song et al. 2021, app. I;
  Lugmayr et al. 2022): at every step the known region of x_s is a fresh draw of q(x_s | x_0)
  and the rest comes from p_θ(x_s | x_t); RePaint's resampling (``resample`` > 1) goes back up
  ``jump`` steps by q(x_t | x_s) and down again, so the two regions harmonise.

Notation as in :mod:`noisecraft.samplers`: (α_t, σ_t) = ``schedule.marginal(t)``,
y = x/α, σ̃ = σ/α, λ = log(α/σ); the probability-flow ODE is dy/dσ̃ = ε̂.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import grids, process
from .checks import integer, number, positive_int
from .denoiser import Denoised, Denoiser
from .guidance import ConditionMix
from .noise import BatchNoise, ExampleNoise, NoiseSource
from .quality import psnr  # noqa: F401  (the one psnr; editing.psnr is its old name)
from .samplers import DEFAULT_STEPS, SAMPLERS, Walk, as_denoiser, check_sampler, walk
from .schedule import Schedule

Callback = Callable[[int, float, Tensor, Tensor], None]

ENCODERS = ("ddim", "euler", "heun", "dpmpp-2m")
# Fixed-point iterations that invert the decoders' last step x_0 = x̂_0(x_{t_1}, t_1) (see
# :func:`_invert_last_step`). Their error shrinks by the contraction factor per iteration,
# about σ̃²/(s² + σ̃²) for data of spread s: 4·10⁻⁴ at t_1 = 1 on the linear schedule.
LAST_STEP_ITERATIONS = 3


def _denoiser(model: Any, schedule: Schedule) -> Any:
    """A Denoiser, or a Denoiser-like wrapper (``ConditionMix``, a call counter: anything with
    a ``schedule`` that returns a ``Denoised``), or a raw ε-network to wrap."""
    if not isinstance(model, Denoiser | torch.nn.Module) and hasattr(model, "schedule"):
        if model.schedule != schedule:
            raise ValueError(f"schedule {schedule!r} differs from the denoiser's own schedule "
                             f"{model.schedule!r}")
        return model
    return as_denoiser(model, schedule, None, None)


# ---------------------------------------------------------------------------- grids
def _grid(schedule: Schedule, sampler: str, steps: int | None, grid: Tensor | str | None) -> Tensor:
    """The decoding grid T = t_0 > … > t_N = 0, as :func:`noisecraft.sample` builds it."""
    check_sampler(sampler, ENCODERS)
    if grid is not None and not isinstance(grid, str):
        g = grids.check(grid, schedule)
        if steps is not None and steps != g.numel() - 1:
            raise ValueError(f"steps = {steps!r} conflicts with the given grid of "
                             f"{g.numel() - 1} steps; pass one or the other")
        return g
    return grids.make(grid or SAMPLERS[sampler].default_grid, schedule,
                      DEFAULT_STEPS if steps is None else steps)


def partial_grid(schedule: Schedule, t_start: float, steps: int, kind: str = "respaced") -> Tensor:
    """A decreasing grid from ``t_start`` ∈ (0, T] to 0 with ``steps`` steps.

    ``kind="respaced"``: integer-rounded even spacing in t (distinct values; fewer steps when
    t_start < steps); ``"log-snr"``: λ evenly spaced from λ(t_start) to λ(1), then 0.
    """
    if not 0 < t_start <= schedule.T:
        raise ValueError(f"t_start must lie in (0, T] = (0, {schedule.T}], got {t_start!r}")
    positive_int("steps", steps)
    if kind == "respaced":
        g = torch.linspace(t_start, 0, steps + 1, dtype=torch.float64)
        g[1:-1] = g[1:-1].round()
        return torch.unique_consecutive(g)
    if kind == "log-snr":
        if steps == 1 or t_start <= 1:
            return torch.tensor([float(t_start), 0.0], dtype=torch.float64)
        lam = torch.linspace(schedule.log_snr(t_start).item(), schedule.log_snr(1.0).item(), steps,
                             dtype=torch.float64)
        t = schedule.t_from_log_snr(lam)
        t[0], t[-1] = t_start, 1.0
        return torch.cat([t, t.new_zeros(1)])
    raise ValueError(f"unknown grid kind {kind!r}; choose respaced or log-snr")


# ---------------------------------------------------------------------------- encode / decode
def _invert_last_step(w: Walk, x0: Tensor, iterations: int) -> tuple[Tensor, Denoised]:
    """x_{u_1} with x̂_0(x_{u_1}, u_1) = x_0: the inverse of every decoder's last step.

    Fixed-point iteration x ← α x_0 + σ ε̂(x): a solution satisfies x = α x̂_0 + σ ε̂ with
    x̂_0 = x_0. The map's Jacobian is I − Cov[x_0 | x_t]/σ̃², a contraction at small σ̃.
    """
    a, s = w.alpha[1], w.sigma[1]
    x = a * x0
    for _ in range(iterations):
        d = w.denoise(x, 1)
        x = a * x0 + s * d.eps
    return x, w.denoise(x, 1)


@torch.no_grad()
def encode(model: Any, x0: Tensor, schedule: Schedule, steps: int | None = None,
           sampler: str = "ddim", *, grid: Tensor | str | None = None,
           last_step_iterations: int = LAST_STEP_ITERATIONS, callback: Callback | None = None,
           **cond: Any) -> Tensor:
    """Map data x_0 to x_T along the probability-flow ODE (deterministic inversion).

    The grid is the one :func:`decode` (and ``noisecraft.sample(..., sampler, steps)``) uses,
    run backwards: 0 = u_0 < u_1 < … < u_N = T. The first step inverts the decoders' last one
    (x_0 = x̂_0(x_{u_1})) by fixed-point iteration; every later step is ``sampler``'s own step
    function (``SAMPLERS[sampler].step``, the one the sampler uses) run from u_i up to u_{i+1}
    (DDIM/Euler: y_u = y_t + (σ̃_u − σ̃_t) ε̂(x_t); Heun: the trapezoidal corrector;
    DPM-Solver++(2M): the multistep exponential integrator in λ, with h < 0).
    ``decode(encode(x_0))`` returns x_0 to the solver's error, O(h^order).

    Args:
        model: a Denoiser (or a raw ε-network, wrapped as ``Denoiser(model, schedule)``).
        x0: data in model space, (batch, *event_shape).
        schedule: the run's schedule (must be the Denoiser's).
        steps: grid steps (default :data:`~noisecraft.samplers.DEFAULT_STEPS`); sampler: one of
            :data:`ENCODERS`.
        grid: a grid name of :data:`noisecraft.grids.GRIDS` or a tensor (default: the sampler's).
        last_step_iterations: fixed-point iterations of the first step (>= 1).
        callback: ``callback(i, t, x_t, x0_hat)`` after each step, t increasing.
        **cond: conditioning keywords passed to every network call (``labels=...``).
    """
    denoiser = _denoiser(model, schedule)
    g = _grid(schedule, sampler, steps, grid)
    positive_int("last_step_iterations", last_step_iterations)
    w = Walk(denoiser, x0, g, cond, up=True, name="x0")
    x, d = _invert_last_step(w, x0.to(w.dtype), last_step_iterations)
    if callback is not None:
        callback(0, w.t[1], x, d.x0)
    # Steps u_1 → … → u_N: the sampler's own step function, run with s > t.
    return walk(SAMPLERS[sampler].step, w, x, callback, first=1, denoised=d).to(x0.dtype)


@torch.no_grad()
def decode(model: Any, x_T: Tensor, schedule: Schedule, steps: int | None = None,
           sampler: str = "ddim", *, grid: Tensor | str | None = None,
           callback: Callback | None = None, **cond: Any) -> Tensor:
    """x_T → x_0 by the deterministic ``sampler`` on the grid :func:`encode` uses."""
    denoiser = _denoiser(model, schedule)
    g = _grid(schedule, sampler, steps, grid)
    return SAMPLERS[sampler](denoiser, x_T, g, callback=callback, cond=cond)


# ---------------------------------------------------------------------------- interpolation
def slerp(a: Tensor, b: Tensor, w: float | Tensor) -> Tensor:
    """Spherical interpolation per example: sin((1−w)θ)/sin θ · a + sin(wθ)/sin θ · b.

    θ is the angle between the flattened a and b. Gaussian x_T concentrate on a sphere of
    radius √D, which linear interpolation leaves (its midpoint has norm ≈ √(D/2)); slerp does not.
    Falls back to linear interpolation where θ ≈ 0.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    af, bf = a.flatten(1).double(), b.flatten(1).double()
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp(min=1e-300)
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]
    w = torch.as_tensor(w, dtype=torch.float64).reshape(-1, 1)
    small = theta < 1e-6
    s = torch.sin(theta).clamp(min=1e-300)
    ca = torch.where(small, 1 - w, torch.sin((1 - w) * theta) / s)
    cb = torch.where(small, w, torch.sin(w * theta) / s)
    return (ca * af + cb * bf).reshape(a.shape).to(a.dtype)


def interpolation_weights(n: int) -> Tensor:
    """n >= 2 evenly spaced weights 0, 1/(n−1), …, 1."""
    integer("the number of interpolation frames", n, minimum=2)
    return torch.linspace(0, 1, n, dtype=torch.float64)


@torch.no_grad()
def interpolate(model: Any, x_T_a: Tensor, x_T_b: Tensor, schedule: Schedule, n: int = 8,
                steps: int | None = None, sampler: str = "ddim", *,
                cond_a: dict[str, Any] | None = None, cond_b: dict[str, Any] | None = None,
                grid: Tensor | str | None = None) -> Tensor:
    """Decode ``n`` frames slerp(x_T_a, x_T_b, w), w = 0 … 1; shape (n, *event_shape).

    ``x_T_a``, ``x_T_b`` are single noises of shape (1, *event_shape) (from :func:`encode` or
    N(0, I)). With conditions, frame w is decoded under :class:`ConditionMix` (c_a, c_b, w), so
    the path also runs from one class or prompt to the other.
    """
    denoiser = _denoiser(model, schedule)
    for name, x in (("x_T_a", x_T_a), ("x_T_b", x_T_b)):
        if x.ndim < 2 or x.shape[0] != 1:
            raise ValueError(f"{name} must hold one example, shape (1, ...), got {tuple(x.shape)}")
    w = interpolation_weights(n)
    x_T = slerp(x_T_a.expand(n, *x_T_a.shape[1:]), x_T_b.expand(n, *x_T_b.shape[1:]), w)
    cond_a, cond_b = dict(cond_a or {}), dict(cond_b or {})
    if not cond_a and not cond_b:
        return decode(denoiser, x_T, schedule, steps, sampler, grid=grid)
    expand = {k: v.expand(n, *v.shape[1:]) if isinstance(v, Tensor) and v.shape[:1] == (1,) else v
              for k, v in cond_a.items()}
    expand_b = {k: v.expand(n, *v.shape[1:]) if isinstance(v, Tensor) and v.shape[:1] == (1,)
                else v for k, v in cond_b.items()}
    mixed = ConditionMix(denoiser, expand, expand_b, w.to(x_T.dtype))
    g = _grid(schedule, sampler, steps, grid)
    return SAMPLERS[sampler](mixed, x_T, g)


# ---------------------------------------------------------------------------- SDEdit
def _noise_source(batch: int, seed: int | None, generator: torch.Generator | None) -> NoiseSource:
    if seed is not None and generator is not None:
        raise ValueError("pass either seed (per-example noise) or generator, not both")
    return ExampleNoise(seed, batch) if seed is not None else BatchNoise(batch, generator)


def check_strength(strength: float) -> float:
    """SDEdit's strength must lie in (0, 1]: the fraction of the schedule noised and undone."""
    number("strength", strength, 0, 1, low_open=True)
    return float(strength)


@torch.no_grad()
def sdedit(model: Any, x0: Tensor, schedule: Schedule, strength: float, steps: int = DEFAULT_STEPS,
           sampler: str = "ddim", *, seed: int | None = None,
           generator: torch.Generator | None = None, callback: Callback | None = None,
           options: dict[str, Any] | None = None, **cond: Any) -> Tensor:
    """SDEdit: x_t ~ q(x_t | x_0) at t = strength·T, then ``sampler`` from t down to 0.

    ``steps`` counts the steps of a full T → 0 pass; the edit takes max(1, round(strength·steps))
    of them on the sampler's kind of grid from t to 0 (as diffusers' img2img does). Strength 1
    discards x_0 entirely; small strength keeps its coarse structure and re-draws fine detail.
    ``**cond`` (e.g. another class) steers the denoising.
    """
    strength = check_strength(strength)
    denoiser = _denoiser(model, schedule)
    fn = SAMPLERS[check_sampler(sampler)]
    t_start = strength * schedule.T
    kind = "log-snr" if fn.default_grid == "log-snr" else "respaced"
    g = partial_grid(schedule, t_start, max(1, round(strength * steps)), kind)
    noise = _noise_source(x0.shape[0], seed, generator)
    dtype = torch.promote_types(x0.dtype, torch.float32)
    x_t, _ = process.q_sample(schedule, x0, t_start,
                      noise=noise.randn(x0.shape[1:], dtype=dtype, device=x0.device))
    return fn(denoiser, x_t.to(x0.dtype), g, noise=noise, callback=callback, cond=cond,
              **(options or {}))


# ---------------------------------------------------------------------------- inpainting
def repaint_path(steps: int, resample: int = 1, jump: int = 1) -> list[int]:
    """Grid indices visited by RePaint (Lugmayr et al. 2022, the "jump" schedule).

    Index 0 is t = T, index ``steps`` is t = 0. Going down one index is a reverse step; after
    arriving at a jump point the walk goes back up ``jump`` indices by the forward process and
    down again, ``resample`` − 1 times per point. The jump points are aligned at the *bottom*,
    as in the paper's code (``get_schedule_jump``): index steps − 1 (the start of the last
    step) and every ``jump``-th index above it that is at least ``jump`` (so the walk up stays
    within the grid). Every index from the highest jump point − ``jump`` + 1 down to
    steps − 1 is revisited, the lowest noise levels included, where the known region pins the
    picture down most; only the fewer than ``jump`` indices at the top may not be.
    """
    for name, v in (("steps", steps), ("resample", resample), ("jump", jump)):
        positive_int(name, v)
    left = {k: resample - 1 for k in range(steps - 1, jump - 1, -jump)}
    path, i = [0], 0
    while i < steps:
        i += 1
        path.append(i)
        if left.get(i, 0) > 0:
            left[i] -= 1
            for _ in range(jump):
                i -= 1
                path.append(i)
    return path


def check_mask(mask: Tensor, x0: Tensor) -> Tensor:
    """The known-region mask as x0's dtype, broadcastable to x0: 1 = keep, 0 = fill."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be a tensor, got {type(mask).__name__}")
    try:
        torch.broadcast_shapes(mask.shape, x0.shape)
    except RuntimeError:
        raise ValueError(f"the mask of shape {tuple(mask.shape)} does not fit images of shape "
                         f"{tuple(x0.shape)}") from None
    m = mask.to(torch.promote_types(x0.dtype, torch.float32))
    if ((m != 0) & (m != 1)).any():
        raise ValueError("the mask must hold only 0 (fill) and 1 (keep)")
    return m


@torch.no_grad()
def inpaint(model: Any, x0: Tensor, known: Tensor, schedule: Schedule, steps: int = DEFAULT_STEPS, *,
            resample: int = 1, jump: int = 1, seed: int | None = None,
            generator: torch.Generator | None = None, callback: Callback | None = None,
            **cond: Any) -> Tensor:
    """Fill the region where ``known`` is 0 consistently with x_0 where it is 1.

    Ancestral sampling on the respaced grid (``steps`` steps). Going down from t to s:

        x_s^known ~ q(x_s | x_0) = N(α_s x_0, σ_s² I),
        x_s^fill  ~ p_θ(x_s | x_t) = N(c_0 x̂_0 + c_t x_t, ς² I),
        x_s = m ⊙ x_s^known + (1 − m) ⊙ x_s^fill;

    going up (RePaint resampling) x_t ~ q(x_t | x_s) = N(α_{t|s} x_s, σ²_{t|s} I). p_θ is
    :func:`noisecraft.process.reverse_mean_log_variance` with the ``ddpm`` sampler's default ς²
    (β̃_{t|s}, or the learned variance of a network that has one), q(x_s | x_0) is
    :func:`~noisecraft.process.q_sample` and q(x_t | x_s) :func:`~noisecraft.process.q_sample_from`,
    so no formula of the two processes is written here. At s = 0 the
    known region is x_0 itself, so it comes back unchanged. ``resample`` = 1 is plain
    replacement; larger values give the unknown region more chances to agree with the known one.
    """
    denoiser = _denoiser(model, schedule)
    m = check_mask(known, x0)
    g = grids.respaced(schedule, steps)
    path = repaint_path(steps, resample, jump)
    noise = _noise_source(x0.shape[0], seed, generator)
    variance = process.resolve_variance(None, getattr(denoiser, "learned_variance", False))
    dtype = m.dtype
    event, dev = x0.shape[1:], x0.device
    ref = x0.to(dtype)
    gt = g.tolist()

    def z() -> Tensor:
        return noise.randn(event, dtype=dtype, device=dev)

    x = z()
    for k in range(1, len(path)):
        i, j = path[k - 1], path[k]
        if j == i + 1:                                     # down: t_i → t_j
            d = denoiser(x.to(x0.dtype), gt[i], **cond)
            fill, log_var = process.reverse_mean_log_variance(schedule, d, x, gt[i], gt[j], variance)
            if gt[j] > 0:
                fill = fill + torch.exp(0.5 * log_var) * z()             # p_θ(x_s | x_t)
                keep, _ = process.q_sample(schedule, ref, gt[j], noise=z())       # q(x_s | x_0)
            else:
                keep = ref
            x = m * keep + (1 - m) * fill
            if callback is not None:
                callback(k - 1, gt[j], x, d.x0)
        else:                                              # up: q(x_{t_j} | x_{t_i}), t_j > t_i
            x, _ = process.q_sample_from(schedule, x, gt[i], gt[j], noise=z())
    return x.to(x0.dtype)


def steps_of(path: Sequence[int]) -> int:
    """Denoiser calls of a RePaint path (its downward moves)."""
    return sum(1 for a, b in zip(path, path[1:], strict=False) if b == a + 1)
