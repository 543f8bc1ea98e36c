"""Schedule tables, time conversions and posteriors, checked against numpy computed independently."""

import math

import numpy as np
import pytest
import torch

from noisecraft import Schedule


def random_schedule(rng: np.random.Generator, T: int) -> tuple[Schedule, np.ndarray]:
    betas = rng.uniform(1e-4, 0.3, size=T)
    return Schedule.from_betas(torch.tensor(betas)), betas


def abar_knots(betas: np.ndarray) -> np.ndarray:
    """ᾱ_0..ᾱ_T with ᾱ_0 = 1."""
    return np.concatenate([[1.0], np.cumprod(1 - betas)])


# ---------------------------------------------------------------------------- constructors
def test_linear_and_quadratic_beta_ranges():
    lin = Schedule.linear(1000, 1e-4, 0.02)
    np.testing.assert_allclose(lin.betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=1e-12)
    quad = Schedule.quadratic(100, 1e-4, 0.02)
    np.testing.assert_allclose(quad.betas.numpy(), np.linspace(1e-2, math.sqrt(0.02), 100) ** 2,
                               rtol=1e-12)
    for s in (lin, quad):
        assert s.betas.dtype == torch.float64
        assert (s.alpha_bars.diff() < 0).all()


def test_cosine_matches_formula_and_clips_at_0999():
    T, s = 1000, 0.008
    sched = Schedule.cosine(T, s=s)
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    expected = np.clip(1 - f[1:] / f[:-1], None, 0.999)
    np.testing.assert_allclose(sched.betas.numpy(), expected, rtol=1e-10)
    assert sched.betas.max().item() == pytest.approx(0.999)   # f(T) ≈ 0 makes the raw β_T ≈ 1
    assert (sched.alpha_bars.diff() < 0).all()


def test_sigmoid_is_decreasing_and_normalised():
    sched = Schedule.sigmoid(200)
    assert (sched.alpha_bars.diff() < 0).all()
    assert 0 < sched.betas.min() and sched.betas.max() <= 0.999
    # ᾱ_1 close to 1: the first step barely noises.
    assert sched.alpha_bars[0].item() > 0.99


def test_from_betas_keeps_the_values():
    rng = np.random.default_rng(0)
    sched, betas = random_schedule(rng, 37)
    np.testing.assert_array_equal(sched.betas.numpy(), betas)
    np.testing.assert_allclose(sched.alpha_bars.numpy(), np.cumprod(1 - betas), rtol=1e-12)


# ---------------------------------------------------------------------------- the marginal
def test_marginal_at_zero_and_integers_reproduce_tables():
    rng = np.random.default_rng(1)
    sched, betas = random_schedule(rng, 40)
    alpha, sigma = sched.marginal(0)
    assert (alpha.item(), sigma.item()) == (1.0, 0.0)
    abar = abar_knots(betas)
    t = torch.arange(41)
    alpha, sigma = sched.marginal(t)
    np.testing.assert_allclose(alpha.numpy(), np.sqrt(abar), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.sqrt(1 - abar), rtol=1e-12)


def test_alpha_squared_plus_sigma_squared_is_one():
    sched = Schedule.cosine(100)
    t = torch.linspace(0, 100, 1001, dtype=torch.float64)
    alpha, sigma = sched.marginal(t)
    np.testing.assert_allclose((alpha**2 + sigma**2).numpy(), 1.0, atol=1e-12)


def test_fractional_t_interpolates_log_snr_linearly():
    rng = np.random.default_rng(2)
    sched, betas = random_schedule(rng, 25)
    abar = abar_knots(betas)[1:]
    knots = np.log(abar / (1 - abar))                     # λ at t = 1..T
    t = rng.uniform(1, 25, size=500)
    expected = np.interp(t, np.arange(1, 26), knots)
    np.testing.assert_allclose(sched.log_snr(torch.tensor(t)).numpy(), expected, rtol=1e-10)
    alpha, sigma = sched.marginal(torch.tensor(t))
    np.testing.assert_allclose(np.log(alpha.numpy() ** 2 / sigma.numpy() ** 2), expected, rtol=1e-9)
    # On (0, 1) σ² is interpolated linearly instead (λ(0) = +∞).
    u = np.array([0.25, 0.5, 0.9])
    _, sigma = sched.marginal(torch.tensor(u))
    np.testing.assert_allclose(sigma.numpy() ** 2, u * (1 - abar[0]), rtol=1e-10)


def test_t_from_log_snr_inverts_log_snr():
    sched = Schedule.linear(200)
    t = torch.tensor(np.random.default_rng(3).uniform(0.01, 200, size=300))
    np.testing.assert_allclose(sched.t_from_log_snr(sched.log_snr(t)).numpy(), t.numpy(), rtol=1e-8)
    ints = torch.arange(1, 201, dtype=torch.float64)
    np.testing.assert_allclose(sched.t_from_log_snr(sched.log_snr(ints)).numpy(), ints.numpy(),
                               rtol=1e-10)


@pytest.mark.parametrize("sched", [Schedule.linear(50), Schedule.cosine(30, s=0.01),
                                   Schedule.quadratic(20), Schedule.sigmoid(40, tau=0.7),
                                   Schedule.flow(25), Schedule.from_betas([0.1, 0.2, 0.3])])
def test_to_dict_from_dict_round_trip(sched):
    import json
    again = Schedule.from_dict(json.loads(json.dumps(sched.to_dict())))
    assert torch.equal(again.betas, sched.betas)


