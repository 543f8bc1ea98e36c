"""Consistency models: the parameterisation's boundary condition, the multistep sampler, and a
model distilled from the analytic mixture's exact probability-flow ODE, checked against the ODE's
endpoint solved independently (Heun on 400 steps, itself within 2e-4 of an RK45 solve:
tests/test_reflow.py)."""

import json
import math

import numpy as np
import pytest
import torch

from noisecraft import Denoiser, GaussianMixture, Schedule, grids, samplers
from noisecraft.denoiser import CONSISTENCY_SIGMA_DATA
from noisecraft.distill import consistency_loss, teacher_step
from noisecraft.noise import ExampleNoise
from noisecraft.train.ema import EMA

FLOW = Schedule.flow(1000)
LINEAR = Schedule.linear(1000)
MEANS = torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], dtype=torch.float64)
MIXTURE = GaussianMixture([0.5, 0.3, 0.2], MEANS, 0.1)
TEACHER = Denoiser(MIXTURE.net(FLOW, "flow"), FLOW, "flow")


def garbage(x, t):
    """A network whose output is large and unrelated to its input."""
    return 1e3 * torch.sin(x * 7 + t[:, None])


@pytest.mark.parametrize("schedule", [LINEAR, FLOW])
def test_the_boundary_condition_holds_exactly(schedule):
    """f(x, 0) = x bit for bit, whatever the network says (c_skip = 1, c_out = 0 at σ = 0)."""
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = Denoiser(garbage, schedule, "consistency")
    assert torch.equal(d(x, 0.0).x0, x)
    assert torch.equal(d(x.float(), 0.0).x0, x.float())


def test_the_reading_is_c_skip_and_c_out_of_sigma_tilde_from_the_beta_table():
    """At t = 250 on the linear schedule, σ̃² = 1/ᾱ − 1 with ᾱ the product of the β table:
    x̂_0 = σ_d²/(σ̃² + σ_d²) · x_t/√ᾱ + σ_d σ̃/√(σ̃² + σ_d²) · F(c_in x_t/√ᾱ),
    c_in = 1/√(σ̃² + σ_d²) (Song et al.'s, EDM's)."""
    abar = float(np.prod(1 - LINEAR.betas.numpy()[:250]))
    st, sd = math.sqrt(1 / abar - 1), CONSISTENCY_SIGMA_DATA
    x = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    F = garbage(x / math.sqrt(abar) / math.sqrt(st**2 + sd**2), torch.tensor([250.0]))
    want = sd**2 / (st**2 + sd**2) * x / math.sqrt(abar) + sd * st / math.sqrt(st**2 + sd**2) * F
    d = Denoiser(garbage, LINEAR, "consistency")(x, 250.0)
    assert torch.allclose(d.x0, want, rtol=1e-12)
    # ε̂ follows from x̂_0 as for every reading: x_t = α x̂_0 + σ ε̂.
    assert torch.allclose(math.sqrt(abar) * d.x0 + math.sqrt(1 - abar) * d.eps, x, rtol=1e-12)


def test_the_regression_target_is_the_output_that_reads_back_as_x0():
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 2, generator=gen, dtype=torch.float64), torch.randn(
        8, 2, generator=gen, dtype=torch.float64)
    t = torch.linspace(5, 995, 8, dtype=torch.float64)
    d = Denoiser(garbage, LINEAR, "consistency")
    target = d.target(x0, eps, t)
    a, s = LINEAR.marginal(t)
    x_t = a[:, None] * x0 + s[:, None] * eps
    assert torch.allclose(d.read(target, x_t, t).x0, x0, atol=1e-9)


