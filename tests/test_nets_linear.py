"""LinearDiffusion (nets/linear.py): the closed-form fit against answers computed other ways.

- the algebra: the fitted net equals the exact E[ε | x_t] of the Gaussian mixture of the data's
  own (empirical) moments, computed by dense Gaussian conditioning and torch's multivariate
  normal density (no PCA basis, no diagonal trick) — to float64 rounding;
- the statistics: fitted on draws from a known mixture (``noisecraft.analytic``), it recovers
  that mixture's exact denoiser within the error of the moments estimated from n draws;
- the two fits of a per-t regressor: least squares on (x_t, ε) pairs and the moments' closed form;
- the command line: ``noisecraft train --net linear`` solves in seconds, ``sample`` reads it.
"""

import math
import time

import pytest
import torch
from torch.distributions import MultivariateNormal

from noisecraft import Schedule, nets
from noisecraft.analytic import GaussianMixture
from noisecraft.nets.linear import LinearDiffusion, least_squares_noise_regressor

SCHEDULE = Schedule.from_name("cosine", T=1000)
TIMES = (5.0, 120.0, 400.5, 800.0, 990.0)  # fractional t too: solvers ask for it


def dataset(x, labels=None):
    """The items a data set yields: ``{"x", "label"}``."""
    return [{"x": v, "label": None if labels is None else int(labels[i])} for i, v in enumerate(x)]


def two_gaussians(n=3000, seed=0):
    """Two anisotropic 3-D Gaussians (correlated coordinates), labelled 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    mus = torch.tensor([[1.0, -0.5, 0.3], [-1.0, 0.8, 0.0]], dtype=torch.float64)
    chol = torch.tensor([[[0.5, 0, 0], [0.3, 0.4, 0], [0.1, -0.2, 0.3]],
                         [[0.3, 0, 0], [-0.1, 0.6, 0], [0.2, 0.1, 0.2]]], dtype=torch.float64)
    labels = torch.arange(n) % 2
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return mus[labels] + torch.einsum("nij,nj->ni", chol[labels], z), labels


def conditioning_eps(x, labels, x_t, alpha, sigma, cov_of=None):
    """E[ε | x_t] for the mixture of the classes' empirical Gaussians (weights: class frequencies)
    by dense Gaussian conditioning: E[ε | x_t, k] = σ (α² Σ_k + σ² I)⁻¹ (x_t − α μ_k), mixed by
    r_k ∝ w_k N(x_t; α μ_k, α² Σ_k + σ² I) from torch's MultivariateNormal."""
    eye = torch.eye(x.shape[1], dtype=torch.float64)
    eps, log_r = [], []
    for k in labels.unique():
        rows = x[labels == k]
        mu = rows.mean(0)
        cov = torch.cov(rows.T, correction=0) if cov_of is None else cov_of(rows)
        c = alpha**2 * cov + sigma**2 * eye
        eps.append(sigma * torch.linalg.solve(c, (x_t - alpha * mu).T).T)
        log_r.append(math.log(len(rows) / len(x)) + MultivariateNormal(alpha * mu, c).log_prob(x_t))
    r = torch.softmax(torch.stack(log_r, 1), dim=1)
    return (r[:, :, None] * torch.stack(eps, 1)).sum(1)


def test_fit_equals_dense_gaussian_conditioning_of_the_empirical_moments():
    x, labels = two_gaussians()
    net = LinearDiffusion(in_channels=3, image_size=None, num_components=1, num_classes=2,
                          min_variance=1e-12, T=SCHEDULE.T)
    net.fit_closed_form(dataset(x, labels), SCHEDULE)
    probe = torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in TIMES:
        alpha, sigma = (float(v) for v in SCHEDULE.marginal(t))
        got = net(probe, torch.full((64,), t, dtype=torch.float64))
        want = conditioning_eps(x, labels, probe, alpha, sigma)
        # Both are float64 evaluations of the same formula: only rounding separates them.
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
        for k in (0, 1):  # a label keeps its class's component: the class-conditional denoiser
            rows = labels == k
            want_k = conditioning_eps(x[rows], labels[rows], probe, alpha, sigma)
            got_k = net(probe, torch.full((64,), t), labels=torch.full((64,), k))
            torch.testing.assert_close(got_k, want_k, rtol=1e-9, atol=1e-9)


