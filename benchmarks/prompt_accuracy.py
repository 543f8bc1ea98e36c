"""Prompt accuracy of a text-conditioned digits model: does "seven" draw a 7?

A tiny U-Net is trained with templated captions ("a handwritten digit {name}", caption dropout
0.1) on scikit-learn's 8×8 digits (default), or on MNIST in the latent space of an autoencoder
(``--data ../shared/data/mnist --autoencoder AE_DIR``: latent diffusion, trained with the
README's `noisecraft train --autoencoder` recipe), or an existing such run is read (--run).
Each prompt form below is filled in for every digit 0–9; --n samples per (form, digit) are drawn
with DDIM at each guidance scale (a latent run's are decoded) and classified by noisecraft's small
digits or MNIST classifier (``noisecraft.metrics.classifier``, by the data). Accuracy = the
fraction classified as the prompt's digit (chance: 0.10). Only the first form was ever seen in
training; the others are paraphrases that reach the model only through the frozen sentence
encoder (all-MiniLM-L6-v2). The empty prompt row is the unconditional model (its "accuracy" is
the share of each digit it happens to draw).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prompt_accuracy.py [--run RUN_DIR]
        [--data digits] [--autoencoder AE_DIR] [--steps 1500] [--n 20] [--sampling-steps 25]
        [--guidance 1 3] [--write]

Without --run it trains into a temporary folder with the `noisecraft train` command it prints.
Prints a markdown table; --write puts it into BENCHMARKS.md between this script's markers
(``prompt_accuracy`` for digits, ``prompt_accuracy_latent`` for a latent run).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from noisecraft.data.captions import DIGIT_NAMES
from noisecraft.metrics.classifier import classify, prepare_classifier
from noisecraft.run import load_run

TEMPLATE = "a handwritten digit {name}"
# (form, seen in training?) — {name}: the digit word, {digit}: the numeral.
FORMS = [
    (TEMPLATE, True),
    ("{name}", False),
    ("the number {digit}", False),
    ("the digit {name}", False),
    ("a drawing of the number {name}", False),
    ("{digit}", False),
]


def train_command(out: Path, steps: int, data: str = "digits",
                  autoencoder: str | None = None) -> list[str]:
    head = [sys.executable, "-m", "noisecraft", "train", "--data", data]
    if autoencoder is not None:
        # README's latent recipe, without its sample grids
        return head + ["--autoencoder", autoencoder, "--out", str(out), "--condition", "text",
                       "--caption-template", TEMPLATE, "--steps", str(steps), "--batch-size", "64",
                       "--lr", "1e-3", "--ema-decay", "0.995", "--sample-every", "0",
                       "--no-progress"]
    return head + ["--out", str(out), "--condition", "text", "--caption-template", TEMPLATE,
                   "--caption-dropout", "0.1", "--steps", str(steps), "--batch-size", "64",
                   "--lr", "2e-3", "--warmup", "100", "--ema-decay", "0.995", "--sample-every",
                   "0", "--checkpoint-every", "500", "--no-progress"]


def children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def accuracy(run, prompts: list[str], digits: np.ndarray, guidance: float | None, n: int,
             steps: int, seed: int, classifier: str) -> tuple[float, float]:
    """(mean accuracy over the digits, the standard error of that mean)."""
    expanded = [p for p in prompts for _ in range(n)]
    images = run.generate(len(expanded), "ddim", steps, seed=seed, prompts=expanded,
                          guidance=guidance, batch_size=500)
    predicted, _ = classify(images, classifier)
    hits = predicted == np.repeat(digits, n)
    return float(hits.mean()), float(hits.std() / np.sqrt(hits.size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an existing run trained with the command above")
    parser.add_argument("--data", default="digits", help="digits, or an MNIST spec (IDX folder)")
    parser.add_argument("--autoencoder", help="train in this autoencoder's latent space "
                        "(a `noisecraft train-autoencoder` run of --data)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps (without --run)")
    parser.add_argument("--n", type=int, default=20, help="samples per (prompt form, digit)")
    parser.add_argument("--sampling-steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)

    run_dir, train_s, train_cpu = args.run, None, None
    if run_dir is None:
        run_dir = Path(tempfile.mkdtemp(prefix="prompt-accuracy-")) / "run"
        cmd = train_command(run_dir, args.steps, args.data, args.autoencoder)
        print("training:", shlex.join(cmd[1:]), flush=True)
        t0, c0 = time.perf_counter(), children_cpu_seconds()
        subprocess.run(cmd, check=True)
        train_s, train_cpu = time.perf_counter() - t0, children_cpu_seconds() - c0
    run = load_run(run_dir)
    latent = run.config.latent is not None
    spec = run.config.data.spec
    classifier = "digits" if spec == "digits" else "mnist"  # by the run's own data
    if classifier == "mnist":
        prepare_classifier("mnist", data=spec)
    digits = np.arange(10)
    rows = []
    t0 = time.perf_counter()
    for form, seen in FORMS:
        prompts = [form.format(name=DIGIT_NAMES[d], digit=d) for d in digits]
        cells = [accuracy(run, prompts, digits, w, args.n, args.sampling_steps, args.seed,
                          classifier) for w in args.guidance]
        rows.append((f'"{form}"', "yes" if seen else "no", cells))
    uncond = accuracy(run, [""] * 10, digits, None, args.n, args.sampling_steps, args.seed,
                      classifier)
    rows.append(('"" (unconditional)', "dropout", [uncond] * len(args.guidance)))
    images = (len(rows) - 1) * 10 * args.n * len(args.guidance) + 10 * args.n
    sample_s = time.perf_counter() - t0

    head = " | ".join(f"w = {w:g}" for w in args.guidance)
    lines = [f"| prompt form (filled in for each digit 0–9) | seen in training | {head} |",
             "| --- | --- | " + " | ".join("---" for _ in args.guidance) + " |"]
    for form, seen, cells in rows:
        lines.append(f"| {form} | {seen} | "
                     + " | ".join(f"{a:.2f} ± {se:.2f}" for a, se in cells) + " |")
    state = run.step
    ae = run.config.latent.autoencoder if latent else None
    trained = ("." if train_s is None else f"; training took {train_s:.0f} s wall, "
               f"{train_cpu:.0f} s CPU{' (latent encoding included)' if latent else ''}.")
    notes = [
        "",
        f"Accuracy: fraction of samples the {classifier} classifier labels as the prompt's digit "
        f"(± standard error; chance 0.10); {args.n} samples per (form, digit), DDIM "
        f"{args.sampling_steps} steps{', decoded' if latent else ''}, EMA weights of step "
        f"{state}, seed {args.seed}.",
        f"Device: 2-core CPU, shared; torch {torch.__version__}, Python {platform.python_version()},"
        f" {datetime.date.today().isoformat()}. Sampling + classifying {images} images took "
        f"{sample_s:.0f} s wall" + trained,
        f"Training: `noisecraft {shlex.join(train_command(Path('RUN'), state, spec, ae)[3:])}` "
        "(OMP_NUM_THREADS=1). Then `OMP_NUM_THREADS=1 python benchmarks/prompt_accuracy.py "
        f"--run RUN --n {args.n} --sampling-steps {args.sampling_steps} --guidance "
        f"{' '.join(f'{w:g}' for w in args.guidance)}`.",
    ]
    table = "\n".join(lines + notes)
    print(table)
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _report import write_section

        if latent:
            title = (f"## Prompt accuracy, latent diffusion on MNIST (text conditioning, "
                     f"{'×'.join(map(str, run.config.latent.shape))} latents)")
            write_section("prompt_accuracy_latent", title + "\n\n" + table)
        else:
            write_section("prompt_accuracy", "## Prompt accuracy on digits (text conditioning)\n\n"
                          + table)


if __name__ == "__main__":
    main()
