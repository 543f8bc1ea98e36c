"""GaussianMixture: its closed forms against Monte Carlo, and its argument checks."""

import math

import pytest
import torch

from noisecraft import Schedule
from noisecraft.analytic import GaussianMixture


def test_log_prob_of_one_component_is_the_gaussian_density():
    # One component N(μ, s² I) in D = 2: log N(x; αμ, (α²s² + σ²) I), written out by hand.
    gm = GaussianMixture([1.0], torch.tensor([[0.5, -1.0]]), 0.3)
    x = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    alpha, sigma = 0.8, 0.6
    var = alpha**2 * 0.09 + sigma**2
    sq = (0.1 - 0.4) ** 2 + (0.2 + 0.8) ** 2
    expected = -0.5 * sq / var - math.log(2 * math.pi * var)
    assert gm.log_prob(x, alpha, sigma).item() == pytest.approx(expected, rel=1e-12)


def test_posterior_mean_matches_monte_carlo():
    # E[x_0 | x_t ∈ a small box] from 4·10⁵ joint draws: the box keeps ~1e3 draws, so the standard
    # error of their mean is about std(x_0 | x_t)/√1000 ≤ 1/30 ≈ 0.03; allow 0.1 (3 standard errors).
    gen = torch.Generator().manual_seed(0)
    gm = GaussianMixture([0.3, 0.7], torch.tensor([[-1.0], [1.0]]), [0.2, 0.5])
    alpha, sigma = 0.6, 0.8
    x0 = gm.sample(400_000, gen)
    x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    near = (x_t - 0.2).abs() < 0.005
    mc = x0[near].mean().item()
    exact = gm.posterior_mean(torch.tensor([[0.2]], dtype=torch.float64), alpha, sigma).item()
    assert mc == pytest.approx(exact, abs=0.1)


@pytest.mark.parametrize("build, fragment", [
    (lambda: GaussianMixture([0.5, 0.5], torch.zeros(2, 1), [0.1, 0.2, 0.3]), r"\[0\.1, 0\.2, 0\.3\]"),
    (lambda: GaussianMixture([0.5, 0.6], torch.zeros(2, 1), 0.1), "sum to 1"),
    (lambda: GaussianMixture([1.0], torch.zeros(1, 1), 0.1).net(Schedule.linear(10), "score"),
     "'score'"),
])
def test_bad_arguments_raise_naming_the_value(build, fragment):
    with pytest.raises(ValueError, match=fragment):
        build()