def test_the_consistency_sampler_jumps_and_renoises():
    """steps = 2 on the respaced grid (1000, 500, 0): x̂_0 = f(x_T, 1000), then
    x_500 = α_500 x̂_0 + σ_500 z with z the example's next noise draw, and the result f(x_500, 500).
    One network call per step, fed c_in x_t/α = x_t/√(σ² + α² σ_d²)."""
    def c_in(t):
        a, s = LINEAR.marginal(torch.tensor(t, dtype=torch.float64))
        return 1 / torch.sqrt(s**2 + (a * CONSISTENCY_SIGMA_DATA) ** 2)

    calls = []

    def net(x, t):
        calls.append((x.clone(), t.clone()))
        return torch.cos(x) + t[:, None] / 1000

    d = Denoiser(net, LINEAR, "consistency")
    out = samplers.sample(d, (4, 2), LINEAR, "consistency", steps=2, seed=7,
                          dtype=torch.float64)
    noise = ExampleNoise(7, 4)
    x_T, z = noise.randn((2,), dtype=torch.float64), noise.randn((2,), dtype=torch.float64)
    assert len(calls) == 2 and torch.allclose(calls[0][0], x_T * c_in(1000.0), atol=1e-12)
    a, s = LINEAR.marginal(torch.tensor(500.0, dtype=torch.float64))
    x_500 = a * d(x_T, 1000.0).x0 + s * z
    assert torch.allclose(calls[1][0], x_500 * c_in(500.0), atol=1e-12)
    assert torch.allclose(out, d(x_500, 500.0).x0, atol=1e-12)
    calls.clear()
    one = samplers.sample(d, (4, 2), LINEAR, "consistency", steps=1, seed=7, dtype=torch.float64)
    assert len(calls) == 1 and torch.allclose(one, d(x_T, 1000.0).x0, atol=1e-12)


def test_a_teacher_step_is_the_samplers_own_step():
    """One Euler step t → s of the distillation equals the ``euler`` sampler's walk over (t, s)
    continued by nothing: compare with DDIM's x_s = α_s x̂_0 + σ_s ε̂ written from the reading."""
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    d = TEACHER(x, 700.0)
    a, s = FLOW.marginal(torch.tensor(600.0, dtype=torch.float64))
    assert torch.allclose(teacher_step(TEACHER, x, 700.0, 600.0, "euler"), a * d.x0 + s * d.eps,
                          atol=1e-10)
    with pytest.raises(ValueError, match="dpmpp-2m"):
        teacher_step(TEACHER, x, 700.0, 600.0, "dpmpp-2m")


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Linear(3, 128), torch.nn.SiLU(),
                                     torch.nn.Linear(128, 128), torch.nn.SiLU(),
                                     torch.nn.Linear(128, 2))

    def forward(self, x, t):
        return self.f(torch.cat([x, (t / 1000)[:, None].to(x.dtype)], 1))


def ode_endpoint(x_t: torch.Tensor, t: float, steps: int = 400) -> torch.Tensor:
    """The exact mixture ODE from (x_t, t) to 0: Heun on a log-SNR-uniform grid from t."""
    lam = torch.linspace(float(FLOW.log_snr(torch.tensor(t, dtype=torch.float64))),
                         float(FLOW.log_snr(torch.tensor(1.0, dtype=torch.float64))), steps,
                         dtype=torch.float64)
    grid = torch.cat([torch.tensor([t], dtype=torch.float64), FLOW.t_from_log_snr(lam[1:]),
                      torch.zeros(1, dtype=torch.float64)])
    return samplers.heun(TEACHER, x_t, grid)


