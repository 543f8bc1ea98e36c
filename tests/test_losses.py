"""Losses against exact answers: Gaussian data, whose ideal denoiser and likelihood are closed form.

For x_0 ~ N(m, s² I) in D dimensions, x_0 | x_t is Gaussian with variance (the MMSE)
v_t = s² (1 − ᾱ_t)/(ᾱ_t s² + 1 − ᾱ_t) per dimension, and GaussianMixture with one component gives
E[x_0 | x_t]. Every term of the bound then has a closed-form expectation, computed below in numpy
from the β table alone (``expected_terms``), and the exact NLL is the entropy ½ D log(2πe s²).
"""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats
from torch import nn

from noisecraft import Denoiser, GaussianMixture, Schedule, losses

M = np.array([0.3, -0.5])
S = 0.4
D = 2
BETAS = np.linspace(0.02, 0.5, 20)           # T = 20; ᾱ_T = 1.6e-3
SCHED = Schedule.linear(20, 0.02, 0.5)
ENTROPY = 0.5 * D * math.log(2 * math.pi * math.e * S**2)   # nats: E[−log N(x_0; m, s² I)]


def tables(betas: np.ndarray = BETAS) -> dict[str, np.ndarray]:
    abar = np.cumprod(1 - betas)
    abar_prev = np.r_[1.0, abar[:-1]]
    mmse = S**2 * (1 - abar) / (abar * S**2 + 1 - abar)
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    c0 = np.sqrt(abar_prev) * betas / (1 - abar)
    return {"abar": abar, "mmse": mmse, "beta": betas, "beta_tilde": beta_tilde, "c0": c0,
            # Var(x_{t-1} | x_t) of the true reverse process: β̃_t + c0² v_t.
            "optimal": beta_tilde + c0**2 * mmse}


def reverse_variances(choice: str) -> np.ndarray:
    tab = tables()
    if choice == "beta_tilde":
        return np.r_[tab["beta_tilde"][1], tab["beta_tilde"][1:]]   # β̃_1 = 0 → β̃_2
    return tab[choice]


def expected_terms(choice: str) -> tuple[np.ndarray, float]:
    """E[bound_term(t)] for t = 1..T and E[prior_kl], in nats per example, averaged over x_0 ~ data.

    t ≥ 2: E KL = ½ (log σ_p² − log β̃_t + β̃_t/σ_p² − 1 + c0² v_t/σ_p²) per dimension, because
    μ_q − μ_θ = c0 (x_0 − E[x_0|x_t]). t = 1: E[−log N(x_0; E[x_0|x_1], σ_p²)] = ½ log(2π σ_p²)
    + v_1/(2σ_p²). Prior: ½ (ᾱ_T (m² + s²) + (1 − ᾱ_T) − 1 − log(1 − ᾱ_T)).
    """
    tab = tables()
    var_p = reverse_variances(choice)
    bt, c0, v = tab["beta_tilde"], tab["c0"], tab["mmse"]
    kl = 0.5 * (np.log(var_p[1:]) - np.log(bt[1:]) + bt[1:] / var_p[1:] - 1
                + c0[1:] ** 2 * v[1:] / var_p[1:])
    decoder = 0.5 * (np.log(2 * np.pi * var_p[0]) + v[0] / var_p[0])
    kl = np.r_[decoder, kl]
    a_T = tab["abar"][-1]
    prior = 0.5 * np.sum(a_T * (M**2 + S**2) + (1 - a_T) - 1 - np.log(1 - a_T))
    return D * kl, float(prior)


def mixture() -> GaussianMixture:
    return GaussianMixture([1.0], torch.tensor(M)[None], S)


