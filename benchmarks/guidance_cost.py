"""Cost of one guided sampling step against two unguided ones (target: ≤ 1.1×).

Guided runs the conditional and unconditional branches as one batch of 2n, so its step should
cost about two unguided steps of n (less where the net is cheaper per example in a bigger
batch), plus the mixing arithmetic. Measured on whole DDIM runs (per step = run time / steps)
with class-conditional nets at random initialisation (the cost does not depend on the weights).

    OMP_NUM_THREADS=1 python benchmarks/guidance_cost.py [--repeats 3] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from noisecraft import Denoiser, Guided, Schedule, nets, sample

sys.path.insert(0, str(Path(__file__).parent))
from _report import write_section  # noqa: E402

CASES = [  # preset, overrides, batch
    ("tiny", {"in_channels": 1, "image_size": 8}, 64),
    ("tiny", {"in_channels": 1, "image_size": 8}, 256),
    ("mnist", {"in_channels": 1, "image_size": 28}, 8),
]


def interleaved(plain, guided, steps: int, repeats: int) -> tuple[float, float, float]:
    """(unguided ms/step, guided ms/step, median of the per-repeat ratios guided / 2 unguided).

    The two are timed alternately, so that a change in the machine's load (it is shared) falls on
    both; the ratio of each pair is the figure, the times are the fastest of the repeats."""
    plain(), guided()  # warm-up
    tp, tg, ratios = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain()
        t1 = time.perf_counter()
        guided()
        t2 = time.perf_counter()
        tp.append(t1 - t0)
        tg.append(t2 - t1)
        ratios.append((t2 - t1) / (2 * (t1 - t0)))
    return 1000 * min(tp) / steps, 1000 * min(tg) / steps, statistics.median(ratios)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--write", action="store_true", help="put the table into BENCHMARKS.md")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    schedule = Schedule.cosine(T=1000)
    lines = ["| net | input | batch n | unguided ms/step | guided ms/step "
             "| guided / (2 × unguided), median |",
             "|---|---|---:|---:|---:|---:|"]
    for preset, overrides, n in CASES:
        torch.manual_seed(0)
        net = nets.build(preset, num_classes=10, T=schedule.T, **overrides).eval()
        den = Denoiser(net, schedule, "eps", clip=(-1, 1))
        guided = Guided(den, 3.0)
        shape = (n, overrides["in_channels"], overrides["image_size"], overrides["image_size"])
        labels = torch.arange(n) % 10

        def run(d, shape=shape, labels=labels):
            return sample(d, shape, schedule, sampler="ddim", steps=args.steps, seed=0,
                          labels=labels)

        plain_ms, guided_ms, ratio = interleaved(lambda d=den: run(d), lambda g=guided: run(g),
                                                 args.steps, args.repeats)
        lines.append(f"| {preset} | {'×'.join(map(str, shape[1:]))} | {n} | {plain_ms:.1f} | "
                     f"{guided_ms:.1f} | {ratio:.2f} |")
        print(lines[-1], flush=True)
    header = (f"{datetime.date.today()}; {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs (shared with other jobs), {torch.get_num_threads()} torch "
              f"thread; torch {torch.__version__}; DDIM {args.steps} steps, w = 3, clip (-1, 1); "
              f"{args.repeats} alternating repeats: fastest times, median ratio\n")
    table = header + "\n" + "\n".join(lines)
    print(table)
    if args.write:
        write_section("guidance_cost", "## Guided sampling cost per step\n\n"
                      f"Command: `OMP_NUM_THREADS=1 python benchmarks/guidance_cost.py "
                      f"{' '.join(sys.argv[1:])}`\n" + table)


if __name__ == "__main__":
    main()
