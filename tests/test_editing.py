"""Inversion, interpolation, SDEdit and inpainting against exact answers (noisecraft.editing).

Reference answers:
- For Gaussian data N(μ, s² I) with the ideal denoiser the probability-flow ODE dy/dσ̃ = ε̂
  (y = x/α, σ̃ = σ/α) has ε̂ = (y − μ) σ̃/(s² + σ̃²), so y − μ ∝ √(s² + σ̃²) and in x

      x_t = α_t μ + √((α_t² s² + σ_t²)/(α_u² s² + σ_u²)) · (x_u − α_u μ),

  an affine map. The decoders' last step reads x_0 = x̂_0(x_{t_1}) = μ + s²/(s² + σ̃²)(y − μ),
  whose exact inverse is y_{t_1} = μ + (s² + σ̃²)/s² (x_0 − μ).
- The exact posterior of Gaussian data, q(x_0 | x_t) = N(μ + g (x_t − α μ), s² σ²/v) with
  v = α² s² + σ², g = α s²/v, for SDEdit with an ancestral sampler.
- Brute-force conditioning of the Gaussian mixture on the observed coordinates for inpainting.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from noisecraft import Denoiser, GaussianMixture, Schedule, grids
from noisecraft.editing import (
    ConditionMix,
    decode,
    encode,
    inpaint,
    interpolate,
    partial_grid,
    psnr,
    repaint_path,
    sdedit,
    slerp,
)
from noisecraft.samplers import SAMPLERS

SCHEDULE = Schedule.linear(1000)
MU, S, D = 0.7, 0.4, 4


def _gaussian():
    g = GaussianMixture([1.0], torch.full((1, D), MU), [S])
    return g, Denoiser(g.net(SCHEDULE, "x0"), SCHEDULE, "x0")


def _mixture():
    means = torch.tensor([[1.0, -1.0, 0.5, 0.0], [-1.0, 1.0, 0.0, 0.5]])
    m = GaussianMixture([0.3, 0.7], means, [0.3, 0.5])
    return m, Denoiser(m.net(SCHEDULE, "x0"), SCHEDULE, "x0")


def _exact_encode(x0: torch.Tensor, t1: float) -> torch.Tensor:
    a1, s1 = (v.item() for v in SCHEDULE.marginal(t1))
    st = s1 / a1
    x1 = a1 * (MU + (S**2 + st**2) / S**2 * (x0 - MU))
    aT, sT = (v.item() for v in SCHEDULE.marginal(SCHEDULE.T))
    return aT * MU + math.sqrt((aT**2 * S**2 + sT**2) / (a1**2 * S**2 + s1**2)) * (x1 - a1 * MU)


def _order(errors: list[float], steps: list[int]) -> float:
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.mark.parametrize("sampler, order", [("euler", 1), ("heun", 2), ("dpmpp-2m", 2)])
def test_encode_matches_the_closed_form_gaussian_flow_at_the_solver_order(sampler, order):
    g, den = _gaussian()
    x0 = g.sample(32, torch.Generator().manual_seed(1))
    steps = [10, 20, 40, 80]
    errors = []
    for n in steps:
        t1 = grids.make(SAMPLERS[sampler].default_grid, SCHEDULE, n)[-2].item()
        errors.append((encode(den, x0, SCHEDULE, n, sampler) - _exact_encode(x0, t1)).abs().max().item())
    # Measured slopes: 0.99 (euler), 1.96 (heun), 2.02 (dpmpp-2m); ±0.25 leaves room for the
    # pre-asymptotic first point but tells order 1 from order 2.
    assert abs(_order(errors, steps) - order) < 0.25, errors
    assert errors[-1] < (0.1 if order == 1 else 6e-3)


def test_ddim_encode_converges_on_its_respaced_grid():
    g, den = _gaussian()
    x0 = g.sample(32, torch.Generator().manual_seed(2))
    errs = []
    for n in (10, 40, 160):
        t1 = grids.respaced(SCHEDULE, n)[-2].item()
        errs.append((encode(den, x0, SCHEDULE, n, "ddim") - _exact_encode(x0, t1)).abs().max().item())
    assert errs[0] > 2 * errs[1] > 4 * errs[2], errs


@pytest.mark.parametrize("sampler", ["heun", "dpmpp-2m"])
def test_decode_of_encode_returns_x0_on_the_mixture(sampler):
    m, den = _mixture()
    x0 = m.sample(32, torch.Generator().manual_seed(0)).double()
    errs = []
    for n in (20, 80):
        back = decode(den, encode(den, x0, SCHEDULE, n, sampler), SCHEDULE, n, sampler)
        errs.append((back - x0).norm(dim=1).mean().item())
    # measured: heun 0.22 → 1.3e-3 at (20, 80) steps; dpmpp-2m 5e-2 → 1.6e-3
    assert errs[1] < 5e-3 and errs[0] > 8 * errs[1], errs


def test_first_order_round_trip_error_falls_like_one_over_steps():
    m, den = _mixture()
    x0 = m.sample(32, torch.Generator().manual_seed(0)).double()
    errs = [(decode(den, encode(den, x0, SCHEDULE, n, "euler"), SCHEDULE, n, "euler") - x0)
            .norm(dim=1).mean().item() for n in (40, 160)]
    assert errs[0] > 2.5 * errs[1], errs


def test_the_first_step_inverts_the_decoders_last_step():
    """One grid step: x_T from encode read back by x̂_0(x_T, T) is x_0 again (fixed point)."""
    g, den = _gaussian()
    x0 = g.sample(8, torch.Generator().manual_seed(3)).double()
    grid = torch.tensor([30.0, 0.0], dtype=torch.float64)
    x = encode(den, x0, SCHEDULE, grid=grid, last_step_iterations=6)
    assert torch.allclose(den(x, 30.0).x0, x0, atol=1e-8)
    # with a single iteration the fixed point is not reached yet
    x1 = encode(den, x0, SCHEDULE, grid=grid, last_step_iterations=1)
    assert (den(x1, 30.0).x0 - x0).abs().max() > 1e-4


def test_encode_rejects_bad_input():
    _, den = _gaussian()
    with pytest.raises(ValueError, match="sampler 'ddpm'"):
        encode(den, torch.zeros(2, D), SCHEDULE, 10, "ddpm")
    with pytest.raises(ValueError, match="batch dimension"):
        encode(den, torch.zeros(D), SCHEDULE, 10)
    with pytest.raises(ValueError, match="last_step_iterations"):
        encode(den, torch.zeros(2, D), SCHEDULE, 10, last_step_iterations=0)


def test_psnr_by_hand():
    a = torch.zeros(1, 4)
    b = torch.full((1, 4), 0.02)
    assert psnr(b, a).item() == pytest.approx(10 * math.log10(4 / 4e-4))


# ---------------------------------------------------------------------------- interpolation
def test_slerp_keeps_the_norm_of_orthogonal_equal_norm_vectors_and_hits_the_ends():
    a = torch.tensor([[3.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 0.0]])
    w = torch.linspace(0, 1, 5)
    out = slerp(a.expand(5, 3), b.expand(5, 3), w)
    assert torch.allclose(out.norm(dim=1), torch.full((5,), 3.0))
    assert torch.allclose(out[0], a[0]) and torch.allclose(out[-1], b[0])
    # the midpoint is at 45°: (3/√2, 3/√2, 0), whereas lerp would give norm 3/√2
    assert torch.allclose(out[2], torch.tensor([3 / math.sqrt(2), 3 / math.sqrt(2), 0.0]))
    assert torch.allclose(slerp(a, a, 0.3), a)


class _LabelNet(torch.nn.Module):
    """x0-prediction that says 'labels' exactly: x̂_0 = label (a toy conditional network)."""

    def forward(self, x, t, labels=None):
        lab = torch.zeros(x.shape[0]) if labels is None else labels.to(x.dtype)
        return lab.reshape(-1, *([1] * (x.ndim - 1))).expand_as(x).clone()


def test_condition_mix_is_the_weighted_prediction_and_interpolation_ends_at_the_conditions():
    den = Denoiser(_LabelNet(), SCHEDULE, "x0")
    x = torch.randn(3, 2)
    mixed = ConditionMix(den, {"labels": torch.full((3,), 2)}, {"labels": torch.full((3,), 6)},
                         torch.tensor([0.0, 0.25, 1.0]))(x, 500.0)
    assert torch.allclose(mixed.x0[:, 0], torch.tensor([2.0, 3.0, 6.0]))
    frames = interpolate(den, torch.randn(1, 2), torch.randn(1, 2), SCHEDULE, n=3, steps=5,
                         cond_a={"labels": torch.tensor([2])}, cond_b={"labels": torch.tensor([6])})
    assert torch.allclose(frames[:, 0], torch.tensor([2.0, 4.0, 6.0]), atol=1e-5)


class _CountingEps(torch.nn.Module):
    """ε̂ = x·(1 + label/10): depends on the label; records the batch of every call."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, t, labels):
        self.batches.append(x.shape[0])
        return x * (1 + labels.to(x.dtype)[:, None] / 10)


