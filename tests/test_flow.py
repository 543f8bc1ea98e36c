"""Flow matching / rectified flow as a schedule and a prediction, against exact answers.

The straight path x = (1 − τ) x_0 + τ ε, τ = t/T, is ``Schedule.flow`` (a VP schedule with the
same log-SNR) read by ``Denoiser(prediction="flow")``, which feeds the network x_t/(α + σ) and
reads its velocity ε − x_0. The analytic Gaussian mixture gives the exact velocity in closed
form (its posterior mean conditioned on the straight-path point itself), so every claim below is
checked against the mixture's own x̂_0, ε̂, log-density and ODE solution.
"""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from noisecraft import Denoiser, GaussianMixture, Schedule, grids, losses, nll, sample
from noisecraft.editing import encode
from noisecraft.guidance import Guided
from noisecraft.likelihood import _ode_interval, ode_log_prob
from noisecraft.samplers import SAMPLERS

FLOW = Schedule.flow(1000)
MEANS = torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], dtype=torch.float64)
MIXTURE = GaussianMixture([0.5, 0.3, 0.2], MEANS, 0.1)
DETERMINISTIC = ["ddim", "euler", "heun", "dpmpp-2m"]
ORDERS = {"ddim": 1, "euler": 1, "heun": 2, "dpmpp-2m": 2}


def flow_denoiser(mixture: GaussianMixture, schedule: Schedule = FLOW) -> Denoiser:
    return Denoiser(mixture.net(schedule, "flow"), schedule, "flow")


def abar_from_betas(schedule: Schedule, t: int) -> float:
    """ᾱ_t as the product of the β table, independently of Schedule.marginal."""
    return float(np.prod(1 - schedule.betas.numpy()[:t]))


# ----------------------------------------------------------------------------- the schedule
@pytest.mark.parametrize("T", [1000, 7])
def test_flow_schedule_is_the_straight_path_at_every_integer_step(T):
    """From the β table alone: a = √ᾱ, s = √(1 − ᾱ) divided by a + s is (1 − t/T, t/T)."""
    sch = Schedule.flow(T)
    for t in range(T):
        abar = abar_from_betas(sch, t)
        a, s = math.sqrt(abar), math.sqrt(1 - abar)
        assert a / (a + s) == pytest.approx(1 - t / T, abs=1e-12)
        assert s / (a + s) == pytest.approx(t / T, abs=1e-12)
    # The end: β_T = 1 would make ᾱ_T = 0 (λ = −∞); it is clipped at max_beta as in cosine.
    assert sch.betas[-1].item() == pytest.approx(0.999)
    abar_T = abar_from_betas(sch, T)
    assert abar_T == pytest.approx(abar_from_betas(sch, T - 1) * 1e-3)
    assert math.isfinite(sch.log_snr(T).item())
    # Between integers λ is interpolated linearly; the straight path's λ = 2 log((1 − τ)/τ) is
    # smooth there, so at T = 1000 the midpoints are within its curvature term (< 1e-4 in τ).
    t = torch.arange(1, 999, dtype=torch.float64) + 0.5
    a, s = FLOW.marginal(t)
    assert ((s / (a + s)) - t / 1000).abs().max() < 1e-4


def test_time_from_log_snr_inverts_the_flow_schedule_up_to_its_clipped_end():
    """Samplers on λ-uniform grids map λ back to t; the flow's λ spans [λ(T), λ(1)] ≈ [−21, 14]."""
    t = torch.cat([torch.linspace(0.01, 1000, 997, dtype=torch.float64),
                   torch.tensor([999.5, 1000.0], dtype=torch.float64)])
    assert torch.allclose(FLOW.t_from_log_snr(FLOW.log_snr(t)), t, rtol=1e-9, atol=1e-9)


def test_flow_schedule_round_trips_and_checks_its_arguments():
    assert Schedule.from_dict(FLOW.to_dict()) == FLOW
    assert Schedule.from_name("flow", T=50) == Schedule.flow(50)
    with pytest.raises(ValueError, match="max_beta"):
        Schedule.flow(10, max_beta=1.0)
    with pytest.raises(ValueError, match="T"):
        Schedule.flow(0)