def test_a_model_distilled_from_the_exact_ode_maps_x_t_to_its_endpoint():
    """2,000 steps of consistency distillation (N = 10 respaced intervals, Euler teacher steps,
    target EMA μ = 0.9, tiny MLP, ~5 s) from the exact mixture ODE. Measured mean distance of
    f(x_t, t) to the ODE's endpoint over 500 draws of x_t ~ q(x_t): 0.26 at t = T, 0.14 at
    t = 400, 0.065 at t = 100 (the floor, the 10-step Euler chain's own error, is 0.03; the rest
    is brief training, concentrated near the boundaries between the modes, 1.5 apart). Bounds:
    0.45 at T and 0.15 at t = 100. For scale, the teacher's one-step x̂_0 = E[x_0 | x_T] (what the
    ``consistency`` sampler would return from any ordinary denoiser) is > 1 away at T."""
    grid = grids.make("respaced", FLOW, 10)
    torch.manual_seed(0)
    net = TinyNet()
    ema = EMA(net, 0.9, warmup=False)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    student = Denoiser(net, FLOW, "consistency")
    target = Denoiser(ema.net, FLOW, "consistency")
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        x0 = MIXTURE.sample(256, g).float()
        n = int(torch.randint(10, (1,), generator=g))
        loss = consistency_loss(student, target, TEACHER, x0, grid, n, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(net)
    gen = torch.Generator().manual_seed(5)
    for t, bound in ((1000.0, 0.45), (100.0, 0.15)):
        x0 = MIXTURE.sample(500, gen)
        a, s = FLOW.marginal(torch.tensor(t, dtype=torch.float64))
        x_t = a * x0 + s * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        end = ode_endpoint(x_t, t)
        with torch.no_grad():
            got = target(x_t.float(), t).x0.double()
        err = (got - end).norm(dim=1).mean().item()
        assert err < bound, (t, err)
        if t == 1000.0:
            assert (TEACHER(x_t, t).x0 - end).norm(dim=1).mean().item() > 1.0


def test_noisecraft_distill_end_to_end(tmp_path, monkeypatch, capsys):
    """A 100-step moons run distilled for 100 steps; `sample --steps 1` and `--steps 2` read the
    distilled run (its default sampler is ``consistency``), load_run reads its prediction and
    explain writes its report."""
    from noisecraft.cli import main
    from noisecraft.run import load_run

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "moons", "--net", "mlp", "--steps", "100", "--out",
                 "teacher", "--sample-every", "0"]) == 0
    capsys.readouterr()
    assert main(["distill", "teacher", "--steps", "100", "--intervals", "8", "--out", "cd",
                 "--no-progress"]) == 0
    assert "step/s" not in capsys.readouterr().err   # --no-progress: no bar
    run = load_run(tmp_path / "cd")
    assert run.config.prediction == "consistency" and run.config.sampling.sampler == "consistency"
    assert json.loads((tmp_path / "cd" / "distill.json").read_text())["intervals"] == 8
    for steps in ("1", "2"):
        assert main(["sample", "cd", "--steps", steps, "--n", "50", "--out", f"s{steps}"]) == 0
        samples = np.load(tmp_path / f"s{steps}.npz")["samples"]
        assert samples.shape == (50, 2) and np.isfinite(samples).all()
    assert main(["explain", "cd", "--out", "report.html", "--samples", "16", "--held-out", "16",
                 "--steps", "5"]) == 0
    # `train --resume` would train it with the plain loss: refused, naming distill; and
    # `train --prediction consistency` is not a thing `train` can make
    from noisecraft.train import prepare

    with pytest.raises(ValueError, match="made by `noisecraft distill`"):
        prepare(tmp_path / "cd", resume=True, steps=200)
    with pytest.raises(ValueError, match="trained by `noisecraft distill`"):
        prepare(tmp_path / "new", data="moons", prediction="consistency")
    from noisecraft.distill import distill

    with pytest.raises(ValueError, match="dpmpp-2m"):
        distill("teacher", "bad", solver="dpmpp-2m")