def test_condition_mix_mixes_eps_in_one_batched_pass_and_clips_once():
    """ε̂ of the mix is (1 − w) ε̂_a + w ε̂_b written from the net's own formula; the two conditions
    run as one pass of 2n; x̂_0 is derived from the mixed ε̂ and clipped once (not a mix of
    clipped branches)."""
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    w = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    ca, cb = {"labels": torch.full((3,), 2)}, {"labels": torch.full((3,), 6)}
    eps = x * ((1 - w[:, None]) * 1.2 + w[:, None] * 1.6)
    a, s = (v.item() for v in SCHEDULE.marginal(900.0))
    for clip in (None, (-1.0, 1.0)):
        net = _CountingEps()
        d = ConditionMix(Denoiser(net, SCHEDULE, "eps", clip=clip), ca, cb, w)(x, 900.0)
        assert net.batches == [6]
        x0 = (x - s * eps) / a
        if clip is None:
            torch.testing.assert_close(d.eps, eps)
            torch.testing.assert_close(d.x0, x0)
        else:
            assert (x0.abs() > 1).any()          # the clip is active on this draw
            torch.testing.assert_close(d.x0, x0.clamp(-1, 1))


def test_interpolate_endpoints_decode_the_endpoints():
    m, den = _mixture()
    a, b = torch.randn(1, D, dtype=torch.float64), torch.randn(1, D, dtype=torch.float64)
    frames = interpolate(den, a, b, SCHEDULE, n=4, steps=10, sampler="dpmpp-2m")
    assert torch.allclose(frames[0], decode(den, a, SCHEDULE, 10, "dpmpp-2m")[0])
    assert torch.allclose(frames[-1], decode(den, b, SCHEDULE, 10, "dpmpp-2m")[0])
    with pytest.raises(ValueError, match="frames"):
        interpolate(den, a, b, SCHEDULE, n=1)


