"""Training throughput on the CPU, and the wall time of `noisecraft demo`.

    .venv/bin/python benchmarks/train_throughput.py [--threads 1] [--skip-demo] [--write]

One training step is what the Trainer does per optimizer step: losses.simple (t uniform, ε-MSE)
under the Denoiser, backward, gradient clipping, AdamW, EMA update; inputs are random tensors of
the preset's shape, so data loading is not counted. Images/s is measured over a few steps after
one warm-up step, against the wall clock and against the process's CPU time (the latter is
what a busy, shared machine cannot distort). The demo is run as a subprocess, as a user would.
``--write`` puts the table into BENCHMARKS.md between this script's markers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _report import write_section

from noisecraft import Denoiser, Schedule, losses, nets
from noisecraft.train import EMA

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- train_throughput:start -->", "<!-- train_throughput:end -->"
CASES = [("tiny", 64, 20), ("tiny", 128, 10), ("ddpm-cifar10", 8, 3)]  # (preset, batch, timed steps)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def step_rate(preset: str, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    schedule = Schedule.linear(1000)
    net = nets.build(preset, T=1000)
    shape = (net.config["in_channels"], net.config["image_size"], net.config["image_size"])
    denoiser = Denoiser(net, schedule, "eps")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    ema = EMA(net, 0.999)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, *shape, generator=gen) * 2 - 1

    def one_step() -> None:
        loss = losses.simple(denoiser, x0, generator=gen).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(net)

    one_step()  # warm-up: allocator, AdamW state
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        one_step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    params = sum(p.numel() for p in net.parameters())
    return {"preset": preset, "params": params, "batch": batch, "steps": steps,
            "img_per_s_wall": batch * steps / wall, "img_per_cpu_s": batch * steps / cpu,
            "s_per_step": wall / steps}


def demo_time(threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "noisecraft", "demo", "--out", tmp, "--no-progress"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - wall
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"demo failed:\n{proc.stderr}")
        summary = (Path(tmp) / "summary.txt").read_text()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--skip-demo", action="store_true", help="only the step throughput")
    parser.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    load = os.getloadavg()[0]
    header = (f"{datetime.date.today()} · {cpu_model()} ({os.cpu_count()} cores visible, "
              f"{args.threads} torch thread(s), load average {load:.1f} at start) · "
              f"torch {torch.__version__} · Python {platform.python_version()}")
    lines = ["| preset | parameters | batch | timed steps | s/step (wall) | img/s (wall) "
             "| img per CPU-s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for preset, batch, steps in CASES:
        r = step_rate(preset, batch, steps)
        lines.append(f"| {preset} | {r['params']:,} | {batch} | {steps} | {r['s_per_step']:.3f} | "
                     f"{r['img_per_s_wall']:.1f} | {r['img_per_cpu_s']:.1f} |")
        print(lines[-1], flush=True)
    if not args.skip_demo:
        d = demo_time(args.threads)
        lines += ["", f"`noisecraft demo` (OMP_NUM_THREADS={args.threads}): "
                  f"**{d['wall_s']:.0f} s wall**, {d['cpu_s']:.0f} s CPU (user + system).", "",
                  "```", d["summary"].rstrip(), "```"]
    title = "### Training throughput (`benchmarks/train_throughput.py`)"
    table = "\n".join([title, "", header, "", *lines])
    print(table)
    if args.write:
        write_section("train_throughput", table, start=START, end=END)


if __name__ == "__main__":
    main()
