"""``noisecraft encode | interpolate | edit | inpaint``: a trained image run as a representation.

- encode:      pictures → x_T along the probability-flow ODE, decoded back (round-trip PSNR).
- interpolate: spherical interpolation between two encoded pictures (or two seeds' noise), and
               between two classes (or two prompts) of a conditional run.
- edit:        SDEdit: noise a picture to t = strength·T and denoise, optionally as another class.
- inpaint:     fill the white part of a mask, keeping the rest (replacement + RePaint resampling).

Each writes FILE.png (a picture strip) and FILE.npz (uint8 images (N, H, W, C) in the data's own
size and channels, plus the command's own arrays). Pictures go through the run's preprocessing
(channels, resize + centre crop); a picture file holds 0..255 whatever the training data's range.
Class-conditional runs take --class, text runs --prompt; latent runs work in their latent space
and decode. Each command calls one method of ``noisecraft.LoadedRun`` (``invert``,
``interpolate_pictures``, ``edit``, ``inpaint``): Python gets the same pictures.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ._args import add_run_arguments, add_threads, command_parser, non_negative_int, positive_int
from ._guidance import add_guidance_arguments, describe, guidance_kwargs


# --------------------------------------------------------------------------- parsers
def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"strength {text!r} must lie in (0, 1]")
    return value


def _common(p: argparse.ArgumentParser, encoders: bool = True) -> None:
    add_run_arguments(p)
    a = p.add_argument
    a("--out", required=True, metavar="FILE", help="output path without extension: FILE.png, FILE.npz")
    if encoders:
        from ..editing import ENCODERS

        a("--sampler", choices=ENCODERS,
          help="deterministic solver of the probability-flow ODE (default ddim)")
    a("--steps", type=positive_int,
      help="grid steps of a full T → 0 pass (default: the run's sampling steps)")
    a("--no-progress", action="store_true", help="no progress bar")
    add_threads(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "encode", __doc__, "invert pictures to x_T (probability-flow ODE)",
                       "noisecraft encode runs/mnist --image 7.png --steps 100 --out enc")
    _common(p)
    p.add_argument("--image", action="append", required=True, metavar="FILE",
                   help="a picture to encode (repeat for several)")
    p.add_argument("--class", dest="label", type=non_negative_int, metavar="K",
                   help="the pictures' class (class-conditional runs; default: the null label)")
    p.add_argument("--prompt", metavar="TEXT",
                   help="the pictures' prompt (text runs; default: the empty prompt)")
    p.set_defaults(func=run_encode)

    p = command_parser(sub, "interpolate", __doc__, "slerp between two encoded pictures or seeds",
                       "noisecraft interpolate runs/mnist --images a.png b.png --frames 8 --out strip")
    _common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs=2, metavar=("A", "B"), help="two pictures to encode")
    src.add_argument("--seeds", nargs=2, type=non_negative_int, metavar=("A", "B"),
                     help="two noise seeds: x_T ~ N(0, I)")
    p.add_argument("--classes", nargs=2, type=non_negative_int, metavar=("KA", "KB"),
                   help="class at each end (class-conditional runs): the path also runs between "
                        "the classes")
    p.add_argument("--prompts", nargs=2, metavar=("PA", "PB"),
                   help="prompt at each end (text runs): the path also runs between the prompts")
    p.add_argument("--frames", type=positive_int, default=8, help="frames, ends included (default 8)")
    p.set_defaults(func=run_interpolate)

    p = command_parser(sub, "edit", __doc__, "SDEdit: noise a picture part-way and denoise it",
                       "noisecraft edit runs/mnist --image 3.png --strength 0.5 --class 8 --out e")
    _common(p, encoders=False)
    a = p.add_argument
    a("--image", required=True, metavar="FILE", help="the picture to edit")
    a("--strength", type=_strength, default=0.5,
      help="t = strength·T in (0, 1]: 1 forgets the picture (default 0.5)")
    a("--sampler", help="any sampler of noisecraft.SAMPLERS (default: the run's)")
    a("--n", type=positive_int, default=8,
      help="edits to draw, of each --class or --prompt given (default 8)")
    a("--prompt", action="append", metavar="TEXT",
      help="text runs: edit towards this prompt (repeat for several; --n edits each)")
    a("--seed", type=non_negative_int, default=0, help="noise seed (default 0)")
    add_guidance_arguments(p)
    p.set_defaults(func=run_edit)

    p = command_parser(sub, "inpaint", __doc__, "fill a masked region of a picture",
                       "noisecraft inpaint runs/mnist --image 3.png --mask hole.png --out filled")
    _common(p, encoders=False)
    a = p.add_argument
    a("--image", required=True, metavar="FILE", help="the picture")
    a("--mask", required=True, metavar="MASK",
      help="a picture of the same size: white (>= 128) marks the region to fill, black is kept")
    a("--class", dest="label", type=non_negative_int, metavar="K",
      help="fill as class K (class-conditional runs)")
    a("--prompt", metavar="TEXT", help="fill towards this prompt (text runs)")
    a("--resample", type=positive_int, default=1,
      help="RePaint resamplings per jump point (default 1: plain replacement)")
    a("--jump", type=positive_int, default=1, help="RePaint jump length in steps (default 1)")
    a("--n", type=positive_int, default=8, help="fills to draw (default 8)")
    a("--seed", type=non_negative_int, default=0, help="noise seed (default 0)")
    p.set_defaults(func=run_inpaint)


# --------------------------------------------------------------------------- helpers
def _load(args: argparse.Namespace) -> Any:
    from ..run import load_run

    run_ = load_run(args.run_dir, use_ema=not args.no_ema, device=args.device)
    if run_.preprocess.kind != "image":
        raise ValueError(f"noisecraft {args.command} needs an image run, but {args.run_dir} models "
                         f"{run_.preprocess.kind} data")
    return run_


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from ..progress import Bar

    return Bar(total, desc, enabled=enabled, leave=False)


def _grid_steps(run_: Any, sampler: str, steps: int | None) -> tuple[str, int, int]:
    """(sampler, steps, the grid's actual number of steps) with the run's defaults."""
    from .. import grids
    from ..samplers import SAMPLERS

    sampler, steps = run_.sampler_and_steps(sampler, steps)
    return sampler, steps, grids.make(SAMPLERS[sampler].default_grid, run_.schedule,
                                      steps).numel() - 1


def _write(base: Any, picture: Any, arrays: dict[str, np.ndarray]) -> None:
    from .. import viz
    from ..outputs import save_npz

    save_npz(base.with_suffix(".npz"), arrays)
    viz.save(picture, base.with_suffix(".png"))


# --------------------------------------------------------------------------- encode
def run_encode(args: argparse.Namespace) -> int:
    import torch

    from .. import viz
    from ..outputs import output_base

    base = output_base(args.out)
    run_ = _load(args)
    x0 = torch.cat([run_.read_picture(p) for p in args.image])
    sampler, steps, n = _grid_steps(run_, args.sampler or "ddim", args.steps)
    bar = _bar(2 * n, f"encode+decode ({sampler})", not args.no_progress)
    inv = run_.invert(x0, sampler=sampler, steps=steps, classes=args.label, prompts=args.prompt,
                      callback=bar)
    bar.close()
    db = inv.psnr_db.numpy()
    # x_T is N(0, I)-like: drawn at a third of its scale so that ±3σ fills the grey range (a
    # latent run's x_T is latent noise: it is shown decoded)
    shown = inv.x_T / 3 if run_.config.latent is None else run_.decode(inv.x_T)
    rows = [_pictures(run_, x0), _pictures(run_, shown.clamp(-1, 1)), _pictures(run_, inv.decoded)]
    picture = viz.labelled_rows(rows, row_captions=["x_0", "x_T / 3" if run_.config.latent is None
                                                    else "decoded x_T", "decoded"])
    _write(base, picture, {"x_T": inv.x_T.float().numpy(), "images": rows[0],
                           "decoded": rows[2], "psnr_db": db.astype(np.float32)})
    for path, v in zip(args.image, db, strict=True):
        print(f"{path}: round-trip PSNR {v:.2f} dB")
    print(f"noisecraft: encoded {len(x0)} picture(s) ({sampler}, {n} steps) -> "
          f"{base.with_suffix('.png')}, {base.with_suffix('.npz')} (x_T, decoded, psnr_db)")
    return 0


def _pictures(run_: Any, x: Any) -> np.ndarray:
    """Pixel-space pictures in [−1, 1] → uint8 (N, H, W, C) (no latent decoding)."""
    from ..data import to_uint8

    return to_uint8(x, run_.preprocess)


# --------------------------------------------------------------------------- interpolate
def run_interpolate(args: argparse.Namespace) -> int:
    from .. import viz
    from ..editing import interpolation_weights
    from ..outputs import output_base

    base = output_base(args.out)
    run_ = _load(args)
    interpolation_weights(args.frames)  # the library's check, before any bar
    sampler, steps, n = _grid_steps(run_, args.sampler or "ddim", args.steps)
    bar = _bar(n * (2 if args.images else 0) + n, f"interpolate ({sampler})", not args.no_progress)
    ends = ([run_.read_picture(p) for p in args.images] if args.images else list(args.seeds))
    frames = run_.interpolate_pictures(ends[0], ends[1], args.frames, sampler=sampler, steps=steps,
                                       classes=args.classes, prompts=args.prompts, callback=bar)
    bar(None)
    bar.close()
    images = _pictures(run_, frames)
    _write(base, viz.image_grid(images, nrow=args.frames),
           {"images": images, "weights": interpolation_weights(args.frames).numpy()})
    print(f"noisecraft: {args.frames} frames ({sampler}, {n} steps) -> "
          f"{base.with_suffix('.png')}, {base.with_suffix('.npz')}")
    return 0


# --------------------------------------------------------------------------- edit
def run_edit(args: argparse.Namespace) -> int:
    from .. import viz
    from ..outputs import output_base

    base = output_base(args.out)
    run_ = _load(args)
    x = run_.read_picture(args.image)
    prompts, labels = run_.conditions(args.n, args.prompt, args.classes)
    count = len(prompts) if prompts is not None else len(labels) if labels is not None else args.n
    guidance = guidance_kwargs(run_, args)
    sampler, steps = run_.sampler_and_steps(args.sampler, args.steps)
    taken = max(1, round(args.strength * steps))
    bar = _bar(taken, f"edit ({sampler})", not args.no_progress)
    out, labels = run_.edit(x, args.strength, count, sampler=sampler, steps=steps, seed=args.seed,
                            classes=labels, prompts=prompts, callback=bar, **guidance)
    bar.close()
    images = _pictures(run_, out)
    original = _pictures(run_, x)
    arrays = {"images": images, "original": original}
    if labels is not None:
        arrays["labels"] = labels
    if prompts is not None:
        arrays["prompts"] = np.array(prompts, dtype=str)
    _write(base, viz.image_grid(np.concatenate([original, images]), nrow=min(len(images), 16) + 1),
           arrays)
    print(f"noisecraft: {len(images)} edits at strength {args.strength} (t = "
          f"{args.strength * run_.schedule.T:g}, {sampler}"
          f"{describe(guidance)}, seed {args.seed}) -> "
          f"{base.with_suffix('.png')}, {base.with_suffix('.npz')}")
    return 0


# --------------------------------------------------------------------------- inpaint
def run_inpaint(args: argparse.Namespace) -> int:
    from .. import viz
    from ..editing import repaint_path, steps_of
    from ..outputs import output_base

    base = output_base(args.out)
    run_ = _load(args)
    _, steps = run_.sampler_and_steps("ddpm", args.steps)
    x = run_.read_picture(args.image)
    known = run_.read_mask(args.mask, args.image)
    calls = steps_of(repaint_path(steps, args.resample, args.jump))
    bar = _bar(calls, "inpaint", not args.no_progress)
    out = run_.inpaint(x, known, args.n, steps=steps, resample=args.resample, jump=args.jump,
                       seed=args.seed, classes=args.label, prompts=args.prompt, callback=bar)
    bar.close()
    images = _pictures(run_, out)
    original = _pictures(run_, x)
    shown = _pictures(run_, (x * known - (1 - known)).clamp(-1, 1))   # the hole drawn black
    _write(base, viz.image_grid(np.concatenate([original, shown, images]), nrow=args.n + 2),
           {"images": images, "original": original, "known": known[0, 0].bool().numpy()})
    print(f"noisecraft: {args.n} fills ({steps} steps, resample {args.resample}, jump "
          f"{args.jump}, seed {args.seed}) -> {base.with_suffix('.png')}, {base.with_suffix('.npz')}")
    return 0
