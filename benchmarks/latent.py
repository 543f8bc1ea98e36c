"""Latent diffusion on MNIST, on the CPU: the autoencoder against its latent size, and latent
against pixel diffusion at an equal training budget.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latent.py [--data ../shared/data/mnist]
        [--ae-steps 150] [--budget 120] [--write]

1. **Autoencoder** (``noisecraft train-autoencoder``'s trainer, preset ae32 with
   ``--ae-base`` channels): for each (f, C), ``--ae-steps`` steps at batch 32 on MNIST train, then
   the PSNR of the posterior-mean reconstructions of the first 1,000 MNIST *test* images
   (peak-to-peak 2 in [−1, 1], i.e. the usual 8-bit PSNR).
2. **Latent vs pixel diffusion**: the same class-conditional ``tiny`` U-Net preset (label
   dropout 0.1) trained on 28×28 pixels or on the 8×8×4 latents of the f = 4, C = 4 autoencoder
   of part 1, each for ``--budget`` seconds of process CPU time (the number of steps is set from
   a 3-step calibration; CPU time, because the wall clock of a shared machine measures the other
   tenants). The autoencoder's own training is not counted. Then 100 images (10 per class) by
   DDIM-25 with guidance w = 3, classified by noisecraft's small MNIST CNN: class accuracy
   (predicted = asked), mean confidence, and sampling time per image (decoder included).

``--write`` puts the tables into BENCHMARKS.md between this script's markers.
"""

from __future__ import annotations

import argparse
import datetime
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import write_section

from noisecraft import data
from noisecraft.autoencoders import AutoencoderTrainConfig, load_autoencoder
from noisecraft.config import TrainConfig
from noisecraft.latent import latent_dataset
from noisecraft.metrics.classifier import classify, prepare_classifier
from noisecraft.run import load_run
from noisecraft.train import Trainer, new_run_config
from noisecraft.train.autoencoder import AutoencoderTrainer, new_autoencoder_config, psnr

