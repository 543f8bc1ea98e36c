"""Probability-flow ODE likelihood of MNIST test images: bits/dim, NFE and cost per image.

    .venv/bin/python benchmarks/ode_likelihood.py [--n 1000] [--train-steps 300] [--threads 1]
        [--rtol 1e-5 1e-3] [--data ../shared/data/mnist] [--device cpu] [--write]

A small U-Net (the ``mnist`` preset narrowed to 16 base channels, one block per level, no
attention; about 0.1M parameters) is trained for ``--train-steps`` steps on MNIST (0: untrained),
then the first ``--n`` test images are scored with ``noisecraft.likelihood``: uniform
dequantisation, one Rademacher probe, Dormand–Prince with per-image step control, from σ = 10⁻³ to
t = T. NFE counts network forward passes per image (each also pays one vector-Jacobian product
for the divergence). ``--write`` puts the table, with date, machine and versions, into
BENCHMARKS.md between ``<!-- ode_likelihood -->`` markers.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from datetime import date

import torch
from _report import write_section

from noisecraft import Denoiser, Schedule, data, nets
from noisecraft.likelihood import DEQUANTISATION_BITS, dequantise, ode_log_prob
from noisecraft.train import TrainConfig, Trainer, load_run, new_run_config

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "mnist")
SMALL_MNIST_UNET = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                    "attention_resolutions": [], "dropout": 0.0, "norm_groups": 8}


def small_unet(spec: str, steps: int, run_dir: str, device: str) -> tuple[Denoiser, float]:
    """The small U-Net after ``steps`` training steps (0: its initial weights), unclipped."""
    dataset = data.load(spec, split="train")
    train = TrainConfig(steps=max(steps, 1), batch_size=64, lr=2e-3, warmup=20, log_every=50,
                        sample_every=0, checkpoint_every=0, ema_decay=0.99, seed=0)
    config = new_run_config(dataset, spec, net="mnist", net_overrides=SMALL_MNIST_UNET, T=1000,
                            train=train)
    schedule = Schedule.from_dict(config.schedule)
    if steps == 0:
        torch.manual_seed(0)
        net = nets.from_config(config.net).to(device).eval().requires_grad_(False)
        return Denoiser(net, schedule, config.prediction), 0.0
    start = time.perf_counter()
    Trainer(config, run_dir, dataset, device=device, progress=False).fit()
    seconds = time.perf_counter() - start
    run_ = load_run(run_dir, use_ema=True, device=device)
    # The density of the model itself, not of the clipped sampler.
    return Denoiser(run_.net, schedule, config.prediction), seconds


def score(den: Denoiser, x: torch.Tensor, rtol: float, batch: int, seed: int):
    """(bits/dim, NFE) per image, and the wall seconds it took."""
    gen = torch.Generator().manual_seed(seed)
    device = next(den.net.parameters()).device
    dims = x[0].numel()
    bits, nfe = [], []
    start = time.perf_counter()
    for lo in range(0, len(x), batch):
        y = dequantise(x[lo:lo + batch].to(device), gen)
        flow = ode_log_prob(den, y, rtol=rtol, atol=rtol, generator=gen)
        bits.append(-flow.log_prob.cpu() / (dims * math.log(2)) + DEQUANTISATION_BITS)
        nfe.append(flow.nfe.cpu())
    return torch.cat(bits), torch.cat(nfe).double(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="MNIST IDX folder")
    parser.add_argument("--n", type=int, default=1000, help="test images to score")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--rtol", type=float, nargs="+", default=[1e-5, 1e-3],
                        help="solver tolerances to time (atol = rtol)")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        den, train_s = small_unet(args.data, args.train_steps, os.path.join(tmp, "run"), args.device)
    test = data.load(args.data, split="test")
    x = torch.stack([test[i]["x"] for i in range(min(args.n, len(test)))])
    params = sum(p.numel() for p in den.net.parameters())
    header = (f"## ODE likelihood, MNIST — {date.today()}\n\n"
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (load average "
              f"{os.getloadavg()[0]:.1f} at start), {args.threads} torch thread(s), device "
              f"{args.device}, Python {sys.version.split()[0]}, torch {torch.__version__}.\n"
              f"Net: small U-Net, {params:,} parameters, {args.train_steps} training steps "
              f"({train_s:.0f} s), linear schedule T = 1000, ε-prediction. {len(x)} test images, "
              f"batches of {args.batch}, 8-bit dequantised, 1 Rademacher probe.\n"
              f"Command: `.venv/bin/python benchmarks/ode_likelihood.py --n {args.n} "
              f"--train-steps {args.train_steps} --rtol {' '.join(f'{r:g}' for r in args.rtol)} "
              f"--batch {args.batch} --threads {args.threads}`\n")
    print(header)
    lines = ["| rtol = atol | bits/dim (mean ± SE) | NFE mean | NFE median | NFE max "
             "| wall ms / image | images / s |", "|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for rtol in args.rtol:
        bits, nfe, seconds = score(den, x, rtol, args.batch, seed=0)
        se = bits.std().item() / math.sqrt(len(bits))
        lines.append(f"| {rtol:g} | {bits.mean().item():.3f} ± {se:.3f} | {nfe.mean().item():.0f} "
                     f"| {nfe.median().item():.0f} | {nfe.max().item():.0f} "
                     f"| {1000 * seconds / len(x):.0f} | {len(x) / seconds:.2f} |")
        print(lines[-1], flush=True)
    if args.write:
        write_section("ode_likelihood", header + "\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
