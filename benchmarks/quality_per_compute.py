"""MNIST quality per CPU-minute: the README's CPU recipe against diffusers' recipe, same CPU seconds.

    PYTHONPATH=src .venv/bin/python benchmarks/quality_per_compute.py     # 10 and 30 CPU-minutes
    PYTHONPATH=src .venv/bin/python benchmarks/quality_per_compute.py --budgets 2 --n 500

One worker process per recipe and budget, all side by side, one torch thread each (CPU
seconds, not wall seconds, are the budget, so they do not disturb each other's count):

- **noisecraft**: the README's command (``RECIPE`` below — a test checks the README holds it
  word for word) with ``--max-time <budget>m --max-time-clock cpu``: the trainer counts this
  process's CPU seconds of optimiser steps with their data loading. Each budget is its own run
  (the recipe's cosine learning rate spans the budget it is given).
- **diffusers**: its ``examples/unconditional_image_generation/train_unconditional.py`` recipe
  adapted to 28 px: a 3-level ``UNet2DModel`` (attention at the middle level, as the example puts
  it at one middle level), ``layers_per_block=2``, DDPMScheduler (1000 linear steps, ε), AdamW
  (lr 1e-4, betas 0.95/0.999, weight decay 1e-6, eps 1e-8), 500 warm-up steps then cosine,
  batch 16, EMAModel with warm-up (inv_gamma 1, power 3/4, max 0.9999) — the example's defaults;
  its cosine spans the steps the budget affords (timed over the first 20), as the example's
  spans the steps it plans.
  Its channel widths are set to the noisecraft recipe's (32, 64, 64) so that the comparison is
  of the recipes, not of the network's size. The same budget clock: ``time.process_time()``
  around its steps and their data loading.

Each budget is scored on ``--n`` samples drawn by DDIM with 25 steps from the EMA weights
(noisecraft's ``ddim`` sampler; diffusers' ``DDIMScheduler``), 25 network evaluations per sample
for both, against the 10,000 MNIST test images:

- **PCA-50 FD**: the Fréchet distance in the top 50 principal components of the 60,000 MNIST
  training images (pixels in [−1, 1]; ``pca_fd`` below, anyone can recompute it); the floor, n
  training images against the test set, is printed beside it;
- **clf-FD**: the Fréchet distance in the features of noisecraft's small MNIST classifier
  (``noisecraft fid --features mnist``), and that classifier's mean confidence, the fraction
  read with p ≥ 0.9, and how many of the 10 classes are read so.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"

# The README's MNIST CPU recipe, flags after `noisecraft train --data <mnist> --out <run>`.
RECIPE = ["--net", "mnist-cpu", "--prediction", "edm", "--time-sampler", "log-normal",
          "--batch-size", "32", "--lr", "1e-3", "--lr-schedule", "cosine", "--adam-betas", "0.9",
          "0.99", "--precision", "bf16", "--steps", "100000", "--max-time", "10m"]
SAMPLER, STEPS = "ddim", 25


def mnist(split: str) -> np.ndarray:
    """uint8 (N, 28, 28) MNIST images of ``split``."""
    from noisecraft.data.idx import read_idx

    prefix = "train" if split == "train" else "t10k"
    return read_idx(str(MNIST / f"{prefix}-images-idx3-ubyte.gz"))


class PCAFrechet:
    """Fréchet distance in the top-``k`` principal components of the MNIST training images."""

    def __init__(self, k: int = 50):
        from noisecraft.metrics.fid import feature_statistics

        train = self._unit(mnist("train"))
        self.mean = train.mean(0)
        _, _, vt = np.linalg.svd(train - self.mean, full_matrices=False)
        self.basis = vt[:k].T
        self.train = train
        self.test_stats = feature_statistics(self.project(mnist("test")))

    @staticmethod
    def _unit(images: np.ndarray) -> np.ndarray:
        return np.asarray(images, np.float64).reshape(len(images), -1) / 127.5 - 1.0

    def project(self, images: np.ndarray) -> np.ndarray:
        x = images if images.dtype == np.float64 else self._unit(images)
        return (x - self.mean) @ self.basis

    def __call__(self, images: np.ndarray) -> float:
        from noisecraft.metrics.fid import feature_statistics, frechet_distance

        return frechet_distance(*feature_statistics(self.project(images)), *self.test_stats)

    def floor(self, n: int) -> float:
        """n training images (a fixed random subset) against the test set."""
        pick = np.random.default_rng(0).choice(len(self.train), n, replace=False)
        from noisecraft.metrics.fid import feature_statistics, frechet_distance

        return frechet_distance(*feature_statistics(self.project(self.train[pick])), *self.test_stats)


@functools.lru_cache(maxsize=1)
def test_features() -> np.ndarray:
    """The MNIST classifier's features of the 10,000 test images (computed once per process)."""
    from noisecraft.metrics.classifier import classifier_features

    return classifier_features(mnist("test").reshape(-1, 28, 28, 1), "mnist")


