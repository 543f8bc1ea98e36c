"""``noisecraft generate``: the text-to-image pipeline in one command.

prompt → tokens → text embedding → guided (latent) sampling → decoder → FILE.png (a grid, one
row per prompt) + FILE.npz (``images`` uint8 (N, H, W, C), ``prompts`` or ``labels``). Works for
text runs (--prompt, repeatable), class-conditional runs (--class, repeatable) and, without
either, any run (its default conditions). --explain also writes FILE_explain.png: the first
image's latent x_t channel by channel at several t, the decoded prediction x̂_0 at those t, and
the final image. Without --out, FILE is RUN/generated/<first prompt or class>-seed<seed>.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from ._args import (
    add_run_arguments,
    add_threads,
    command_parser,
    non_negative_int,
    positive_int,
)
from ._guidance import add_guidance_arguments, describe, guidance_kwargs


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "generate", __doc__, "text-to-image: prompts (or classes) to pictures",
                       'noisecraft generate runs/digits-text --prompt "a handwritten seven" --n 8 '
                       "--guidance 4 --steps 25")
    add_run_arguments(p)
    a = p.add_argument
    a("--prompt", action="append", metavar="TEXT", help="a prompt (text runs; repeat for several)")
    a("--class", dest="classes", action="append", type=non_negative_int, metavar="K",
      help="a class label (class-conditional runs; repeat for several)")
    a("--negative-prompt", metavar="TEXT", help="text runs, with --guidance: the prompt of the "
      "unconditional branch instead of the empty prompt (diffusers' negative_prompt)")
    a("--n", type=positive_int, default=8, help="images per prompt or class (default 8)")
    a("--steps", type=positive_int, help="sampling steps (default: the run's)")
    a("--sampler", help="one of noisecraft.SAMPLERS (default: the run's)")
    a("--seed", type=non_negative_int, default=0, help="noise seed (default 0)")
    a("--out", metavar="FILE", help="output path without extension (default: "
      "RUN/generated/<prompt>-seed<seed>)")
    a("--explain", action="store_true", help="also write FILE_explain.png, the pipeline's stages")
    a("--no-progress", action="store_true", help="no progress bar")
    add_guidance_arguments(p, classes=False)
    add_threads(p)
    p.set_defaults(func=run)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "generated"


def run(args: argparse.Namespace) -> int:
    from .. import viz
    from ..outputs import output_base, save_npz
    from ..pipeline import Pipeline

    pipe = Pipeline.from_run(args.run_dir, device=args.device, use_ema=not args.no_ema)
    if args.out is None:
        what = (args.prompt[0] if args.prompt else f"class-{args.classes[0]}" if args.classes
                else "samples")
        folder = Path(args.run_dir) / "generated"
        folder.mkdir(exist_ok=True)
        args.out = str(folder / f"{_slug(what)}-seed{args.seed}")
    base = output_base(args.out)
    guidance = guidance_kwargs(pipe.run, args)
    if args.negative_prompt is not None:
        guidance["negative_prompt"] = args.negative_prompt
    out, stages = pipe.generate_with_stages(args.prompt, n=args.n, labels=args.classes,
                                            steps=args.steps, **guidance,
                                            sampler=args.sampler, seed=args.seed,
                                            progress=not args.no_progress, record=args.explain)
    arrays: dict[str, np.ndarray] = {"images": out.images}
    if out.prompts is not None:
        arrays["prompts"] = np.array(out.prompts, dtype=str)
    if out.labels is not None:
        arrays["labels"] = out.labels
    save_npz(base.with_suffix(".npz"), arrays)
    groups = len(args.prompt or args.classes or [None])
    nrow = len(out.images) // groups if groups > 1 else None
    viz.save(viz.image_grid(out.images, nrow=nrow), base.with_suffix(".png"))
    written = [base.with_suffix(".png"), base.with_suffix(".npz")]
    if stages is not None:
        explain = base.with_name(base.name + "_explain.png")
        viz.save(pipe.explain(stages), explain)
        written.append(explain)
    negative = f", negative prompt {args.negative_prompt!r}" if args.negative_prompt else ""
    print(f"noisecraft: {len(out.images)} images (seed {args.seed}{describe(guidance)}{negative}) -> "
          f"{', '.join(map(str, written))}")
    return 0
