"""Forward steps against the closed form (Monte Carlo) and the reverse step against conditioning."""

import math

import numpy as np
import pytest
import torch

from noisecraft import Denoised, Denoiser, GaussianMixture, Schedule
from noisecraft.process import q_sample, q_sample_from, q_step, reverse_mean_variance


def random_schedule(seed: int, T: int, hi: float = 0.1) -> tuple[Schedule, np.ndarray]:
    betas = np.random.default_rng(seed).uniform(1e-3, hi, size=T)
    return Schedule.from_betas(torch.tensor(betas)), np.concatenate([[1.0], np.cumprod(1 - betas)])


# ---------------------------------------------------------------------------- forward
def test_composed_one_step_transitions_match_the_closed_form():
    """T = 50 steps of q(x_t|x_{t-1}) from a fixed x_0 against q(x_t|x_0) = N(√ᾱ_t x_0, 1 − ᾱ_t).

    n = 20 000 chains. Standard errors: sample mean σ_t/√n; sample variance σ_t² √(2/(n−1));
    sample covariance √((Var x_s Var x_t + Cov²)/n) (Gaussian fourth moments). Every check
    allows 4.5 standard errors: 204 checks × P(|Z| > 4.5) = 6.8e-6 each ≈ 0.1 % false alarms
    for a fresh seed; the seed is fixed.
    """
    T, n = 50, 20_000
    sched, abar = random_schedule(0, T)
    x0 = torch.tensor([1.5, -0.7], dtype=torch.float64).expand(n, 2)
    g = torch.Generator().manual_seed(1)
    xs = [x0]
    for t in range(1, T + 1):
        xs.append(q_step(sched, xs[-1], t, generator=g)[0])
    for t in range(1, T + 1):
        x, var_t = xs[t], 1 - abar[t]
        mean_se, var_se = math.sqrt(var_t / n), var_t * math.sqrt(2 / (n - 1))
        np.testing.assert_array_less(np.abs(x.mean(0).numpy() - math.sqrt(abar[t]) * x0[0].numpy()),
                                     4.5 * mean_se)
        np.testing.assert_array_less(np.abs(x.var(0).numpy() - var_t), 4.5 * var_se)
    for s, t in ((10, 40), (25, 26)):
        cov = math.sqrt(abar[t] / abar[s]) * (1 - abar[s])
        se = math.sqrt(((1 - abar[s]) * (1 - abar[t]) + cov**2) / n)
        xs_c, xt_c = xs[s] - xs[s].mean(0), xs[t] - xs[t].mean(0)
        np.testing.assert_array_less(np.abs((xs_c * xt_c).sum(0).numpy() / (n - 1) - cov), 4.5 * se)


def test_q_step_and_q_sample_given_noise_are_exact():
    sched, abar = random_schedule(2, 30)
    betas = 1 - abar[1:] / abar[:-1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 4, 9, 16, 30])
    b = torch.tensor(betas[t.numpy() - 1]).reshape(-1, 1, 1)
    x_t, noise = q_step(sched, x, t, noise=eps)
    assert noise is eps
    np.testing.assert_allclose(x_t.numpy(), (torch.sqrt(1 - b) * x + torch.sqrt(b) * eps).numpy(),
                               rtol=1e-12)
    a = torch.tensor(abar[t.numpy()]).reshape(-1, 1, 1)
    x_t, _ = q_sample(sched, x, t, noise=eps)
    np.testing.assert_allclose(x_t.numpy(), (a.sqrt() * x + (1 - a).sqrt() * eps).numpy(), rtol=1e-12)
    x_0, _ = q_sample(sched, x, 0, noise=eps)
    np.testing.assert_array_equal(x_0.numpy(), x.numpy())


