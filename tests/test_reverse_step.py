"""The reverse step p_θ(x_s | x_t) is written once (process.reverse_mean_log_variance) and used by
the ddpm sampler, the bound's terms and nll(method="vlb"). Checked against answers computed
another way: brute-force Gaussian conditioning of the forward process on the analytic mixture,
whose E[x_0 | x_t] is exact, so p_θ's β̃ mean equals the true E[x_s | x_t]."""

import math

import pytest
import torch

from noisecraft import GaussianMixture, Schedule, editing, losses, nll, process, sample
from noisecraft.denoiser import Denoiser
from noisecraft.samplers import ddpm

SCHED = Schedule.cosine(T=40)
MIX = GaussianMixture([0.3, 0.7], torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), [0.3, 0.5])


def abar(t: int) -> float:
    """ᾱ_t from the schedule's β alone (the forward definition), ᾱ_0 = 1."""
    return math.prod(1 - b for b in SCHED.betas[:t].tolist())


def true_mean_of_x_s(x_t: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """E[x_s | x_t] under the data law, by conditioning the joint Gaussian of (x_s, x_t) within
    each component and weighting by the component's responsibility for x_t."""
    a_t, a_s = math.sqrt(abar(t)), math.sqrt(abar(s))
    out = torch.zeros_like(x_t)
    log_r = []
    means = []
    for w, mu, sd in zip(MIX.weights.tolist(), MIX.means, MIX.stds.tolist(), strict=True):
        var_s = a_s**2 * sd**2 + 1 - abar(s)                 # Var(x_s | k), per dimension
        var_t = a_t**2 * sd**2 + 1 - abar(t)                 # Var(x_t | k)
        cov = (a_t / a_s) * var_s                            # Cov(x_s, x_t | k): x_t = α_{t|s} x_s + …
        means.append(a_s * mu + cov / var_t * (x_t - a_t * mu))
        d = x_t.shape[1]
        log_r.append(math.log(w) - 0.5 * ((x_t - a_t * mu) ** 2).sum(1) / var_t
                     - 0.5 * d * math.log(2 * math.pi * var_t))
    r = torch.softmax(torch.stack(log_r, 1), 1)
    for k, m in enumerate(means):
        out = out + r[:, k:k + 1] * m
    return out


class FixedNoise:
    """A noise source returning the same known z on every draw."""

    def __init__(self, z: torch.Tensor):
        self.z, self.batch = z, z.shape[0]

    def randn(self, event_shape, *, dtype=torch.float32, device=None):
        return self.z.to(dtype)


class LearnedNet(torch.nn.Module):
    """The mixture's ideal x_0-network plus a constant variance channel: f = (raw + 1)/2."""

    def __init__(self, raw: float):
        super().__init__()
        self.ideal, self.raw = MIX.net(SCHED, "x0"), raw

    def forward(self, x, t):
        return torch.cat([self.ideal(x, t), torch.full_like(x, self.raw)], 1)


def one_ddpm_step(denoiser, x_t, t, s, z, variance):
    seen = []
    ddpm(denoiser, x_t, torch.tensor([float(t), float(s), 0.0], dtype=torch.float64),
         noise=FixedNoise(z), variance=variance, callback=lambda i, tt, x, x0: seen.append(x))
    return seen[0]


@pytest.mark.parametrize("t, s", [(30, 29), (30, 12), (5, 1)])
@pytest.mark.parametrize("variance", ["beta_tilde", "beta", "learned"])
def test_ddpm_step_is_the_true_posterior_mean_plus_the_chosen_variance(t, s, variance):
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(6, 2, generator=gen, dtype=torch.float64) * 1.3
    z = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    frac = 0.3
    net = LearnedNet(2 * frac - 1) if variance == "learned" else MIX.net(SCHED, "x0")
    den = Denoiser(net, SCHED, "x0", learned_variance=variance == "learned")
    got = one_ddpm_step(den, x_t, t, s, z, variance)
    var_beta = 1 - abar(t) / abar(s)                                   # σ²_{t|s}
    var_tilde = var_beta * (1 - abar(s)) / (1 - abar(t))               # β̃_{t|s}
    var = {"beta": var_beta, "beta_tilde": var_tilde,
           "learned": math.exp(frac * math.log(var_beta) + (1 - frac) * math.log(var_tilde))}[variance]
    want = true_mean_of_x_s(x_t, t, s) + math.sqrt(var) * z
    # float64 throughout; both sides are a few dozen operations on O(1) numbers.
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_ddpm_defaults_to_the_learned_variance_when_the_net_has_one():
    x_t = torch.randn(4, 2, dtype=torch.float64)
    z = torch.randn(4, 2, dtype=torch.float64)
    den = Denoiser(LearnedNet(0.5), SCHED, "x0", learned_variance=True)
    torch.testing.assert_close(one_ddpm_step(den, x_t, 20, 19, z, None),
                               one_ddpm_step(den, x_t, 20, 19, z, "learned"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="variance='learned' needs a Denoiser built with"):
        one_ddpm_step(Denoiser(MIX.net(SCHED, "x0"), SCHED, "x0"), x_t, 20, 19, z, "learned")
    with pytest.raises(ValueError, match=r"unknown variance 'tilde'; choose one of beta, beta_tilde"):
        one_ddpm_step(den, x_t, 20, 19, z, "tilde")


def gaussian_kl(m_q, v_q, m_p, v_p):
    """KL(N(m_q, v_q) ‖ N(m_p, v_p)) per dimension, summed over dimensions."""
    return (0.5 * (math.log(v_p) - math.log(v_q) + v_q / v_p
                   + (m_q - m_p) ** 2 / v_p - 1)).sum(1)


def test_nll_vlb_is_the_bound_built_from_the_true_posteriors():
    """nll(method="vlb") of the exact denoiser, rebuilt term by term by hand (continuous data):
    L_T + Σ_{t≥2} KL(q(x_{t−1}|x_t,x_0) ‖ N(E[x_{t−1}|x_t], β̃_t)) − log N(x_0; E[x_0|x_1], β̃_2)."""
    x0 = MIX.sample(5, torch.Generator().manual_seed(1))
    den = Denoiser(MIX.net(SCHED, "x0"), SCHED, "x0")
    got = nll(den, x0, SCHED, "vlb", discrete=False, generator=torch.Generator().manual_seed(7),
              batch_size=10_000)
    # The same x_t draws as vlb_nats: one standard normal per t, in increasing t.
    gen = torch.Generator().manual_seed(7)
    eps = [torch.randn(x0.shape, generator=gen, dtype=torch.float64) for _ in range(SCHED.T)]
    T, D = SCHED.T, x0.shape[1]
    total = 0.5 * (abar(T) * x0**2 - abar(T) - math.log(1 - abar(T))).sum(1)   # KL(q(x_T|x_0) ‖ N(0, I))
    for t in range(1, T + 1):
        x_t = math.sqrt(abar(t)) * x0 + math.sqrt(1 - abar(t)) * eps[t - 1]
        if t == 1:
            var_p = (1 - abar(1)) / (1 - abar(2)) * (1 - abar(2) / abar(1))       # β̃_2
            m_p = MIX.posterior_mean(x_t, math.sqrt(abar(1)), math.sqrt(1 - abar(1)))
            total = total + (0.5 * (math.log(2 * math.pi * var_p) + (x0 - m_p) ** 2 / var_p)).sum(1)
            continue
        # q(x_{t−1} | x_t, x_0) by conditioning (x_{t−1}, x_t) | x_0.
        a_prev, v_prev = math.sqrt(abar(t - 1)), 1 - abar(t - 1)
        cov, v_t = math.sqrt(abar(t) / abar(t - 1)) * v_prev, 1 - abar(t)
        m_q = a_prev * x0 + cov / v_t * (x_t - math.sqrt(abar(t)) * x0)
        v_q = v_prev - cov**2 / v_t
        total = total + gaussian_kl(m_q, v_q, true_mean_of_x_s(x_t, t, t - 1), v_q)
    # float64; the bound sums 41 terms of O(1)–O(10) nats.
    torch.testing.assert_close(got, total / (D * math.log(2)), rtol=1e-10, atol=1e-10)


def test_ddpm_nll_the_losses_and_inpainting_all_call_the_one_reverse_step(monkeypatch):
    calls = {"n": 0}
    real = process.reverse_mean_log_variance

    def spy(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(process, "reverse_mean_log_variance", spy)
    den = Denoiser(LearnedNet(0.0), SCHED, "x0", learned_variance=True)
    x0 = MIX.sample(3, torch.Generator().manual_seed(2)).clamp(-1, 1)
    for run in (lambda: sample(den, (3, 2), SCHED, "ddpm", steps=4, seed=0),
                lambda: nll(den, x0, SCHED, "vlb", discrete=False),
                lambda: losses.vlb(den, x0, discrete=False),
                lambda: losses.hybrid(den, x0, discrete=False),
                lambda: editing.inpaint(den, x0, torch.tensor([1.0, 0.0]), SCHED, 4, seed=0)):
        before = calls["n"]
        run()
        assert calls["n"] > before
