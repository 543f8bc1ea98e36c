"""Quality vs network evaluations for a teacher, its reflow and its consistency distillation (moons).

What ``noisecraft train``, ``noisecraft reflow`` and ``noisecraft distill`` do, run through the
library in a temporary folder (CPU, ~2 minutes):

    noisecraft train --data moons --net mlp --schedule flow --prediction flow --steps 3000 --out T
    noisecraft reflow T --pairs 10000 --sampler heun --ode-steps 50 --steps 3000 --out R
    noisecraft distill T --steps 3000 --out D      # and again with --init fresh

Columns: sliced Wasserstein distance (``metrics.distances.sliced_wasserstein``, 128 directions,
W2) of 4,000 samples to the 10,000 moons points, at 1, 2 and 4 network evaluations (NFE) and the
teacher at 50 Heun steps (99 NFE), next to the floor (4,000 moons points vs all of them);
straightness S (``reflow.straightness``, 100 Euler steps, 1,000 paths) for the flow runs.
DDIM on the respaced grid is rectified flow's Euler sampler uniform in τ; dpmpp-2m's default
log-SNR grid puts its second node at t = 1, so its 2-NFE column is nearly its 1-NFE one.

    PYTHONPATH=src .venv/bin/python benchmarks/few_step.py [--steps 3000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import noisecraft as nc
from noisecraft.distill import distill
from noisecraft.metrics.distances import sliced_wasserstein
from noisecraft.reflow import reflow, straightness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = nc.data.load("moons").vectors
    g = torch.Generator().manual_seed(0)

    def swd(x: torch.Tensor) -> float:
        return sliced_wasserstein(x, data, generator=torch.Generator().manual_seed(0))

    floor = swd(data[torch.randperm(len(data), generator=g)[:4000]])
    with tempfile.TemporaryDirectory() as tmp:
        t, r, d, f = (str(Path(tmp) / n) for n in ("teacher", "reflow", "distill", "fresh"))
        nc.train.train(t, data="moons", net="mlp", schedule="flow", prediction="flow",
                       steps=args.steps, progress=False)
        reflow(t, r, pairs=10000, sampler="heun", ode_steps=50, steps=args.steps, progress=False)
        distill(t, d, steps=args.steps, progress=False)              # from the teacher's weights
        distill(t, f, steps=args.steps, init="fresh", progress=False)
        runs = {name: nc.load_run(path) for name, path in
                (("teacher", t), ("reflow", r), ("distill", d), ("distill, fresh weights", f))}
        rows = [("teacher", "ddim (Euler in τ, respaced)", "ddim", 1),
                ("teacher", "dpmpp-2m (log-SNR grid)", "dpmpp-2m", 1),
                ("reflow", "ddim (Euler in τ, respaced)", "ddim", 1),
                ("distill", "consistency (respaced)", "consistency", 1),
                ("distill, fresh weights", "consistency (respaced)", "consistency", 1)]
        print(f"swd floor {floor:.4f}; teacher heun 50 steps (99 NFE): "
              f"{swd(runs['teacher'].generate_tensor(4000, 'heun', 50, seed=1)):.4f}")
        print("| run | sampler | 1 NFE | 2 NFE | 4 NFE |\n|---|---|---:|---:|---:|")
        for run, label, sampler, per_step in rows:
            cells = [swd(runs[run].generate_tensor(4000, sampler, nfe // per_step, seed=1))
                     for nfe in (1, 2, 4)]
            print(f"| {run} | {label} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
        x_T = torch.randn(1000, 2, generator=g)
        for run in ("teacher", "reflow"):
            s = straightness(runs[run].denoiser.unclipped(), x_T, steps=100).mean()
            print(f"straightness S of {run}: {s:.4f}")


if __name__ == "__main__":
    main()