def test_q_sample_from_is_the_product_of_the_one_step_transitions():
    """q(x_t | x_s) = N(√(∏_{k=s+1..t} α_k) x_s, 1 − ∏ α_k): the product written from the β table
    (not from log ᾱ), per example; composing q(x_s | x_0) and q(x_t | x_s) has the variance of
    q(x_t | x_0): ∏ α_k (1 − ᾱ_s) + 1 − ∏ α_k = 1 − ᾱ_t."""
    sched, abar = random_schedule(3, 40)
    betas = 1 - abar[1:] / abar[:-1]
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, generator=g, dtype=torch.float64)
    s, t = torch.tensor([0, 3, 10, 39]), torch.tensor([5, 4, 30, 40])
    prod = torch.tensor([np.prod(1 - betas[a:b]) for a, b in zip(s.tolist(), t.tolist(), strict=True)])
    x_t, noise = q_sample_from(sched, x, s, t, noise=eps)
    assert noise is eps
    expected = prod.sqrt()[:, None] * x + (1 - prod).sqrt()[:, None] * eps
    np.testing.assert_allclose(x_t.numpy(), expected.numpy(), rtol=1e-12)
    a_ts = prod.numpy()
    np.testing.assert_allclose(a_ts * (1 - abar[s.numpy()]) + 1 - a_ts, 1 - abar[t.numpy()],
                               rtol=1e-12)
    # s = t is the identity; s > t is not a forward transition.
    torch.testing.assert_close(q_sample_from(sched, x, 7, 7, noise=eps)[0], x)
    with pytest.raises(ValueError, match="s <= t"):
        q_sample_from(sched, x, 8, 7)