# ---------------------------------------------------------------------------- SDEdit
def test_sdedit_with_ancestral_sampling_draws_the_exact_gaussian_posterior():
    """x_t ~ q(x_t|x_0) then exact-denoiser DDPM from t: the output law is
    ∫ q(x_0'|x_t) q(x_t|x_0) dx_t = N(μ + g α (x_0 − μ), g² σ² + s² σ²/v)."""
    mu, s, dim = 0.5, 0.6, 16
    g = GaussianMixture([1.0], torch.full((1, dim), mu), [s])
    den = Denoiser(g.net(SCHEDULE, "x0"), SCHEDULE, "x0")
    n, x_in, strength = 500, -0.4, 0.3
    out = sdedit(den, torch.full((n, dim), x_in), SCHEDULE, strength, 1000, "ddpm",
                 generator=torch.Generator().manual_seed(0))
    a, sg = (v.item() for v in SCHEDULE.marginal(strength * SCHEDULE.T))
    v = a * a * s * s + sg * sg
    gain = a * s * s / v
    mean, var = mu + gain * a * (x_in - mu), gain**2 * sg**2 + s * s * sg * sg / v
    k = n * dim  # independent coordinates
    # 5 standard errors: SE(mean) = √(var/k), SE(var) ≈ var √(2/k); measured 1.4 and 0.5 SE.
    assert abs(out.mean().item() - mean) < 5 * math.sqrt(var / k)
    assert abs(out.var().item() - var) < 5 * var * math.sqrt(2 / k)


