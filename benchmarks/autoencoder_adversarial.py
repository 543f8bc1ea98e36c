"""The autoencoder trainer on MNIST, on the CPU: channels_last against contiguous, and the
patch-adversarial term against none.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/autoencoder_adversarial.py
        [--data ../shared/data/mnist] [--steps 300] [--start 150] [--weights 0,0.5] [--write]

1. **Memory format**: the ae32 preset at f = 4, C = 4 (``--speed-base`` channels) on a batch of
   ``--speed-batch`` MNIST images, one thread: process CPU seconds of one training step (forward,
   L1 + KL backward, AdamW; with the adversarial term also its generator term, adaptive weight
   and the discriminator's step) and of a no-grad encode + decode, median of ``--repeats``, the
   cases interleaved so that a change in the machine's load hits all alike.
2. **Adversarial term**: the trainer itself, ``--steps`` steps at batch 32 (ae32, ``--base``
   channels, f = 4, C = 4), once per ``--adversarial-weight`` in ``--weights`` (0 = off; the
   term from step ``--start``); then on the first 1,000 MNIST *test* images the PSNR of the
   posterior-mean reconstructions and their sharpness: mean |horizontal neighbour difference| +
   mean |vertical neighbour difference| of the reconstructions over that of the originals
   (1 = as much edge as the data, < 1 blurred, > 1 edges the data lacks).

``--write`` puts the tables into BENCHMARKS.md between this script's markers.
"""

from __future__ import annotations

import argparse
import datetime
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _report import write_section

from noisecraft import data
from noisecraft.autoencoders import AutoencoderTrainConfig, load_autoencoder
from noisecraft.nets.autoencoder import build_autoencoder
from noisecraft.nets.discriminator import PatchDiscriminator, discriminator_for
from noisecraft.train.autoencoder import (
    DISCRIMINATOR_BETAS,
    Adversary,
    AutoencoderTrainer,
    ae_loss_terms,
    discriminator_step,
    generator_objective,
    new_autoencoder_config,
    psnr,
)

