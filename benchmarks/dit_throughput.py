"""Training images per CPU-second of the DiT preset against the U-Net of the same role, on the CPU.

    .venv/bin/python benchmarks/dit_throughput.py [--threads 1] [--rounds 3] [--nets tiny dit-tiny]

One step is what the Trainer does per optimizer step (as ``train_throughput.py``): losses.simple
under the Denoiser, backward, gradient clipping, AdamW, EMA update, on random greyscale inputs
(no data loading), at 8×8 (scikit-learn's digits, batch 128) and 28×28 (MNIST, batch 32). Rates
are in process CPU time, which a shared machine's load does not distort; each is the median over
``--rounds`` rounds that time every net in turn. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import torch

from noisecraft import Denoiser, Schedule, losses, nets
from noisecraft.train import EMA

CASES = [(8, 128, 10), (28, 32, 4)]  # (image size, batch, timed steps)


def images_per_cpu_s(preset: str, size: int, batch: int, steps: int) -> tuple[float, int]:
    torch.manual_seed(0)
    net = nets.build(preset, in_channels=1, image_size=size, T=1000)
    denoiser = Denoiser(net, Schedule.linear(1000), "eps")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    ema = EMA(net, 0.999)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, 1, size, size, generator=gen) * 2 - 1

    def step() -> None:
        losses.simple(denoiser, x0, generator=gen).mean().backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(net)

    step()  # warm-up: allocator, AdamW state
    cpu = time.process_time()
    for _ in range(steps):
        step()
    return batch * steps / (time.process_time() - cpu), sum(p.numel() for p in net.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nets", nargs="+", default=["tiny", "dit-tiny"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    print(f"{date.today()}, torch {torch.__version__}, CPU ({cpu}), {args.threads} thread(s), "
          f"median of {args.rounds} rounds\n")
    print("| input | batch | preset | parameters | images per CPU-second |")
    print("|---|---:|---|---:|---:|")
    for size, batch, steps in CASES:
        rates: dict[str, list[float]] = {name: [] for name in args.nets}
        params = {}
        for _ in range(args.rounds):
            for name in args.nets:
                rate, params[name] = images_per_cpu_s(name, size, batch, steps)
                rates[name].append(rate)
        for name in args.nets:
            print(f"| 1×{size}×{size} | {batch} | {name} | {params[name]:,} | "
                  f"{statistics.median(rates[name]):.0f} |")


if __name__ == "__main__":
    main()