class OptimalVariance(nn.Module):
    """The ideal mean plus the learned-variance channel that makes σ² the true reverse variance."""

    def __init__(self):
        super().__init__()
        self.mean = mixture().net(SCHED, "x0")
        hi, lo = np.log(BETAS), np.log(reverse_variances("beta_tilde"))
        fraction = (np.log(tables()["optimal"]) - lo) / (hi - lo)
        self.register_buffer("raw", torch.tensor(2 * fraction - 1))

    def forward(self, x_t, t):
        raw = self.raw[t.round().long() - 1][:, None].expand_as(x_t)
        return torch.cat([self.mean(x_t, t), raw.to(x_t.dtype)], dim=1)


def gaussian_denoiser(choice: str, prediction: str = "x0") -> Denoiser:
    if choice == "optimal":
        return Denoiser(OptimalVariance(), SCHED, "x0", learned_variance=True)
    return Denoiser(mixture().net(SCHED, prediction), SCHED, prediction)


# ---------------------------------------------------------------------------- the bound
@pytest.mark.parametrize("choice", ["beta", "beta_tilde", "optimal"])
def test_T_term_bound_of_the_ideal_denoiser_is_above_and_close_to_the_exact_nll(choice):
    """Σ_t bound_term + prior_kl over n = 20 000 draws of x_0 ~ N(m, s² I), D = 2, T = 20.

    The MC mean of (bound − exact NLL) per example must match the closed-form expected gap within
    4 standard errors (SE from the sample std of the per-example differences, ≈ 0.006–0.009 nats),
    and the closed-form gap must be ≥ 0. Gaps (nats per example): β 0.141, β̃ 0.909, true reverse
    variance 0.0003 (only the prior mismatch q(x_T) ≠ N(0, I) is left).
    """
    n = 20_000
    den = gaussian_denoiser(choice)
    g = torch.Generator().manual_seed(0)
    x0 = mixture().sample(n, g)
    exact_nll = -stats.multivariate_normal(M, S**2 * np.eye(D)).logpdf(x0.numpy())
    total = losses.prior_kl(SCHED, x0)
    variance = "learned" if choice == "optimal" else choice
    for t in range(1, SCHED.T + 1):
        total = total + losses.bound_term(den, x0, t, generator=g, variance=variance,
                                          discrete=False)
    gap = total.numpy() - exact_nll
    se = gap.std() / math.sqrt(n)
    terms, prior = expected_terms(choice)
    expected_gap = terms.sum() + prior - ENTROPY
    assert expected_gap >= 0
    assert abs(gap.mean() - expected_gap) < 4 * se, (gap.mean(), expected_gap, se)
    if choice != "optimal":
        assert gap.mean() > 4 * se          # the fixed variances are measurably loose
    else:
        assert expected_gap < 1e-3


def test_vlb_is_an_unbiased_one_sample_estimate_in_bits_per_dim():
    """E[vlb] over (x_0, t, ε) = (Σ_t E L_t + E L_T)/(D ln 2), with uniform or importance t.

    n = 40 000 one-sample estimates each; 4 standard errors (sample std / √n). The importance
    sampler is warmed with the exact per-t expectations, so its estimate must also be less noisy.
    """
    n = 40_000
    den = gaussian_denoiser("beta")
    terms, prior = expected_terms("beta")
    expected = (terms.sum() + prior) / (D * math.log(2))
    g = torch.Generator().manual_seed(1)
    x0 = mixture().sample(n, g)
    uniform = losses.vlb(den, x0, generator=g, variance="beta", discrete=False).numpy()
    sampler = losses.ImportanceTimeSampler(SCHED.T, history=2)
    for _ in range(2):
        sampler.update(torch.arange(1, SCHED.T + 1), torch.tensor(terms))
    weighted = losses.vlb(den, x0, generator=g, time_sampler=sampler, variance="beta",
                          discrete=False).numpy()
    for est in (uniform, weighted):
        assert abs(est.mean() - expected) < 4 * est.std() / math.sqrt(n), (est.mean(), expected)
    assert weighted.std() < uniform.std()


