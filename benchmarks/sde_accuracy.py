"""The ``sde`` sampler against exact samples of the analytic Gaussian mixture, before and after.

Data: the 2-D mixture of ``sampler_accuracy.py`` (weights 0.5/0.3/0.2, std 0.1, means ≥ 2.1
apart); the network is the mixture's exact denoiser, so every error is the sampler's own. For
each schedule and number of respaced steps (the sampler's default grid):

- ``W1``: the mean over 32 fixed unit directions u of the 1-D Wasserstein distance between the
  projected samples u·x and the *exact* projected mixture (CDF Σ_k w_k Φ((z − u·μ_k)/s),
  integrated on a fine grid), n = 10,000 samples. ``floor``: the same distance for n exact draws
  (what no sampler can beat at this n). The last step of every sampler returns x̂_0 at
  t_{N-1}, which shrinks each mode by s/√(s² + σ̃²_{t_{N-1}}): part of W1 at few steps.
- ``path max``: the largest per-coordinate RMS of the states x_t along the path, over the exact
  marginal's RMS √(α_t² E[x_0²] + σ_t²) at the same t (1 = as spread as q(x_t); ≫ 1 = the
  path has left the data's range, as in the explain report's SDE paths).

``old EM`` is the former step, Euler–Maruyama on the reverse VP SDE, kept here only:
x_s = (1 + B/2) x_t − (B/σ_t) ε̂ + √B z, B = log ᾱ_s − log ᾱ_t. ``new`` is the library's
``sde`` (SDE-DPM-Solver++(2M)); the noise-prediction exponential integrator SDE-DPM-Solver-1 and
``ddpm`` (the data-prediction first-order form) are shown for reference.

    PYTHONPATH=src python benchmarks/sde_accuracy.py [--steps 10 25 50 100 250] [--n 10000]
        [--grid respaced|log-snr|karras]
    PYTHONPATH=src python benchmarks/sde_accuracy.py --run RUN_DIR --steps 10 25 50 100
"""

from __future__ import annotations

import argparse
import math
import platform

import torch

from noisecraft import Denoiser, GaussianMixture, Schedule, grids
from noisecraft.noise import ExampleNoise
from noisecraft.samplers import SAMPLERS, Walk, walk

WEIGHTS = [0.5, 0.3, 0.2]
MEANS = torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], dtype=torch.float64)
STD = 0.1


def old_em_step(w: Walk, i: int, x: torch.Tensor, d, carry):
    """The former ``sde`` step (Euler–Maruyama), for comparison only."""
    if w.t[i + 1] == 0:
        return d.x0, None
    B = 2 * (math.log(w.alpha[i + 1]) - math.log(w.alpha[i]))
    x = torch.sub((1 + 0.5 * B) * x, d.eps, alpha=B / w.sigma[i])
    x.add_(w.randn(), alpha=math.sqrt(B))
    return x, None


def eps_form_step(w: Walk, i: int, x: torch.Tensor, d, carry):
    """SDE-DPM-Solver-1, the noise-prediction form (Lu et al. 2022), for comparison only:
    x_s = (α_s/α_t) x_t − 2σ_s (e^h − 1) ε̂ + σ_s √(e^{2h} − 1) z."""
    if w.t[i + 1] == 0:
        return d.x0, None
    h = w.half_log_snr(i + 1) - w.half_log_snr(i)
    x = torch.sub((w.alpha[i + 1] / w.alpha[i]) * x, d.eps, alpha=2 * w.sigma[i + 1] * math.expm1(h))
    x.add_(w.randn(), alpha=w.sigma[i + 1] * math.sqrt(math.expm1(2 * h)))
    return x, None


