"""``noisecraft demo``: train a tiny U-Net on scikit-learn's 8×8 digits on the CPU (no download,
about two minutes on two cores) and draw the forward process, the reverse process and samples.

Writes into --out: run/ (the run directory), forward.png (one digit at several t),
reverse.png (x_t and the predicted x̂_0 during sampling), samples.png and samples.npz (uint8
images (N, 8, 8, 1)), summary.txt (steps, wall time, loss, and how a small digits classifier
reads the samples: the fraction classified with confidence >= 0.9 and the classes covered;
real held-out digits score about 91 % on the first).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ._args import add_threads, command_parser, non_negative_int, positive_int

# Tuned so the whole demo takes under 3 minutes on a 2-core CPU (BENCHMARKS.md) while the
# samples are recognisable digits of every class. The "tiny" preset is narrowed to 16 base
# channels: per CPU-second of training it reached a higher classifier-confident fraction than
# the 24-channel preset (74 % after 94 s vs 71 % after 122 s, DDIM-50).
DEMO_STEPS = 1200
DEMO_BATCH = 64
DEMO_LR = 2e-3
DEMO_WARMUP = 100
DEMO_EMA = 0.995
DEMO_NET_OVERRIDES = {"base_channels": 16}
DEMO_SAMPLES = 100
# Ancestral DDPM over 100 respaced steps: on this briefly trained model its fresh noise at every
# step corrects errors that deterministic DDIM carries to the end (81 % vs 73 % confident).
DEMO_SAMPLER = "ddpm"
DEMO_SAMPLER_STEPS = 100
FORWARD_TIMES = (0, 50, 100, 200, 300, 500, 700, 1000)
CONFIDENCE = 0.9


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "demo", __doc__,
                       "train on scikit-learn's digits and draw the diffusion process")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default demo-out)")
    p.add_argument("--steps", type=positive_int, default=DEMO_STEPS,
                   help=f"training steps (default {DEMO_STEPS})")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # One intra-op thread: 8×8 convolutions gain little from a second (1.3× at batch 128), and an
    # OpenMP team stalls badly whenever the other core is busy (measured 15× slower at batch 64).
    add_threads(p, default=1)
    p.set_defaults(func=run)


def _forward_figure(run, dataset, seed: int):  # type: ignore[no-untyped-def]
    """One training digit noised in closed form, x_t = α_t x_0 + σ_t ε, at FORWARD_TIMES."""
    import torch

    from .. import viz
    from ..process import q_sample

    x0 = dataset[0]["x"][None].repeat(len(FORWARD_TIMES), 1, 1, 1)
    eps = torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(seed)).expand_as(x0)
    x_t, _ = q_sample(run.schedule, x0, torch.tensor(FORWARD_TIMES, dtype=torch.float64), noise=eps)
    return viz.forward_process(run.to_output(x_t), FORWARD_TIMES)


class _ReverseRecorder:
    """A sampler callback keeping x_t and x̂_0 of the first ``examples`` samples at a few steps."""

    def __init__(self, total_steps: int, keep: int = 7, examples: int = 4):
        self.at = set(np.linspace(0, total_steps - 1, keep).round().astype(int).tolist())
        self.examples = examples
        self.ts: list[float] = []
        self.x_t: list = []
        self.x0: list = []

    def __call__(self, i: int, t: float, x_t, x0_hat) -> None:  # type: ignore[no-untyped-def]
        if i in self.at:
            self.ts.append(float(t))
            self.x_t.append(x_t[: self.examples].detach().float().cpu())
            self.x0.append(x0_hat[: self.examples].detach().float().cpu())


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import data, viz
    from ..io import atomic_write
    from ..metrics import class_report
    from ..outputs import save_npz
    from ..train import TrainConfig, Trainer, load_run, new_run_config

    t_start = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; the demo writes a folder, choose another --out")
    run_dir = out / "run"
    if (run_dir / "state.json").exists():
        raise ValueError(f"{run_dir} already holds a demo run; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)

    dataset = data.load("digits", split="train")
    train = TrainConfig(steps=args.steps, batch_size=DEMO_BATCH, lr=DEMO_LR, warmup=DEMO_WARMUP,
                        ema_decay=DEMO_EMA, seed=args.seed, log_every=50, sample_every=0,
                        checkpoint_every=0)
    config = new_run_config(dataset, "digits", net="tiny", net_overrides=DEMO_NET_OVERRIDES,
                            schedule="cosine", train=train)
    result = Trainer(config, run_dir, dataset, device="cpu", progress=not args.no_progress).fit()
    t_trained = time.perf_counter()

    trained = load_run(run_dir)
    viz.save(_forward_figure(trained, dataset, args.seed), out / "forward.png")

    recorder = _ReverseRecorder(DEMO_SAMPLER_STEPS)
    images = trained.generate(DEMO_SAMPLES, sampler=DEMO_SAMPLER, steps=DEMO_SAMPLER_STEPS,
                              seed=args.seed, callback=recorder)
    viz.save(viz.image_grid(images, nrow=10), out / "samples.png")
    save_npz(out / "samples.npz", {"images": images})
    to_img = trained.to_output
    viz.save(viz.reverse_process(np.stack([to_img(x) for x in recorder.x_t]),
                                 np.stack([to_img(x) for x in recorder.x0]), recorder.ts),
             out / "reverse.png")

    report = class_report(images, "digits", threshold=CONFIDENCE)
    total = time.perf_counter() - t_start
    summary = [
        "noisecraft demo: DDPM on scikit-learn's 8x8 digits (train split, 1,618 images)",
        f"network: tiny U-Net with {DEMO_NET_OVERRIDES['base_channels']} base channels, "
        f"{sum(p.numel() for p in trained.net.parameters()):,} parameters; "
        f"cosine schedule, T = {trained.schedule.T}, eps-prediction",
        f"training: {result.step} steps, batch {DEMO_BATCH}, AdamW lr {DEMO_LR}, EMA {DEMO_EMA}",
        f"final training loss: {result.loss:.4f}" if result.loss is not None else "final loss: n/a",
        f"wall time: {t_trained - t_start:.1f} s to train, {total:.1f} s in all "
        f"({torch.get_num_threads()} torch thread(s))",
        f"samples: {DEMO_SAMPLES} by {DEMO_SAMPLER.upper()}, {DEMO_SAMPLER_STEPS} steps, "
        f"seed {args.seed}, EMA weights",
        f"digits classifier (held-out accuracy {report['classifier_held_out_accuracy']:.3f}):",
        f"  confidently classified (p >= {CONFIDENCE}): {report['fraction_confident']:.1%}",
        f"  mean confidence: {report['mean_confidence']:.3f}",
        f"  classes covered: {report['num_classes_covered']} of {report['num_classes']}",
        f"  predicted class histogram 0-9: {report['class_histogram']}",
        f"explain it (about 40 s of CPU): noisecraft explain {run_dir} --out {out / 'report.html'}",
    ]
    atomic_write(out / "summary.txt", "\n".join(summary) + "\n")
    print("\n".join(summary))
    print(f"noisecraft: wrote forward.png, reverse.png, samples.png, samples.npz, summary.txt to {out}")
    return 0
