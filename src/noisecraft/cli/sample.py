"""``noisecraft sample``: draw samples from a trained run into FILE.png and FILE.npz.

Image runs write a grid (FILE.png) and ``images``: uint8 (N, H, W, C) in the data's own size and
channels (FILE.npz); vector runs a scatter plot and ``samples``: float32 (N, D) in data units.
Class-conditional runs cycle the labels 0, 1, …, K−1 (or the --class list) and store them as
``labels``. Text runs draw --n samples for each --prompt, prompt after prompt (the grid's rows
follow the prompts), and store them as ``prompts``; without --prompt, a templated run cycles its
template over the classes and any other text run samples the empty prompt (unconditionally).
--guidance W mixes the conditional and unconditional predictions (classifier-free guidance; or
autoguidance with --autoguide). Example i depends only on (--seed, i), not on --batch-size.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from ._args import add_run_arguments, add_threads, command_parser, non_negative_int, positive_int
from ._guidance import add_guidance_arguments, describe, guidance_kwargs, labels_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "sample", __doc__, "draw samples from a trained run",
                       "noisecraft sample runs/digits --n 64 --out samples")
    add_run_arguments(p)
    a = p.add_argument
    a("--out", required=True, metavar="FILE",
      help="output path without extension: writes FILE.png and FILE.npz")
    a("--n", type=positive_int, default=64,
      help="number of samples (default 64); with --prompt, per prompt")
    a("--prompt", action="append", metavar="TEXT",
      help="text runs: a prompt (repeat for several; --n samples each)")
    from ..config import SamplingConfig
    from ..process import VARIANCES

    a("--sampler", help="one of noisecraft.SAMPLERS: ddpm, ddim, euler, heun, dpmpp-2m, sde, ... "
      f"(default: the run's, {SamplingConfig.sampler} unless set otherwise)")
    a("--steps", type=positive_int,
      help=f"sampling steps (default: the run's, {SamplingConfig.steps} unless set otherwise)")
    a("--variance", choices=VARIANCES, help="ddpm: the reverse-step variance (default: learned "
      "if the run's net has it, else beta_tilde)")
    a("--seed", type=non_negative_int, default=0, help="noise seed (default 0)")
    a("--batch-size", type=positive_int, default=256, help="samples per forward pass (default 256)")
    add_guidance_arguments(p)
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
    if args.variance is not None and sampler != "ddpm":
        raise ValueError(f"--variance applies to --sampler ddpm, not {sampler}")
    prompts = _prompts(args, run_)
    n = len(prompts) if prompts is not None else args.n
    labels = labels_from_args(run_, args, n)
    guidance = guidance_kwargs(run_, args)
    out = run_.generate(n, sampler=sampler, steps=steps, seed=args.seed,
                        batch_size=args.batch_size, labels=labels, prompts=prompts,
                        options={"variance": args.variance} if args.variance else None,
                        **guidance)
    arrays = {"images" if run_.preprocess.kind == "image" else "samples": out}
    if labels is not None:
        arrays["labels"] = labels
    if prompts is not None:
        arrays["prompts"] = np.array(prompts, dtype=str)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(base.with_suffix(".npz"), buf.getvalue())
    picture = viz.image_grid(out) if run_.preprocess.kind == "image" else viz.scatter(out[:, :2])
    viz.save(picture, base.with_suffix(".png"))
    print(f"noisecraft: {n} samples ({sampler}, {steps} steps, seed {args.seed}"
          f"{describe(guidance)}, "
          f"{'raw' if args.no_ema else 'EMA'} weights of step {run_.step}) -> "
          f"{base.with_suffix('.png')}, {base.with_suffix('.npz')}")
    return 0


def _prompts(args: argparse.Namespace, run_: object) -> list[str] | None:
    """One prompt per sample: --n of each --prompt in turn, or the run's defaults (--guidance is
    checked by ``noisecraft.guidance.guide_run``)."""
    condition = run_.config.condition  # type: ignore[attr-defined]
    if args.prompt and condition.kind != "text":
        raise ValueError(f"--prompt needs a text-conditional run; {args.run_dir} is conditioned "
                         f"on {condition.kind!r}")
    if condition.kind != "text":
        return None
    if not args.prompt:
        return run_.default_prompts(args.n)  # type: ignore[attr-defined]
    return [p for p in args.prompt for _ in range(args.n)]