def score(images: np.ndarray, pca: PCAFrechet) -> dict:
    """The yardsticks of one sample set (uint8 (N, 28, 28[, 1]))."""
    from noisecraft.metrics.classifier import class_report, classifier_features
    from noisecraft.metrics.fid import fid_from_features

    images = images.reshape(len(images), 28, 28, 1)
    report = class_report(images, "mnist")
    return {"pca50_fd": pca(images.reshape(len(images), -1)),
            "clf_fd": fid_from_features(classifier_features(images, "mnist"), test_features()),
            "mean_confidence": report["mean_confidence"],
            "fraction_confident": report["fraction_confident"],
            "classes": report["num_classes_covered"]}


# ---------------------------------------------------------------------------------- workers
def recipe(minutes: float, flags: list[str] = RECIPE) -> list[str]:
    """``flags`` (the README's) with the budget set to ``minutes`` CPU-minutes."""
    flags = list(flags)
    if "--max-time" not in flags:
        flags += ["--max-time", ""]
    flags[flags.index("--max-time") + 1] = f"{minutes:g}m"
    return flags


def noisecraft_worker(minutes: float, n: int, work: Path, flags: list[str]) -> None:
    from noisecraft.run import load_run

    pca = PCAFrechet()
    run_dir = work / f"noisecraft-{minutes:g}m"
    subprocess.run([sys.executable, "-m", "noisecraft", "train", "--no-progress", "--threads", "1",
                    "--data", str(MNIST), "--out", str(run_dir), *recipe(minutes, flags)],
                   check=True, stdout=subprocess.DEVNULL)
    state = json.loads((run_dir / "state.json").read_text())
    run = load_run(run_dir)
    images = run.generate(n, sampler=SAMPLER, steps=STEPS, seed=0)
    emit({"who": "noisecraft", "budget_min": minutes, "steps": state["step"],
          "batch": run.config.train.batch_size, "cpu_s": state["time_used_s"]["cpu"],
          "params": sum(p.numel() for p in run.net.parameters()), **score(images, pca)})


def diffusers_worker(minutes: float, n: int, work: Path, flags: list[str]) -> None:
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    pca = PCAFrechet()
    model = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
                        block_out_channels=(32, 64, 64),
                        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6,
                            eps=1e-8)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0,
                   power=3 / 4, model_cls=UNet2DModel, model_config=model.config)
    gen = np.random.default_rng(0)
    used, step = 0.0, 0
    start = time.process_time()   # loading counted, as noisecraft's data loading is
    data = torch.from_numpy(mnist("train")).float().div(127.5).sub(1).unsqueeze(1)
    used += time.process_time() - start
    lr_sched = get_scheduler("constant", opt)

    def train_step() -> None:
        x0 = data[torch.from_numpy(gen.integers(0, len(data), 16))]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (len(x0),))
        loss = torch.nn.functional.mse_loss(model(noise_scheduler.add_noise(x0, noise, t), t).sample,
                                            noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad()
        ema.step(model.parameters())

    while used < minutes * 60:
        start = time.process_time()
        train_step()
        step += 1
        if step == 20:   # the example's cosine spans its planned steps: those the budget affords
            per_step = (used + time.process_time() - start) / 20
            lr_sched = get_scheduler("cosine", opt, num_warmup_steps=500,
                                     num_training_steps=int(minutes * 60 / per_step),
                                     last_epoch=step - 1)
        used += time.process_time() - start
    sampler = UNet2DModel.from_config(model.config)
    ema.copy_to(sampler.parameters())
    sampler.eval()
    ddim = DDIMScheduler.from_config(noise_scheduler.config)
    ddim.set_timesteps(STEPS)
    out, g = [], torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lo in range(0, n, 250):
            x = torch.randn(min(250, n - lo), 1, 28, 28, generator=g)
            for t in ddim.timesteps:
                x = ddim.step(sampler(x, t).sample, t, x, eta=0.0).prev_sample
            out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy())
    images = np.concatenate(out)
    emit({"who": "diffusers", "budget_min": minutes, "steps": step, "batch": 16, "cpu_s": used,
          "params": sum(p.numel() for p in model.parameters()), **score(images, pca)})