def test_discrete_decoder_is_a_probability_over_the_256_bins():
    """At t = 1, exp(−bound_term) over all 256 values of 8-bit data sums to 1, and each bin's mass
    equals scipy's normal CDF difference (edge bins to ±∞)."""
    sched = Schedule.linear(10, 0.01, 0.5)
    sigma = math.sqrt(0.01)                                    # variance="beta": σ_1² = β_1
    values = torch.arange(256, dtype=torch.float64)[:, None] / 127.5 - 1
    for mu in (0.3, -0.97, 0.999):
        den = Denoiser(lambda x_t, t, mu=mu: torch.full_like(x_t, mu), sched, "x0")
        nll = losses.bound_term(den, values, 1, variance="beta").numpy()
        x = values.numpy().ravel()
        upper = np.where(x > 0.999, 1.0, stats.norm.cdf((x + 1 / 255 - mu) / sigma))
        lower = np.where(x < -0.999, 0.0, stats.norm.cdf((x - 1 / 255 - mu) / sigma))
        assert np.exp(-nll).sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(np.exp(-nll), upper - lower, atol=1e-14)


def test_discrete_decoder_log_mass_is_accurate_far_in_the_tail():
    """A bin 130 σ from the mean has mass e^{−8450}: far below float64, yet its log is finite and
    matches log_ndtr(b) + log(1 − e^{log_ndtr(a) − log_ndtr(b)}) by scipy (mirrored tail)."""
    sched = Schedule.linear(10, 1e-4, 0.5)
    sigma = 0.01
    den = Denoiser(lambda x_t, t: torch.full_like(x_t, -0.8), sched, "x0")
    x = torch.tensor([[0.5], [-1.0 + 60 / 127.5]], dtype=torch.float64)
    nll = losses.bound_term(den, x, 1, variance="beta").numpy()
    for value, got in zip(x.numpy().ravel(), nll, strict=True):
        lo, hi = (value - 1 / 255 + 0.8) / sigma, (value + 1 / 255 + 0.8) / sigma
        log_b, log_a = special.log_ndtr(-lo), special.log_ndtr(-hi)   # mass = Φ(−lo) − Φ(−hi)
        expected = -(log_b + np.log1p(-np.exp(log_a - log_b)))
        assert got == pytest.approx(expected, rel=1e-10)


def test_continuous_decoder_and_prior_kl_match_scipy_and_torch_distributions():
    sched = Schedule.linear(10, 0.01, 0.5)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    den = Denoiser(lambda x_t, t: torch.full_like(x_t, 0.25), sched, "x0")
    nll = losses.bound_term(den, x0, 1, variance="beta", discrete=False).numpy()
    expected = -stats.norm.logpdf(x0.numpy(), 0.25, math.sqrt(0.01)).sum(1)
    np.testing.assert_allclose(nll, expected, rtol=1e-12)
    abar_T = np.prod(1 - np.linspace(0.01, 0.5, 10))
    q = torch.distributions.Normal(math.sqrt(abar_T) * x0, math.sqrt(1 - abar_T))
    p = torch.distributions.Normal(torch.zeros_like(x0), torch.ones_like(x0))
    np.testing.assert_allclose(losses.prior_kl(sched, x0).numpy(),
                               torch.distributions.kl_divergence(q, p).sum(1).numpy(), rtol=1e-10)


