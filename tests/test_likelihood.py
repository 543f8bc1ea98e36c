"""noisecraft.nll against exact answers: mixture log-densities, Gaussian bounds, 8-bit masses."""

import math

import pytest
import torch
from torch import nn

import noisecraft
from noisecraft import Denoiser, GaussianMixture, Schedule
from noisecraft.likelihood import BIN_WIDTH, DEQUANTISATION_BITS, _ode_interval, nll, ode_log_prob

LINEAR = Schedule.linear(1000)
# A 100-step schedule with the same ᾱ_T scale as the 1000-step one keeps the T-term bound cheap.
SHORT = Schedule.linear(100, 1e-3, 0.2)
MIXTURE = GaussianMixture([0.3, 0.7], torch.tensor([[-0.6, 0.4], [0.5, -0.2]]), [0.15, 0.3])


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Continuous samples → the nearest of the 256 levels 2k/255 − 1."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def gaussian_level_bits(x: torch.Tensor, std: float, open_edges: bool) -> torch.Tensor:
    """−log₂ P(k)/D for N(0, std² I) put on the 8-bit bins [x − Δ/2, x + Δ/2] by its CDF."""
    lo, hi = (x.double() - BIN_WIDTH / 2) / std, (x.double() + BIN_WIDTH / 2) / std
    mass = torch.special.ndtr(hi) - torch.special.ndtr(lo)
    if open_edges:  # the bound's decoder: the outer bins reach ±∞
        mass = torch.where(x < -0.999, torch.special.ndtr(hi),
                           torch.where(x > 0.999, torch.special.ndtr(-lo), mass))
    return -torch.log2(mass).flatten(1).mean(1)


# ---------------------------------------------------------------------------- the ODE path
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ode_gives_the_mixture_log_density(prediction):
    x = MIXTURE.sample(16, generator=torch.Generator().manual_seed(1))
    model = MIXTURE.net(LINEAR, prediction)
    bits = nll(model, x, LINEAR, "ode", prediction, discrete=False, divergence="exact")
    exact = -MIXTURE.log_prob(x) / (2 * math.log(2))
    # The brief: a few hundredths of a bit. What remains is the N(0, I) prior's mismatch with
    # the true q(x_T) (its mean shift √ᾱ_T E[x_0] ≈ 0.003 moves one point by ≈ 0.002 bits/dim).
    assert (bits - exact).abs().max() < 0.01
    assert (bits - exact).mean().abs() < 1e-3


def test_ode_integral_is_exact_up_to_the_solver_tolerance():
    # Swap the N(0, I) prior for the exact marginal log q(x_T) and compare with the exact
    # log q(x) at t_start: what is left is the integration error alone (rtol = atol = 1e-5).
    x = MIXTURE.sample(16, generator=torch.Generator().manual_seed(2))
    den = Denoiser(MIXTURE.net(LINEAR, "eps"), LINEAR, "eps")
    flow = ode_log_prob(den, x, divergence="exact")
    t0 = LINEAR.t_from_log_snr(-2 * _ode_interval(LINEAR, None)[0])
    alpha0, sigma0 = LINEAR.marginal(t0)
    assert sigma0.item() == pytest.approx(1e-3, rel=1e-6)          # the stated default start
    alpha_T, sigma_T = LINEAR.marginal(float(LINEAR.T))
    integral = flow.log_prob - flow.prior_log_prob
    err = integral + MIXTURE.log_prob(flow.x_T, alpha_T, sigma_T) - MIXTURE.log_prob(x, alpha0, sigma0)
    assert err.abs().max() < 1e-3
    assert (flow.nfe > 20).all() and (flow.nfe < 400).all()


def test_ode_runs_in_float32_on_images():
    # A convolutional network on (batch, C, H, W) in float32: finite numbers, one per example.
    torch.manual_seed(0)
    net = _TinyConvNet()
    x = quantise(torch.rand(3, 1, 6, 6) * 2 - 1)
    bits = nll(net, x, LINEAR, "ode", generator=torch.Generator().manual_seed(0), rtol=1e-3,
               atol=1e-3)
    assert bits.shape == (3,) and bits.dtype == torch.float64 and torch.isfinite(bits).all()


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(probe):
    # One point, R rows, each row its own probe: the rows share one trajectory, so the mean of
    # their log-densities must match the exact-divergence answer within Monte-Carlo error.
    R = 400
    x = torch.tensor([[0.1, 0.3]], dtype=torch.float64)
    den = Denoiser(MIXTURE.net(LINEAR, "eps"), LINEAR, "eps")
    exact = ode_log_prob(den, x, divergence="exact").log_prob.item()
    est = ode_log_prob(den, x.expand(R, 2), divergence=probe,
                       generator=torch.Generator().manual_seed(3)).log_prob
    se = est.std().item() / math.sqrt(R)
    assert est.std() > 1e-3                   # the probes really differ (no silent exact path)
    assert abs(est.mean().item() - exact) < 4 * se + 1e-3     # 4 SE: a 1-in-16,000 false alarm
    if probe == "rademacher":
        # Averaging k probes divides the variance by k: with R = 400 rows the ratio of sample
        # standard deviations is known to a few per cent, so [1.6, 2.5] brackets √4 = 2.
        est4 = ode_log_prob(den, x.expand(R, 2), divergence=probe, probes=4,
                            generator=torch.Generator().manual_seed(4)).log_prob
        assert 1.6 < (est.std() / est4.std()).item() < 2.5