# ----------------------------------------------------------------------------- the reading
def test_the_exact_velocity_read_by_the_denoiser_is_the_mixtures_exact_x0_and_eps():
    """The flow net conditions the mixture on the straight-path point; the Denoiser must turn its
    velocity into the VP posterior mean E[x_0 | x_t] and E[ε | x_t], computed here directly."""
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([1.0, 3.0, 137.5, 500.0, 871.25, 999.0, 1000.0], dtype=torch.float64)
    x0 = MIXTURE.sample(t.numel(), gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    alpha, sigma = FLOW.marginal(t)
    x_t = alpha[:, None] * x0 + sigma[:, None] * eps
    d = flow_denoiser(MIXTURE)(x_t, t)
    exact_x0 = MIXTURE.posterior_mean(x_t, alpha, sigma)
    exact_eps = (x_t - alpha[:, None] * exact_x0) / sigma[:, None]
    assert (d.x0 - exact_x0).abs().max() < 1e-10
    assert (d.eps - exact_eps).abs().max() < 1e-10
    assert (d.v - (alpha[:, None] * exact_eps - sigma[:, None] * exact_x0)).abs().max() < 1e-10
    assert (d.output - (exact_eps - exact_x0)).abs().max() < 1e-10


def test_the_network_sees_the_straight_path_point_and_its_velocity_is_read_by_hand():
    """T = 4, t = 1: τ = 1/4. A net that records its input and returns a fixed velocity v."""
    sch = Schedule.flow(4)
    x0, eps = torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([[0.5, -1.0]],
                                                                           dtype=torch.float64)
    abar = abar_from_betas(sch, 1)
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    seen = []
    v = torch.tensor([[0.25, -0.75]], dtype=torch.float64)

    def net(x, t):
        seen.append(x)
        return v

    d = Denoiser(net, sch, "flow")(x_t, 1.0)
    assert torch.allclose(seen[0], 0.75 * x0 + 0.25 * eps, atol=1e-12)
    straight = 0.75 * x0 + 0.25 * eps
    assert torch.allclose(d.x0, straight - 0.25 * v, atol=1e-12)   # x̂_0 = x − τ v̂
    assert torch.allclose(d.eps, straight + 0.75 * v, atol=1e-12)  # ε̂ = x + (1 − τ) v̂


def test_the_flow_target_is_eps_minus_x0_on_a_hand_computed_batch():
    sch = Schedule.flow(10)
    x0 = torch.tensor([[1.0, 2.0], [-0.5, 0.0]])
    eps = torch.tensor([[0.5, -1.0], [2.0, 1.0]])
    den = Denoiser(lambda x, t: torch.zeros_like(x), sch, "flow")
    assert torch.equal(den.target(x0, eps, torch.tensor([3.0, 7.0])),
                       torch.tensor([[-0.5, -3.0], [2.5, 1.0]]))
    # L_simple of a zero net is the mean square of the target: (0.25 + 9)/2 and (6.25 + 1)/2.
    loss = losses.simple(den, x0, t=torch.tensor([3, 7]), noise=eps)
    assert torch.allclose(loss, torch.tensor([4.625, 3.625]))
    # A net that knows x_0 recovers the velocity from the point it is fed: (x − x_0)/τ.
    t = torch.tensor([3, 7])
    oracle = Denoiser(lambda x, tt: (x - x0) / (tt[:, None] / 10), sch, "flow")
    assert losses.simple(oracle, x0, t=t, noise=eps).abs().max() < 1e-10


def test_guidance_and_inversion_read_a_flow_run_as_they_read_an_eps_run():
    """Both parametrisations of the exact class-conditional mixture are the same model, so the
    guided reading and DDIM inversion must agree (to float64 rounding)."""
    eps_den = Denoiser(MIXTURE.net(FLOW, "eps"), FLOW, "eps")
    flow_den = flow_denoiser(MIXTURE)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    t = torch.tensor([20.0, 100.0, 300.5, 500.0, 800.0, 990.0], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    g_eps = Guided(eps_den, 3.0)(x, t, labels=labels)
    g_flow = Guided(flow_den, 3.0)(x, t, labels=labels)
    assert (g_eps.x0 - g_flow.x0).abs().max() < 1e-9
    assert (g_flow.output - (g_flow.eps - g_flow.x0)).abs().max() < 1e-12  # a flow velocity
    x0 = MIXTURE.sample(8, gen)
    x_T = encode(eps_den, x0, FLOW, 20)
    assert (x_T - encode(flow_den, x0, FLOW, 20)).abs().max() < 1e-9
    assert not torch.allclose(x_T, x0)


# ----------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_samplers_converge_to_the_exact_flow_of_a_gaussian_at_their_order(name):
    """For one Gaussian N(μ, s²I) the probability-flow ODE is solved in closed form (see
    tests/test_samplers.py): in y = x/α and σ̃ = σ/α, (y − μ)/√(s² + σ̃²) is constant, and the
    last step returns x̂_0 at t = 1, so the exact output from x_T is
    μ + (y_T − μ) s²/(√(s² + σ̃_1²) √(s² + σ̃_T²)), with σ̃ from the β table."""
    mu, s = torch.tensor([0.7, -0.4], dtype=torch.float64), 0.3
    den = flow_denoiser(GaussianMixture([1.0], mu[None], s))
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    st = {t: math.sqrt((1 - abar_from_betas(FLOW, t)) / abar_from_betas(FLOW, t))
          for t in (1, FLOW.T)}
    y_T = x_T * math.sqrt(1 + st[FLOW.T] ** 2)
    exact = mu + (y_T - mu) * s**2 / (math.sqrt(s**2 + st[1] ** 2) * math.sqrt(s**2 + st[FLOW.T] ** 2))
    steps = [32, 64, 128, 256]
    errors = [(SAMPLERS[name](den, x_T, grids.log_snr_uniform(FLOW, n)) - exact).abs().mean()
              .item() for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    # Measured: ddim = euler 0.98, heun 2.1, dpmpp-2m 1.9; ±0.3 separates the orders.
    assert abs(slope - ORDERS[name]) < 0.3, (slope, errors)
    assert errors[-1] < 1e-2


@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_ddim_and_euler_on_a_flow_run_are_rectified_flows_euler_sampler(name):
    """Rectified flow samples with Euler in τ on the straight path, x ← x + (τ_s − τ_t) v̂(x, t),
    from x = ε at τ = 1 to τ = 0. Written here by hand over the raw flow net, on uniform t
    (τ = t/T), it must equal DDIM (and Euler in σ̃) over the respaced grid: y_s = y_t +
    (σ̃_s − σ̃_t) ε̂ in y = x_t/α is the same update, since x^flow = (1 − τ) y and σ̃ = τ/(1 − τ)."""
    net = MIXTURE.net(FLOW, "flow")
    grid = grids.respaced(FLOW, 8)
    alpha, sigma = FLOW.marginal(grid)
    tau = sigma / (alpha + sigma)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = x_T / (alpha[0] + sigma[0])                 # the straight-path point at t = T
    for i in range(8):
        x = x + (tau[i + 1] - tau[i]) * net(x, grid[i].expand(32))
    library = SAMPLERS[name](flow_denoiser(MIXTURE), x_T, grid)
    assert (library - x).abs().max() < 1e-10


def test_dpmpp_2m_on_a_flow_run_draws_the_mixture():
    """25 steps of DPM-Solver++(2M) on the exact flow reach the mixture: mode weights within 4
    binomial standard errors, and each mode's spread within 4 relative standard errors of the
    exact std 0.1 (the last step's x̂_0 shrinkage at σ̃_1 ≈ 10⁻³ is below 10⁻⁴)."""
    n = 2000
    x = sample(flow_denoiser(MIXTURE), (n, 2), FLOW, sampler="dpmpp-2m", steps=25, seed=5,
               dtype=torch.float64)
    k = MIXTURE.component_of(x)
    for j, w in enumerate([0.5, 0.3, 0.2]):
        frac = (k == j).double().mean().item()
        assert abs(frac - w) < 4 * math.sqrt(w * (1 - w) / n), (j, frac)
    z = (x - MEANS[k]) / 0.1
    assert abs(z.std().item() - 1) < 4 / math.sqrt(2 * z.numel()), z.std().item()
    assert abs(z.mean().item()) < 4 / math.sqrt(z.numel())


# ----------------------------------------------------------------------------- likelihood
LIK_MIXTURE = GaussianMixture([0.3, 0.7], torch.tensor([[-0.6, 0.4], [0.5, -0.2]]), [0.15, 0.3])


def test_ode_likelihood_of_a_flow_run_is_the_mixtures_log_density():
    x = LIK_MIXTURE.sample(16, generator=torch.Generator().manual_seed(1))
    bits = nll(flow_denoiser(LIK_MIXTURE), x, FLOW, "ode", discrete=False, divergence="exact")
    exact = -LIK_MIXTURE.log_prob(x) / (2 * math.log(2))
    # What remains: the prior's mismatch (√ᾱ_T ≈ 3·10⁻⁵ here, 100× below the linear schedule's),
    # the start at σ = 10⁻³ (O(σ²/s²) ≈ 4·10⁻⁵ nats) and the solver (rtol 10⁻⁵). Measured: max
    # 2·10⁻⁴, mean 3·10⁻⁵ bits/dim.
    assert (bits - exact).abs().max() < 1e-3
    assert (bits - exact).mean().abs() < 2e-4


def test_ode_integral_of_a_flow_run_is_exact_up_to_the_solver_tolerance():
    """With the exact log q(x_T) in place of the N(0, I) prior and the exact log q(x) at t_start,
    what is left is the integration error alone (rtol = atol = 1e-5)."""
    x = LIK_MIXTURE.sample(16, generator=torch.Generator().manual_seed(2))
    flow = ode_log_prob(flow_denoiser(LIK_MIXTURE), x, divergence="exact")
    t0 = FLOW.t_from_log_snr(-2 * _ode_interval(FLOW, None)[0])
    alpha0, sigma0 = FLOW.marginal(t0)
    alpha_T, sigma_T = FLOW.marginal(float(FLOW.T))
    integral = flow.log_prob - flow.prior_log_prob
    err = (integral + LIK_MIXTURE.log_prob(flow.x_T, alpha_T, sigma_T)
           - LIK_MIXTURE.log_prob(x, alpha0, sigma0))
    assert err.abs().max() < 1e-3


# ----------------------------------------------------------------------------- time sampling
@pytest.mark.parametrize("T, mean, std", [(20, 0.0, 1.0), (1000, 0.5, 0.6)])
def test_logit_normal_time_sampler_draws_the_stated_law(T, mean, std):
    """χ² of the drawn t against P(t) = Φ((logit(t/T) − m)/s) − Φ((logit((t−1)/T) − m)/s) from
    scipy. Bins with < 5 expected counts are pooled (χ²'s validity); the threshold is χ²'s
    1 − 10⁻⁴ quantile for the remaining degrees of freedom, so a correct sampler fails 1 in 10⁴."""
    sampler = losses.TIME_SAMPLERS["logit-normal"](T, mean=mean, std=std)
    n = 100_000
    t, w = sampler.sample(n, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and int(t.min()) >= 1 and int(t.max()) <= T
    assert torch.equal(w, torch.ones(n))       # a weighting of the objective, not reweighted
    edges = np.arange(T + 1) / T
    with np.errstate(divide="ignore"):
        p = np.diff(stats.norm.cdf((special.logit(edges) - mean) / std))
    assert np.allclose(sampler.probabilities().numpy(), p, atol=1e-12)
    counts = np.bincount(t.numpy() - 1, minlength=T).astype(float)
    expected = n * p
    if T > 50:    # pool into 50 bins of equal width
        counts, expected = counts.reshape(50, -1).sum(1), expected.reshape(50, -1).sum(1)
    keep = expected >= 5
    observed, expect = counts[keep], expected[keep]
    if not keep.all():
        observed = np.append(observed, counts[~keep].sum())
        expect = np.append(expect, expected[~keep].sum())
    chi2 = ((observed - expect) ** 2 / expect).sum()
    assert chi2 < stats.chi2.ppf(1 - 1e-4, len(observed) - 1), chi2


def test_logit_normal_time_sampler_checks_its_arguments():
    with pytest.raises(ValueError, match="std"):
        losses.LogitNormalTimeSampler(10, std=0.0)
    with pytest.raises(ValueError, match="mean"):
        losses.LogitNormalTimeSampler(10, mean=float("nan"))
