"""``noisecraft sample``: draw samples from a trained run into FILE.png and FILE.npz.

Image runs write a grid (FILE.png) and ``images``: uint8 (N, H, W, C) in the data's own size and
channels (FILE.npz); vector runs a scatter plot and ``samples``: float32 (N, D) in data units.
Class-conditional runs cycle the labels 0, 1, …, K−1 and store them as ``labels``. Example i
depends only on (--seed, i), not on --batch-size.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from ._args import add_run_arguments, add_threads, command_parser, non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "sample", __doc__, "draw samples from a trained run",
                       "noisecraft sample runs/digits --n 64 --out samples")
    add_run_arguments(p)
    a = p.add_argument
    a("--out", required=True, metavar="FILE",
      help="output path without extension: writes FILE.png and FILE.npz")
    a("--n", type=positive_int, default=64, help="number of samples (default 64)")
    a("--sampler", help="one of noisecraft.SAMPLERS: ddpm, ddim, euler, heun, dpmpp-2m, sde, ... "
      "(default: the run's, ddim)")
    a("--steps", type=positive_int, help="sampling steps (default: the run's, 50)")
    a("--seed", type=non_negative_int, default=0, help="noise seed (default 0)")
    a("--batch-size", type=positive_int, default=256, help="samples per forward pass (default 256)")
    add_threads(p)
    p.set_defaults(func=run)


def output_base(out: str) -> Path:
    """FILE from ``--out FILE``, ``FILE.png`` or ``FILE.npz``."""
    path = Path(out)
    if path.suffix.lower() in (".png", ".npz"):
        path = path.with_suffix("")
    if path.name in ("", ".", ".."):
        raise ValueError(f"--out {out!r} does not name a file")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: folder {path.parent} does not exist")
    return path


def _check_n(n: int, shape: tuple[int, ...]) -> None:
    """All n samples are held at once (float32, then the uint8/float output, the .npz and the
    grid): refuse before sampling when that cannot fit in this machine's memory."""
    import math

    from ..data.limits import human, physical_memory

    need = n * math.prod(shape) * (4 + 4 + 4)  # model space, output array, .npz buffer
    memory = physical_memory()
    if memory is not None and need > memory // 2:
        raise ValueError(f"--n {n} samples of shape {tuple(shape)} need about {human(need)} of "
                         f"memory, over half of this machine's {human(memory)}; draw them in "
                         "several runs with different --seed")


def run(args: argparse.Namespace) -> int:
    from .. import samplers, viz
    from ..io import atomic_write
    from ..run import load_run

    base = output_base(args.out)
    run_ = load_run(args.run_dir, use_ema=not args.no_ema, device=args.device)
    sampler = args.sampler or run_.config.sampling.sampler
    if sampler not in samplers.SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(samplers.SAMPLERS)}")
    steps = args.steps or run_.config.sampling.steps
    _check_n(args.n, run_.shape)
    labels = run_.default_labels(args.n)
    out = run_.generate(args.n, sampler=sampler, steps=steps, seed=args.seed,
                        batch_size=args.batch_size, labels=labels)
    arrays = {"images" if run_.preprocess.kind == "image" else "samples": out}
    if labels is not None:
        arrays["labels"] = labels
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(base.with_suffix(".npz"), buf.getvalue())
    picture = viz.image_grid(out) if run_.preprocess.kind == "image" else viz.scatter(out[:, :2])
    viz.save(picture, base.with_suffix(".png"))
    print(f"noisecraft: {args.n} samples ({sampler}, {steps} steps, seed {args.seed}, "
          f"{'raw' if args.no_ema else 'EMA'} weights of step {run_.step}) -> "
          f"{base.with_suffix('.png')}, {base.with_suffix('.npz')}")
    return 0
