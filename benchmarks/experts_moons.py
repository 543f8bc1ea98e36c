"""Noise-level experts vs one network trained on moons, at equal parameters and at equal time.

Four runs with the same data, batch, learning rate, steps, seed and ε-prediction; only the net
differs:

- one net: the ``mlp`` preset (width 128, depth 3);
- 2 experts, width 128: twice the parameters, the same cost per step (each example goes through
  one expert), so equal training time;
- 2 experts, width 128, shared initialisation (eDiff-I's);
- 2 experts, width 90: the one net's parameter count (±1 %), so equal parameters.

Each cell: the sliced Wasserstein distance (64 directions, W1; ``edm_moons.py``'s) between
2000 samples (EMA weights) and the 2000 held-out moons points, beside the floor (two
independent 2000-point moons draws), mean ± standard deviation over the training seeds (the
sampling seed is 0). Training wall seconds (mean over seeds) on this machine beside each run.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/experts_moons.py [--steps 2000] \
        [--seeds 3] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import sliced_w1  # noqa: E402

from noisecraft import data, nets
from noisecraft.run import load_run
from noisecraft.train import TrainConfig, Trainer, new_run_config

RUNS = (("one net (width 128)", 128, 1, False), ("2 experts, width 128", 128, 2, False),
        ("2 experts, width 128, shared init", 128, 2, True), ("2 experts, width 90", 90, 2, False))
SAMPLING = (("dpmpp-2m", 12), ("heun", 32), ("ddim", 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each run")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 of each run")
    parser.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = 2000
    dataset = data.load("moons")
    test = data.load("moons", split="test").vectors.numpy().astype(np.float64)
    rng = np.random.default_rng(1)
    from noisecraft.data.toy import TOY_GENERATORS

    floors = [sliced_w1(TOY_GENERATORS["moons"](rng, n)[0], TOY_GENERATORS["moons"](rng, n)[0])
              for _ in range(20)]
    head = " | ".join(f"{s} {k}" for s, k in SAMPLING)
    lines = [f"moons, ε-prediction, linear schedule T = 1000, {args.steps} steps, batch 128, "
             f"lr 2e-3, training seeds 0..{args.seeds - 1}; swd to the 2000 held-out points, "
             f"floor {np.mean(floors):.4f} ± {np.std(floors):.4f}.", "",
             f"| run | parameters | train s | {head} |", "|---|---:|---:|" + "---:|" * len(SAMPLING)]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, width, k, shared) in enumerate(RUNS):
            swd, seconds = [], []
            for seed in range(args.seeds):
                tc = TrainConfig(steps=args.steps, batch_size=128, lr=2e-3, sample_every=0,
                                 checkpoint_every=args.steps, seed=seed)
                config = new_run_config(dataset, "moons", net="mlp", net_overrides={"width": width},
                                        train=tc)
                if k > 1:
                    net = nets.from_config({"arch": "experts", "expert": config.net, "experts": k,
                                            "shared_init": shared})
                    config = dataclasses.replace(config, net=net.config)
                params = sum(p.numel() for p in nets.from_config(config.net).parameters())
                run_dir = Path(tmp) / f"{i}-{seed}"
                start = time.perf_counter()
                Trainer(config, run_dir, dataset, device="cpu", progress=False).fit()
                seconds.append(time.perf_counter() - start)
                run = load_run(run_dir)
                swd.append([sliced_w1(run.generate(n, s, m, seed=0).astype(np.float64), test)
                            for s, m in SAMPLING])
            mean, std = np.mean(swd, 0), np.std(swd, 0)
            cells = [f"{m:.4f} ± {s:.4f}" for m, s in zip(mean, std, strict=True)]
            lines.append(f"| {name} | {params:,} | {np.mean(seconds):.0f} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.write:
        from _report import write_section

        header = (f"## Noise-level experts vs one net on moons (`benchmarks/experts_moons.py`)\n\n"
                  f"{datetime.date.today()}, {platform.processor() or platform.machine()} "
                  f"({os.cpu_count()} cores, shared), torch {torch.__version__}, command "
                  f"`PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/experts_moons.py --steps "
                  f"{args.steps} --seeds {args.seeds} --write`.\n\n")
        write_section("experts-moons", header + table)


if __name__ == "__main__":
    main()
