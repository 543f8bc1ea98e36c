"""EDM vs ε-prediction trained on moons at equal steps, each sampled with heun, dpmpp-2m and edm.

Two runs from the command line with the same network (the ``mlp`` preset), data, batch, learning
rate, steps and seed; only the parameterisation and the law of t differ:

- ε: ``--prediction eps --time-sampler uniform`` (the defaults, Ho et al. 2020);
- EDM: ``--prediction edm --time-sampler log-normal`` (Karras et al. 2022: c_in/c_skip/c_out
  with σ_d = 0.5, ln σ̃ ~ N(−1.2, 1.2²), λ(σ̃)-weighted loss).

Each cell: the sliced Wasserstein distance (64 directions, W1) between 2000 samples (EMA
weights, conditional draws cycling the two classes as ``noisecraft sample`` does) and the 2000
held-out moons points, beside the floor (the distance between two independent 2000-point moons
draws). Training wall seconds on this machine are printed beside each run.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/edm_moons.py [--steps 2000] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import sliced_w1  # noqa: E402

from noisecraft import data
from noisecraft.cli import main as cli
from noisecraft.run import load_run

RUNS = (("ε", ["--prediction", "eps", "--time-sampler", "uniform"]),
        ("EDM", ["--prediction", "edm", "--time-sampler", "log-normal"]))
SAMPLING = (("heun", 12), ("dpmpp-2m", 12), ("edm", 12), ("heun", 32), ("edm", 32))
EDM_CHURN = {"S_churn": 10.0, "S_tmin": 0.05, "S_tmax": 50.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each run")
    parser.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = 2000
    test = data.load("moons", split="test").vectors.numpy().astype(np.float64)
    rng = np.random.default_rng(1)
    from noisecraft.data.toy import TOY_GENERATORS

    floors = [sliced_w1(TOY_GENERATORS["moons"](rng, n)[0], TOY_GENERATORS["moons"](rng, n)[0])
              for _ in range(20)]
    head = " | ".join(f"{s} {k}" + (" (churn 10)" if s == "edm" else "") for s, k in SAMPLING)
    lines = [f"moons, `--net mlp`, {args.steps} steps, batch 128, lr 2e-3, seed 0; swd to the 2000 "
             f"held-out points, floor {np.mean(floors):.4f} ± {np.std(floors):.4f}.", "",
             f"| run | train s | {head} |", "|---|---:|" + "---:|" * len(SAMPLING)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in RUNS:
            run_dir = Path(tmp) / name
            start = time.perf_counter()
            assert cli(["train", "--data", "moons", *flags, "--steps", str(args.steps),
                        "--batch-size", "128", "--lr", "2e-3", "--sample-every", "0",
                        "--checkpoint-every", str(args.steps), "--out", str(run_dir),
                        "--no-progress", "--threads", "1"]) == 0
            seconds = time.perf_counter() - start
            run = load_run(run_dir)
            cells = []
            for sampler, steps in SAMPLING:
                x = run.generate(n, sampler, steps, seed=0,
                                 options=EDM_CHURN if sampler == "edm" else None)
                cells.append(f"{sliced_w1(x.astype(np.float64), test):.4f}")
            lines.append(f"| {name} | {seconds:.0f} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.write:
        from _report import write_section

        header = (f"## EDM vs ε-prediction trained on moons (`benchmarks/edm_moons.py`)\n\n"
                  f"{datetime.date.today()}, {platform.processor() or platform.machine()} "
                  f"({os.cpu_count()} cores, shared), torch {torch.__version__}, command "
                  f"`PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/edm_moons.py --steps "
                  f"{args.steps} --write`.\n\n")
        write_section("edm-moons", header + table)


if __name__ == "__main__":
    main()