# ---------------------------------------------------------------------------- the bound
def analytic_gaussian_bound_gap(schedule: Schedule, std: float, variance: str) -> float:
    """E_{x_0}[bound] − H(x_0) in bits/dim for x_0 ~ N(0, std² I) and the exact E[x_0 | x_t].

    Per dimension, with v_t = Var[x_0 | x_t] = s² σ_t² / (α_t² s² + σ_t²) and c0 the posterior's
    x_0 coefficient: E L_{t−1} = ½(log(σ_p²/β̃_t) + β̃_t/σ_p² + c0² v_t/σ_p² − 1),
    E L_0 = ½ log(2π σ_1²) + v_1/(2σ_1²), L_T = ½(ᾱ_T s² − ᾱ_T − log(1 − ᾱ_T)).
    """
    s2, T = std**2, schedule.T
    abar_T = schedule.alpha_bars[-1].item()
    total = 0.5 * (abar_T * s2 - abar_T - math.log(1 - abar_T))
    betas = schedule.betas
    for t in range(1, T + 1):
        a, sg = (v.item() for v in schedule.marginal(float(t)))
        v_t = s2 * sg**2 / (a**2 * s2 + sg**2)
        if t == 1:
            # σ_1² is β_1 for "beta"; for "beta_tilde" (β̃_1 = 0) the library uses β̃_2.
            var_p = betas[0].item() if variance == "beta" else (
                schedule.posterior_coefficients(2.0)[2].item())
            total += 0.5 * math.log(2 * math.pi * var_p) + v_t / (2 * var_p)
            continue
        c0, _, var_q = (v.item() for v in schedule.posterior_coefficients(float(t)))
        var_p = betas[t - 1].item() if variance == "beta" else var_q
        total += 0.5 * (math.log(var_p / var_q) + var_q / var_p + c0**2 * v_t / var_p - 1)
    entropy = 0.5 * math.log(2 * math.pi * math.e * s2)
    return (total - entropy) / math.log(2)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_bound_on_gaussian_data_is_above_the_exact_nll_and_matches_its_closed_form(variance):
    D, N, std = 16, 1024, 0.5
    gauss = GaussianMixture([1.0], torch.zeros(1, D), [std])
    x = gauss.sample(N, generator=torch.Generator().manual_seed(11))
    bits = nll(gauss.net(SHORT, "x0"), x, SHORT, "vlb", "x0", discrete=False, variance=variance,
               batch_size=8192, generator=torch.Generator().manual_seed(12))
    gap = bits + gauss.log_prob(x) / (D * math.log(2))
    se = gap.std().item() / math.sqrt(N)
    expected = analytic_gaussian_bound_gap(SHORT, std, variance)
    assert expected > 0
    # The Monte-Carlo mean over N examples (one x_t per t each) is within 4 SE of the closed form.
    assert abs(gap.mean().item() - expected) < 4 * se
    if variance == "beta":     # σ_t² = β_t is near-optimal for this data: the bound is tight
        assert expected < 0.02 and gap.mean() > -4 * se


def test_bound_does_not_depend_on_how_t_is_packed():
    gauss = GaussianMixture([1.0], torch.zeros(1, 3), [0.4])
    x = gauss.sample(5, generator=torch.Generator().manual_seed(0))
    kw = dict(method="vlb", prediction="x0", discrete=False)
    a, b = (nll(gauss.net(SHORT, "x0"), x, SHORT, batch_size=size,
                generator=torch.Generator().manual_seed(1), **kw) for size in (5, 64))
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------- units
def test_eight_bit_units_agree_with_the_exact_level_masses():
    """Both methods give −log₂ P(k)/D for 8-bit data: checked against the Gaussian's CDF."""
    std = 0.3
    gauss = GaussianMixture([1.0], torch.zeros(1, 2), [std])
    x = quantise(gauss.sample(32, generator=torch.Generator().manual_seed(11)))
    reps = 8   # dequantisation draws per point: one draw has ≈ 0.01 bits/dim of noise here
    ode = nll(gauss.net(LINEAR, "eps"), x.repeat(reps, 1), LINEAR, "ode", divergence="exact",
              generator=torch.Generator().manual_seed(12)).reshape(reps, -1).mean(0)
    # Dequantisation: E_u[−log₂ p(x+u)]/D − log₂ Δ ≥ −log₂ ∫_bin p; for std ≫ Δ the two agree to
    # Δ²/(24 std²) ≈ 3e-5 nats, so only the Monte-Carlo error (4 SE) and the solver remain.
    d = ode - gaussian_level_bits(x, std, open_edges=False)
    assert abs(d.mean().item()) < 4 * d.std().item() / math.sqrt(len(d)) + 1e-3
    assert 6.5 < ode.mean() < 8.0    # ≈ log₂(std √(2πe) / Δ) = 7.3: the scale of 8-bit bits/dim

    # Continuous and discrete results on the same points differ by log₂ 127.5 per dimension.
    cont = nll(gauss.net(LINEAR, "eps"), x, LINEAR, "ode", discrete=False, divergence="exact")
    assert DEQUANTISATION_BITS == pytest.approx(math.log2(127.5))
    assert abs((ode - cont).mean().item() - math.log2(127.5)) < 0.01

    D, N = 16, 1024
    gauss = GaussianMixture([1.0], torch.zeros(1, D), [std])
    x = quantise(gauss.sample(N, generator=torch.Generator().manual_seed(13)))
    vlb = nll(gauss.net(SHORT, "x0"), x, SHORT, "vlb", "x0", variance="beta", batch_size=8192,
              generator=torch.Generator().manual_seed(14))
    d = vlb - gaussian_level_bits(x, std, open_edges=True)
    se = d.std().item() / math.sqrt(N)
    # A bound on the true 8-bit NLL, and close: the denoiser is the continuous Gaussian's, so a
    # few hundredths of a bit more than the continuous case's 0.016 is expected.
    assert -4 * se < d.mean().item() < 0.1


