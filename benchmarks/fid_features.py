"""Metric throughput on CPU: FID Inception features per second, and the cost of the rest.

    .venv/bin/python benchmarks/fid_features.py [--images 48] [--write]

Rows: the FID InceptionV3 (299×299 input, 32×32 RGB images upsampled) at several batch sizes
and thread counts; the small digits/MNIST classifiers (MNIST: its one-off training, which is
timed only when it is not cached yet, else it reads the cache); the float64 Fréchet distance
at d = 2048; KID (100 subsets of 1000), precision/recall (k = 3) and the memorisation audit.
Besides wall-clock images/s it reports images per CPU-second (process time, all threads), which
moves far less than wall time on a shared machine. ``--write`` puts the table, with date,
machine and versions, into BENCHMARKS.md between ``<!-- fid_features -->`` markers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date

import numpy as np
import torch
from _report import write_section

from noisecraft.metrics import inception
from noisecraft.metrics.classifier import cache_file as classifier_cache_file
from noisecraft.metrics.classifier import classifier_features, load_classifier, prepare_classifier
from noisecraft.metrics.fid import frechet_distance
from noisecraft.metrics.kid import kid
from noisecraft.metrics.memorization import nearest_training_images
from noisecraft.metrics.precision_recall import precision_recall

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MNIST = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "mnist"))


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def table(n_images: int, mnist_dir: str) -> str:
    rng = np.random.default_rng(0)
    rgb32 = rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
    rows = ["| what | torch threads | batch | items | wall s | items/s | items per CPU-s |",
            "|---|---:|---:|---:|---:|---:|---:|"]

    def fmt(x: float) -> str:
        return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"

    def add(name: str, threads: int | str, batch: int | str, items: int, fn) -> None:
        torch.set_num_threads(threads if isinstance(threads, int) else 1)
        wall, cpu = timed(fn)
        rows.append(f"| {name} | {threads} | {batch} | {items:,} | {wall:.3g} | {fmt(items / wall)} | "
                    f"{fmt(items / max(cpu, 1e-9))} |")
        print(rows[-1], flush=True)

    net = inception.load_inception()
    with torch.no_grad():
        net(inception.preprocess(rgb32[:2]))  # TorchScript profiles its first calls: warm it up
    add("pre-processing only (resize to 299, scale)", 1, 50, n_images,
        lambda: [inception.preprocess(rgb32[i:i + 50]) for i in range(0, n_images, 50)])
    for threads, batch, n in ((1, 1, max(4, n_images // 6)), (1, 16, n_images), (1, 50, n_images),
                              (2, 16, n_images)):
        add("FID Inception features, 32×32 RGB", threads, batch, n,
            lambda b=batch, n=n: inception.inception_features(rgb32[:n], batch_size=b))
    load_classifier("digits")
    digits = rng.integers(0, 256, (20000, 8, 8, 1), dtype=np.uint8)
    add("digits MLP features, 8×8", 1, 1024, len(digits), lambda: classifier_features(digits, "digits"))
    if os.path.isdir(mnist_dir):
        if not classifier_cache_file("mnist").exists():
            add("MNIST CNN training, one epoch (once, then cached)", 1, 128, 60000,
                lambda: prepare_classifier("mnist", data=mnist_dir))
        mnist = rng.integers(0, 256, (20000, 28, 28, 1), dtype=np.uint8)
        add("MNIST CNN features, 28×28", 1, 1024, len(mnist),
            lambda: classifier_features(mnist, "mnist"))
    a, b = rng.standard_normal((5000, 2048)), rng.standard_normal((5000, 2048)) + 0.1
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    add("Fréchet distance, d = 2048 (float64 eigh, numpy BLAS)", "-", "-", 1,
        lambda: frechet_distance(mu_a, cov_a, mu_b, cov_b))
    add("KID, 100 subsets × 1000, d = 2048", 1, "-", 100,
        lambda: kid(a, b, num_subsets=100, subset_size=1000))
    add("precision/recall, 2000 vs 2000, d = 2048", 1, "-", 2000,
        lambda: precision_recall(a[:2000], b[:2000]))
    samples = rng.integers(0, 256, (1000, 28, 28, 1), dtype=np.uint8)
    train = rng.integers(0, 256, (10000, 28, 28, 1), dtype=np.uint8)
    add("memorisation, 1000 samples vs 10 000 train, 28×28", 1, 256, 1000,
        lambda: nearest_training_images(samples, train))
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="images per Inception row (default 48)")
    parser.add_argument("--mnist", default=DEFAULT_MNIST, help="MNIST IDX folder (classifier rows)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    header = (f"## Metrics — {date.today()}\n\n{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at start), "
              f"Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__}; "
              f"FID net sha256 {inception.FID_INCEPTION_SHA256[:12]}….\n"
              f"Command: `.venv/bin/python benchmarks/fid_features.py --images {args.images}`\n")
    print(header)
    body = table(args.images, args.mnist)
    if args.write:
        write_section("fid_features", header + "\n" + body)


if __name__ == "__main__":
    main()
