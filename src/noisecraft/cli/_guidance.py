"""The guidance flags shared by the commands that sample a trained run (sample, and edit/generate).

    --class 3 | 1,4,7      which classes to draw, --n samples of each (default: the classes
                           0, 1, …, K−1 cycled over --n samples)
    --guidance W           classifier-free guidance scale w ≥ 0 (1 = the conditional model,
                           0 = the unconditional one; default: no guidance)
    --guidance-rescale φ   Lin et al. 2024 std-matching of the guided x̂_0, φ ∈ [0, 1]
    --guidance-interval LO HI   guide only where LO ≤ t ≤ HI (the run's own t, 0..T)
    --autoguide RUN_DIR    autoguidance (Karras et al. 2024): another run of the same data and
                           schedule, smaller or trained for fewer steps, plays the unconditional
                           branch with the same condition; RUN_DIR@STEP is the run's own EMA
                           snapshot of that step (--snapshot-every), its shortest profile

Every check lives in :meth:`noisecraft.LoadedRun.guided`.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._args import non_negative_float


def _class_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a class or a comma list of classes "
                                         "(e.g. 3 or 1,4,7)") from None
    return values


def _unit(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number in [0, 1]")
    return value


def add_guidance_arguments(parser: argparse.ArgumentParser, classes: bool = True) -> None:
    """--class, --guidance, --guidance-rescale, --guidance-interval and --autoguide
    (``classes=False``: a command with its own --class)."""
    g = parser.add_argument_group("conditioning and guidance")
    if classes:
        g.add_argument("--class", dest="classes", type=_class_list, metavar="K[,K...]",
                       help="class-conditional runs: the class(es) to draw, --n samples of each "
                       "(default: all classes 0, 1, …, K−1 cycled over --n samples)")
    g.add_argument("--guidance", type=non_negative_float, metavar="W",
                   help="classifier-free guidance scale w >= 0: 1 = the conditional model, "
                   "0 = the unconditional one, > 1 = stronger (default: no guidance); needs a "
                   "run trained with label dropout, or --autoguide")
    g.add_argument("--guidance-rescale", type=_unit, metavar="PHI",
                   help="with --guidance: match the std of the guided x0 to the conditional one "
                   "(Lin et al. 2024), PHI in [0, 1] (default 0)")
    g.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"),
                   help="with --guidance: guide only where LO <= t <= HI, in the run's time "
                   "0..T (Kynkäänniemi et al. 2024); the conditional model elsewhere")
    g.add_argument("--autoguide", metavar="RUN_DIR[@STEP]",
                   help="with --guidance: autoguidance (Karras et al. 2024): a weaker run of the "
                   "same data and schedule (smaller, or fewer steps) replaces the unconditional "
                   "branch; RUN_DIR@STEP: that run's EMA snapshot of step STEP")


def guidance_kwargs(run: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The ``guidance*`` / ``autoguide`` keywords of :meth:`LoadedRun.sample` and the editing
    methods (which check them against the run, :meth:`LoadedRun.guided`)."""
    from ..run import load_run

    if args.guidance is None:
        for flag, value in (("--guidance-rescale", args.guidance_rescale),
                            ("--guidance-interval", args.guidance_interval),
                            ("--autoguide", args.autoguide)):
            if value is not None:
                raise ValueError(f"{flag} needs --guidance W")
        return {}
    autoguide = None
    if args.autoguide is not None:
        from ..posthoc import load_snapshot_run, split_run_step

        guide_dir, step = split_run_step(args.autoguide)  # RUN@STEP: a snapshot of that step
        autoguide = (load_run(guide_dir, use_ema=not args.no_ema, device=args.device)
                     if step is None else load_snapshot_run(guide_dir, step, device=args.device))
    return {"guidance": args.guidance, "guidance_rescale": args.guidance_rescale or 0.0,
            "guidance_interval": tuple(args.guidance_interval) if args.guidance_interval else None,
            "autoguide": autoguide}


def describe(kwargs: dict[str, Any]) -> str:
    """A few words for the command's summary line ('' without guidance)."""
    if not kwargs:
        return ""
    parts = [f"guidance {kwargs['guidance']:g}"]
    if kwargs["guidance_rescale"]:
        parts.append(f"rescale {kwargs['guidance_rescale']:g}")
    if kwargs["guidance_interval"]:
        parts.append("t in [{:g}, {:g}]".format(*kwargs["guidance_interval"]))
    if kwargs["autoguide"] is not None:
        parts.append(f"autoguide {kwargs['autoguide'].run_dir}")
    return ", " + ", ".join(parts)
