"""``noisecraft reflow``: straighten a run's ODE paths (rectified flow's reflow, Liu et al. 2022).

Draws --pairs (noise x_T, sample x_0 = ODE(x_T)) pairs with the run's deterministic sampler
(--sampler, --ode-steps; seeded by --seed, recorded in OUT/reflow.json) and trains OUT, a flow
run (--schedule flow --prediction flow) on them, with the paired x_T as the noise. The new run's
paths are straighter, so it samples well in fewer steps (`noisecraft sample OUT --steps 2`).
"""

from __future__ import annotations

import argparse

from ._args import add_student_arguments, command_parser, default_of, non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from ..reflow import DETERMINISTIC, reflow

    p = command_parser(sub, "reflow", __doc__, "train a straighter flow run on a run's ODE pairs",
                       "noisecraft reflow runs/moons --pairs 4000 --out runs/moons-reflow")
    a = p.add_argument
    a("run_dir", metavar="RUN_DIR", help="the teacher run")
    a("--out", required=True, metavar="OUT", help="the new run directory")
    pairs = default_of(reflow, "pairs")
    a("--pairs", type=positive_int, default=pairs, help=f"ODE pairs to draw (default {pairs})")
    a("--sampler", help=f"deterministic sampler of the pairs: {', '.join(DETERMINISTIC)} "
      "(default: the run's if deterministic, else heun)")
    a("--ode-steps", type=positive_int, help="its steps (default: the run's sampling steps)")
    seed = default_of(reflow, "seed")
    a("--seed", type=non_negative_int, default=seed, help=f"seed of the pairs' noise (default {seed})")
    add_student_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..reflow import reflow

    result = reflow(args.run_dir, args.out, pairs=args.pairs, sampler=args.sampler,
                    ode_steps=args.ode_steps, seed=args.seed, steps=args.steps,
                    batch_size=args.batch_size, lr=args.lr, max_time=args.max_time,
                    device=args.device,
                    progress=not args.no_progress)
    print(f"noisecraft: {result.run_dir}: reflowed from {args.run_dir} on {args.pairs} pairs, "
          f"step {result.step}, loss {result.loss:.4f}")
    return 0
