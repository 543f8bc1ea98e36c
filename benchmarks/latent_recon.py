"""Autoencoder reconstructions against the latent size, on MNIST and CIFAR-10 (CPU).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latent_recon.py [--steps 500] [--cifar-steps N]
        [--batch-size 32] [--test-images 1000] [--cifar-test-images N]
        [--mnist ../shared/data/mnist] [--cifar ../shared/data/cifar10]
        [--mnist-cases 2x2,4x4,8x8] [--cifar-cases 2x3,4x4,8x8] [--keep DIR] [--write]

For each data set and each (f, C) — downsampling factor f, C latent channels — one KL
autoencoder is trained by ``noisecraft.train.autoencoder`` (preset ``ae32``, every other setting
``noisecraft train-autoencoder``'s default: L1 + 1e-4 KL, AdamW lr 1e-3, 100 warm-up steps, seed 0)
for ``--steps`` (CIFAR-10: ``--cifar-steps``) steps at ``--batch-size`` on the data's *train*
split (MNIST: 60,000 images; CIFAR-10: the 10,000-image training subset of the shards). So the
f = 4, C = 4 MNIST row is the autoencoder that ``noisecraft train-autoencoder --data
../shared/data/mnist --factor 4 --latent-channels 4 --steps S --batch-size B`` trains
(``--keep DIR`` keeps them for reuse).

Then, on the first ``--test-images`` (1,000) *test* images (never seen in training), each
reconstructed from its posterior mean (decode(mean), no sampling) and rounded to 8 bits like a
saved picture:

- PSNR in dB with peak-to-peak 2 in [−1, 1], i.e. the usual 8-bit PSNR, averaged per image;
- FID of the reconstructions against the same real test images. CIFAR-10: the
  standard Inception pool-3 features; MNIST: the penultimate features of noisecraft's small MNIST
  classifier (``features="mnist"``; Inception is a poor judge of 28×28 grey digits). Each
  reconstruction is paired with its own original, so this FID goes to 0 as reconstructions become
  exact; the "real vs real" row (test images 0–999 against 1,000–1,999) gives the scale: what
  a *different* set of real test images scores. An FID on 1,000 images is only comparable inside
  its own column.

CPU seconds are this process's (user + system), which a shared machine does not inflate.
``--write`` puts each data set's table into BENCHMARKS.md between its own markers
(``latent_recon_mnist``, ``latent_recon_cifar10``), so the two can be run separately.
"""

from __future__ import annotations

import argparse
import datetime
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import write_section

from noisecraft import data
from noisecraft.autoencoders import AutoencoderTrainConfig, load_autoencoder
from noisecraft.metrics.classifier import prepare_classifier
from noisecraft.metrics.features import extract_features
from noisecraft.metrics.fid import fid_from_features
from noisecraft.metrics.images import load_image_set
from noisecraft.train.autoencoder import AutoencoderTrainer, new_autoencoder_config, psnr

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parse_cases(text: str) -> list[tuple[int, int]]:
    """"2x2,4x4" → [(2, 2), (4, 4)]: (factor f, latent channels C)."""
    cases = []
    for case in text.split(","):
        f, _, c = case.partition("x")
        if not (f.isdigit() and c.isdigit()):
            raise ValueError(f"case {case!r}: expected fxC, e.g. 4x4")
        cases.append((int(f), int(c)))
    return cases


