"""EDM (Karras et al. 2022) as a reading of the one Denoiser, a time sampler and a sampler,
against answers computed another way.

- ``Denoiser(prediction="edm")``: the analytic mixture's exact denoiser, conditioned in EDM's own
  variance-exploding scale (x = x_t/α, σ̃ = σ/α) and written as EDM's F = (D − c_skip x)/c_out
  with c_skip, c_out, c_in computed here from σ̃ alone, must read as the mixture's exact
  ε-reading (conditioned in the VP scale).
- The loss: EDM's λ(σ̃) ‖D − x_0‖² computed by hand on one batch equals ``losses.simple``.
- ``edm`` sampler: equals ``heun`` when S_churn = 0 (Algorithm 2 without churn is Algorithm 1),
  converges at order 2 to the closed-form ODE solution of a Gaussian, and with churn its samples
  match the mixture (mode weights, spread, sliced Wasserstein distance against the noise floor).
- ``log-normal`` time sampler: its law of t against Φ computed from the β table (exactly), and
  its draws against that law (the Dvoretzky–Kiefer–Wolfowitz bound).
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from noisecraft import Denoiser, GaussianMixture, Schedule, grids, losses, sample
from noisecraft.denoiser import SIGMA_DATA
from noisecraft.guidance import Guided
from noisecraft.samplers import SAMPLERS
from test_samplers import MEANS, STD, WEIGHTS, check_matches_mixture

LINEAR = Schedule.linear(1000)
COSINE = Schedule.cosine(1000)
MIXTURE = GaussianMixture(WEIGHTS, MEANS, STD)


def sigma_tilde_from_betas(schedule, t):
    """σ̃_t = √((1 − ᾱ_t)/ᾱ_t) from the β table, for integer t (numpy, float64)."""
    abar = np.cumprod(1 - schedule.betas.numpy())
    return np.sqrt((1 - abar) / abar)[np.asarray(t, dtype=np.int64) - 1]


def edm_coefficients(st, sd=SIGMA_DATA):
    """EDM's Table 1: c_skip, c_out, c_in from σ̃ (EDM's σ) and σ_d, written out again."""
    return sd**2 / (st**2 + sd**2), st * sd / (st**2 + sd**2) ** 0.5, 1 / (st**2 + sd**2) ** 0.5


class ExactF(torch.nn.Module):
    """The F whose EDM reading is the mixture's exact D: it undoes c_in on its input, conditions
    the mixture on x = x_t/α at noise σ̃ (VE: α = 1), and returns (D − c_skip x)/c_out. σ̃ comes
    from the schedule's log-SNR, σ̃ = exp(−λ/2); the calls are recorded."""

    def __init__(self, mixture, schedule, sd=SIGMA_DATA):
        super().__init__()
        self.mixture, self.schedule, self.sd, self.calls = mixture, schedule, sd, []

    def forward(self, x_in, t):
        self.calls.append((x_in, t))
        st = torch.exp(-0.5 * self.schedule.log_snr(t.double()))[:, None]
        c_skip, c_out, c_in = edm_coefficients(st, self.sd)
        x = x_in.double() / c_in
        d = self.mixture.posterior_mean(x, 1.0, st.squeeze(1))
        return ((d - c_skip * x) / c_out).to(x_in.dtype)


# ----------------------------------------------------------------------------- the reading
@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_edm_reading_of_the_exact_F_is_the_exact_eps_reading(schedule):
    edm = Denoiser(ExactF(MIXTURE, schedule), schedule, "edm")
    eps = Denoiser(MIXTURE.net(schedule, "eps"), schedule, "eps")
    gen = torch.Generator().manual_seed(0)
    for t in [1, 1.5, 2, 10, 37.25, 100, 250, 500, 750, 900, 999, 999.5, 1000]:
        alpha, sigma = (v.item() for v in schedule.marginal(t))
        noise = torch.randn(16, 2, generator=gen, dtype=torch.float64)
        x_t = alpha * MIXTURE.sample(16, gen) + sigma * noise
        a, b = edm(x_t, t), eps(x_t, t)
        # Float64 rounding, amplified where a reading divides: x̂_0 = (x_t − σ ε̂)/α by 1/α
        # (2·10⁴ at the cosine schedule's T), ε̂ = (x_t − α x̂_0)/σ by 1/σ (100 at t = 1).
        scale = 1e-13 * max(1 / alpha, 1 / sigma)
        torch.testing.assert_close(a.x0, b.x0, rtol=0, atol=scale)
        torch.testing.assert_close(a.eps, b.eps, rtol=0, atol=scale)
        torch.testing.assert_close(a.v, b.v, rtol=0, atol=scale)
        # The library's ideal net for "edm" (GaussianMixture.net) reads the same.
        ideal = Denoiser(MIXTURE.net(schedule, "edm"), schedule, "edm")(x_t, t)
        torch.testing.assert_close(ideal.x0, b.x0, rtol=0, atol=scale)
    # t = 0 (no noise): c_skip = 1, c_out = 0, so x̂_0 = x_t whatever the net says.
    x = torch.randn(4, 2, dtype=torch.float64)
    junk = Denoiser(lambda x_in, t: torch.full_like(x_in, 7.0), schedule, "edm")
    torch.testing.assert_close(junk(x, 0.0).x0, x, rtol=0, atol=1e-15)


