"""The linear baseline on 8×8 digits beside the demo's U-Net: how the digits classifier reads it.

Each row is a run made exactly as `noisecraft train --data digits --net linear` makes it (the
library's Trainer; cosine schedule, T = 1000, ε-prediction, as the demo), sampled as the demo
samples (DDPM, 100 respaced steps, seed 0, EMA weights) and read by the demo's yardstick,
``noisecraft.metrics.class_report`` (mean of max_y p(y|x), the fraction with p ≥ 0.9, classes
covered) plus the memorisation audit (median nearest/second-nearest training distance ratio and
the fraction of near-copies, ratio < 1/3): more components come nearer to copying the data.

Rows: LinearDiffusion with K = 1 (one Gaussian: the best affine denoiser), 10, 20 (the preset),
40 components and K = 20 at PCA rank 16; class-conditional with 2 components per class (labels
0–9 asked equally); the SGD-trained affine net (preset ``affine``) with the demo's training
recipe; and the demo's U-Net, either evaluated here (--unet-run DIR, a `noisecraft demo` run) or
quoted from BENCHMARKS.md's recorded demo run (100 samples).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/linear_baseline.py \\
        [--unet-run /tmp/demo/run] [--affine-steps 1200] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noisecraft import data, load_run
from noisecraft.metrics import class_report, memorization_audit
from noisecraft.run import read_state
from noisecraft.train import TrainConfig, Trainer, new_run_config

sys.path.insert(0, str(Path(__file__).parent))
from _report import write_section  # noqa: E402

# (name, preset, net overrides, class-conditional)
ROWS: list[tuple[str, str, dict[str, Any], bool]] = [
    ("linear, K = 1 (one Gaussian)", "linear", {"num_components": 1}, False),
    ("linear, K = 10", "linear", {"num_components": 10}, False),
    ("linear, K = 20 (preset)", "linear", {}, False),
    ("linear, K = 40", "linear", {"num_components": 40}, False),
    ("linear, K = 20, rank 16", "linear", {"rank": 16}, False),
    ("linear, class-cond., 2 per class", "linear", {"num_components": 2}, True),
]
# The demo's recorded run (BENCHMARKS.md, "noisecraft demo", 2026-11-22): DDPM-100, 100 samples.
DEMO_UNET = {"mean_confidence": 0.911, "fraction_confident": 0.710, "num_classes_covered": 10}
# The demo's training recipe (cli/demo.py), for the SGD-trained affine net.
DEMO_RECIPE = dict(batch_size=64, lr=2e-3, warmup=100, ema_decay=0.995)


def make_run(run_dir: Path, dataset: Any, preset: str, overrides: dict[str, Any], class_cond: bool,
             steps: int) -> float:
    """Train (or solve) one run; the trainer's own wall time for it, in seconds."""
    train = TrainConfig(steps=steps, seed=0, log_every=50, sample_every=0, checkpoint_every=0,
                        **DEMO_RECIPE)
    config = new_run_config(dataset, "digits", net=preset, net_overrides=overrides,
                            schedule="cosine", class_conditional=class_cond, train=train)
    return Trainer(config, run_dir, dataset, device="cpu", progress=False).fit().wall_time_s


def measure(run_dir: Path, n: int, sampler: str, steps: int, train_images: np.ndarray
            ) -> dict[str, Any]:
    run = load_run(run_dir)
    start = time.perf_counter()
    images = run.generate(n, sampler=sampler, steps=steps, seed=0, labels=run.default_labels(n))
    report = class_report(images, "digits", threshold=0.9)
    audit = memorization_audit(images, train_images)
    return {**report, "sample_s": time.perf_counter() - start,
            "median_ratio": audit["median_ratio"], "near_copies": audit["fraction_near_copies"],
            "parameters": sum(p.numel() for p in run.net.parameters())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="samples per row (default 500)")
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--affine-steps", type=int, default=1200,
                   help="SGD steps for the affine net (the demo's 1200; 0 skips the row)")
    p.add_argument("--unet-run", type=Path, default=None,
                   help="a `noisecraft demo` run to evaluate here (default: quote the recorded one)")
    p.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = p.parse_args()
    torch.set_num_threads(1)

    dataset = data.load("digits", split="train")
    rows: list[tuple[str, float | None, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        first = None
        for i, (name, preset, overrides, class_cond) in enumerate(ROWS):
            run_dir = Path(tmp) / f"run{i}"
            wall = make_run(run_dir, dataset, preset, overrides, class_cond, steps=1)
            if first is None:
                first = load_run(run_dir)
                train_images = first.to_output(torch.stack([d["x"] for d in dataset]))
            rows.append((name, wall, measure(run_dir, args.n, args.sampler, args.steps,
                                             train_images)))
            print(rows[-1][0], f"{wall:.2f} s", {k: rows[-1][2][k] for k in
                  ("mean_confidence", "fraction_confident", "num_classes_covered")}, flush=True)
        if args.affine_steps:
            run_dir = Path(tmp) / "affine"
            wall = make_run(run_dir, dataset, "affine", {}, False, steps=args.affine_steps)
            rows.append((f"affine, SGD {args.affine_steps} steps (old `--net linear`)", wall,
                         measure(run_dir, args.n, args.sampler, args.steps, train_images)))
            print(rows[-1][0], f"{wall:.2f} s", rows[-1][2]["mean_confidence"], flush=True)
    if args.unet_run is not None:
        unet = measure(args.unet_run, args.n, args.sampler, args.steps, train_images)
        rows.append(("U-Net, `noisecraft demo` run, evaluated here",
                     float(read_state(args.unet_run)["wall_time_s"]), unet))
    else:
        rows.append(("U-Net demo (recorded, 100 samples)", None,
                     {**DEMO_UNET, "parameters": 190_369}))

    def cell(r: dict[str, Any], key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "—"

    lines = [f"{datetime.date.today()} · {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at the end), "
             f"1 torch thread · torch {torch.__version__} · Python {platform.python_version()}",
             "",
             f"Command: `OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/linear_baseline.py "
             f"--n {args.n} --affine-steps {args.affine_steps}"
             + (f" --unet-run {args.unet_run}" if args.unet_run else "") + " --write`. "
             f"Samples: {args.n} per row, {args.sampler.upper()} {args.steps} steps, seed 0.",
             "",
             "| model | parameters | fit / train (s) | mean confidence | p ≥ 0.9 | classes | "
             "median NN ratio | near-copies |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, wall, r in rows:
        lines.append(f"| {name} | {r['parameters']:,} | "
                     f"{'—' if wall is None else format(wall, '.2f')} | "
                     f"{r['mean_confidence']:.3f} | {r['fraction_confident']:.3f} | "
                     f"{r['num_classes_covered']}/10 | {cell(r, 'median_ratio', '.3f')} | "
                     f"{cell(r, 'near_copies', '.3f')} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("linear-baseline", "## Linear baseline on digits\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
