"""``noisecraft distill``: a consistency model of a run's probability-flow ODE (Song et al. 2023).

Trains OUT, a run with --prediction consistency (f(x, 0) = x exactly), by consistency
distillation: one --solver step of the teacher's ODE between adjacent points of an
--intervals-step grid, the target an EMA of the student with decay --target-decay. OUT samples
with the consistency sampler: `noisecraft sample OUT --steps 1` is one network evaluation.
"""

from __future__ import annotations

import argparse

from ._args import add_student_arguments, command_parser, default_of, positive_int, probability


def register(sub: argparse._SubParsersAction) -> None:
    from ..distill import INITS, SOLVERS, distill
    from ..grids import GRIDS

    p = command_parser(sub, "distill", __doc__, "distill a run into a few-step consistency model",
                       "noisecraft distill runs/moons --out runs/moons-cd")
    a = p.add_argument
    a("run_dir", metavar="RUN_DIR", help="the teacher run")
    a("--out", required=True, metavar="OUT", help="the new run directory")
    for flag, kind, what in (("--intervals", dict(type=positive_int), "N, grid steps of the ODE"),
                             ("--grid", dict(choices=list(GRIDS)), "the grid"),
                             ("--solver", dict(choices=SOLVERS), "the teacher's ODE step"),
                             ("--target-decay", dict(type=probability),
                              "EMA decay of the target network"),
                             ("--init", dict(choices=INITS), "the student's first weights: the "
                              "teacher's (EMA) weights, or fresh ones")):
        default = default_of(distill, flag[2:].replace("-", "_"))
        a(flag, default=default, help=f"{what} (default {default})", **kind)
    add_student_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distill import distill

    result = distill(args.run_dir, args.out, intervals=args.intervals, grid=args.grid,
                     solver=args.solver, target_decay=args.target_decay, init=args.init,
                     steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                     max_time=args.max_time, device=args.device,
                     progress=not args.no_progress)
    print(f"noisecraft: {result.run_dir}: distilled from {args.run_dir}, step {result.step}, "
          f"loss {result.loss:.4f}")
    return 0
