"""Class accuracy of classifier-free-guided samples against the guidance scale, on digits.

Trains (or reuses, with --run) a class-conditional tiny U-Net on scikit-learn's 8×8 digits with
label dropout, the demo's CPU recipe (cli/demo.py) otherwise; then draws --per-class samples of
each class at each guidance scale w and reads them with the small digits classifier
(noisecraft.metrics.classifier): accuracy = fraction of samples asked for class k classified as
k. At w = 0 the label is ignored (the unconditional model), so the table also gives the
unconditional class histogram.

    OMP_NUM_THREADS=1 python benchmarks/guidance_accuracy.py --run /tmp/cfg-digits [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from noisecraft import data, load_run
from noisecraft.metrics.classifier import classify
from noisecraft.train import TrainConfig, Trainer, new_run_config

sys.path.insert(0, str(Path(__file__).parent))
from _report import write_section  # noqa: E402

# The demo's recipe (cli/demo.py), with labels and the CLI's default label dropout.
LABEL_DROPOUT = 0.1
NET_OVERRIDES = {"base_channels": 16}


def train(run_dir: Path, steps: int, seed: int) -> float:
    dataset = data.load("digits", split="train")
    cfg = TrainConfig(steps=steps, batch_size=64, lr=2e-3, warmup=100, ema_decay=0.995,
                      label_dropout=LABEL_DROPOUT, seed=seed, log_every=100, sample_every=0,
                      checkpoint_every=0)
    config = new_run_config(dataset, "digits", net="tiny", net_overrides=NET_OVERRIDES,
                            schedule="cosine", class_conditional=True, train=cfg)
    return Trainer(config, run_dir, dataset, device="cpu", progress=False).fit().wall_time_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run directory: reused if trained, else trained")
    p.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    p.add_argument("--per-class", type=int, default=50, help="samples per class and scale")
    p.add_argument("--scales", default="0,1,2,3,5")
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--sampling-steps", type=int, default=100)
    p.add_argument("--rescale", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", action="store_true", help="put the table into BENCHMARKS.md")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    run_dir = Path(args.run)
    train_s = None
    if not (run_dir / "state.json").exists():
        train_s = train(run_dir, args.steps, args.seed)
    run = load_run(run_dir)
    K = run.num_classes
    labels = np.repeat(np.arange(K), args.per_class)
    scales = [float(w) for w in args.scales.split(",")]
    rows, hist0, sample_s = [], None, {}
    for w in scales:
        t0 = time.perf_counter()
        x = run.generate_tensor(len(labels), sampler=args.sampler, steps=args.sampling_steps,
                                seed=args.seed, labels=labels, guidance=w,
                                guidance_rescale=args.rescale)
        sample_s[w] = time.perf_counter() - t0
        pred, confidence = classify(run.to_output(x), "digits")
        per_class = [(pred[labels == k] == k).mean() for k in range(K)]
        conf = (confidence >= 0.9).mean()
        rows.append((w, (pred == labels).mean(), conf, per_class))
        if w == 0:
            hist0 = np.bincount(pred, minlength=K)

    header = (f"{datetime.date.today()}; {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs (shared), {torch.get_num_threads()} torch thread; "
              f"torch {torch.__version__}\n"
              f"run: {run_dir.name}, step {run.step}, label dropout "
              f"{run.config.train.label_dropout:g}, tiny U-Net "
              f"({sum(p.numel() for p in run.net.parameters()):,} parameters), cosine, T = "
              f"{run.schedule.T}" + (f"; trained in {train_s:.0f} s" if train_s else "") + "\n"
              f"samples: {args.per_class} per class and scale, {args.sampler.upper()} "
              f"{args.sampling_steps} steps, seed {args.seed}, rescale {args.rescale:g}; "
              "classifier: noisecraft.metrics.classifier (digits MLP)\n")
    lines = ["| w | accuracy | p ≥ 0.9 | " + " | ".join(str(k) for k in range(K))
             + " | sampling s |",
             "|---:|---:|---:|" + "---:|" * K + "---:|"]
    for w, acc, conf, per_class in rows:
        lines.append(f"| {w:g} | {acc:.3f} | {conf:.3f} | "
                     + " | ".join(f"{a:.2f}" for a in per_class) + f" | {sample_s[w]:.0f} |")
    table = header + "\n" + "\n".join(lines)
    if hist0 is not None:
        table += (f"\n\nw = 0 (unconditional) predicted-class histogram 0–{K - 1}: "
                  f"{hist0.tolist()} (of {len(labels)})")
    print(table)
    if args.write:
        write_section("guidance_accuracy", "## Class accuracy vs guidance scale (digits)\n\n"
                      f"Command: `OMP_NUM_THREADS=1 python benchmarks/guidance_accuracy.py "
                      f"{' '.join(sys.argv[1:])}`\n" + table)


if __name__ == "__main__":
    main()