def test_the_commands_take_their_defaults_from_the_library(monkeypatch):
    """`noisecraft distill` / `reflow` / `ema` read their flags' defaults from the library:
    change a library default and the parsed flag follows (a default written twice would not)."""
    from noisecraft import distill as distill_module
    from noisecraft import posthoc
    from noisecraft import reflow as reflow_module
    from noisecraft.cli import build_parser

    monkeypatch.setitem(distill_module.distill.__kwdefaults__, "intervals", 7)
    monkeypatch.setitem(distill_module.distill.__kwdefaults__, "target_decay", 0.5)
    monkeypatch.setitem(reflow_module.reflow.__kwdefaults__, "pairs", 123)
    monkeypatch.setitem(posthoc.sweep.__kwdefaults__, "n", 17)
    monkeypatch.setattr(reflow_module, "DETERMINISTIC", ("ddim", "a-new-ode-sampler"))
    parser = build_parser()
    reflow_cmd = next(a for a in parser._subparsers._group_actions[0].choices["reflow"]._actions
                      if "--sampler" in a.option_strings)
    assert "ddim, a-new-ode-sampler" in reflow_cmd.help   # the choices named where they live
    d = parser.parse_args(["distill", "run", "--out", "x"])
    r = parser.parse_args(["reflow", "run", "--out", "x"])
    assert (d.intervals, d.target_decay, d.grid, d.solver) == (7, 0.5, "respaced", "euler")
    assert (r.pairs, r.seed) == (123, 0)
    assert parser.parse_args(["ema", "run", "--sweep", "0.1"]).n == 17


def test_an_edm_network_read_as_a_consistency_model_gives_the_edm_x0():
    """Why `distill --init teacher` starts from a one-step model: EDM's D = c_skip x/α +
    c_out F(c_in x/α) (σ_d = 0.5) and the consistency f (σ_d = CONSISTENCY_SIGMA_DATA) are one
    formula in σ̃ = σ/α,
    so the same F read either way gives the same x̂_0 — checked here against the EDM
    coefficients written out from Karras et al. (2022), Table 1, in σ̃."""
    assert CONSISTENCY_SIGMA_DATA == 0.5
    x = torch.randn(64, 2, dtype=torch.float64)
    t = torch.arange(1, 961, 15, dtype=torch.float64)   # whole t: the net sees them in float32
    as_consistency = Denoiser(garbage, LINEAR, "consistency")(x, t).x0
    as_edm = Denoiser(garbage, LINEAR, "edm", sigma_data=0.5)(x, t).x0
    a, s = (v[:, None] for v in LINEAR.marginal(t))
    st = s / a
    c_in = 1 / (st**2 + 0.25).sqrt()
    by_hand = (0.25 / (st**2 + 0.25) * x / a
               + 0.5 * st / (st**2 + 0.25).sqrt() * garbage(c_in * x / a, t))
    torch.testing.assert_close(as_consistency, by_hand, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(as_edm, by_hand, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("init", ["teacher", "fresh"])
def test_distill_starts_from_the_teachers_weights_or_fresh_ones(tmp_path, init):
    """An edm teacher on moons, distilled with a learning rate too small to move the weights:
    with --init teacher the student's x̂_0 is the teacher's (previous test), with fresh weights
    it is not; --max-time is the student's budget."""
    from noisecraft.cli import main
    from noisecraft.run import load_run

    teacher = tmp_path / "teacher"
    assert main(["train", "--data", "moons", "--net", "mlp", "--steps", "200", "--out",
                 str(teacher), "--prediction", "edm", "--sample-every", "0", "--no-progress"]) == 0
    out = tmp_path / f"student-{init}"
    assert main(["distill", str(teacher), "--out", str(out), "--steps", "3", "--lr", "1e-20",
                 "--init", init, "--max-time", "1h"]) == 0
    student, parent = load_run(out), load_run(teacher)
    assert student.config.train.max_time == "1h"
    assert json.loads((out / "distill.json").read_text())["init"] == init
    x = torch.randn(256, 2)
    t = torch.full((256,), 400.0)
    gap = (student.denoiser(x, t).x0 - parent.denoiser(x, t).x0).abs().max().item()
    assert (gap < 1e-5) if init == "teacher" else (gap > 0.1), gap
