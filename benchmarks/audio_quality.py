"""How recognisable are the README audio recipe's samples? A spoken-digit classifier reads them.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/audio_quality.py
        [--data ../shared/data/fsdd] [--n 200] [--guidance 1,2,3] [--recipe "FLAGS"] [--write]

1. FSDD's train split (2,700 clips) and test split (300) become log-mel spectrograms with the
   recipe's feature setting (``FEATURES``: 32 mels × 32 frames, n_fft 512, hop 256: 1.0 s per
   clip; the CLI's default is 64 × 128, more than a CPU trains in half an hour).
2. A small CNN (``noisecraft.metrics.classifier.fit_spectrogram_classifier``) is fitted to the
   train spectrograms; its accuracy on the test spectrograms is the ceiling, and its accuracy on
   the same test clips after the inverse (NNLS mel inverse + Griffin-Lim → waveform → features
   again) says how much the vocoder loses.
3. The README's command (``RECIPE`` below; a test checks the README holds it word for word)
   trains a class-conditional run on the train split in its own process (its --max-time budget
   is CPU seconds counted by the trainer); --n samples are drawn with the labels 0..9 cycled
   (DDIM, 25 steps) at each --guidance scale and the classifier reads them: accuracy against the
   label asked for, classes covered, mean confidence, also after the round trip through WAV.
   10 % is chance.

Prints a Markdown table; --write puts it into BENCHMARKS.md (section audio-quality).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from noisecraft import load_run
from noisecraft.data.audio import AudioConfig, audio_to_spectrogram, load_audio, spectrogram_to_audio
from noisecraft.metrics.classifier import fit_spectrogram_classifier

FEATURES = AudioConfig(n_fft=512, win_length=512, hop_length=256, n_mels=32, frames=32)
# The README's spoken-digit recipe, flags after `noisecraft train --data <fsdd> --out <run>`.
RECIPE = ["--class-cond", "--n-mels", "32", "--frames", "32", "--n-fft", "512", "--hop-length",
          "256", "--prediction", "edm", "--time-sampler", "log-normal", "--batch-size", "32",
          "--lr", "1e-3", "--lr-schedule", "cosine", "--warmup", "20", "--ema-decay", "0.995",
          "--precision", "bf16", "--steps", "100000", "--max-time", "30m"]


def read(probs: np.ndarray, wanted: np.ndarray) -> dict[str, float]:
    predicted = probs.argmax(axis=1)
    return {"accuracy": float((predicted == wanted).mean()),
            "covered": len(np.unique(predicted)),
            "confidence": float(probs.max(axis=1).mean())}


def round_trip(x: torch.Tensor) -> torch.Tensor:
    """Spectrograms → waveforms (inverse mel + Griffin-Lim) → spectrograms again."""
    return audio_to_spectrogram(spectrogram_to_audio(x, FEATURES), FEATURES)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                  "data", "fsdd"))
    p.add_argument("--n", type=int, default=200, help="samples to draw per guidance scale")
    p.add_argument("--guidance", type=lambda v: [float(x) for x in v.split(",")],
                   default=[1.0, 2.0, 3.0],
                   help="classifier-free guidance scales, comma-separated (1: the conditional "
                        "model alone)")
    p.add_argument("--recipe", help="other `noisecraft train` flags to measure instead of the "
                   "README's (a trial; they must keep FEATURES)")
    p.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    flags = shlex.split(args.recipe) if args.recipe else RECIPE

    t0 = time.perf_counter()
    train = load_audio(args.data, split="train", config=FEATURES)
    test = load_audio(args.data, split="test", config=FEATURES)
    y_train, y_test = np.asarray(train.labels), np.asarray(test.labels)
    print(f"features: {time.perf_counter() - t0:.0f} s", flush=True)

    started, cpu = time.perf_counter(), time.process_time()
    classifier = fit_spectrogram_classifier(train.x, y_train)
    clf_s = time.process_time() - cpu
    print(f"classifier: {clf_s:.0f} CPU-s", flush=True)
    rows = [("real test clips (spectrograms)", read(classifier.predict_spectrograms(test.x)[0], y_test)),
            ("real test clips, through WAV and back",
             read(classifier.predict_spectrograms(round_trip(test.x))[0], y_test))]

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "noisecraft", "train", "--no-progress", "--data",
                        args.data, "--out", tmp, "--sample-every", "0", "--checkpoint-every", "0",
                        *flags], check=True, env=env, stdout=subprocess.DEVNULL)
        state = json.loads((Path(tmp) / "state.json").read_text())
        run = load_run(tmp)
        if run.audio_config != FEATURES:
            sys.exit(f"the recipe's features {run.audio_config} are not the classifier's {FEATURES}")
        params = sum(p.numel() for p in run.net.parameters())
        asked = run.default_labels(args.n)
        for scale in args.guidance:
            samples = torch.from_numpy(run.generate(args.n, sampler="ddim", steps=25, seed=0,
                                                    labels=asked, guidance=scale))
            rows += [(f"samples after {state['step']} steps, guidance {scale:g}",
                      read(classifier.predict_spectrograms(samples)[0], asked)),
                     (f"samples, guidance {scale:g}, through WAV and back", read(
                         classifier.predict_spectrograms(round_trip(samples))[0], asked))]

    table = ["| spectrograms read by the classifier | accuracy | classes predicted | mean confidence |",
             "| --- | ---: | ---: | ---: |"]
    table += [f"| {name} | {r['accuracy']:.3f} | {r['covered']} | {r['confidence']:.3f} |"
              for name, r in rows]
    recipe = "the README's recipe" if not args.recipe else "a trial recipe"
    note = (f"Features: 8 kHz, n_fft 512, hop 256, 32 mels × 32 frames (1.0 s), dB in [−80, 0]. "
            f"Classifier: small CNN, {classifier.meta['epochs']} epochs on the {len(y_train)} train "
            f"clips ({clf_s:.0f} CPU-s); {len(y_test)} test clips. Diffusion: {recipe}, "
            f"`noisecraft train --data {args.data} --out RUN {' '.join(flags)}` "
            f"(`audio` preset sized to 32 mels, {params / 1e6:.2f}M parameters): "
            f"{state['step']} steps in {state['time_used_s']['cpu'] / 60:.1f} CPU-minutes of "
            f"training; {args.n} samples per guidance scale by DDIM-25, labels 0..9 cycled; "
            f"chance is 0.100. Device: {os.cpu_count()}-core CPU, shared, 1 thread; "
            f"torch {torch.__version__}, Python {platform.python_version()}, "
            f"{date.today().isoformat()}; total {time.perf_counter() - started:.0f} s.")
    text = "\n".join(table) + "\n\n" + note
    print(text)
    if args.write:
        from _report import write_section

        command = " ".join(["benchmarks/audio_quality.py", *sys.argv[1:]])
        write_section("audio-quality", "## Audio: a spoken-digit classifier reads the samples\n\n"
                      f"`OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python {command}`\n\n"
                      + text)


if __name__ == "__main__":
    main()