def train(pixels, spec: str, out: Path, factor: int, channels: int, steps: int,
          batch_size: int) -> dict:
    train_config = AutoencoderTrainConfig(steps=steps, batch_size=batch_size, sample_every=0,
                                          checkpoint_every=0, log_every=max(1, steps // 5))
    config = new_autoencoder_config(pixels, spec, latent_channels=channels, factor=factor,
                                    train=train_config)
    c0, w0 = cpu_seconds(), time.perf_counter()
    AutoencoderTrainer(config, out, pixels, device="cpu", progress=False).fit()
    return {"cpu_s": cpu_seconds() - c0, "wall_s": time.perf_counter() - w0}


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) → float (N, C, H, W) in [−1, 1], the data pipeline's v / 127.5 − 1."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def reconstruct(ae_dir: Path, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """decode(posterior mean) of each image, rounded to 8 bits as a saved picture would be."""
    ae = load_autoencoder(ae_dir)
    rec = torch.cat([ae.decode(ae.encode(x[i:i + batch])[0]) for i in range(0, len(x), batch)])
    return torch.round((rec.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return torch.round((x.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


ROWS_HEAD = ["| data | f | C | latent values / pixel values | steps × batch | train CPU s "
             "| train wall s | test PSNR (dB) | FID of reconstructions |",
             "|---|---|---|---|---|---|---|---|---|"]


def run_dataset(name: str, spec: str, cases: list[tuple[int, int]], steps: int, n: int, args,
                root: Path, features: str) -> list[str]:
    if features == "mnist":
        prepare_classifier("mnist", data=spec)
    real = load_image_set(spec, n=2 * n, split="test")
    x = to_model_space(real[:n])
    c0 = cpu_seconds()
    real_feats = extract_features(real[:n], features)
    floor = fid_from_features(extract_features(real[n:], features), real_feats)
    print(f"{name}: real features in {cpu_seconds() - c0:.0f} CPU s; real vs real FID {floor:.2f}",
          flush=True)
    pixels = data.load(spec, split="train")
    shape = pixels.preprocess.shape  # (C, H, W) of the data
    pixel_values = int(np.prod(shape))
    rows = [f"| {name} | – | – | real vs real | – | – | – | – | {floor:.2f} |"]
    for f, c in cases:
        out = root / f"{name.lower()}-f{f}-c{c}"
        t = train(pixels, spec, out, f, c, steps, args.batch_size)
        side = load_autoencoder(out).latent_shape(tuple(shape))[-1]  # 28 px pads to 32
        latent_values = c * side * side
        rec = reconstruct(out, x)
        quality = float(psnr(rec, x).mean())
        fid = fid_from_features(extract_features(to_uint8(rec), features), real_feats)
        rows.append(f"| {name} | {f} | {c} | {c}×{side}×{side} = {latent_values} / {pixel_values} "
                    f"({latent_values / pixel_values:.3f}) | {steps} × {args.batch_size} "
                    f"| {t['cpu_s']:.0f} | {t['wall_s']:.0f} | {quality:.2f} | {fid:.2f} |")
        print(rows[-1], flush=True)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copytree(out, args.keep / out.name, dirs_exist_ok=True)
    return rows


def section(name: str, rows: list[str], n: int, features: str, command: str) -> str:
    """The BENCHMARKS.md section of one data set's table."""
    space = ("the small MNIST classifier's penultimate features" if features == "mnist"
             else "Inception pool-3 features")
    return (f"## Autoencoder reconstructions against latent size, {name} "
            f"(`benchmarks/latent_recon.py`) — {datetime.date.today().isoformat()}\n\n"
            f"2-core CPU, shared with other jobs; torch {torch.__version__}, 1 thread; "
            f"command: `{command}`. CPU s: the process's own CPU time (the shared machine "
            "inflates wall time).\n\n"
            f"The first {n:,} test images, reconstructed from the posterior mean and rounded to 8 "
            f"bits. FID against the same {n:,} real test images, in {space}. Each reconstruction "
            "is paired with its own original, so this FID falls to 0 as reconstructions become "
            f"exact; the real-vs-real row (test images 0–{n - 1} against {n}–{2 * n - 1}) gives "
            "the scale: what a *different* set of real test images scores.\n\n"
            + "\n".join(ROWS_HEAD + rows) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mnist", default=str(DATA / "mnist"), help="MNIST spec ('' to skip)")
    p.add_argument("--cifar", default=str(DATA / "cifar10"), help="CIFAR-10 spec ('' to skip)")
    p.add_argument("--mnist-cases", default="2x2,4x4,8x8", help="comma-separated fxC pairs")
    p.add_argument("--cifar-cases", default="2x3,4x4,8x8", help="comma-separated fxC pairs")
    p.add_argument("--steps", type=int, default=500, help="training steps (MNIST)")
    p.add_argument("--cifar-steps", type=int, help="training steps for CIFAR-10 (default: --steps)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--test-images", type=int, default=1000, help="held-out test images scored")
    p.add_argument("--cifar-test-images", type=int,
                   help="for CIFAR-10 (default: --test-images; Inception costs ~0.4 s per image)")
    p.add_argument("--keep", type=Path, help="copy the trained autoencoders into this folder")
    p.add_argument("--write", action="store_true", help="record each data set's table in "
                   "BENCHMARKS.md (section latent_recon_<data>)")
    args = p.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="noisecraft-latent-recon-"))
    runs = []
    if args.mnist:
        runs.append(("MNIST", args.mnist, args.mnist_cases, args.steps, args.test_images, "mnist"))
    if args.cifar:
        runs.append(("CIFAR-10", args.cifar, args.cifar_cases, args.cifar_steps or args.steps,
                     args.cifar_test_images or args.test_images, "inception"))
    command = " ".join(["OMP_NUM_THREADS=1 python benchmarks/latent_recon.py", *sys.argv[1:]])
    for name, spec, cases, steps, n, features in runs:
        rows = run_dataset(name, spec, parse_cases(cases), steps, n, args, root, features)
        text = section(name, rows, n, features, command)
        print(text, flush=True)
        if args.write:
            write_section(f"latent_recon_{name.lower().replace('-', '')}", text)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
