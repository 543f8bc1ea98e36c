"""Few-step accuracy of the straight path (flow matching) against the VP linear and cosine schedules.

Same problem as ``sampler_accuracy.py``: a 2-D mixture of three Gaussians (weights 0.5/0.3/0.2,
std 0.1, means ≥ 2.1 apart), driven by the exact denoiser of each parametrisation (no training:
every error is the path's and the sampler's own): ``Schedule.flow`` read as a flow velocity,
``Schedule.linear`` and ``Schedule.cosine`` read as ε. Columns:
- ``ode err``: mean distance to the schedule's own probability-flow ODE solution from the same
  x_T (a 1024-step Heun run on the log-SNR-uniform grid), 400 points;
- ``swd``: sliced Wasserstein distance (64 directions, W1) to fresh mixture draws, 2000 points,
  next to the floor (the distance between two independent mixture draws of that size).
Samplers: ``euler`` on the respaced grid (uniform in t: on the flow schedule this is rectified
flow's Euler sampler in τ, step for step; tests/test_flow.py), and ``euler``/``dpmpp-2m`` on
their default log-SNR-uniform grid.

    .venv/bin/python benchmarks/flow_mixture.py [--steps 1 2 4 8 16 32] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

import torch
from _report import sliced_w1  # noqa: E402

from noisecraft import Denoiser, GaussianMixture, Schedule, grids
from noisecraft.samplers import SAMPLERS

STD = 0.1
RUNS = (("euler", "respaced"), ("euler", "log-snr"), ("dpmpp-2m", "log-snr"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)

    means = torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], dtype=torch.float64)
    mixture = GaussianMixture([0.5, 0.3, 0.2], means, STD)
    n, n_ode = 2000, 400
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    fresh = mixture.sample(n, gen)
    floors = torch.tensor([sliced_w1(mixture.sample(n, gen), mixture.sample(n, gen))
                           for _ in range(20)])
    lines = ["Exact denoisers on the 3-component 2-D mixture (T = 1000); "
             f"swd floor (two independent draws of {n}): {floors.mean():.4f} ± {floors.std():.4f}.",
             "", "| schedule | sampler | grid | " + " | ".join(f"{s} steps" for s in args.steps)
             + " |", "|---|---|---|" + "---:|" * len(args.steps)]
    for kind, prediction in (("flow", "flow"), ("linear", "eps"), ("cosine", "eps")):
        schedule = Schedule.from_name(kind, T=1000)
        den = Denoiser(mixture.net(schedule, prediction), schedule, prediction)
        reference = SAMPLERS["heun"](den, x_T[:n_ode], grids.log_snr_uniform(schedule, 1024))
        for name, grid_name in RUNS:
            cells = []
            for steps in args.steps:
                x = SAMPLERS[name](den, x_T, grids.make(grid_name, schedule, steps))
                err = (x[:n_ode] - reference).norm(dim=1).mean().item()
                cells.append(f"{err:.3f} / {sliced_w1(x, fresh):.3f}")
            lines.append(f"| {kind} | {name} | {grid_name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        from _report import write_section

        header = (f"## Flow matching vs VP schedules, exact denoisers (`benchmarks/flow_mixture.py`)"
                  f"\n\n{datetime.date.today()}, {platform.processor() or platform.machine()} "
                  f"({os.cpu_count()} cores), torch {torch.__version__}, command "
                  f"`PYTHONPATH=src python benchmarks/flow_mixture.py --write`. Each cell: ode err "
                  f"/ swd.\n\n")
        write_section("flow-mixture", header + table)


if __name__ == "__main__":
    main()