def test_low_rank_fit_equals_conditioning_on_the_probabilistic_pca_covariance():
    """rank r: Σ = U_r diag(λ_r) U_rᵀ + ν (I − U_r U_rᵀ), ν the mean of the other variances;
    here U and λ come from an SVD of the centred data, not from the net's eigh."""
    x, labels = two_gaussians(seed=2)

    def ppca(rows):
        centred = rows - rows.mean(0)
        _, sv, vt = torch.linalg.svd(centred, full_matrices=False)
        lam = sv**2 / len(rows)
        u = vt[:2].T
        nu = lam[2:].mean()
        return u @ torch.diag(lam[:2]) @ u.T + nu * (torch.eye(3, dtype=torch.float64) - u @ u.T)

    net = LinearDiffusion(in_channels=3, image_size=None, num_components=1, num_classes=2,
                          rank=2, min_variance=1e-12, T=SCHEDULE.T)
    net.fit_closed_form(dataset(x, labels), SCHEDULE)
    probe = torch.randn(64, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for t in TIMES:
        alpha, sigma = (float(v) for v in SCHEDULE.marginal(t))
        got = net(probe, torch.full((64,), t))
        want = conditioning_eps(x, labels, probe, alpha, sigma, cov_of=ppca)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_fit_on_draws_of_a_known_mixture_recovers_its_exact_denoiser():
    """Unconditional fit (K-means finds the components: their means lie 8 standard deviations
    apart, so assignments are right but for a fraction ~1e-15) vs the analytic mixture's exact
    x̂_0 = E[x_0 | x_t].

    Tolerance from the sample size n_k = 80,000 per component: the estimated mean is off by
    δμ ~ s/√n_k per coordinate, the variance by δs² ~ s²√(2/n_k) and the weight by
    δw ~ √(w(1 − w)/n). Through E[x_0|x_t,k] = μ + G (x_t − α μ), G = α s²/(α² s² + σ²), a
    component's x̂_0 error is δμ (1 − α G) + δG (x_t − α μ), where |1 − α G| ≤ 1 and, with
    |x_t − α μ| up to 3 standard deviations √(α² s² + σ²), |δG (x_t − α μ)| ≤ 3 δs²/s =
    3 s √(2/n_k): at most (1 + 3√2) s/√n_k ≈ 5.2 · 0.5/√80000 ≈ 0.009. At large t, where the
    responsibilities are the weights, the weight error moves x̂_0 by |μ_1 − μ_2| δw ≈
    4 · 0.5/√160000 = 0.005. The bound is 0.014 (measured: 0.007); the tolerance 0.035 is 2.5
    times it, and a fit that mis-estimates a variance by 10 % misses it (checked by breaking it).
    """
    n = 160_000
    mixture = GaussianMixture([0.5, 0.5], torch.tensor([[2.0, 0.0], [-2.0, 0.0]]), [0.5, 0.3])
    x0 = mixture.sample(n, generator=torch.Generator().manual_seed(0))
    net = LinearDiffusion(in_channels=2, image_size=None, num_components=2, T=SCHEDULE.T)
    net.fit_closed_form(dataset(x0), SCHEDULE, prediction="x0")
    g = torch.Generator().manual_seed(1)
    for t in TIMES:
        alpha, sigma = SCHEDULE.marginal(t)
        x_t = alpha * mixture.sample(500, generator=g) + sigma * torch.randn(500, 2, generator=g,
                                                                              dtype=torch.float64)
        want = mixture.posterior_mean(x_t, alpha, sigma)
        got = net(x_t, torch.full((500,), t))
        assert (got - want).abs().max() < 0.035, (t, (got - want).abs().max())


def affine_map(f, dim):
    """(A, b) of an affine f: b = f(0), A's column i = f(e_i) − f(0)."""
    probes = torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64)])
    out = f(probes)
    return (out[1:] - out[0]).T, out[0]


