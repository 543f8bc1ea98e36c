"""``noisecraft train``: train a diffusion model into a run directory (or ``--resume`` one).

Runs unchanged under ``torchrun --nproc_per_node=N -m noisecraft train ...`` (DDP, one process
per GPU, gloo on CPU); ``--batch-size`` is per process.
"""

from __future__ import annotations

import argparse
import os

from ._args import add_settings, add_threads, command_parser, flat_settings


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import flag_sections

    p = command_parser(sub, "train", __doc__, "train a diffusion model into a run directory",
                       "noisecraft train --data digits --out runs/digits --steps 2000")
    a = p.add_argument
    a("--out", required=True, metavar="RUN_DIR", help="the run directory to write")
    a("--resume", action="store_true", help="continue the run in RUN_DIR up to --steps, restoring "
      "weights, EMA, optimizer, LR schedule, RNG and data order; a flag that would change one of "
      "the run's settings is refused, except " + ", ".join(_resumable_flags()))
    a("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    a("--no-progress", action="store_true", help="no progress bar")
    add_threads(p)
    for _, cls in flag_sections():
        add_settings(p, cls)
    p.set_defaults(func=run)


def _resumable_flags() -> list[str]:
    from ..train.setup import resumable_settings

    return ["--" + name.replace("_", "-") for name in resumable_settings()]


def run(args: argparse.Namespace) -> int:
    from ..config import flag_sections
    from ..train.setup import prepare

    settings = {k: v for _, cls in flag_sections() for k, v in flat_settings(args, cls).items()}
    result = prepare(args.out, resume=args.resume, device=args.device,
                     progress=not args.no_progress, **settings).fit()
    if int(os.environ.get("RANK", "0")) == 0:
        loss = (f"{result.loss:.4f}" if result.loss is not None else "n/a (the --max-time budget "
                "was already used)" if result.stopped_on_time else "n/a (already at --steps)")
        print(f"noisecraft: {args.out}: step {result.step}, loss {loss}, "
              f"{result.wall_time_s:.1f} s of training"
              + (", stopped on --max-time" if result.stopped_on_time else ""))
    return 0