def test_guidance_mixes_edm_readings_as_it_mixes_eps_ones():
    """Guided reads only ε̂ (and x̂_0), so classifier-free guidance of the exact EDM net is the
    guidance of the exact ε net, to rounding; and it samples with the edm sampler."""
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, -1])
    edm = Guided(Denoiser(MIXTURE.net(LINEAR, "edm"), LINEAR, "edm"), 3.0)
    eps = Guided(Denoiser(MIXTURE.net(LINEAR, "eps"), LINEAR, "eps"), 3.0)
    for t in (3, 400, 1000):
        a, b = edm(x, t, labels=labels), eps(x, t, labels=labels)
        torch.testing.assert_close(a.x0, b.x0, rtol=0, atol=1e-12)
        torch.testing.assert_close(a.eps, b.eps, rtol=0, atol=1e-12)
    kw = dict(sampler="edm", steps=10, seed=0, options={"S_churn": 5.0}, dtype=torch.float64,
              labels=torch.zeros(8, dtype=torch.long))
    # The readings differ by rounding (≤ 1e-13 · 1/α_T); ten guided steps amplify it (measured
    # 5e-7), as for the prediction types in tests/test_samplers.py: 1e-6 is far below any step.
    torch.testing.assert_close(sample(edm, (8, 2), LINEAR, **kw), sample(eps, (8, 2), LINEAR, **kw),
                               rtol=0, atol=1e-6)


def test_the_net_sees_c_in_times_x_over_alpha_and_the_library_t():
    net = ExactF(MIXTURE, LINEAR)
    x_t = torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor([5.0, 300.0, 1000.0], dtype=torch.float64)
    Denoiser(net, LINEAR, "edm")(x_t, t)
    x_in, t_seen = net.calls[-1]
    st = torch.tensor(sigma_tilde_from_betas(LINEAR, [5, 300, 1000]))[:, None]
    alpha = 1 / torch.sqrt(1 + st**2)                                      # σ̃² = 1/α² − 1
    torch.testing.assert_close(x_in, edm_coefficients(st)[2] * x_t / alpha, rtol=1e-13, atol=0)
    assert t_seen.dtype == torch.float32 and torch.equal(t_seen, t.float())