def test_least_squares_and_moment_fits_of_the_noise_regressor_agree():
    """One Gaussian component: the net's regressor at t (closed form from the moments) and a
    least-squares fit of ε on (x_t, 1) from N pairs. The least-squares coefficients' standard
    error is at most sd(ε residual)/(√N sd(x_t)) ≤ 1/(√N σ) = 1/(√200000 · 0.6) ≈ 0.004;
    the tolerance 0.02 is 5 of those."""
    x, labels = two_gaussians(n=4000)
    x = x[labels == 0]
    net = LinearDiffusion(in_channels=3, image_size=None, num_components=1, T=SCHEDULE.T)
    net.fit_closed_form(dataset(x), SCHEDULE)
    t = float(SCHEDULE.t_from_log_snr(torch.tensor(math.log(0.8**2 / 0.6**2))))
    alpha, sigma = (float(v) for v in SCHEDULE.marginal(t))
    a_moments, b_moments = affine_map(lambda p: net(p, torch.full((len(p),), t)), 3)
    a_ls, b_ls = least_squares_noise_regressor(x, alpha, sigma, 200_000,
                                               torch.Generator().manual_seed(4))
    torch.testing.assert_close(a_ls, a_moments, rtol=0, atol=0.02)
    torch.testing.assert_close(b_ls, b_moments, rtol=0, atol=0.02)


def test_one_component_is_affine_and_several_are_not():
    """The only nonlinearity is the softmax over components."""
    x, labels = two_gaussians()
    probe = torch.randn(8, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = torch.full((8,), 500.0)
    gaps = []
    for k in (1, 2):
        net = LinearDiffusion(in_channels=3, image_size=None, num_components=k, T=SCHEDULE.T)
        net.fit_closed_form(dataset(x), SCHEDULE)
        a, b = affine_map(lambda p: net(p, t[: len(p)].new_full((len(p),), 500.0)), 3)  # noqa: B023
        gaps.append(float((net(probe, t) - (probe @ a.T + b)).abs().max()))
    assert gaps[0] < 1e-10 and gaps[1] > 1e-2, gaps


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="num_components"):
        LinearDiffusion(num_components=0)
    net = LinearDiffusion(in_channels=2, image_size=None, num_components=3, num_classes=2, T=10)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="not fitted"):
        net(x, torch.ones(2))
    with pytest.raises(ValueError, match="T = 1000"):
        net.fit_closed_form(dataset(torch.zeros(4, 2), [0, 1, 0, 1]), SCHEDULE)
    sched = Schedule.from_name("linear", T=10)
    with pytest.raises(ValueError, match="class 1 has no examples"):
        net.fit_closed_form(dataset(torch.randn(8, 2), [0] * 8), sched)
    with pytest.raises(ValueError, match="num_components = 3"):
        net.fit_closed_form(dataset(torch.randn(4, 2), [0, 1, 0, 1]), sched)
    net.fit_closed_form(dataset(torch.randn(8, 2), [0, 1] * 4), sched)
    with pytest.raises(ValueError, match=r"labels must lie in -1\.\.1"):
        net(x, torch.ones(2), labels=torch.tensor([0, 2]))


def test_train_solves_in_seconds_and_sample_reads_it(tmp_path, capsys):
    from noisecraft import load_run
    from noisecraft.cli import main

    start = time.perf_counter()
    assert main(["train", "--data", "digits", "--net", "linear", "--out", str(tmp_path / "run"),
                 "--sample-every", "0", "--no-progress"]) == 0
    assert time.perf_counter() - start < 30  # loading digits dominates; the solve is ~0.1 s
    assert "step 1," in capsys.readouterr().out
    assert main(["sample", str(tmp_path / "run"), "--n", "4", "--steps", "10",
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert (tmp_path / "s.npz").is_file()
    run = load_run(tmp_path / "run")
    assert isinstance(run.net, LinearDiffusion) and run.config.net["arch"] == "linear-diffusion"
    rebuilt = nets.from_config(run.net.config)  # the config round trip, then the saved weights
    rebuilt.load_state_dict(run.net.state_dict())
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([10.0, 500.0, 999.0])
    torch.testing.assert_close(rebuilt(x, t), run.net(x, t), rtol=0, atol=0)
    assert run.generate(2, steps=5, seed=0).shape == (2, 8, 8, 1)
    live = load_run(tmp_path / "run", use_ema=False)  # solved once: model and EMA weights agree
    assert run.step == live.step == 1
    torch.testing.assert_close(live.net(x, t), run.net(x, t), rtol=0, atol=0)
