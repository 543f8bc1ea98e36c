"""Reflow: the ODE coupling, the straightness figure and its fall, against independent answers.

The teacher is the analytic Gaussian mixture's exact flow velocity (``GaussianMixture.net``), so
the pairs can be checked against a high-accuracy solve of the straight-path ODE written here from
the mixture's posterior mean alone, and the straightness figure against Gaussians whose ODE paths
are known in closed form.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from noisecraft import Denoiser, GaussianMixture, Schedule, losses
from noisecraft.reflow import PairedDataset, ode_pairs, straightness

FLOW = Schedule.flow(1000)
MEANS = torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], dtype=torch.float64)
MIXTURE = GaussianMixture([0.5, 0.3, 0.2], MEANS, 0.1)


def exact(mixture: GaussianMixture, schedule: Schedule = FLOW) -> Denoiser:
    return Denoiser(mixture.net(schedule, "flow"), schedule, "flow")


def tau_T(schedule: Schedule) -> float:
    a, s = schedule.marginal(torch.tensor(float(schedule.T), dtype=torch.float64))
    return float(s / (a + s))


def solve_straight_path(mixture: GaussianMixture, z1: np.ndarray, tau1: float) -> np.ndarray:
    """z at τ = 0 from z(τ1) = z1 by dz/dτ = ε̂ − x̂_0 with x̂_0 = E[x_0 | z = (1 − τ) x_0 + τ ε]
    (the mixture's posterior mean at α = 1 − τ, σ = τ), RK45 at rtol 1e-10. The last 1e-6 of τ
    is one Euler step (ε̂ − x̂_0 → (z − x̂_0)/τ − x̂_0 is singular at τ = 0 but x̂_0 is smooth)."""
    def velocity(tau: float, z: np.ndarray) -> np.ndarray:
        zt = torch.tensor(z.reshape(1, -1))
        x0 = mixture.posterior_mean(zt, 1 - tau, tau)
        eps = (zt - (1 - tau) * x0) / tau
        return (eps - x0).numpy().ravel()
    out = integrate.solve_ivp(velocity, (tau1, 1e-6), z1, rtol=1e-10, atol=1e-12)
    z = out.y[:, -1]
    return z - 1e-6 * velocity(1e-6, z)


def test_the_pairs_are_the_exact_ode_coupling_of_the_mixture():
    """x_0 = ODE(x_T) for every pair, to the solver's accuracy. Measured max deviation from the
    RK45 solve, Heun on log-SNR grids: 7.0e-2 (20 steps), 1.8e-3 (100), 1.7e-4 (400), i.e. second
    order, converging on the reference. The bound 5e-4 at 400 steps (3× the measured error)
    excludes the 100-step solve and any mismatch of x_T and x_0 (pairs shuffled: O(1) apart).
    The seed fixes the pairs, whatever the batch they are drawn in."""
    pairs = ode_pairs(exact(MIXTURE), 12, (2,), sampler="heun", steps=400, seed=3,
                      dtype=torch.float64)
    again = ode_pairs(exact(MIXTURE), 12, (2,), sampler="heun", steps=400, seed=3, batch_size=5,
                      dtype=torch.float64)
    assert torch.equal(pairs.x_T, again.x_T) and torch.allclose(pairs.x_0, again.x_0, atol=1e-12)
    a, s = FLOW.marginal(torch.tensor(1000.0, dtype=torch.float64))
    scale, tau1 = float(1 / (a + s)), tau_T(FLOW)
    reference = np.stack([solve_straight_path(MIXTURE, x.numpy() * scale, tau1)
                          for x in pairs.x_T])
    err = np.abs(pairs.x_0.numpy() - reference).max()
    assert err < 5e-4, err


def test_the_pairs_refuse_a_stochastic_sampler():
    with pytest.raises(ValueError, match="ddpm"):
        ode_pairs(exact(MIXTURE), 4, (2,), sampler="ddpm")


def test_straightness_of_a_gaussian_against_its_closed_form_paths():
    """Data N(m, s² I): the ODE path through z(τ_T) is z_τ = (1 − τ) m + r(τ) u with
    r = √((1 − τ)² s² + τ²) (a Gaussian flows onto a Gaussian affinely), so the deviation from
    the straight velocity, ((r(τ_T) − s)/τ_T − r'(τ)) u, does not depend on m and
    S = ‖u‖² ∫₀^τ_T ((r(τ_T) − s)/τ_T − r'(τ))² dτ / τ_T, by quadrature. The figure's Euler path
    errs by O(Δτ): measured max relative deviation 3.6e-2 (100 steps), 1.8e-2 (200), so ~9e-3
    at 400 steps; bound 2e-2."""
    s, m = 0.3, torch.tensor([2.0, -1.0], dtype=torch.float64)
    gauss = GaussianMixture([1.0], m[None], s)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = straightness(exact(gauss), x_T, steps=400)
    a, sg = FLOW.marginal(torch.tensor(1000.0, dtype=torch.float64))
    t1 = tau_T(FLOW)

    def r(tau: float) -> float:
        return math.sqrt((1 - tau) ** 2 * s**2 + tau**2)

    def dr(tau: float) -> float:
        return (tau - (1 - tau) * s**2) / r(tau)

    u = (x_T / (a + sg) - (1 - t1) * m) / r(t1)
    integral = integrate.quad(lambda v: ((r(t1) - s) / t1 - dr(v)) ** 2, 0, t1, limit=200)[0] / t1
    want = (u**2).sum(1) * integral
    assert torch.allclose(got, want, rtol=2e-2), (got[:4], want[:4])


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Linear(3, 128), torch.nn.SiLU(),
                                     torch.nn.Linear(128, 128), torch.nn.SiLU(),
                                     torch.nn.Linear(128, 2))

    def forward(self, x, t):
        return self.f(torch.cat([x, (t / 1000)[:, None].to(x.dtype)], 1))


def reflowed(pairs, paired: bool) -> Denoiser:
    """A tiny MLP flow model trained 600 steps on the pairs: with the paired noise (reflow), or
    with fresh noise (the independent coupling, the control)."""
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    d = Denoiser(net, FLOW, "flow")
    data = PairedDataset(pairs, info={"kind": "vector"}, preprocess=None, source="pairs")
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        batch = [data[int(i)] for i in torch.randint(len(data), (256,), generator=g)]
        x0 = torch.stack([b["x"] for b in batch])
        noise = torch.stack([b["noise"] for b in batch]) if paired else None
        t = torch.rand(256, generator=g, dtype=torch.float64) * 999 + 1
        loss = losses.simple(d, x0, t=t, noise=noise, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return d


def test_reflow_makes_the_paths_straighter():
    """The exact mixture flow (independent coupling) has S ≈ 1.0 (measured 1.02 on 100 Euler
    steps); a tiny MLP trained briefly on its ODE pairs has S = 0.043, the same MLP trained on
    the same x_0 with fresh noise 0.99. The bounds (teacher > 0.8, reflow < 0.25) leave ~5× the
    measured reflow value and exclude the control by 4×."""
    pairs = ode_pairs(exact(MIXTURE), 4000, (2,), sampler="heun", steps=20, seed=0)
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    before = straightness(exact(MIXTURE), x_T.double(), steps=100).mean().item()
    after = straightness(reflowed(pairs, paired=True), x_T, steps=100).mean().item()
    control = straightness(reflowed(pairs, paired=False), x_T, steps=100).mean().item()
    assert before > 0.8, before
    assert after < 0.25, after
    assert control > 0.8, control


def test_noisecraft_reflow_end_to_end(tmp_path, monkeypatch):
    """A 100-step moons flow run, reflowed on 500 pairs for 100 steps; `sample --steps 1` and
    `--steps 2` read the new run, which is a flow run with its provenance recorded."""
    import json

    from noisecraft.cli import main

    monkeypatch.chdir(tmp_path)

    def cli(*args):
        assert main(list(args)) == 0

    cli("train", "--data", "moons", "--net", "mlp", "--steps", "100", "--out", "teacher",
        "--sample-every", "0")
    cli("reflow", "teacher", "--pairs", "500", "--ode-steps", "10", "--steps", "100",
        "--out", "straight")
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert (config["prediction"], config["schedule"]["kind"]) == ("flow", "flow")
    assert json.loads((tmp_path / "straight" / "reflow.json").read_text())["pairs"] == 500
    for steps in ("1", "2"):
        cli("sample", "straight", "--steps", steps, "--sampler", "euler", "--n", "50",
            "--out", f"s{steps}")
        samples = np.load(tmp_path / f"s{steps}.npz")["samples"]
        assert samples.shape == (50, 2) and np.isfinite(samples).all()