def test_generator_reproduces_the_noise_and_float32_stays_float32():
    sched, _ = random_schedule(3, 10)
    x = torch.zeros(4, 2)
    a, _ = q_sample(sched, x, 5, generator=torch.Generator().manual_seed(7))
    b, _ = q_sample(sched, x, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.float32


@pytest.mark.parametrize("call, fragment", [
    (lambda s, x: q_step(s, x, 2.5), "2.5"),
    (lambda s, x: q_step(s, x, 0), "t = 0"),
    (lambda s, x: q_sample(s, x, 11), "11"),
    (lambda s, x: q_sample(s, x, torch.ones(3)), r"\(3,\)"),
    (lambda s, x: q_sample(s, x, 1, noise=torch.zeros(4, 3)), r"\(4, 3\)"),
    (lambda s, x: q_sample(s, x, 1, noise=torch.zeros(4, 2), generator=torch.Generator()),
     "not both"),
])
def test_forward_errors_name_the_value(call, fragment):
    sched, _ = random_schedule(4, 10)
    with pytest.raises(ValueError, match=fragment):
        call(sched, torch.zeros(4, 2))


# ---------------------------------------------------------------------------- reverse
def fake_denoised(x0: torch.Tensor, fraction: torch.Tensor | None = None) -> Denoised:
    return Denoised(x0=x0, eps=torch.zeros_like(x0), v=torch.zeros_like(x0), output=x0,
                    variance_fraction=fraction)


def test_reverse_variance_choices_against_the_tables():
    sched, abar = random_schedule(5, 40, hi=0.2)
    betas = 1 - abar[1:] / abar[:-1]
    beta_tilde = betas * (1 - abar[:-1]) / (1 - abar[1:])
    t = torch.arange(1, 41)
    x = torch.zeros(40, 3, dtype=torch.float64)
    _, var_b = reverse_mean_variance(sched, fake_denoised(x), x, t, variance="beta")
    _, var_bt = reverse_mean_variance(sched, fake_denoised(x), x, t, variance="beta_tilde")
    np.testing.assert_allclose(var_b.numpy().ravel(), betas, rtol=1e-10)
    # β̃_1 = 0: the last step uses β̃_2 instead (Improved DDPM's clipped log-variance).
    np.testing.assert_allclose(var_bt.numpy().ravel(), np.r_[beta_tilde[1], beta_tilde[1:]],
                               rtol=1e-10)
    for f in (0.0, 1.0, 0.3):
        frac = torch.full_like(x, f)
        _, var_l = reverse_mean_variance(sched, fake_denoised(x, frac), x, t, variance="learned")
        expected = np.exp(f * np.log(betas) + (1 - f) * np.log(np.r_[beta_tilde[1], beta_tilde[1:]]))
        np.testing.assert_allclose(var_l.numpy(), np.repeat(expected[:, None], 3, 1), rtol=1e-9)
    # By default a learned fraction selects "learned", its absence "beta_tilde".
    _, var_default = reverse_mean_variance(sched, fake_denoised(x, torch.ones_like(x)), x, t)
    np.testing.assert_allclose(var_default.numpy()[:, 0], betas, rtol=1e-9)


def test_respaced_reverse_variances():
    sched, abar = random_schedule(6, 40, hi=0.2)
    t, s = torch.tensor([40, 30, 12, 5]), torch.tensor([30, 12, 5, 0])
    x = torch.zeros(4, 1, dtype=torch.float64)
    _, var_b = reverse_mean_variance(sched, fake_denoised(x), x, t, s, variance="beta")
    _, var_bt = reverse_mean_variance(sched, fake_denoised(x), x, t, s, variance="beta_tilde")
    tn, sn = t.numpy(), s.numpy()
    var_ts = 1 - abar[tn] / abar[sn]
    np.testing.assert_allclose(var_b.numpy().ravel(), var_ts, rtol=1e-10)
    expected = var_ts * (1 - abar[sn]) / (1 - abar[tn])
    # s = 0 (5 → 0): the posterior variance of the next step of the same width, 10 → 5.
    expected[3] = (1 - abar[10] / abar[5]) * (1 - abar[5]) / (1 - abar[10])
    np.testing.assert_allclose(var_bt.numpy().ravel(), expected, rtol=1e-10)


@pytest.mark.parametrize("data_std, variance", [(1.0, "beta"), (1e-6, "beta_tilde")])
def test_reverse_step_of_the_ideal_denoiser_is_the_true_reverse(data_std, variance):
    """For x_0 ~ N(m, s²), (x_{t-1}, x_t) is jointly Gaussian; condition it (Schur complement).

    The mean is E[x_{t-1}|x_t] for any s; the variance Var(x_{t-1}|x_t) equals β_t when the data
    are N(0, 1)-like (s = 1, m = 0) and β̃_t when they are a point mass (s → 0) — the two
    extremes of Ho et al. §3.2.
    """
    m = 0.0 if data_std == 1.0 else 0.4
    sched, abar = random_schedule(7, 30, hi=0.2)
    gm = GaussianMixture([1.0], torch.tensor([[m, m]], dtype=torch.float64), data_std)
    den = Denoiser(gm.net(sched, "x0"), sched, "x0")
    g = torch.Generator().manual_seed(0)
    t = torch.arange(2, 31)
    x_t = torch.randn(29, 2, generator=g, dtype=torch.float64)
    mean, var = reverse_mean_variance(sched, den(x_t, t), x_t, t, variance=variance)
    s2 = data_std**2
    for i, ti in enumerate(t.tolist()):
        a_prev, a_t = abar[ti - 1], abar[ti]
        var_prev = a_prev * s2 + 1 - a_prev
        var_cur = a_t * s2 + 1 - a_t
        cov = math.sqrt(a_t / a_prev) * var_prev
        cond_mean = math.sqrt(a_prev) * m + cov / var_cur * (x_t[i].numpy() - math.sqrt(a_t) * m)
        np.testing.assert_allclose(mean[i].numpy(), cond_mean, rtol=1e-8, atol=1e-10)
        assert var[i].item() == pytest.approx(var_prev - cov**2 / var_cur, rel=1e-4)


def test_reverse_errors():
    sched, _ = random_schedule(8, 10)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="learned_variance=True"):
        reverse_mean_variance(sched, fake_denoised(x), x, 3, variance="learned")
    with pytest.raises(ValueError, match="'tilde'"):
        reverse_mean_variance(sched, fake_denoised(x), x, 3, variance="tilde")
    with pytest.raises(ValueError, match="s < t"):
        reverse_mean_variance(sched, fake_denoised(x), x, 3, 3)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        reverse_mean_variance(sched, fake_denoised(torch.zeros(2, 4)), x, 3)
