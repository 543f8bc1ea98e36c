"""How recognisable are a short CPU audio run's samples? A spoken-digit classifier reads them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audio_quality.py [--data ../shared/data/fsdd]
        [--steps 300] [--batch-size 32] [--n 100] [--max-time 30m] [--prediction edm]
        [--precision bf16] [--lr-schedule cosine] [--guidance 2] [--write]

1. FSDD's train split (2,700 clips) and test split (300) become log-mel spectrograms with a
   small feature setting that a CPU can train on in minutes (32 mels × 32 frames, n_fft 512,
   hop 256: 1.0 s per clip; the CLI's default is 64 × 128).
2. A small CNN (``noisecraft.metrics.classifier.fit_spectrogram_classifier``) is fitted to the
   train spectrograms; its accuracy on the test spectrograms is the ceiling, and its accuracy on
   the same test clips after the inverse (NNLS mel inverse + Griffin-Lim → waveform → features
   again) says how much the vocoder loses.
3. A class-conditional diffusion model (``audio`` preset, sized to 32 mels) trains for --steps
   on the train split; --n samples are drawn with the labels 0..9 cycled (DDIM, 25 steps) and
   the classifier reads them: accuracy against the label asked for, classes covered, mean
   confidence, also after the round trip through WAV. 10 % is chance.

Prints a Markdown table; --write puts it into BENCHMARKS.md (section audio-quality).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date

import numpy as np
import torch

from noisecraft import load_run
from noisecraft.data.audio import AudioConfig, audio_to_spectrogram, load_audio, spectrogram_to_audio
from noisecraft.metrics.classifier import fit_spectrogram_classifier
from noisecraft.train import TrainConfig, Trainer, new_run_config

FEATURES = AudioConfig(n_fft=512, win_length=512, hop_length=256, n_mels=32, frames=32)


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
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n", type=int, default=100, help="samples to draw")
    p.add_argument("--max-time", help="also stop after this much training CPU time (e.g. 30m)")
    p.add_argument("--prediction", default="eps", help="eps (default), v or edm (log-normal σ)")
    p.add_argument("--precision", default="auto", help="auto (fp32 on a CPU) or bf16")
    p.add_argument("--lr-schedule", default="constant", help="constant or cosine (over the budget)")
    p.add_argument("--guidance", type=lambda v: [float(x) for x in v.split(",")], default=[None],
                   help="classifier-free guidance scales, comma-separated (default: none)")
    p.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

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

    config = new_run_config(train, args.data, net="audio", class_conditional=True,
                            prediction=args.prediction,
                            train=TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-3,
                                              warmup=20, ema_decay=0.995, sample_every=0,
                                              checkpoint_every=0, log_every=50,
                                              max_time=args.max_time, max_time_clock="cpu",
                                              precision=args.precision,
                                              lr_schedule=args.lr_schedule,
                                              time_sampler="log-normal" if args.prediction == "edm"
                                              else "uniform"))
    with tempfile.TemporaryDirectory() as tmp:
        cpu = time.process_time()
        wall = time.perf_counter()
        result = Trainer(config, tmp, train, device="cpu", progress=False).fit()
        train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
        run = load_run(tmp)
        params = sum(p.numel() for p in run.net.parameters())
        asked = run.default_labels(args.n)
        for scale in args.guidance:
            samples = torch.from_numpy(run.generate(args.n, sampler="ddim", steps=25, seed=0,
                                                    labels=asked, guidance=scale))
            guided = "" if scale is None else f", guidance {scale:g}"
            rows += [(f"samples after {result.step} steps (label asked{guided})",
                      read(classifier.predict_spectrograms(samples)[0], asked)),
                     (f"samples{guided}, through WAV and back", read(
                         classifier.predict_spectrograms(round_trip(samples))[0], asked))]

    table = ["| spectrograms read by the classifier | accuracy | classes predicted | mean confidence |",
             "| --- | ---: | ---: | ---: |"]
    table += [f"| {name} | {r['accuracy']:.3f} | {r['covered']} | {r['confidence']:.3f} |"
              for name, r in rows]
    note = (f"Features: 8 kHz, n_fft 512, hop 256, 32 mels × 32 frames (1.0 s), dB in [−80, 0]. "
            f"Classifier: small CNN, {classifier.meta['epochs']} epochs on the {len(y_train)} train "
            f"clips ({clf_s:.0f} CPU-s); "
            f"{len(y_test)} test clips. Diffusion: `audio` preset ({params / 1e6:.2f}M parameters), "
            f"class-conditional, {args.prediction} prediction, {result.step} steps at batch "
            f"{args.batch_size}, lr 1e-3 {args.lr_schedule}, {args.precision} arithmetic, "
            f"final loss "
            f"{result.loss:.4f}, {train_wall:.0f} s wall / {train_cpu:.0f} CPU-s of training; "
            f"{args.n} samples by DDIM-25, labels 0..9 cycled; chance is 0.100. "
            f"Device: 2-core CPU, shared, 1 thread; torch {torch.__version__}, "
            f"Python {platform.python_version()}, {date.today().isoformat()}; "
            f"total {time.perf_counter() - started:.0f} s.")
    text = "\n".join(table) + "\n\n" + note
    print(text)
    if args.write:
        from _report import write_section

        command = " ".join(["benchmarks/audio_quality.py", *sys.argv[1:]])
        write_section("audio-quality", "## Audio: a spoken-digit classifier reads the samples\n\n"
                      f"`OMP_NUM_THREADS=1 .venv/bin/python {command}`\n\n"
                      + text)


if __name__ == "__main__":
    main()
