"""``noisecraft nll``: negative log-likelihood of data under a trained run, in bits/dim.

  noisecraft nll RUN_DIR --data DATA     mean ± standard error over a split (default test)
  noisecraft nll RUN_DIR --image FILE    one image, and its percentile among the split's NLLs

Units, conventions and the percentile of --image are stated once, in :mod:`noisecraft.scoring`
(``help(noisecraft.scoring)``); this command calls :meth:`noisecraft.LoadedRun.score` and prints
its record. The percentile is the share of the reference examples (the first --n of the split,
default 1000) whose NLL is at or below the image's: near 50 is typical, near 100 means less
likely than almost all of them.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._args import (
    add_run_arguments,
    add_threads,
    command_parser,
    non_negative_int,
    positive_float,
    positive_int,
)


def register(sub: argparse._SubParsersAction) -> None:
    from ..scoring import DIVERGENCES, IMAGE_REFERENCE_N, METHODS

    p = command_parser(sub, "nll", __doc__, "bits/dim of data under a trained run (bound or ODE)",
                       "noisecraft nll runs/mnist --data mnist/ --method ode --n 1000")
    add_run_arguments(p)
    a = p.add_argument
    a("--data", metavar="DATA", help="data spec to score (with --image: the reference data; "
      "default the run's own training spec)")
    a("--image", metavar="FILE", help="score this one picture and rank it among --data's split")
    a("--split", default="test", choices=("train", "test", "all"), help="split (default test)")
    a("--n", "--count", type=positive_int,
      help="score the first N examples of the split (default: all; "
      f"with --image, the reference set for its percentile, default {IMAGE_REFERENCE_N}; "
      "spell it --count under torchrun, whose own parser claims --n)")
    a("--method", default="ode", choices=METHODS,
      help="ode: probability-flow ODE; vlb: the T-term variational bound (default ode)")
    a("--divergence", default="rademacher", choices=DIVERGENCES,
      help="ode: Hutchinson probes or the exact divergence (default rademacher)")
    a("--probes", type=positive_int, default=1, help="ode: Hutchinson probes per example (default 1)")
    a("--rtol", type=positive_float, default=1e-5, help="ode: relative tolerance (default 1e-5)")
    a("--atol", type=positive_float, default=1e-5, help="ode: absolute tolerance (default 1e-5)")
    from ..process import VARIANCES

    a("--variance", choices=VARIANCES,
      help="vlb: reverse-step variance (default: learned if the net has it, else beta_tilde)")
    a("--continuous", action="store_true", help="treat 8-bit data as continuous values")
    a("--seed", type=non_negative_int, default=0,
      help="seed of the probes, dequantisation and x_t draws (default 0)")
    a("--batch-size", type=positive_int, default=64, help="examples per batch (default 64)")
    a("--json", action="store_true", help="print one JSON record instead of text")
    a("--no-progress", action="store_true", help="no progress bar")
    add_threads(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import shard
    from ..run import load_run

    if args.image is None and args.data is None:
        raise ValueError("give --data DATA (score a split) or --image FILE (score one picture)")
    with shard.session(args.device) as ranks:  # under torchrun each rank scores its share
        run_ = load_run(args.run_dir, use_ema=not args.no_ema,
                        device=shard.local_device(args.device, ranks))
        record = run_.score(args.data, image=args.image, split=args.split, n=args.n,
                            progress=not args.no_progress, ranks=ranks, method=args.method,
                            divergence=args.divergence, probes=args.probes, rtol=args.rtol,
                            atol=args.atol, variance=args.variance, continuous=args.continuous,
                            seed=args.seed, batch_size=args.batch_size)
    if record is None:   # not rank 0: rank 0 reports
        return 0
    record["weights"] = "raw" if args.no_ema else "EMA"
    _report(record, args.json)
    return 0


def _report(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record, indent=2))
        return
    method = record["method"]
    detail = (f"{record['divergence']} divergence, {record['probes']} probe(s), rtol {record['rtol']:g}"
              if method == "ode" else f"variance {record['variance']}")
    print(f"noisecraft: {method} ({detail}), {record['weights']} weights of step {record['step']}; "
          f"{record['convention']}")
    print(f"{record['data']} [{record['split']}], n = {record['n']}: {record['mean']:.4f} ± "
          f"{record['standard_error']:.4f} {record['units']} (mean ± standard error)")
    if "image" in record:
        print(f"{record['image']}: {record['image_bits_per_dim']:.4f} {record['units']}, percentile "
              f"{record['percentile']:.1f} among the {record['n']} examples above "
              "(share with NLL at or below it; ~50 is typical, ~100 unusually unlikely)")