ROOT = Path(__file__).resolve().parents[1]
TEST_IMAGES = 1000
ADVERSARIAL = "channels_last + adversarial term"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sharpness(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (horizontal and vertical)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def time_formats(x: torch.Tensor, base: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median CPU seconds of a training step and of a no-grad encode + decode per format, and of
    a channels_last step with the adversarial term (generator term + discriminator step)."""
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last,
               ADVERSARIAL: torch.channels_last}
    nets, opts, batches = {}, {}, {}
    for name, fmt in formats.items():
        torch.manual_seed(0)
        nets[name] = build_autoencoder("ae32", image_size=28, factor=4, latent_channels=4,
                                       base_channels=base).to(memory_format=fmt)
        opts[name] = torch.optim.AdamW(nets[name].parameters(), lr=1e-4)
        batches[name] = x.contiguous(memory_format=fmt)
    disc = PatchDiscriminator(**discriminator_for(nets[ADVERSARIAL].config))
    adv = Adversary(disc.to(memory_format=torch.channels_last),
                    torch.optim.AdamW(disc.parameters(), lr=1e-4, betas=DISCRIMINATOR_BETAS))
    times: dict[str, dict[str, list[float]]] = {n: {"step": [], "inference": []} for n in formats}
    for i in range(repeats + 1):  # the first round warms up and is dropped
        for name in formats:
            net, opt, xb = nets[name], opts[name], batches[name]
            c0 = cpu_seconds()
            x_hat, mean, logvar = net(xb)
            loss = ae_loss_terms(xb, x_hat, mean, logvar, 1e-4, "l1")[0].mean()
            if name == ADVERSARIAL:
                loss = generator_objective(loss, x_hat, disc, net.decoder[-1].weight, 0.5)[0]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if name == ADVERSARIAL:
                discriminator_step(adv, xb, x_hat, 1e-4, 1.0)
            c1 = cpu_seconds()
            with torch.no_grad():
                net.decode(net.encode(xb)[0])
            c2 = cpu_seconds()
            if i:
                times[name]["step"].append(c1 - c0)
                times[name]["inference"].append(c2 - c1)
    return {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}


def train(pixels, spec: str, out: Path, steps: int, base: int, weight: float, start: int) -> dict:
    tc = AutoencoderTrainConfig(steps=steps, batch_size=32, lr=2e-3, warmup=20, sample_every=0,
                                checkpoint_every=0, log_every=max(1, steps // 10),
                                adversarial_weight=weight, adversarial_start=start)
    config = new_autoencoder_config(pixels, spec, latent_channels=4, factor=4, train=tc,
                                    net_overrides={"base_channels": base})
    c0, w0 = cpu_seconds(), time.perf_counter()
    AutoencoderTrainer(config, out, pixels, device="cpu", progress=False).fit()
    return {"cpu_s": cpu_seconds() - c0, "wall_s": time.perf_counter() - w0}


@torch.no_grad()
def reconstruct(ae_dir: Path, x: torch.Tensor) -> torch.Tensor:
    ae = load_autoencoder(ae_dir)
    return torch.cat([ae.decode(ae.encode(x[i:i + 250])[0]) for i in range(0, len(x), 250)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--start", type=int, default=150, help="--adversarial-start of the GAN run")
    p.add_argument("--weights", default="0,0.5",
                   help="comma-separated --adversarial-weight values, one run each "
                   "(default %(default)s)")
    p.add_argument("--base", type=int, default=16, help="base channels of the trained autoencoders")
    p.add_argument("--speed-base", type=int, default=32)
    p.add_argument("--speed-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    pixels = data.load(args.data, shuffle=False)
    today = datetime.date.today().isoformat()
    tables = [f"## Autoencoder: channels_last and the adversarial term "
              f"(`benchmarks/autoencoder_adversarial.py`) — {today}",
              f"2-core CPU, shared, 1 thread, torch {torch.__version__}"]

    if not args.skip_speed:
        x = torch.stack([pixels[i]["x"] for i in range(args.speed_batch)])
        t = time_formats(x, args.speed_base, args.repeats)
        rows = [f"ae32 (base {args.speed_base}), f = 4, C = 4, batch {args.speed_batch}, median CPU s "
                f"of {args.repeats}:", "",
                "| case | training step (s) | no-grad encode + decode (s) |",
                "|---|---|---|"]
        rows += [f"| {n} | {v['step']:.3f} | {v['inference']:.3f} |" for n, v in t.items()]
        tables.append("\n".join(rows))
        print(tables[-1], flush=True)

    if not args.skip_training:
        test = data.load(args.data, split="test")
        x = torch.stack([test[i]["x"] for i in range(TEST_IMAGES)])
        root = Path(tempfile.mkdtemp(prefix="noisecraft-ae-adv-bench-"))
        rows = [f"ae32 (base {args.base}), f = 4, C = 4, {args.steps} steps at batch 32, "
                f"{TEST_IMAGES} MNIST test images:", "",
                "| adversarial term | CPU s | wall s | test PSNR (dB) | sharpness (recon / data) |",
                "|---|---|---|---|---|"]
        for weight in (float(w) for w in args.weights.split(",")):
            out = root / f"w{weight}"
            r = train(pixels, args.data, out, args.steps, args.base, weight, args.start)
            rec = reconstruct(out, x)
            label = "off" if weight == 0 else f"weight {weight}, from step {args.start}"
            rows.append(f"| {label} | {r['cpu_s']:.0f} | {r['wall_s']:.0f} "
                        f"| {float(psnr(rec, x).mean()):.2f} "
                        f"| {float(sharpness(rec.clamp(-1, 1)) / sharpness(x)):.3f} |")
            print(rows[-1], flush=True)
        tables.append("\n".join(rows))

    if args.write:
        write_section("autoencoder-adversarial", "\n\n".join(tables))


if __name__ == "__main__":
    main()