def test_sdedit_grid_and_strength_checks():
    g = partial_grid(SCHEDULE, 500.0, 10)
    assert g[0].item() == 500 and g[-1].item() == 0 and g.numel() == 11
    gl = partial_grid(SCHEDULE, 250.0, 5, "log-snr")
    assert gl[0].item() == 250 and gl[-2].item() == 1 and gl[-1].item() == 0
    _, den = _gaussian()
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="strength"):
            sdedit(den, torch.zeros(2, D), SCHEDULE, bad)


def test_sdedit_small_strength_stays_close_and_full_strength_forgets():
    g, den = _gaussian()
    x0 = torch.full((200, D), -1.5)
    near = sdedit(den, x0, SCHEDULE, 0.02, 50, "ddim", seed=0)
    far = sdedit(den, x0, SCHEDULE, 1.0, 50, "ddim", seed=0)
    assert (near - x0).abs().mean() < 0.1
    # x_T carries ᾱ_T^½ ≈ 6e-3 of x_0: the output is a fresh draw from N(μ, s²)
    assert abs(far.mean().item() - MU) < 4 * S / math.sqrt(200 * D)


# ---------------------------------------------------------------------------- inpainting
def test_repaint_path():
    """Paths worked out by hand from RePaint's ``get_schedule_jump_paper`` (its times k = T−1 …
    0, −1 are our indices steps − 1 − k): jumps at k = 0, L, 2L, … < T − L."""
    assert repaint_path(4) == [0, 1, 2, 3, 4]
    assert repaint_path(4, resample=2, jump=2) == [0, 1, 2, 3, 2, 1, 2, 3, 4]
    assert repaint_path(6, resample=2, jump=2) == [0, 1, 2, 3, 2, 1, 2, 3, 4, 5, 4, 3, 4, 5, 6]
    p = repaint_path(6, resample=3, jump=1)
    assert p[-1] == 6 and sum(1 for a, b in zip(p, p[1:], strict=False) if b == a + 1) == 6 + 2 * 5


@pytest.mark.parametrize("steps, jump, resample", [(10, 4, 2), (25, 10, 3), (250, 10, 10),
                                                   (9, 3, 2), (7, 1, 4)])
def test_repaint_resamples_every_level_down_to_the_lowest(steps, jump, resample):
    """Every index of the resampled range, the lowest (steps − jump … steps − 1) included, is
    reached from above ``resample`` times; the walk stays on the grid, moves by one index and
    ends at t = 0. The top-aligned schedule skipped the lowest levels whenever jump ∤ steps
    (e.g. index 9 of 10 with jump 4)."""
    p = repaint_path(steps, resample, jump)
    assert p[0] == 0 and p[-1] == steps and all(abs(b - a) == 1 for a, b in zip(p, p[1:], strict=False))
    assert min(p) == 0 and max(p) == steps and p.count(steps) == 1
    arrivals = {}
    for a, b in zip(p, p[1:], strict=False):
        if b == a + 1:
            arrivals[b] = arrivals.get(b, 0) + 1
    top = (steps - 1) % jump or jump           # the highest jump point (an index ≥ jump)
    top = top if top >= jump else top + jump
    for i in range(top - jump + 1, steps):
        assert arrivals[i] == resample, (i, arrivals[i])
    assert all(arrivals[i] == 1 for i in range(1, top - jump + 1))
    assert arrivals[steps] == 1


