import math

import numpy as np
import pytest
import torch

from noisecraft import Schedule, grids


@pytest.fixture(params=["linear", "cosine", "flow"])
def schedule(request):
    return Schedule.from_name(request.param, T=1000)


def _alpha_bars_np(schedule):
    """ᾱ_t for t = 0..T recomputed with numpy from β, independently of Schedule's methods."""
    return np.concatenate([[1.0], np.cumprod(1 - schedule.betas.numpy())])


@pytest.mark.parametrize("steps", [1, 7, 50, 999, 1000])
def test_respaced_is_the_trailing_spacing(steps):
    schedule = Schedule.linear(T=1000)
    grid = grids.respaced(schedule, steps)
    # diffusers' "trailing" spacing, 0-based: round(arange(T, 0, -T/steps)) - 1; ours is 1-based
    # with the final t = 0 appended.
    trailing = np.round(np.arange(1000, 0, -1000 / steps)).astype(np.int64) - 1
    assert grid.dtype == torch.float64
    assert grid.tolist() == [float(t + 1) for t in trailing] + [0.0]


@pytest.mark.parametrize("steps", [1, 3, 10, 64])
def test_log_snr_uniform_is_uniform_in_log_snr(schedule, steps):
    grid = grids.log_snr_uniform(schedule, steps)
    assert len(grid) == steps + 1
    assert grid[0] == schedule.T and grid[-1] == 0
    assert (grid.diff() < 0).all()
    if steps == 1:
        return
    assert grid[-2] == 1.0
    # λ at the nodes, from ᾱ recomputed independently; between integers λ is linear in t.
    abar = _alpha_bars_np(schedule)
    lam_knots = np.log(abar[1:] / (1 - abar[1:]))
    t = grid[:-1].numpy()
    lam = np.interp(t, np.arange(1, schedule.T + 1), lam_knots)
    np.testing.assert_allclose(np.diff(lam), np.full(steps - 1, (lam[-1] - lam[0]) / (steps - 1)),
                               rtol=1e-8)


@pytest.mark.parametrize("rho", [1.0, 7.0])
def test_karras_is_uniform_in_sigma_tilde_to_the_one_over_rho(schedule, rho):
    steps = 20
    grid = grids.karras(schedule, steps, rho=rho)
    assert len(grid) == steps + 1 and grid[0] == schedule.T and grid[-2] == 1 and grid[-1] == 0
    assert (grid.diff() < 0).all()
    abar = _alpha_bars_np(schedule)
    lam_knots = np.log(abar[1:] / (1 - abar[1:]))
    lam = np.interp(grid[:-1].numpy(), np.arange(1, schedule.T + 1), lam_knots)
    root = np.exp(-lam / 2) ** (1 / rho)                     # σ̃^{1/ρ}, σ̃ = σ/α = exp(-λ/2)
    np.testing.assert_allclose(np.diff(root), np.full(steps - 1, (root[-1] - root[0]) / (steps - 1)),
                               rtol=1e-7)


def test_karras_tends_to_log_snr_uniform_as_rho_grows():
    # (a^{1/ρ} + u (b^{1/ρ} − a^{1/ρ}))^ρ → a^{1−u} b^u as ρ → ∞: geometric in σ̃, i.e. uniform in λ.
    schedule = Schedule.linear(T=1000)
    grid = grids.karras(schedule, 10, rho=1e6)
    # At ρ = 1e6 the limit is off by ~(Δ log σ̃)²/(8ρ) ≈ 3e-6 in log σ̃ (Δ log σ̃ ≈ 5 here), and
    # raising a float64 to the power ρ amplifies its 1e-16 rounding to ~1e-10: 1e-4 in t is ample.
    torch.testing.assert_close(grid, grids.log_snr_uniform(schedule, 10), rtol=1e-4, atol=0)
    # and a larger ρ puts fewer nodes at high noise than a smaller one
    high_noise = [(grids.karras(schedule, 10, rho=rho) > 500).sum() for rho in (7.0, 1.0)]
    assert high_noise[0] < high_noise[1]


def test_continuous_grids_allow_more_steps_than_T():
    schedule = Schedule.linear(T=10)
    for fn in (grids.log_snr_uniform, grids.karras):
        grid = fn(schedule, 40)
        assert len(grid) == 41 and (grid.diff() < 0).all()


@pytest.mark.parametrize("fn", [grids.respaced, grids.log_snr_uniform, grids.karras])
@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "10"])
def test_bad_steps(fn, steps):
    with pytest.raises(ValueError, match="steps"):
        fn(Schedule.linear(T=100), steps)


def test_respaced_refuses_more_steps_than_T():
    with pytest.raises(ValueError, match="steps = 101 exceeds T = 100"):
        grids.respaced(Schedule.linear(T=100), 101)


def test_bad_rho_and_t_min():
    schedule = Schedule.linear(T=100)
    with pytest.raises(ValueError, match="rho"):
        grids.karras(schedule, 10, rho=0.0)
    with pytest.raises(ValueError, match="t_min"):
        grids.log_snr_uniform(schedule, 10, t_min=100)
    with pytest.raises(ValueError, match="t_min"):
        grids.karras(schedule, 10, t_min=-1.0)


def test_make_by_name():
    schedule = Schedule.linear(T=100)
    assert torch.equal(grids.make("karras", schedule, 5), grids.karras(schedule, 5))
    with pytest.raises(ValueError, match="unknown grid 'uniform'; choose one of respaced"):
        grids.make("uniform", schedule, 5)


@pytest.mark.parametrize("bad, message", [
    ([100.0, 50.0, 50.0, 0.0], r"decrease strictly, but t\[1\] = 50.0 is followed by t\[2\] = 50.0"),
    ([0.0, 50.0, 100.0], "decrease strictly"),
    ([100.0, 50.0, 1.0], "end at t = 0"),
    ([150.0, 50.0, 0.0], "start in"),
    ([100.0, math.nan, 0.0], "NaN"),
    ([100.0], "at least 2 entries"),
    ([[100.0, 0.0]], "1-D"),
])
def test_check_rejects_invalid_grids(bad, message):
    with pytest.raises(ValueError, match=message):
        grids.check(torch.tensor(bad, dtype=torch.float64), Schedule.linear(T=100))


def test_check_accepts_a_grid_starting_below_T():
    g = grids.check([40, 20.5, 0], Schedule.linear(T=100))
    assert g.dtype == torch.float64 and g.tolist() == [40.0, 20.5, 0.0]