def directions(k: int = 32) -> torch.Tensor:
    d = torch.randn(2, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return d / d.norm(dim=0)


def exact_w1(x: torch.Tensor, dirs: torch.Tensor) -> float:
    """Mean over directions of ∫ |F_n(z) − F(z)| dz against the exact projected mixture."""
    normal = torch.distributions.Normal(0.0, 1.0)
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    out = []
    for j in range(dirs.shape[1]):
        u = dirs[:, j]
        p = (x @ u).sort().values
        centres = MEANS @ u
        z = torch.linspace(min(p[0].item(), centres.min().item() - 1),
                           max(p[-1].item(), centres.max().item() + 1), 40001, dtype=torch.float64)
        F = (w * normal.cdf((z[:, None] - centres) / STD)).sum(1)
        Fn = torch.searchsorted(p, z, right=True).double() / p.numel()
        out.append(torch.trapezoid((Fn - F).abs(), z).item())
    return sum(out) / len(out)


def run(step, den, schedule, steps: int, n: int, grid: str) -> tuple[torch.Tensor, float]:
    """Samples and the largest RMS ratio of the path to the exact marginal."""
    second = sum(w * (MEANS[k].pow(2) + STD**2) for k, w in enumerate(WEIGHTS))   # E[x_0²]
    worst = [0.0]

    def watch(i, t, x, x0):
        if t > 0:
            a, s = (v.item() for v in schedule.marginal(t))
            exact = (a * a * second + s * s).sqrt()
            worst[0] = max(worst[0], (x.pow(2).mean(0).sqrt() / exact).max().item())

    x_T = ExampleNoise(1, n).randn((2,), dtype=torch.float64)
    w = Walk(den, x_T, grids.make(grid, schedule, steps), None, ExampleNoise(2, n))
    return walk(step, w, x_T, watch), worst[0]


def trained_paths(run_dir: str, steps_list: list[int], n: int = 64) -> None:
    """On a trained run: the largest |x_t| along the old and new SDE paths from the same x_T
    (the explain report's SDE picture), next to max |x_T| (q(x_T)'s own range)."""
    from noisecraft.run import load_run

    run = load_run(run_dir)
    den = run.denoiser
    x_T = torch.randn((n, *run.shape), generator=torch.Generator().manual_seed(7))
    print(f"# {run_dir}: schedule {run.config.schedule}, {n} paths, max |x_T| = "
          f"{x_T.abs().max().item():.2f}; data in [-1, 1]\n")
    print("| steps | old EM: path max abs(x_t) | new: path max abs(x_t) |")
    print("|---|---|---|")
    for steps in steps_list:
        peaks = []
        for step in (old_em_step, SAMPLERS["sde"].step):
            peak = [0.0]

            def watch(i, t, x, x0, peak=peak):
                if t > 0:
                    peak[0] = max(peak[0], x.abs().max().item())

            w = Walk(den, x_T, grids.respaced(den.schedule, steps), None, ExampleNoise(3, n))
            walk(step, w, x_T, watch)
            peaks.append(peak[0])
        print(f"| {steps} | {peaks[0]:.2f} | {peaks[1]:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100, 250])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--grid", default="respaced", choices=sorted(grids.GRIDS))
    parser.add_argument("--run", help="a trained run directory: print its SDE paths' range "
                        "instead (old vs new step)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.run:
        trained_paths(args.run, args.steps)
        return
    mixture = GaussianMixture(WEIGHTS, MEANS, STD)
    dirs = directions()
    floor = exact_w1(mixture.sample(args.n, torch.Generator().manual_seed(5)), dirs)
    print(f"# sde accuracy — 2-D 3-component mixture, exact denoiser, n = {args.n}, {args.grid} "
          f"grids; torch {torch.__version__}, {platform.machine()}")
    print(f"# W1 floor (n exact draws): {floor:.4f}\n")
    steppers = {"old EM": old_em_step, "new (SDE-DPM-Solver++(2M))": SAMPLERS["sde"].step,
                "SDE-DPM-Solver-1 (ε form)": eps_form_step,
                "ddpm": lambda w, i, x, d, c: SAMPLERS["ddpm"].step(w, i, x, d, c,
                                                                  variance="beta_tilde")}
    print("| schedule | steps | " + " | ".join(f"{k}: W1 / path max" for k in steppers) + " |")
    print("|---|---|" + "---|" * len(steppers))
    for name in ("linear", "cosine"):
        schedule = Schedule.from_name(name, T=1000)
        den = Denoiser(mixture.net(schedule, "eps"), schedule, "eps")
        for steps in args.steps:
            cells = []
            for step in steppers.values():
                x, worst = run(step, den, schedule, steps, args.n, args.grid)
                cells.append(f"{exact_w1(x, dirs):.4f} / {worst:.2f}")
            print(f"| {name} | {steps} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
