"""``noisecraft ema``: reconstruct an EMA length after training (post-hoc EMA, EDM2).

  noisecraft ema RUN_DIR --length 0.05 --out RUN2

A run trained with ``--ema-profiles 0.05,0.1 --snapshot-every N`` keeps snapshots of those
power-function EMA profiles; any length sigma_rel between (and a little beyond) them is their
least-squares combination (:mod:`noisecraft.posthoc`). OUT is a new run directory whose
ema.safetensors is the reconstruction, for ``noisecraft sample OUT`` and the other readers.
"""

from __future__ import annotations

import argparse

from ._args import add_threads, command_parser, non_negative_int, positive_float


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "ema", __doc__, "reconstruct an EMA length from a run's snapshots",
                       "noisecraft ema runs/digits --length 0.05 --out runs/digits-ema005")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run trained with --ema-profiles and "
                   "--snapshot-every")
    p.add_argument("--length", type=positive_float, required=True, metavar="SIGMA_REL",
                   help="the EMA length sigma_rel, in (0, 0.2887] (e.g. 0.05, 0.1)")
    p.add_argument("--out", required=True, metavar="OUT", help="the run directory to write "
                   "(must not exist)")
    p.add_argument("--step", type=non_negative_int, metavar="STEP",
                   help="reconstruct the EMA at this step (default: the last snapshot's)")
    add_threads(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..posthoc import write_posthoc_run

    rec = write_posthoc_run(args.run_dir, args.length, args.out, step=args.step)
    print(f"wrote {args.out}: EMA length {rec.sigma_rel:g} at step {rec.step} from "
          f"{len(rec.snapshots)} snapshots (weights matched to {rec.residual:.2%})")
    return 0
