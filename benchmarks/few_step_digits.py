"""Few network evaluations on the 8×8 digits: an EDM teacher, its consistency distillation, and the
teacher's own DDIM and DPM-Solver++(2M) at the same evaluation counts.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/few_step_digits.py [--write]

The commands it runs (CPU, one thread, a few minutes):

    noisecraft train --data digits --out T --prediction edm --time-sampler log-normal \\
        --steps 3000 --lr 1e-3 --lr-schedule cosine
    noisecraft distill T --out D --steps 3000          # from the teacher's weights (default)

Each sampler draws ``--n`` samples from one seed at 1, 2 and 4 network evaluations (NFE), the
teacher's DDIM at 50 steps is the reference; columns: the Fréchet distance of the 64 pixels (in
[−1, 1]) to the 1,797 digits, its ratio to the 50-step teacher's, and the digits classifier's
mean confidence and fraction read with p ≥ 0.9 (the issue's 1-NFE goal: ≥ 90 %).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEACHER = ["--prediction", "edm", "--time-sampler", "log-normal", "--steps", "3000", "--lr", "1e-3",
           "--lr-schedule", "cosine"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="samples per sampler and NFE")
    p.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    import noisecraft as nc
    from noisecraft.metrics.classifier import class_report
    from noisecraft.metrics.fid import feature_statistics, frechet_distance

    data = nc.data.load("digits")
    real = torch.stack([data[i]["x"] for i in range(len(data))]).flatten(1).double().numpy()
    real_stats = feature_statistics(real)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    started = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        teacher, student = str(Path(tmp) / "teacher"), str(Path(tmp) / "distilled")
        for argv in (["train", "--data", "digits", "--out", teacher, "--no-progress",
                      "--sample-every", "0", *TEACHER],
                     ["distill", teacher, "--out", student, "--steps", "3000", "--no-progress"]):
            subprocess.run([sys.executable, "-m", "noisecraft", *argv], check=True, env=env,
                           stdout=subprocess.DEVNULL)
        runs = {"teacher": nc.load_run(teacher), "distilled": nc.load_run(student)}

        def measure(who: str, sampler: str, steps: int) -> None:
            images = runs[who].generate(a.n, sampler=sampler, steps=steps, seed=0)
            x = images.reshape(len(images), -1).astype(np.float64) / 127.5 - 1.0
            fd = frechet_distance(*feature_statistics(x), *real_stats)
            r = class_report(images, "digits")
            rows.append((who, sampler, steps, fd, r["mean_confidence"], r["fraction_confident"],
                         r["num_classes_covered"]))
            print(rows[-1], flush=True)

        measure("teacher", "ddim", 50)
        for nfe in (1, 2, 4):
            measure("teacher", "ddim", nfe)
            measure("teacher", "dpmpp-2m", nfe)
            measure("distilled", "consistency", nfe)
    reference = rows[0][3]
    lines = ["| run | sampler | NFE | pixel FD | ÷ teacher's 50-step FD | mean conf. | p ≥ 0.9 | "
             "classes |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {w} | {s} | {k} | {fd:.3f} | {fd / reference:.2f}× | {c:.3f} | {f:.2f} | {n}/10 |"
              for w, s, k, fd, c, f, n in rows]
    text = "\n".join(lines) + (
        f"\n\nTeacher: `noisecraft train --data digits {' '.join(TEACHER)}` (the `tiny` U-Net); "
        f"distilled: `noisecraft distill T --steps 3000` (from the teacher's weights, N = 18, "
        f"Euler, μ = 0.95). {a.n} samples per row, seed 0; the FD is against all 1,797 "
        f"digits, with no floor subtracted. {time.process_time() - started:.0f} CPU-s in this "
        f"process (training ran in child processes); one thread on a {os.cpu_count()}-core CPU, torch "
        f"{torch.__version__}, {time.strftime('%Y-%m-%d')}.")
    print(text)
    if a.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _report import write_section

        write_section("few-step-digits", "## Few steps on the 8×8 digits: consistency distillation "
                      "of an EDM teacher (`benchmarks/few_step_digits.py`) — "
                      f"{time.strftime('%Y-%m-%d')}\n\n"
                      f"`PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python "
                      f"{' '.join(['benchmarks/few_step_digits.py', *sys.argv[1:]])}`\n\n" + text)


if __name__ == "__main__":
    main()
