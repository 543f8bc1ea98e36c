"""Few-step accuracy of every sampler on every grid, on the analytic Gaussian-mixture problem.

The data are a 2-D mixture of three Gaussians (weights 0.5/0.3/0.2, std 0.1, means ≥ 2.1 apart);
the network is the mixture's exact denoiser E[x_0 | x_t], so every error is the sampler's own.
Columns:
- ``ode err``: mean distance of a deterministic sampler's output to a 1024-step Heun run from the
  same x_T (the probability-flow ODE solution), 400 points;
- ``swd``: sliced Wasserstein distance (64 directions, W1) to fresh mixture draws, 2000 points,
  next to the floor (the same distance between two independent mixture draws of that size);
- ``spread``: pooled within-mode std of the samples over the data's std s = 0.1 (1 is right; the
  last step's x̂_0 at t_{N-1} alone shrinks it to s/√(s² + σ̃²_{t_{N-1}}), e.g. 0.995 at t = 1).

    .venv/bin/python benchmarks/sampler_accuracy.py [--schedule linear|cosine] [--steps 10 25 50]

This is the measurement behind each sampler's default grid (``SAMPLERS[name].default_grid``).
"""

from __future__ import annotations

import argparse
import math

import torch
from _report import sliced_w1  # noqa: E402

from noisecraft import Denoiser, GaussianMixture, Schedule, grids
from noisecraft.noise import ExampleNoise
from noisecraft.samplers import SAMPLERS

DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp-2m")
STD = 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="linear", choices=["linear", "cosine"])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    args = parser.parse_args()
    torch.set_num_threads(1)

    schedule = Schedule.from_name(args.schedule, T=1000)
    means = torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], dtype=torch.float64)
    mixture = GaussianMixture([0.5, 0.3, 0.2], means, STD)
    den = Denoiser(mixture.net(schedule, "eps"), schedule, "eps")
    n, n_ode = 2000, 400
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reference = SAMPLERS["heun"](den, x_T[:n_ode], grids.log_snr_uniform(schedule, 1024))
    gen = torch.Generator().manual_seed(2)
    fresh = mixture.sample(n, gen)
    floors = torch.tensor([sliced_w1(mixture.sample(n, gen), mixture.sample(n, gen))
                           for _ in range(20)])

    print(f"# sampler accuracy — Schedule.{args.schedule}(T=1000), 3-component 2-D mixture, "
          f"exact denoiser")
    print(f"swd floor (two independent draws of {n}): {floors.mean():.4f} ± {floors.std():.4f}\n")
    print("| sampler | grid | steps | ode err | swd | spread |")
    print("|---|---|---:|---:|---:|---:|")
    for name, fn in SAMPLERS.items():
        for grid_name in grids.GRIDS:
            for steps in args.steps:
                grid = grids.make(grid_name, schedule, steps)
                x = fn(den, x_T, grid, noise=ExampleNoise(3, n))
                k = mixture.component_of(x)
                spread = ((x - mixture.means[k]).std() / STD).item()
                err = ((x[:n_ode] - reference).norm(dim=1).mean().item()
                       if name in DETERMINISTIC else math.nan)
                default = " (default)" if grid_name == fn.default_grid else ""
                print(f"| {name} | {grid_name}{default} | {steps} | {err:.2e} | "
                      f"{sliced_w1(x, fresh):.4f} | {spread:.3f} |")


if __name__ == "__main__":
    main()
