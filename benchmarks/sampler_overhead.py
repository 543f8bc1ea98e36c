"""The samplers' own cost per step, next to the cost of one forward pass of a small conv net.

Each sampler runs on x_T of shape (64, 3, 32, 32) float32 with a zero-cost network
(``net(x, t) = 0``), so the time measured is the sampler's arithmetic, its noise draws and the
Denoiser's reading of the output (shown separately). It is compared with one forward pass of a
plain ~1.2M-parameter conv net (defined here, not a noisecraft backbone) on the same batch.

    .venv/bin/python benchmarks/sampler_overhead.py [--steps 50] [--repeats 5] [--threads N]

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch
from torch import nn

from noisecraft import Denoiser, Schedule, grids
from noisecraft.noise import BatchNoise, ExampleNoise
from noisecraft.samplers import SAMPLERS

SHAPE = (64, 3, 32, 32)


class ConvNet(nn.Module):
    """Three resolutions (32, 16, 8) of 3x3 convolutions and back: ~1.2M parameters."""

    def __init__(self, c: int = 64):
        super().__init__()
        act = nn.SiLU()
        self.body = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), act, nn.Conv2d(c, c, 3, padding=1), act,
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), act,
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), act,
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), act,
            nn.Conv2d(4 * c, 4 * c, 3, padding=1), act,
            nn.Upsample(scale_factor=4), nn.Conv2d(4 * c, c, 3, padding=1), act,
            nn.Conv2d(c, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def zero_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    schedule = Schedule.linear(T=1000)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    net = ConvNet().eval()
    params = sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        forward_s = median_seconds(lambda: net(x_T, torch.zeros(SHAPE[0])), args.repeats)
    zero = Denoiser(zero_net, schedule, "eps")
    denoiser_s = median_seconds(lambda: zero(x_T, 500.0), max(args.repeats, 20))

    print(f"# sampler overhead — {datetime.date.today()}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, threads: {torch.get_num_threads()}")
    print(f"x_T {tuple(SHAPE)} float32; conv net {params / 1e6:.2f}M parameters: one forward "
          f"{forward_s * 1e3:.1f} ms; Denoiser reading of a zero net: {denoiser_s * 1e3:.3f} ms/call\n")
    print("| sampler | grid | noise | steps | net calls | ms/step | of which Denoiser | "
          "% of one forward |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    rows = [(name, "batch") for name in SAMPLERS] + [("ddpm", "per-example"), ("sde", "per-example")]
    for name, kind in rows:
        fn = SAMPLERS[name]
        grid = grids.make(fn.default_grid, schedule, args.steps)
        calls = []

        def run(fn=fn, grid=grid, kind=kind):
            noise = (ExampleNoise(0, SHAPE[0]) if kind == "per-example"
                     else BatchNoise(SHAPE[0], torch.Generator().manual_seed(0)))
            fn(zero, x_T, grid, noise=noise, callback=lambda *a: None)

        def counting_net(x, t, calls=calls):
            calls.append(1)
            return torch.zeros_like(x)

        seconds = median_seconds(run, args.repeats)
        fn(Denoiser(counting_net, schedule, "eps"), x_T, grid, noise=BatchNoise(SHAPE[0]))
        per_step = seconds / args.steps
        print(f"| {name} | {fn.default_grid} | {kind} | {args.steps} | {len(calls)} | "
              f"{per_step * 1e3:.3f} | {len(calls) * denoiser_s / args.steps * 1e3:.3f} | "
              f"{100 * per_step / forward_s:.2f} |")


if __name__ == "__main__":
    main()