# ---------------------------------------------------------------------------- L_simple
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_simple_loss_of_the_ideal_denoiser_is_the_mmse(prediction):
    """E[L_simple | t] = k_t v_t with k_t = SNR (ε), 1 (x_0), 1/(1 − ᾱ_t) (v): the target error is
    a multiple of the x_0 error, which is N(0, v_t) per dimension. So each example's loss is
    e_t χ²_D / D with variance 2 e_t²/D, and the sum over n = 20 000 examples must lie within
    4 exact standard errors of Σ e_t."""
    n = 20_000
    rng = np.random.default_rng(3)
    t = rng.integers(1, SCHED.T + 1, size=n)
    g = torch.Generator().manual_seed(3)
    x0 = mixture().sample(n, g)
    loss = losses.simple(gaussian_denoiser("beta", prediction), x0, t=torch.tensor(t),
                         generator=g).numpy()
    abar, v = tables()["abar"], tables()["mmse"]
    k = {"eps": abar / (1 - abar), "x0": np.ones_like(abar), "v": 1 / (1 - abar)}[prediction]
    e = (k * v)[t - 1]
    assert abs(loss.sum() - e.sum()) < 4 * math.sqrt((2 * e**2 / D).sum())


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weights_and_x0_space_equivalence(prediction):
    """Weights min(SNR, γ)/SNR (ε), min(SNR, γ) (x_0), min(SNR, γ)/(SNR + 1) (v); and the weighted
    loss of any x̂_0, read in any prediction, is min(SNR, γ) · mean (x_0 − x̂_0)²."""
    gamma = 5.0
    abar = tables()["abar"]
    t = torch.arange(1, SCHED.T + 1)
    snr = abar / (1 - abar)
    expected = {"eps": np.minimum(snr, gamma) / snr, "x0": np.minimum(snr, gamma),
                "v": np.minimum(snr, gamma) / (snr + 1)}[prediction]
    weight = losses.min_snr(gamma)
    den_probe = Denoiser(lambda x, t: x, SCHED, prediction)
    np.testing.assert_allclose(weight(den_probe, t).numpy(), expected, rtol=1e-10)

    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(20, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(20, 3, generator=g, dtype=torch.float64)
    x0_hat = torch.randn(20, 3, generator=g, dtype=torch.float64)
    alpha = torch.tensor(np.sqrt(abar))[:, None]
    sigma = torch.tensor(np.sqrt(1 - abar))[:, None]

    def net(x_t, t):                  # a wrong model, saying x̂_0 in the language of `prediction`
        eps_hat = (x_t - alpha * x0_hat) / sigma
        return {"eps": eps_hat, "x0": x0_hat, "v": alpha * eps_hat - sigma * x0_hat}[prediction]

    den = Denoiser(net, SCHED, prediction)
    loss = losses.simple(den, x0, t=t, noise=noise, weighting=weight).numpy()
    np.testing.assert_allclose(loss, np.minimum(snr, gamma) * ((x0 - x0_hat) ** 2).mean(1).numpy(),
                               rtol=1e-9)


# ---------------------------------------------------------------------------- time samplers
def test_importance_sampler_probabilities_and_unbiasedness():
    """After warm-up p_t ∝ √mean(L_t²) (numpy), mixed with uniform_prob; Σ_t L_t/T estimated by
    mean(w L_t) over 200 000 draws within 4 standard errors, with less variance than uniform."""
    T, history = 20, 4
    rng = np.random.default_rng(5)
    base = np.exp(rng.normal(0, 1.5, size=T))
    sampler = losses.ImportanceTimeSampler(T, history=history, uniform_prob=0.01)
    recorded = base[:, None] * rng.uniform(0.5, 1.5, size=(T, history))
    for j in range(history):
        assert not sampler.warmed_up
        np.testing.assert_allclose(sampler.probabilities().numpy(), 1 / T)
        sampler.update(torch.arange(1, T + 1), torch.tensor(recorded[:, j]))
    assert sampler.warmed_up
    p = np.sqrt((recorded**2).mean(1))
    p = 0.99 * p / p.sum() + 0.01 / T
    np.testing.assert_allclose(sampler.probabilities().numpy(), p, rtol=1e-12)

    n = 200_000
    t, w = sampler.sample(n, generator=torch.Generator().manual_seed(6))
    assert t.dtype == torch.int64 and t.min() >= 1 and t.max() <= T
    np.testing.assert_allclose(w.numpy(), 1 / (T * p[t.numpy() - 1]), rtol=1e-6)
    est = w.double().numpy() * base[t.numpy() - 1]
    assert abs(est.mean() - base.mean()) < 4 * est.std() / math.sqrt(n)
    t_u, w_u = losses.UniformTimeSampler(T).sample(n, generator=torch.Generator().manual_seed(6))
    assert (w_u == 1).all()
    assert est.std() < base[t_u.numpy() - 1].std()


def test_time_sampler_errors():
    sampler = losses.ImportanceTimeSampler(5)
    with pytest.raises(ValueError, match="t = 6"):
        sampler.update(torch.tensor([6]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="nan"):
        sampler.update(torch.tensor([2]), torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="2 entries"):
        sampler.update(torch.tensor([1, 2]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="history"):
        losses.ImportanceTimeSampler(5, history=0)
    with pytest.raises(ValueError, match="T must"):
        losses.UniformTimeSampler(0)


# ---------------------------------------------------------------------------- hybrid
class TwoHeads(nn.Module):
    """Separate parameters for the mean channels and the variance channels."""

    def __init__(self, dim: int):
        super().__init__()
        self.mean = nn.Linear(dim + 1, dim)
        self.var = nn.Linear(dim + 1, dim)

    def forward(self, x_t, t):
        h = torch.cat([x_t, t[:, None].to(x_t.dtype) / 20], dim=1)
        return torch.cat([self.mean(h), torch.tanh(self.var(h))], dim=1)


def test_hybrid_trains_the_mean_by_l_simple_and_the_variance_by_the_bound():
    torch.manual_seed(0)
    net = TwoHeads(3)
    den = Denoiser(net, SCHED, "eps", learned_variance=True)
    g = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, 256, (16, 3), generator=g).float() / 127.5 - 1     # 8-bit data
    noise = torch.randn(16, 3, generator=g)
    t = torch.tensor([1, 1, 2, 3, 5, 8, 13, 20] * 2)                          # the decoder too

    def grads(loss):
        net.zero_grad()
        loss.sum().backward()
        return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                for k, p in net.named_parameters()}

    g_simple = grads(losses.simple(den, x0, t=t, noise=noise))
    g_hybrid = grads(losses.hybrid(den, x0, 0.5, t=t, noise=noise))
    for name in ("mean.weight", "mean.bias"):
        np.testing.assert_allclose(g_hybrid[name].numpy(), g_simple[name].numpy(), rtol=1e-6,
                                   atol=1e-7)
    for name in ("var.weight", "var.bias"):
        assert g_simple[name].abs().max() == 0
        assert torch.isfinite(g_hybrid[name]).all() and g_hybrid[name].abs().max() > 0
    # The value: L_simple + λ T L_t in bits/dim. (numpy asserts: torch.testing imports
    # torch.distributed, seconds on a busy CPU.)
    with torch.no_grad():
        value = losses.hybrid(den, x0, 0.5, t=t, noise=noise)
        parts = (losses.simple(den, x0, t=t, noise=noise)
                 + 0.5 * 20 * losses.bound_term(den, x0, t, noise=noise) / (3 * math.log(2)))
    np.testing.assert_allclose(value.numpy(), parts.numpy(), rtol=1e-5)


def test_loss_argument_errors():
    den = gaussian_denoiser("beta")
    x0 = torch.zeros(4, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="learned_variance=True"):
        losses.hybrid(den, x0)
    with pytest.raises(ValueError, match="not both"):
        losses.simple(den, x0, t=3, time_sampler=losses.UniformTimeSampler(20))
    with pytest.raises(ValueError, match="T = 7"):
        losses.simple(den, x0, time_sampler=losses.UniformTimeSampler(7))
    with pytest.raises(ValueError, match="2.5"):
        losses.bound_term(den, x0, 2.5, discrete=False)
    with pytest.raises(ValueError, match="1.5"):
        losses.bound_term(den, x0 + 1.5, 3)
    with pytest.raises(ValueError, match="gamma"):
        losses.min_snr(0.0)
    assert losses.simple(den, x0).shape == (4,)