# ---------------------------------------------------------------------------- conditioning
class _LabelNet(nn.Module):
    """ε̂ = x_t · (1 + label)/4: a different linear flow per label."""

    def forward(self, x, t, labels):
        return x * (1 + labels.to(x.dtype)[:, None]) / 4


class _TinyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return torch.tanh(self.conv(x)) + 1e-3 * t[:, None, None, None]


def test_conditioning_follows_each_example_through_slicing():
    x = quantise(torch.rand(4, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    labels = torch.tensor([0, 1, 2, 0])
    kw = dict(method="ode", discrete=False, divergence="exact")
    whole = nll(_LabelNet(), x, SHORT, batch_size=4, labels=labels, **kw)
    sliced = nll(_LabelNet(), x, SHORT, batch_size=3, labels=labels, **kw)
    alone = torch.cat([nll(_LabelNet(), x[i:i + 1], SHORT, labels=labels[i:i + 1], **kw)
                       for i in range(4)])
    torch.testing.assert_close(whole, sliced, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(whole, alone, rtol=1e-6, atol=1e-6)
    assert whole[0] != whole[1]   # the label changed the model


# ---------------------------------------------------------------------------- bad arguments
def test_bad_arguments_give_clear_errors():
    net = MIXTURE.net(LINEAR, "eps")
    x = torch.full((2, 2), 1 / 255)      # level k = 128 (0 itself lies between two levels)
    with pytest.raises(ValueError, match="unknown method 'elbo'"):
        nll(net, x, LINEAR, method="elbo")
    with pytest.raises(ValueError, match=r"x\[1\] contains nan"):
        nll(net, torch.tensor([[0.0, 0.0], [float("nan"), 0.0]]), LINEAR, "ode")
    with pytest.raises(ValueError, match=r"x\[0\] holds 1.5, outside \[-1, 1\]"):
        nll(net, torch.tensor([[1.5, 0.0]]), LINEAR, "vlb")
    with pytest.raises(ValueError, match="not one of the 256 levels"):
        nll(net, torch.zeros(1, 2), LINEAR, "ode")
    with pytest.raises(ValueError, match="unknown divergence 'hutch'"):
        nll(net, x, LINEAR, "ode", discrete=False, divergence="hutch")
    with pytest.raises(ValueError, match="probes must be"):
        nll(net, x, LINEAR, "ode", discrete=False, probes=0)
    with pytest.raises(ValueError, match="method='vlb' only"):
        nll(net, x, LINEAR, "ode", discrete=False, variance="beta")
    with pytest.raises(ValueError, match="probes=4 applies to method='ode' only"):
        nll(net, x, LINEAR, "vlb", probes=4)
    with pytest.raises(ValueError, match="t_start"):
        nll(net, x, LINEAR, "ode", discrete=False, t_start=1000.0)
    with pytest.raises(ValueError, match="batch_size"):
        nll(net, x, LINEAR, "ode", batch_size=0)
    with pytest.raises(ValueError, match="shape"):
        nll(net, torch.zeros(3), LINEAR, "ode")
    with pytest.raises(ValueError, match="differs from the Denoiser's own schedule"):
        nll(Denoiser(net, SHORT, "eps"), x, LINEAR, "ode")
    with pytest.raises(ValueError, match="conflicts with the Denoiser's own prediction"):
        nll(Denoiser(net, LINEAR, "eps"), x, LINEAR, "ode", prediction="v")
    # "eps" is a value, not "unset": an x0 Denoiser with prediction="eps" is refused, as by sample.
    with pytest.raises(ValueError, match="prediction='eps' conflicts with the Denoiser's own"):
        nll(Denoiser(net, LINEAR, "x0"), x, LINEAR, "vlb", prediction="eps")
    with pytest.raises(ValueError, match="variance='learned' needs a Denoiser built with"):
        nll(net, x, LINEAR, "vlb", variance="learned")


def test_nll_is_exported():
    assert noisecraft.nll is nll