ROOT = Path(__file__).resolve().parents[1]
AE_CASES = [(2, 2), (4, 4), (4, 1), (8, 8)]  # (f, C)
TEST_IMAGES = 1000


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def train_autoencoder(pixels, spec: str, out: Path, factor: int, channels: int, steps: int,
                      base: int) -> dict:
    train = AutoencoderTrainConfig(steps=steps, batch_size=32, lr=2e-3, warmup=20, sample_every=0,
                                   checkpoint_every=0, log_every=max(1, steps // 5))
    config = new_autoencoder_config(pixels, spec, latent_channels=channels, factor=factor, train=train,
                                    net_overrides={"base_channels": base})
    c0, w0 = cpu_seconds(), time.perf_counter()
    AutoencoderTrainer(config, out, pixels, device="cpu", progress=False).fit()
    return {"cpu_s": cpu_seconds() - c0, "wall_s": time.perf_counter() - w0}


@torch.no_grad()
def test_psnr(ae_dir: Path, spec: str) -> float:
    ae = load_autoencoder(ae_dir)
    test = data.load(spec, split="test")
    x = torch.stack([test[i]["x"] for i in range(TEST_IMAGES)])
    rec = torch.cat([ae.decode(ae.encode(x[i:i + 250])[0]) for i in range(0, len(x), 250)])
    return float(psnr(rec, x).mean())


def diffusion_config(dataset, spec: str, steps: int):
    train = TrainConfig(steps=steps, batch_size=64, lr=1e-3, warmup=20, label_dropout=0.1,
                        sample_every=0, checkpoint_every=0, log_every=max(1, steps // 5))
    return new_run_config(dataset, spec, net="tiny", class_conditional=True, train=train)


def train_for_budget(dataset, spec: str, out: Path, budget: float) -> dict:
    """Calibrate the CPU time per step on 3 steps, then train a fresh run for ``budget`` s."""
    c0 = cpu_seconds()
    Trainer(diffusion_config(dataset, spec, 3), out / "calibrate", dataset, device="cpu",
            progress=False).fit()
    per_step = (cpu_seconds() - c0) / 3
    steps = max(10, int(budget / per_step))
    c0, w0 = cpu_seconds(), time.perf_counter()
    Trainer(diffusion_config(dataset, spec, steps), out / "run", dataset, device="cpu",
            progress=False).fit()
    return {"steps": steps, "cpu_s": cpu_seconds() - c0, "wall_s": time.perf_counter() - w0}


def evaluate(run_dir: Path) -> dict:
    run = load_run(run_dir)
    labels = np.repeat(np.arange(10), 10)
    c0, w0 = cpu_seconds(), time.perf_counter()
    images = run.generate(len(labels), sampler="ddim", steps=25, seed=0, labels=labels, guidance=3.0)
    cpu, wall = cpu_seconds() - c0, time.perf_counter() - w0
    pred, conf = classify(images, "mnist")
    return {"accuracy": float((pred == labels).mean()), "confidence": float(conf.mean()),
            "ms_per_image_cpu": 1000 * cpu / len(labels), "ms_per_image_wall": 1000 * wall / len(labels),
            "params": sum(p.numel() for p in run.net.parameters())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    p.add_argument("--ae-steps", type=int, default=150)
    p.add_argument("--ae-cases", default=",".join(f"{f}x{c}" for f, c in AE_CASES),
                   help="comma-separated fxC pairs (default %(default)s)")
    p.add_argument("--ae-base", type=int, default=16)
    p.add_argument("--budget", type=float, default=120.0, help="CPU seconds of diffusion training")
    p.add_argument("--skip-diffusion", action="store_true")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    pixels = data.load(args.data, shuffle=False)
    root = Path(tempfile.mkdtemp(prefix="noisecraft-latent-bench-"))

    rows = ["| f | C | latent | values / image | compression | steps | CPU s | wall s "
            "| test PSNR (dB) |",
            "|---|---|---|---|---|---|---|---|---|"]
    cases = [tuple(int(v) for v in case.split("x")) for case in args.ae_cases.split(",")]
    if (4, 4) not in cases and not args.skip_diffusion:
        cases.append((4, 4))  # part 2 diffuses in this autoencoder's latents
    for f, c in cases:
        out = root / f"ae-f{f}-c{c}"
        t = train_autoencoder(pixels, args.data, out, f, c, args.ae_steps, args.ae_base)
        side = 32 // f  # 28 px pads to 32
        values = c * side * side
        rows.append(f"| {f} | {c} | {c}×{side}×{side} | {values} | {784 / values:.1f}× "
                    f"| {args.ae_steps} | {t['cpu_s']:.0f} | {t['wall_s']:.0f} "
                    f"| {test_psnr(out, args.data):.2f} |")
        print(rows[-1], flush=True)
    ae_table = "\n".join(rows)

    diff_table = ""
    if not args.skip_diffusion:
        prepare_classifier("mnist", data=args.data)
        ae = load_autoencoder(root / "ae-f4-c4")
        w0 = time.perf_counter()
        latents = latent_dataset(pixels, ae, progress=False)
        print(f"encoded {len(latents)} training images once in {time.perf_counter() - w0:.0f} s (wall)")
        rows = ["| space | net input | params | train steps | train CPU s | train wall s "
                "| class accuracy (w = 3) | mean confidence | sampling ms/image (CPU) "
                "| sampling ms/image (wall) |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for name, ds, shape in (("pixel", pixels, "1×28×28"), ("latent (f=4, C=4)", latents, "4×8×8")):
            out = root / name.split()[0]
            t = train_for_budget(ds, args.data, out, args.budget)
            e = evaluate(out / "run")
            rows.append(f"| {name} | {shape} | {e['params']:,} | {t['steps']} | {t['cpu_s']:.0f} | "
                        f"{t['wall_s']:.0f} | {e['accuracy']:.2f} | {e['confidence']:.2f} | "
                        f"{e['ms_per_image_cpu']:.1f} | {e['ms_per_image_wall']:.1f} |")
            print(rows[-1], flush=True)
        diff_table = "\n".join(rows)

    command = " ".join(["benchmarks/latent.py", *sys.argv[1:]])
    stamp = (f"2-core CPU, shared with other jobs; torch {torch.__version__}, 1 thread; "
             f"{datetime.date.today().isoformat()}; command: `{command}`")
    text = (f"## Latent diffusion, MNIST (`benchmarks/latent.py`) — {datetime.date.today().isoformat()}"
            f"\n\n{stamp}\n\nAutoencoder (MNIST test PSNR, first {TEST_IMAGES} test images):"
            f"\n\n{ae_table}\n")
    if diff_table:
        text += (f"\nLatent vs pixel diffusion at {args.budget:.0f} CPU s of training each:\n\n"
                 f"{diff_table}\n")
    print(text)
    if args.write:
        write_section("latent", text)


if __name__ == "__main__":
    main()
