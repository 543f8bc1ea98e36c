"""EDM's stochastic Heun (``edm``) against ``heun`` and ``dpmpp-2m`` on the exact mixture, by steps
and churn.

Same problem as ``sampler_accuracy.py`` and ``flow_mixture.py``: a 2-D mixture of three Gaussians
(weights 0.5/0.3/0.2, std 0.1, means ≥ 2.1 apart) on the linear schedule (T = 1000), driven by
its exact ε-denoiser (no training: every error is the sampler's own). Each cell is
``swd / spread`` for 2000 samples: the sliced Wasserstein distance (64 directions, W1) to fresh
mixture draws, beside its floor (two independent mixture draws of that size), and the pooled
within-mode standard deviation over the mixture's 0.1 (1.00 is exact; the last step's x̂_0 at
σ̃(1) = 0.01 shrinks it by 0.5 %). Rows: ``heun`` on its default log-SNR grid and on the Karras
grid, ``dpmpp-2m`` on its default, ``edm`` (Karras grid) with S_churn = 0 (= heun/karras) and
with churn restricted to S_tmin = 0.05 ≤ σ̃ ≤ S_tmax = 50 (EDM's ImageNet-64 range), S_noise = 1.
Network evaluations per sample: heun and edm 2N − 1, dpmpp-2m N.

    PYTHONPATH=src python benchmarks/edm_mixture.py [--steps 8 16 32 64] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

import torch
from _report import sliced_w1  # noqa: E402

from noisecraft import Denoiser, GaussianMixture, Schedule, sample

STD = 0.1
CHURNS = (0.0, 10.0, 40.0, 80.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)

    means = torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], dtype=torch.float64)
    mixture = GaussianMixture([0.5, 0.3, 0.2], means, STD)
    schedule = Schedule.linear(1000)
    den = Denoiser(mixture.net(schedule, "eps"), schedule, "eps")
    n = 2000
    gen = torch.Generator().manual_seed(2)
    fresh = mixture.sample(n, gen)
    floors = torch.tensor([sliced_w1(mixture.sample(n, gen), mixture.sample(n, gen))
                           for _ in range(20)])

    def cell(sampler: str, grid: str, steps: int, options: dict[str, float] | None = None) -> str:
        x = sample(den, (n, 2), schedule, sampler, steps=steps, grid=grid, seed=1,
                   options=options, dtype=torch.float64)
        spread = (x - mixture.means[mixture.component_of(x)]).std().item() / STD
        return f"{sliced_w1(x, fresh):.3f} / {spread:.3f}"

    rows = [("heun", "log-snr", None), ("heun", "karras", None), ("dpmpp-2m", "log-snr", None)]
    rows += [("edm", "karras", {"S_churn": c, "S_tmin": 0.05, "S_tmax": 50.0}) for c in CHURNS]
    lines = [f"Exact ε-denoiser of the 3-component 2-D mixture, linear schedule (T = 1000), {n} "
             f"samples, seed 1; swd floor {floors.mean():.4f} ± {floors.std():.4f}.", "",
             "| sampler | grid | S_churn | " + " | ".join(f"{s} steps" for s in args.steps) + " |",
             "|---|---|---:|" + "---:|" * len(args.steps)]
    for name, grid, options in rows:
        cells = [cell(name, grid, steps, options) for steps in args.steps]
        churn = f"{options['S_churn']:g}" if options else ""
        lines.append(f"| {name} | {grid} | {churn} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        from _report import write_section

        header = (f"## EDM's stochastic sampler on the exact mixture (`benchmarks/edm_mixture.py`)"
                  f"\n\n{datetime.date.today()}, {platform.processor() or platform.machine()} "
                  f"({os.cpu_count()} cores), torch {torch.__version__}, command "
                  f"`PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/edm_mixture.py --write`. "
                  f"Each cell: swd / within-mode spread ÷ 0.1.\n\n")
        write_section("edm-mixture", header + table)


if __name__ == "__main__":
    main()
