"""Forward and forward+backward time per batch, and parameter counts, of every network preset.

    .venv/bin/python benchmarks/nets_forward.py [--threads N] [--repeats R] [--device cpu|cuda]

Prints a Markdown table. Each timing is the median over ``repeats`` calls after two warm-up calls;
the backward pass includes the forward (one training step without the optimiser).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import torch

from noisecraft import nets

# Batch sizes a CPU can take; the 35.7M-parameter CIFAR-10 net gets a small batch.
BATCHES = {"tiny": 128, "mnist": 32, "ddpm-cifar10": 4, "mlp": 1024, "linear": 128}


def example(net: torch.nn.Module, batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = net.config
    size = cfg.get("image_size")
    shape = (batch, cfg["in_channels"]) + ((size, size) if size is not None else ())
    return torch.randn(shape, device=device), torch.rand(batch, device=device) * cfg["T"]


def median_ms(fn, repeats: int, device: str) -> float:
    times = []
    for i in range(repeats + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"noisecraft.nets presets — {date.today()}, torch {torch.__version__}, {args.device} "
          f"({platform.processor() or platform.machine()}), {args.threads} threads, "
          f"median of {args.repeats}\n")
    print("| preset | parameters | input | batch | forward ms | forward+backward ms |")
    print("|---|---:|---|---:|---:|---:|")
    for name, batch in BATCHES.items():
        net = nets.build(name).to(args.device).train()
        params = sum(p.numel() for p in net.parameters())
        x, t = example(net, batch, args.device)

        def forward(net=net, x=x, t=t):
            with torch.no_grad():
                net(x, t)

        def forward_backward(net=net, x=x, t=t):
            net.zero_grad(set_to_none=True)
            net(x, t).square().mean().backward()

        fwd = median_ms(forward, args.repeats, args.device)
        bwd = median_ms(forward_backward, args.repeats, args.device)
        shape = "×".join(map(str, x.shape[1:]))
        print(f"| {name} | {params:,} | {shape} | {batch} | {fwd:.1f} | {bwd:.1f} |")


if __name__ == "__main__":
    main()