def emit(row: dict) -> None:
    print("ROW " + json.dumps(row), flush=True)


# ---------------------------------------------------------------------------------- table
def table(rows: list[dict], floor: float, n: int) -> str:
    head = ("| recipe | CPU-min | optimiser steps × batch | params | PCA-50 FD | clf-FD | "
            "mean conf. | p ≥ 0.9 | classes |")
    lines = [head, "|" + "---|" * 9]
    for r in sorted(rows, key=lambda r: (r["budget_min"], r["who"])):
        lines.append(f"| {r['who']} | {r['budget_min']:g} | {r['steps']} × {r['batch']} | "
                     f"{r['params'] / 1e6:.2f} M | {r['pca50_fd']:.2f} | {r['clf_fd']:.2f} | "
                     f"{r['mean_confidence']:.3f} | {r['fraction_confident']:.2f} | "
                     f"{r['classes']}/10 |")
    lines.append(f"\n{n} samples each, DDIM 25 steps (25 network evaluations per sample), EMA "
                 f"weights, against the 10,000 test images; the PCA-50 FD of {n} training images "
                 f"against the test set (the floor): {floor:.2f}.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budgets", default="10,30", help="CPU-minute budgets, comma-separated")
    p.add_argument("--n", type=int, default=1000, help="samples scored per budget")
    p.add_argument("--who", default="noisecraft,diffusers")
    p.add_argument("--work", default="/tmp/nc-quality-per-compute")
    p.add_argument("--recipe", help="other `noisecraft train` flags to measure instead of the "
                   "README's (a trial; --max-time is set per budget)")
    p.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    budgets = [float(b) for b in a.budgets.split(",")]
    work = Path(a.work)
    if a.worker:
        import torch

        torch.set_num_threads(1)
        who, minutes = a.worker.split("@")
        flags = shlex.split(a.recipe) if a.recipe else RECIPE
        {"noisecraft": noisecraft_worker, "diffusers": diffusers_worker}[who](float(minutes), a.n,
                                                                             work, flags)
        return
    work.mkdir(parents=True, exist_ok=True)
    runs = [work / f"noisecraft-{m:g}m" for m in budgets]
    if any(r.exists() for r in runs):
        sys.exit(f"{work} holds runs of an earlier benchmark: remove them or give another --work")
    # One worker per recipe and budget, all at once: each counts only its own CPU seconds.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", f"{who}@{m:g}", "--n", str(a.n),
                               "--work", str(work), *(["--recipe", a.recipe] if a.recipe else [])],
                              env=env, stdout=subprocess.PIPE, text=True)
             for who in a.who.split(",") for m in budgets]
    rows = []
    for proc in procs:
        for line in proc.stdout:
            if line.startswith("ROW "):
                rows.append(json.loads(line[4:]))
                print(line.rstrip(), flush=True)
        if proc.wait():
            sys.exit(f"worker {proc.args[3]} failed with exit code {proc.returncode}")
    import torch

    text = table(rows, PCAFrechet().floor(a.n), a.n)
    text += (f"\n\n`{' '.join(['benchmarks/quality_per_compute.py', *sys.argv[1:]])}` on "
             f"{os.cpu_count()} CPU cores, one thread per recipe, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}.")
    print(text)
    if a.write:
        from _report import write_section

        write_section("quality-per-compute", "## Quality per CPU-minute: MNIST, the README's recipe "
                      "against diffusers' at equal CPU seconds (`benchmarks/quality_per_compute.py`)"
                      f" — {time.strftime('%Y-%m-%d')}\n\n" + text)


if __name__ == "__main__":
    main()
