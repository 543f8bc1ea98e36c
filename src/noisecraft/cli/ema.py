"""``noisecraft ema``: reconstruct an EMA length after training (post-hoc EMA, EDM2).

  noisecraft ema RUN_DIR --length 0.05 --out RUN2
  noisecraft ema RUN_DIR --sweep 0.03,0.05,0.07,0.1


A run trained with ``--ema-profiles 0.05,0.1 --snapshot-every N`` keeps snapshots of those
power-function EMA profiles; any length sigma_rel between (and a little beyond) them is their
least-squares combination (:mod:`noisecraft.posthoc`). OUT is a new run directory whose
ema.safetensors is the reconstruction, for ``noisecraft sample OUT`` and the other readers.
--sweep scores each length by the run's own yardstick (as ``noisecraft explain``: the digits or
MNIST classifier's confident fraction, else the sliced W2 distance to held-out data) on --n
samples of one seed, and names the best.
"""

from __future__ import annotations

import argparse

from ._args import (
    add_threads,
    command_parser,
    default_of,
    non_negative_int,
    positive_float,
    positive_int,
)


def _lengths(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of EMA lengths "
                                         "(e.g. 0.03,0.05,0.1)") from None
    return values


def register(sub: argparse._SubParsersAction) -> None:
    from ..posthoc import sweep

    p = command_parser(sub, "ema", __doc__, "reconstruct an EMA length from a run's snapshots",
                       "noisecraft ema runs/digits --length 0.05 --out runs/digits-ema005")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run trained with --ema-profiles and "
                   "--snapshot-every")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--length", type=positive_float, metavar="SIGMA_REL",
                      help="the EMA length sigma_rel to write as --out, in (0, 0.2887] (e.g. 0.05)")
    what.add_argument("--sweep", type=_lengths, metavar="SIGMA_REL[,...]",
                      help="score these lengths by the run's yardstick and name the best")
    p.add_argument("--out", metavar="OUT", help="with --length: the run directory to write "
                   "(must not exist)")
    n = default_of(sweep, "n")
    p.add_argument("--n", type=positive_int, default=n, help=f"with --sweep: samples per "
                   f"length (default {n})")
    p.add_argument("--step", type=non_negative_int, metavar="STEP",
                   help="reconstruct the EMA at this step (default: the last snapshot's)")
    add_threads(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..posthoc import sweep, write_posthoc_run

    if args.sweep is not None:
        if args.out is not None:
            raise ValueError("--out goes with --length; --sweep only scores")
        result = sweep(args.run_dir, args.sweep, n=args.n, step=args.step)
        print(f"{result.yardstick}, {args.n} samples per length:")
        for row in result.rows:
            print(f"  sigma_rel {row['sigma_rel']:<6g} score {row['score']:.4f}  "
                  f"(weights matched to {row['residual']:.2%})")
        print(f"best: sigma_rel {result.best:g}")
        return 0
    if args.out is None:
        raise ValueError("--length needs --out, the run directory to write")
    rec = write_posthoc_run(args.run_dir, args.length, args.out, step=args.step)
    print(f"wrote {args.out}: EMA length {rec.sigma_rel:g} at step {rec.step} from "
          f"{len(rec.snapshots)} snapshots (weights matched to {rec.residual:.2%})")
    return 0
