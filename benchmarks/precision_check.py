"""bf16 autocast against float32: the same training run twice, loss curves side by side.

    python benchmarks/precision_check.py --data 'cifar10/train-{0000..0003}.tar.gz'
        [--device cuda] [--net ddpm-cifar10] [--steps 200] [--batch 128] [--window 50]

Both runs start from the same weights and see the same batches, times and noise (one generator
per run, same seed); only the autocast differs. The loss is noisy from step to step (each step
draws new t and ε), so the runs agree when the difference of their window means is within a few
standard errors of that noise: the table prints both means, the step-to-step standard deviation
and the difference in units of the standard error of a window mean.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from noisecraft import Denoiser, Schedule, data, losses, nets
from noisecraft.train import EMA, accel


def batches(spec: str, batch: int, count: int, size: int, channels: int) -> list[torch.Tensor]:
    dataset = data.load(spec, image_size=size, channels=channels, shuffle=False)
    items = (iter(dataset) if not hasattr(dataset, "__len__")
             else (dataset[i] for i in range(len(dataset))))
    xs = [next(items)["x"] for _ in range(batch * count)]
    return [torch.stack(xs[i * batch:(i + 1) * batch]) for i in range(count)]


def run(bf16: bool, args: argparse.Namespace, xs: list[torch.Tensor], dev: torch.device) -> list[float]:
    torch.manual_seed(0)
    fmt = accel.memory_format(dev)
    net = nets.build(args.net, in_channels=xs[0].shape[1], image_size=xs[0].shape[-1]).to(
        dev, memory_format=fmt)
    denoiser = Denoiser(net, Schedule.linear(1000), "eps")
    opt = accel.optimizer(net.parameters(), dev, lr=args.lr)
    ema = EMA(net, 0.9999)
    gen = torch.Generator(device=dev).manual_seed(1)
    out = []
    for step in range(args.steps):
        x0 = accel.to_memory_format(xs[step % len(xs)].to(dev), fmt)
        for group in opt.param_groups:          # the trainer's linear warm-up
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = losses.simple(denoiser, x0, generator=gen).float().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(net)
        out.append(loss.item())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--net", default="ddpm-cifar10")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="distinct batches, cycled")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--window", type=int, default=50, help="last steps compared")
    args = parser.parse_args()
    dev = torch.device(args.device)
    xs = batches(args.data, args.batch, args.batches, args.image_size, args.channels)
    curves = {"float32": run(False, args, xs, dev), "bf16": run(True, args, xs, dev)}
    w = min(args.window, args.steps)
    print(f"| step | {' | '.join(curves)} |\n|---:|---:|---:|")
    for i in range(0, args.steps, max(1, args.steps // 10)):
        print(f"| {i + 1} | " + " | ".join(f"{c[i]:.4f}" for c in curves.values()) + " |")
    tails = {k: c[-w:] for k, c in curves.items()}
    means = {k: statistics.fmean(v) for k, v in tails.items()}
    sd = statistics.fmean(statistics.stdev(v) for v in tails.values())
    se = sd * math.sqrt(2 / w)                  # standard error of a difference of window means
    diff = means["bf16"] - means["float32"]
    print(f"\nlast {w} steps: float32 {means['float32']:.4f}, bf16 {means['bf16']:.4f}, "
          f"step-to-step sd {sd:.4f}; difference {diff:+.4f} = {diff / se:+.2f} standard errors "
          f"({'agree' if abs(diff) <= 3 * se else 'DISAGREE'} at 3 SE)")


if __name__ == "__main__":
    main()
