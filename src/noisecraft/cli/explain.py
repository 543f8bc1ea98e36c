"""``noisecraft explain``: one self-contained HTML page (inline PNG figures, no JavaScript, no
network) that shows what diffusion does, drawn with your own trained run: the schedule, the
forward and reverse processes, the loss by noise level, spectral bands, means and modes,
compute against quality, SDE and ODE paths, and a likelihood histogram. Each figure has a short
caption in the standard notation (x_t = α_t x_0 + σ_t ε, ᾱ_t, β̃_t).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._args import add_run_arguments, add_threads, command_parser, non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from ..explain import SECTIONS

    p = command_parser(sub, "explain", __doc__, "write an HTML page explaining a trained run",
                       "noisecraft explain demo-out/run --out report.html")
    add_run_arguments(p)
    a = p.add_argument
    a("--out", required=True, metavar="FILE.html", help="the page to write")
    a("--seed", type=non_negative_int, default=0, help="seed of every draw (default 0)")
    a("--samples", type=positive_int, default=64,
      help="samples per sampler and step count in the compute section (default 64)")
    a("--held-out", type=positive_int, default=128, help="held-out examples used (default 128)")
    from ..samplers import DEFAULT_STEPS

    a("--steps", type=positive_int, default=DEFAULT_STEPS,
      help=f"sampling steps of the pictures (default {DEFAULT_STEPS})")
    a("--data", metavar="DATA", help="held-out data to explain with (default: the run's own "
      "training data; a diffusers folder records none)")
    a("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="NAME",
      help=f"sections to draw (default all: {' '.join(SECTIONS)})")
    a("--no-progress", action="store_true", help="do not name each section as it is drawn")
    add_threads(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..explain import report
    from ..io import atomic_write
    from ..run import load_run

    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {args.out}: the page must end in .html")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {args.out}: folder {out.parent} does not exist")
    start = time.perf_counter()
    run_ = load_run(args.run_dir, use_ema=not args.no_ema, device=args.device)

    def progress(key: str) -> None:
        if not args.no_progress:
            print(f"noisecraft explain: {key} ...", file=sys.stderr, flush=True)

    page, timings = report(run_, seed=args.seed, n_samples=args.samples, held_out=args.held_out,
                           steps=args.steps, sections=args.sections, progress=progress,
                           data=args.data)
    atomic_write(out, page.encode("utf-8"))
    total = time.perf_counter() - start
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    print(f"noisecraft: wrote {out} ({len(page) / 1e6:.2f} MB) in {total:.1f} s ({parts})")
    return 0
