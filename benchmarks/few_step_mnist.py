"""Few network evaluations on MNIST: the README's CPU teacher, its consistency distillation, and
the teacher's own DDIM and DPM-Solver++(2M) at the same evaluation counts.

    PYTHONPATH=src .venv/bin/python benchmarks/few_step_mnist.py --teacher-budget 30 \\
        --distill-budget 30 [--teacher RUN] [--n 1000] [--write]

1. The teacher: the README's MNIST CPU recipe (``quality_per_compute.RECIPE``) trained for
   ``--teacher-budget`` CPU-minutes, or an existing run given by ``--teacher``.
2. ``noisecraft distill TEACHER --out STUDENT --max-time <--distill-budget>m`` (the library's
   defaults: the student starts from the teacher's EMA weights, N = 18 respaced intervals, Euler
   teacher steps, target EMA μ = 0.95; the teacher's batch, lr, precision and CPU clock).
3. Every sampler draws ``--n`` samples from the same seed at 1, 2 and 4 network evaluations (NFE)
   — DDIM and DPM-Solver++(2M) from the teacher, the consistency sampler from the student — and
   the teacher's DDIM at 50 steps is the reference; each is scored as
   ``quality_per_compute.score`` scores (PCA-50 FD against the 10,000 test images, the MNIST
   classifier's mean confidence and the fraction read with p ≥ 0.9).

The issue's goals: at 4 NFE within 1.5× of the 50-step teacher's FD; at 1 NFE ≥ 90 % of the
samples read with p ≥ 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_per_compute import MNIST, PCAFrechet, recipe, score  # noqa: E402

NFES = (1, 2, 4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", help="an existing teacher run (default: train the README recipe)")
    p.add_argument("--teacher-budget", type=float, default=30, help="CPU-minutes for the teacher")
    p.add_argument("--distill-budget", type=float, default=30, help="CPU-minutes for distill")
    p.add_argument("--n", type=int, default=1000, help="samples per sampler and NFE")
    p.add_argument("--work", default="/tmp/nc-few-step-mnist")
    p.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from noisecraft.run import load_run

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    teacher = Path(a.teacher) if a.teacher else work / "teacher"
    if not a.teacher:
        subprocess.run([sys.executable, "-m", "noisecraft", "train", "--no-progress", "--data",
                        str(MNIST), "--out", str(teacher), *recipe(a.teacher_budget)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    student = work / "distilled"
    if not (student / "state.json").is_file():
        subprocess.run([sys.executable, "-m", "noisecraft", "distill", str(teacher), "--out",
                        str(student), "--max-time", f"{a.distill_budget:g}m", "--no-progress"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    pca = PCAFrechet()
    runs = {"teacher": load_run(teacher), "distilled": load_run(student)}
    state = {k: json.loads((Path(r.run_dir) / "state.json").read_text()) for k, r in runs.items()}
    rows: list[tuple[str, str, int, dict]] = []

    def measure(who: str, sampler: str, steps: int, nfe: int) -> None:
        images = runs[who].generate(a.n, sampler=sampler, steps=steps, seed=0)
        r = score(images, pca)
        rows.append((who, sampler, nfe, r))
        print(f"{who} {sampler} {nfe} NFE: FD {r['pca50_fd']:.2f} conf {r['mean_confidence']:.3f} "
              f"p>=0.9 {r['fraction_confident']:.2f}", flush=True)

    measure("teacher", "ddim", 50, 50)
    for nfe in NFES:
        measure("teacher", "ddim", nfe, nfe)
        measure("teacher", "dpmpp-2m", nfe, nfe)
        measure("distilled", "consistency", nfe, nfe)
    reference = rows[0][3]["pca50_fd"]
    lines = ["| run | sampler | NFE | PCA-50 FD | ÷ teacher's 50-step FD | mean conf. | p ≥ 0.9 | "
             "classes |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for who, sampler, nfe, r in rows:
        lines.append(f"| {who} | {sampler} | {nfe} | {r['pca50_fd']:.2f} | "
                     f"{r['pca50_fd'] / reference:.2f}× | {r['mean_confidence']:.3f} | "
                     f"{r['fraction_confident']:.2f} | {r['classes']}/10 |")
    t, s = state["teacher"], state["distilled"]
    text = "\n".join(lines) + (
        f"\n\nTeacher: {t['step']} steps, {t['time_used_s']['cpu'] / 60:.1f} CPU-minutes "
        f"(the README recipe); distilled: {s['step']} steps, "
        f"{s['time_used_s']['cpu'] / 60:.1f} CPU-minutes (`noisecraft distill TEACHER --max-time "
        f"{a.distill_budget:g}m`, its defaults). {a.n} samples per row, seed 0, EMA weights; "
        f"floor ({a.n} training images against the test set) {pca.floor(a.n):.2f}. "
        f"`{' '.join(['benchmarks/few_step_mnist.py', *sys.argv[1:]])}`, one thread on a "
        f"{os.cpu_count()}-core CPU, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.")
    print(text)
    if a.write:
        from _report import write_section

        write_section("few-step-mnist", "## Few steps on MNIST: consistency distillation of the "
                      "README's CPU teacher (`benchmarks/few_step_mnist.py`) — "
                      f"{time.strftime('%Y-%m-%d')}\n\n" + text)


if __name__ == "__main__":
    main()