def _mixture_2d():
    w, s = torch.tensor([0.4, 0.6]), torch.tensor([0.5, 0.5])
    mu = torch.tensor([[-1.0, -1.0], [1.0, 1.5]])
    m = GaussianMixture(w, mu, s)
    return (w, mu, s), Denoiser(m.net(SCHEDULE, "x0"), SCHEDULE, "x0")


def _exact_fill(w, mu, s, observed: float) -> tuple[float, float, float]:
    """p(x_1 | x_0 = observed) by brute-force conditioning: component weights ∝ w_k N(obs; μ_k0,
    s_k²), then the mixture of N(μ_k1, s_k²); returns (weight of component 2, mean, variance)."""
    lw = torch.log(w) - 0.5 * (observed - mu[:, 0]) ** 2 / s**2 - torch.log(s)
    wk = torch.softmax(lw, 0)
    mean = (wk * mu[:, 1]).sum()
    return wk[1].item(), mean.item(), ((wk * (s**2 + mu[:, 1] ** 2)).sum() - mean**2).item()


def test_inpaint_keeps_the_known_region_and_fills_independent_coordinates_exactly():
    """Isotropic Gaussian data: the coordinates are independent, so the fill's exact law is
    N(μ, s²) whatever is observed; replacement sampling is exact here."""
    g, den = _gaussian()
    n = 500
    x0 = torch.full((n, D), 3.0)
    known = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # 250 steps: ancestral sampling with β̃ on a coarse grid is itself under-dispersed (variance
    # 0.113 instead of 0.16 at 50 steps, 0.159 at 250), which is the sampler's error, not the fill's.
    out = inpaint(den, x0, known, SCHEDULE, 250, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :2], x0[:, :2])
    fill = out[:, 2:]
    k = fill.numel()
    assert abs(fill.mean().item() - MU) < 5 * S / math.sqrt(k)
    assert abs(fill.var().item() - S**2) < 5 * S**2 * math.sqrt(2 / k)


def test_inpaint_on_the_mixture_approaches_the_exact_conditional_with_resampling():
    """Replacement conditioning is not exact when coordinates are dependent (here through the
    mixture component): at high noise the fill commits to a mode before the noised known
    coordinate says which. Measured weight of the right mode (exact 0.881): 0.67 (plain),
    0.79 (RePaint r = 10), 0.82 (r = 20). The test pins that the bias exists, that resampling
    shrinks it and that the known coordinate comes back unchanged."""
    (w, mu, s), den = _mixture_2d()
    n, observed = 2000, 0.2
    x0 = torch.tensor([[observed, 5.0]]).expand(n, 2)
    known = torch.tensor([1.0, 0.0])
    exact_w, exact_mean, _ = _exact_fill(w, mu, s, observed)
    se = math.sqrt(exact_w * (1 - exact_w) / n)      # SE of a mode fraction: ≈ 0.007
    weights = []
    for r in (1, 10):
        out = inpaint(den, x0, known, SCHEDULE, 25, resample=r,
                      generator=torch.Generator().manual_seed(0))
        assert torch.equal(out[:, 0], x0[:, 0])
        weights.append((out[:, 1] > 0.25).float().mean().item())
    assert exact_w - weights[0] > 10 * se                 # plain replacement is biased …
    assert weights[1] - weights[0] > 6 * se               # … and resampling moves it towards exact
    assert weights[1] < exact_w + 4 * se


def test_inpaint_rejects_bad_masks():
    _, den = _gaussian()
    with pytest.raises(ValueError, match="does not fit"):
        inpaint(den, torch.zeros(2, D), torch.ones(3), SCHEDULE, 5)
    with pytest.raises(ValueError, match="only 0"):
        inpaint(den, torch.zeros(2, D), torch.full((D,), 0.5), SCHEDULE, 5)