def test_sigma_data_one_is_v_prediction_with_F_equal_to_minus_v():
    """With σ_d = 1, r = √(σ² + α²) = 1: x̂_0 = α x_t + σ F, ε̂ = σ x_t − α F, which is the
    v reading of −F (x̂_0 = α x_t − σ v̂, ε̂ = σ x_t + α v̂)."""
    w = torch.randn(2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def net(x, t):
        return torch.tanh(x @ w) + 0.01 * t[:, None].double()

    x_t = torch.randn(8, 2, dtype=torch.float64)
    t = torch.linspace(1, 1000, 8, dtype=torch.float64)
    a = Denoiser(net, COSINE, "edm", sigma_data=1.0)(x_t, t)
    b = Denoiser(lambda x, s: -net(x, s), COSINE, "v")(x_t, t)
    torch.testing.assert_close(a.x0, b.x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.eps, b.eps, rtol=1e-12, atol=1e-12)


def test_bad_sigma_data_is_refused():
    for bad in (0, -0.5, math.inf, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="sigma_data"):
            Denoiser(lambda x, t: x, LINEAR, "edm", sigma_data=bad)


# ----------------------------------------------------------------------------- the loss
def test_simple_loss_of_an_edm_denoiser_is_edm_weighted_loss_on_a_hand_computed_batch():
    """EDM's loss (eq. 8, Table 1): λ(σ̃) ‖D(x; σ̃) − x_0‖², λ = (σ̃² + σ_d²)/(σ̃ σ_d)², with x the
    VE point x_0 + σ̃ ε (= x_t/α), D = c_skip x + c_out F(c_in x). All of it written out here."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(2, 2, generator=gen, dtype=torch.float64)

    def net(x_in, t):
        return torch.sin(x_in @ w) * (1 + t[:, None].double() / 1000)

    x0 = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    noise = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 40, 200, 500, 800, 1000], dtype=torch.float64)
    got = losses.simple(Denoiser(net, LINEAR, "edm"), x0, t=t, noise=noise)

    st = torch.tensor(sigma_tilde_from_betas(LINEAR, t))[:, None]
    x = x0 + st * noise
    c_skip, c_out, c_in = edm_coefficients(st)
    d = c_skip * x + c_out * net(c_in * x, t.float())
    lam = (st**2 + SIGMA_DATA**2) / (st * SIGMA_DATA) ** 2
    expected = (lam * (d - x0) ** 2).mean(1)
    torch.testing.assert_close(got, expected, rtol=1e-11, atol=0)
    # The weight is not 1 (λ runs from 4·10⁴ at t = 1 to 4 at t = T): the test can tell.
    assert not torch.allclose(got, ((d - x0) ** 2).mean(1), rtol=0.1)


# ----------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("grid_name", ["karras", "log-snr"])
def test_edm_without_churn_is_heun_on_the_same_grid(grid_name):
    den = Denoiser(MIXTURE.net(LINEAR, "eps"), LINEAR, "eps")
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = grids.make(grid_name, LINEAR, 12)
    assert torch.equal(SAMPLERS["edm"](den, x_T, g), SAMPLERS["heun"](den, x_T, g))
    assert SAMPLERS["edm"].default_grid == "karras"


def test_edm_converges_at_order_two_to_the_exact_gaussian_flow():
    """One Gaussian N(μ, s²): (y − μ)/√(s² + σ̃²) is constant along the flow in y = x/α, and the
    last step returns x̂_0(x_{t_1}) = μ + s²/(s² + σ̃_1²)(y_1 − μ) (the Karras grid ends at t = 1),
    so the exact output is μ + (y_T − μ) s²/(√(s² + σ̃_1²) √(s² + σ̃_T²))."""
    mu, s = torch.tensor([0.7, -0.4], dtype=torch.float64), 0.3
    den = Denoiser(GaussianMixture([1.0], mu[None], s).net(LINEAR, "eps"), LINEAR, "eps")
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    st_T, st_1 = sigma_tilde_from_betas(LINEAR, [1000, 1])
    y_T = x_T * math.sqrt(1 + st_T**2)
    exact = mu + (y_T - mu) * s**2 / (math.sqrt(s**2 + st_1**2) * math.sqrt(s**2 + st_T**2))
    steps = [16, 32, 64, 128]
    errors = [(sample(den, (64, 2), LINEAR, "edm", steps=n, x_T=x_T) - exact).abs().max().item()
              for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    # Heun's order is 2; ±0.3 separates it from Euler's 1 (tests/test_samplers.py measures 2.09).
    assert abs(slope - 2) < 0.3, (slope, errors)


@pytest.mark.parametrize("options", [
    {"S_churn": 80.0, "S_tmin": 0.05, "S_tmax": 50.0},
    {"S_churn": 20.0},
], ids=["imagenet-like", "everywhere"])
def test_edm_with_churn_samples_the_mixture(options):
    """The churn adds noise (the forward process, for S_noise = 1) and the ODE removes it, so
    the law stays the mixture's; checked by mode weights, the within-mode spread and the sliced
    Wasserstein distance, with tolerances from the sample size (tests/test_samplers.py).
    ``check_matches_mixture`` expects the last step's x̂_0 at the grid's t_1: the first set leaves
    σ̃ < 0.05 unchurned (σ̃(1) = 0.01); the second churns there too, and its last reading is at
    t̂ > t_1, whose x̂_0 shrinks the spread a little more: that set uses the t̂ grid below."""
    den = Denoiser(MIXTURE.net(LINEAR, "eps"), LINEAR, "eps")
    n, steps = 2000, 50
    grid = grids.karras(LINEAR, steps)
    x = sample(den, (n, 2), LINEAR, sampler="edm", steps=steps, seed=2024, options=options,
               dtype=torch.float64)
    assert x.shape == (n, 2) and torch.isfinite(x).all()
    if "S_tmin" not in options:
        # The last step reads at σ̂ = σ̃_1 (1 + γ), γ = S_churn/N: that is the spread to expect.
        gamma = min(options["S_churn"] / steps, math.sqrt(2) - 1)
        st_hat = sigma_tilde_from_betas(LINEAR, 1) * (1 + gamma)
        grid = grid.clone()
        grid[-2] = LINEAR.t_from_log_snr(-2 * math.log(st_hat)).item()
    check_matches_mixture(x, MIXTURE, LINEAR, grid)
    # Churn changed the samples: it is not heun in disguise.
    ode = sample(den, (n, 2), LINEAR, sampler="heun", grid=grids.karras(LINEAR, steps), seed=2024,
                 dtype=torch.float64)
    assert (x - ode).abs().mean() > 0.01


def test_edm_churn_draws_per_example_noise():
    """A sample does not depend on the batch it was drawn in (the churn noise included)."""
    den = Denoiser(MIXTURE.net(LINEAR, "eps"), LINEAR, "eps")
    kw = dict(sampler="edm", steps=10, seed=5, options={"S_churn": 10.0}, dtype=torch.float64)
    full = sample(den, (6, 2), LINEAR, **kw)
    part = sample(den, (2, 2), LINEAR, seed_offset=4, **kw)
    torch.testing.assert_close(full[4:], part, rtol=0, atol=0)


def test_edm_counts_2N_minus_1_denoiser_calls_with_or_without_churn():
    calls = []
    base = Denoiser(MIXTURE.net(LINEAR, "eps"), LINEAR, "eps")

    class Counting(Denoiser):
        def __call__(self, x, t, **cond):
            calls.append(float(t) if not torch.is_tensor(t) or t.ndim == 0 else t[0].item())
            return base(x, t, **cond)

    den = Counting(base.net, LINEAR, "eps")
    for options in ({}, {"S_churn": 30.0}):
        calls.clear()
        sample(den, (4, 2), LINEAR, sampler="edm", steps=10, options=options, seed=0)
        assert len(calls) == 19
    # With churn the readings sit above the grid's nodes (t̂ > t_i), except at t = T (capped).
    g = grids.karras(LINEAR, 10).tolist()
    starts = calls[0::2][:9]
    assert starts[0] == g[0] and all(t_hat > t for t_hat, t in zip(starts[1:], g[1:9], strict=True))


@pytest.mark.parametrize("bad", [{"S_churn": -1.0}, {"S_noise": -0.1}, {"S_tmin": 2.0, "S_tmax": 1.0},
                                 {"S_tmin": -1.0}])
def test_edm_refuses_bad_options(bad):
    den = Denoiser(MIXTURE.net(LINEAR, "eps"), LINEAR, "eps")
    with pytest.raises(ValueError, match="S_"):
        sample(den, (2, 2), LINEAR, sampler="edm", steps=3, options=bad)


# ----------------------------------------------------------------------------- the time sampler
def lognormal_law(schedule, mean=-1.2, std=1.2):
    """p_t = Φ(u_t) − Φ(u_{t−1}) with u_t = (ln σ̃(t) − mean)/std, from the β table; the draws
    below σ̃(1) go to t = 1 and those above σ̃(T) to T (u_0 = −∞, u_T = +∞)."""
    T = schedule.T
    u = (np.log(sigma_tilde_from_betas(schedule, np.arange(1, T + 1))) - mean) / std
    cdf = stats.norm.cdf(u)
    cdf[-1] = 1.0
    return np.diff(np.concatenate([[0.0], cdf]))


@pytest.mark.parametrize("schedule", [LINEAR, COSINE, Schedule.linear(10)],
                         ids=["linear", "cosine", "linear-T10"])
def test_log_normal_time_sampler_has_edm_law_of_sigma(schedule):
    sampler = losses.time_sampler("log-normal", schedule)
    law = lognormal_law(schedule)
    np.testing.assert_allclose(sampler.probabilities().numpy(), law, rtol=1e-9, atol=1e-15)
    if schedule.T == 10:
        # σ̃(10) = 0.33 on this short schedule: the draws above it (47 %) are clipped onto T.
        assert law[-1] == pytest.approx(stats.norm.sf((math.log(
            sigma_tilde_from_betas(schedule, 9)) + 1.2) / 1.2))
    n = 200_000
    t, w = sampler.sample(n, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.min() >= 1 and t.max() <= schedule.T
    assert torch.equal(w, torch.ones(n))
    # Each draw lands on the first step whose noise level reaches it: σ̃(t − 1) < σ̃ ≤ σ̃(t)
    # (σ̃(0) = 0; above σ̃(T) on T). The draws are z ~ N(0, 1) in float64 from the generator.
    z = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    st = np.exp(-1.2 + 1.2 * z)
    levels = np.concatenate([[0.0], sigma_tilde_from_betas(schedule, np.arange(1, schedule.T + 1))])
    tn = t.numpy()
    assert (levels[tn - 1] < st).all() and ((st <= levels[tn]) | (tn == schedule.T)).all()
    # DKW: P(sup_k |F_n(k) − F(k)| > ε) ≤ 2 exp(−2 n ε²); ε for a 1e-6 false-alarm rate.
    ecdf = np.cumsum(np.bincount(t.numpy(), minlength=schedule.T + 1)[1:]) / n
    eps = math.sqrt(math.log(2 / 1e-6) / (2 * n))
    assert np.abs(ecdf - np.cumsum(law)).max() < eps


def test_log_normal_time_sampler_needs_its_schedule():
    with pytest.raises(ValueError, match="Schedule"):
        losses.TIME_SAMPLERS["log-normal"](1000)
    with pytest.raises(ValueError, match="Schedule"):
        losses.TIME_SAMPLERS["log-normal"](500, LINEAR)
    with pytest.raises(ValueError, match="P_std"):
        losses.LogNormalTimeSampler(1000, LINEAR, std=0.0)
    with pytest.raises(ValueError, match="unknown time sampler"):
        losses.time_sampler("lognormal", LINEAR)
    assert isinstance(losses.time_sampler("uniform", LINEAR), losses.UniformTimeSampler)


@pytest.mark.parametrize("prediction", ["edm", "flow"])
def test_the_closed_form_linear_net_reads_alike_in_every_prediction(prediction):
    """``nets.linear.LinearDiffusion`` computes E[ε | x_t] in closed form and returns it in the
    run's prediction; fed the Denoiser's x_t/r (edm) or x_t/(α + σ) (flow), it must undo that
    scaling, so its x̂_0 equals the ε-fit's (float32 rounding)."""
    from noisecraft import data
    from noisecraft.nets.linear import LinearDiffusion

    moons = data.load("moons")
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    readings = {}
    for p in ("eps", prediction):
        net = LinearDiffusion(in_channels=2, image_size=None, num_components=4)
        net.fit_closed_form(moons, LINEAR, p)
        readings[p] = [Denoiser(net, LINEAR, p)(x, t).x0 for t in (1, 300, 1000)]
    # float32 rounding (6e-8) amplified by x̂_0 = (x_t − σ ε̂)/α, 1/α_T = 157: ~1e-5; the net
    # that read its input as x_t was off by 0.05 (edm) and 0.3 (flow).
    for a, b in zip(readings["eps"], readings[prediction], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- σ_data of a run
def test_a_runs_sigma_data_reaches_its_training_and_sampling_denoisers(tmp_path):
    """--sigma-data is recorded in config.json and read by both Denoisers: the loaded run's,
    and the trainer's (same seed, σ_d 0.5 against 1.0: the preconditioning, hence the loss
    and the weights, differ)."""
    import dataclasses
    import json

    import safetensors.torch

    from noisecraft.train import load_run
    from train_helpers import train, vector_config

    runs = {}
    for sd in (SIGMA_DATA, 1.0):
        config, dataset = vector_config(3)
        config = dataclasses.replace(config, prediction="edm", sigma_data=sd)
        train(tmp_path / str(sd), config, dataset)
        assert json.loads((tmp_path / str(sd) / "config.json").read_text())["sigma_data"] == sd
        assert load_run(tmp_path / str(sd)).denoiser.sigma_data == sd
        runs[sd] = safetensors.torch.load_file(tmp_path / str(sd) / "model.safetensors")
    assert any(not torch.equal(runs[SIGMA_DATA][k], runs[1.0][k]) for k in runs[1.0])


@pytest.mark.parametrize("prediction, net, match", [
    ("eps", "mlp", "applies to prediction 'edm' only"),
    ("edm", "linear", "closed-form linear net"),
])
def test_a_sigma_data_the_run_would_ignore_is_refused(prediction, net, match):
    from noisecraft import data
    from noisecraft.train import new_run_config

    dataset = data.load("moons" if net == "mlp" else "digits")
    with pytest.raises(ValueError, match=match):
        new_run_config(dataset, "x", net=net, prediction=prediction, sigma_data=1.0)