# ---------------------------------------------------------------------------- invalid input
@pytest.mark.parametrize("betas, fragment", [
    ([0.1, 1.0], "1.0"), ([0.1, 0.0], "0.0"), ([-0.2], "-0.2"), ([0.1, float("nan")], "NaN"),
    ([], "T = 0"),
])
def test_invalid_betas_raise_naming_the_value(betas, fragment):
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        Schedule.from_betas(betas)


@pytest.mark.parametrize("build, fragment", [
    (lambda: Schedule.linear(0), "0"), (lambda: Schedule.linear(10, 0.0, 0.02), "0.0"),
    (lambda: Schedule.cosine(10, max_beta=1.5), "1.5"), (lambda: Schedule.linear(2.5), "2.5"),
    (lambda: Schedule.from_dict({"kind": "wobbly"}), "wobbly"),
])
def test_invalid_constructor_arguments_raise(build, fragment):
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        build()


@pytest.mark.parametrize("t", [-0.5, 10.5, float("nan")])
def test_t_outside_range_raises(t):
    sched = Schedule.linear(10)
    with pytest.raises(ValueError, match="NaN" if math.isnan(t) else str(t)):
        sched.marginal(t)


# ---------------------------------------------------------------------------- the posterior
def brute_force_posterior(abar_s: float, abar_t: float) -> tuple[float, float, float]:
    """Condition the joint Gaussian of (x_s, x_t) given x_0 with the Schur complement.

    x_s = √ᾱ_s x_0 + √(1−ᾱ_s) ε_1 and x_t = √(ᾱ_t/ᾱ_s) x_s + √(1 − ᾱ_t/ᾱ_s) ε_2, so given x_0:
    Var x_s = 1 − ᾱ_s, Var x_t = 1 − ᾱ_t, Cov = √(ᾱ_t/ᾱ_s)(1 − ᾱ_s). Returns (c0, ct, var) of
    E[x_s | x_t, x_0] = c0 x_0 + ct x_t and its variance.
    """
    a_ts = math.sqrt(abar_t / abar_s)
    cov = np.array([[1 - abar_s, a_ts * (1 - abar_s)], [a_ts * (1 - abar_s), 1 - abar_t]])
    mean = np.array([math.sqrt(abar_s), math.sqrt(abar_t)])   # times x_0
    gain = cov[0, 1] / cov[1, 1]
    var = cov[0, 0] - gain * cov[1, 0]
    return mean[0] - gain * mean[1], gain, var


def test_posterior_equals_gaussian_conditioning_of_the_joint():
    rng = np.random.default_rng(4)
    for _ in range(5):
        T = int(rng.integers(2, 60))
        sched, betas = random_schedule(rng, T)
        abar = abar_knots(betas)
        t = rng.integers(1, T + 1, size=8)
        x0 = rng.normal(size=(8, 3))
        x_t = rng.normal(size=(8, 3))
        mean, var = sched.posterior(torch.tensor(x0), torch.tensor(x_t), torch.tensor(t))
        for i, ti in enumerate(t):
            c0, ct, v = brute_force_posterior(abar[ti - 1], abar[ti])
            np.testing.assert_allclose(mean[i].numpy(), c0 * x0[i] + ct * x_t[i], rtol=1e-9,
                                       atol=1e-12)
            np.testing.assert_allclose(var[i].numpy().ravel(), v, rtol=1e-9, atol=1e-15)
            # The DDPM form: β̃_t = β_t (1 − ᾱ_{t-1})/(1 − ᾱ_t).
            assert v == pytest.approx(betas[ti - 1] * (1 - abar[ti - 1]) / (1 - abar[ti]), abs=1e-15)


def test_general_posterior_q_s_given_t_equals_conditioning():
    rng = np.random.default_rng(5)
    sched, betas = random_schedule(rng, 50)
    abar = abar_knots(betas)
    t = rng.integers(2, 51, size=20)
    s = np.array([rng.integers(0, ti) for ti in t])
    c0, ct, var = sched.posterior_coefficients(torch.tensor(t), torch.tensor(s))
    for i in range(20):
        expected = brute_force_posterior(abar[s[i]], abar[t[i]])
        np.testing.assert_allclose([c0[i].item(), ct[i].item(), var[i].item()], expected,
                                   rtol=1e-9, atol=1e-15)


def test_posterior_needs_s_below_t_and_names_the_pair():
    sched = Schedule.linear(10)
    with pytest.raises(ValueError, match=r"s < t, got s = 3\.5 at t = 3\.0"):
        sched.posterior_coefficients(torch.tensor([5.0, 3.0]), torch.tensor([4.0, 3.5]))
    with pytest.raises(ValueError, match=r"s = -1\.0 is outside"):
        sched.posterior_coefficients(0)


def test_integer_and_fractional_paths_agree_bit_for_bit():
    # An all-integer t takes a table look-up; a batch with one fractional t takes the interpolation
    # path, which must give the same bits at the integers it contains.
    sched = Schedule.cosine(30)
    ints = torch.arange(31, dtype=torch.float64)
    mixed = torch.cat([ints, torch.tensor([2.5])])
    for fn in (sched.log_snr, sched.log_alpha_bar, lambda t: sched.marginal(t)[1]):
        assert torch.equal(fn(mixed)[:31], fn(ints))
    c_int = sched.posterior_coefficients(ints[1:])
    c_mixed = sched.posterior_coefficients(mixed[1:])
    for a, b in zip(c_int, c_mixed, strict=True):
        assert torch.equal(b[:30], a)
