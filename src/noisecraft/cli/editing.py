"""``noisecraft encode | interpolate | edit | inpaint``: a trained image run as a representation.

- encode:      pictures → x_T along the probability-flow ODE, decoded back (round-trip PSNR).
- interpolate: spherical interpolation between two encoded pictures (or two seeds' noise), and
               between two classes of a class-conditional run.
- edit:        SDEdit: noise a picture to t = strength·T and denoise, optionally as another class.
- inpaint:     fill the white part of a mask, keeping the rest (replacement + RePaint resampling).

Each writes FILE.png (a picture strip) and FILE.npz (uint8 images (N, H, W, C) in the data's own
size and channels, plus the command's own arrays). Pictures go through the run's preprocessing
(channels, resize + centre crop); a picture file holds 0..255 whatever the training data's range.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
from typing import Any

import numpy as np

from ._args import add_run_arguments, add_threads, command_parser, non_negative_int, positive_int
from ._guidance import (
    add_guidance_arguments,
    describe,
    guidance_kwargs,
    labels_from_args,
)
from .sample import output_base

DEFAULT_STEPS = 100


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

        a("--sampler", default="ddim", choices=ENCODERS,
          help="deterministic solver of the probability-flow ODE (default ddim)")
    a("--steps", type=positive_int,
      help=f"grid steps of a full T → 0 pass (default {DEFAULT_STEPS}, or T when smaller)")
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
    a("--n", type=positive_int, default=8, help="edits to draw (default 8)")
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
    if args.steps is None:
        args.steps = min(DEFAULT_STEPS, run_.schedule.T)
    if run_.preprocess.kind != "image":
        raise ValueError(f"noisecraft {args.command} needs an image run, but {args.run_dir} models "
                         f"{run_.preprocess.kind} data")
    return run_


def read_picture(path: str, pre: Any) -> tuple[Any, tuple[int, int]]:
    """(1, C, H, W) in [−1, 1] through the run's preprocessing, and the file's own (H, W)."""
    from ..data.folder import decode_image
    from ..data.transforms import prepare_array, scale_to_unit

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such picture")
    raw = decode_image(path)
    a = prepare_array(raw, pre)
    x = scale_to_unit(a, dataclasses.replace(pre, value_range=(0.0, 255.0)))[None]
    if tuple(x.shape[1:]) != tuple(pre.shape):
        raise ValueError(f"{path}: a {raw.shape[1]}x{raw.shape[0]} picture with {raw.shape[2]} "
                         f"channel(s) gives {tuple(x.shape[1:])} after the run's preprocessing, "
                         f"but the model takes {tuple(pre.shape)} (C, H, W)")
    return x, raw.shape[:2]


def read_mask(path: str, size: tuple[int, int], pre: Any) -> Any:
    """The known-region mask (1, 1, H, W): 1 = keep (dark pixels), 0 = fill (white, >= 128)."""
    import torch

    from ..data.folder import decode_image
    from ..data.transforms import convert_channels, resize_center_crop

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--mask {path}: no such file")
    raw = decode_image(path)
    if raw.shape[:2] != tuple(size):
        raise ValueError(f"--mask {path} is {raw.shape[1]}x{raw.shape[0]} but the picture is "
                         f"{size[1]}x{size[0]}; give a mask of the picture's size")
    gray = convert_channels(raw, 1)
    if pre.image_size is not None:
        gray = resize_center_crop(gray, pre.image_size)
    fill = torch.from_numpy(gray[..., 0] >= 128)
    return (~fill).float()[None, None]


def _labels(run_: Any, label: int | None, n: int) -> dict[str, Any]:
    import torch

    if label is None:
        return {}
    if run_.num_classes is None:
        raise ValueError(f"--class {label}: {run_.run_dir} is not class-conditional")
    if label >= run_.num_classes:
        raise ValueError(f"--class {label}: the run has classes 0..{run_.num_classes - 1}")
    return {"labels": torch.full((n,), label, dtype=torch.long)}


class _Bar:
    """A tqdm bar as a sampler callback (nothing when --no-progress)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False)

    def __call__(self, *_: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _grid_steps(run_: Any, sampler: str, steps: int) -> int:
    from ..editing import _grid

    return _grid(run_.schedule, sampler, steps, None).numel() - 1


def _write(base: Any, picture: Any, arrays: dict[str, np.ndarray]) -> None:
    from .. import viz
    from ..io import atomic_write

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(base.with_suffix(".npz"), buf.getvalue())
    viz.save(picture, base.with_suffix(".png"))


def _on(run_: Any, x: Any) -> Any:
    return x.to(next(run_.net.parameters()).device)


# --------------------------------------------------------------------------- encode
def run_encode(args: argparse.Namespace) -> int:
    import torch

    from .. import viz
    from ..editing import decode, encode, psnr

    base = output_base(args.out)
    run_ = _load(args)
    x0 = torch.cat([read_picture(p, run_.preprocess)[0] for p in args.image])
    cond = {k: _on(run_, v) for k, v in _labels(run_, args.label, len(x0)).items()}
    x0 = _on(run_, x0)
    n = _grid_steps(run_, args.sampler, args.steps)
    bar = _Bar(2 * n, f"encode+decode ({args.sampler})", not args.no_progress)
    x_T = encode(run_.denoiser, x0, run_.schedule, args.steps, args.sampler, callback=bar, **cond)
    back = decode(run_.denoiser, x_T, run_.schedule, args.steps, args.sampler, callback=bar, **cond)
    bar.close()
    db = psnr(back.cpu(), x0.cpu()).numpy()
    rows = [run_.to_output(x0.cpu()), run_.to_output((x_T.cpu() / 3).clamp(-1, 1)),
            run_.to_output(back.cpu())]
    # x_T is N(0, I)-like: drawn at a third of its scale so that ±3σ fills the grey range
    picture = viz.labelled_rows(rows, row_captions=["x_0", "x_T / 3", "decoded"])
    _write(base, picture, {"x_T": x_T.cpu().float().numpy(), "images": rows[0],
                           "decoded": rows[2], "psnr_db": db.astype(np.float32)})
    for path, v in zip(args.image, db, strict=True):
        print(f"{path}: round-trip PSNR {v:.2f} dB")
    print(f"noisecraft: encoded {len(x0)} picture(s) ({args.sampler}, {n} steps) -> "
          f"{base.with_suffix('.png')}, {base.with_suffix('.npz')} (x_T, decoded, psnr_db)")
    return 0


# --------------------------------------------------------------------------- interpolate
def run_interpolate(args: argparse.Namespace) -> int:

    from .. import viz
    from ..editing import encode, interpolate, interpolation_weights
    from ..noise import ExampleNoise

    base = output_base(args.out)
    run_ = _load(args)
    if args.frames < 2:
        raise ValueError(f"--frames {args.frames}: need at least 2 (the two ends)")
    conds = [{}, {}]
    if args.classes is not None:
        conds = [{k: _on(run_, v) for k, v in _labels(run_, k, 1).items()} for k in args.classes]
    n = _grid_steps(run_, args.sampler, args.steps)
    bar = _Bar(n * (2 if args.images else 0) + n, f"interpolate ({args.sampler})",
               not args.no_progress)
    if args.images:
        ends = [encode(run_.denoiser, _on(run_, read_picture(p, run_.preprocess)[0]), run_.schedule,
                       args.steps, args.sampler, callback=bar, **c)
                for p, c in zip(args.images, conds, strict=True)]
    else:
        ends = [_on(run_, ExampleNoise(s, 1).randn(run_.shape)) for s in args.seeds]
    frames = interpolate(run_.denoiser, ends[0], ends[1], run_.schedule, args.frames, args.steps,
                         args.sampler, cond_a=conds[0] or None, cond_b=conds[1] or None)
    bar(None)
    bar.close()
    images = run_.to_output(frames.cpu())
    _write(base, viz.image_grid(images, nrow=args.frames),
           {"images": images, "weights": interpolation_weights(args.frames).numpy()})
    print(f"noisecraft: {args.frames} frames ({args.sampler}, {n} steps) -> "
          f"{base.with_suffix('.png')}, {base.with_suffix('.npz')}")
    return 0


# --------------------------------------------------------------------------- edit
def run_edit(args: argparse.Namespace) -> int:
    import torch

    from .. import samplers, viz
    from ..editing import sdedit
    from ..guidance import guide_run

    base = output_base(args.out)
    run_ = _load(args)
    sampler = args.sampler or run_.config.sampling.sampler
    if sampler not in samplers.SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(samplers.SAMPLERS)}")
    x, _ = read_picture(args.image, run_.preprocess)
    x0 = _on(run_, x.expand(args.n, *x.shape[1:]).contiguous())
    labels = labels_from_args(run_, args, args.n)
    cond = {} if labels is None else {"labels": _on(run_, torch.as_tensor(labels))}
    guidance = guidance_kwargs(run_, args)
    denoiser = run_.denoiser if not guidance else guide_run(
        run_, guidance["guidance"], rescale=guidance["guidance_rescale"],
        interval=guidance["guidance_interval"], autoguide=guidance["autoguide"])
    taken = max(1, round(args.strength * args.steps))
    bar = _Bar(taken, f"edit ({sampler})", not args.no_progress)
    out = sdedit(denoiser, x0, run_.schedule, args.strength, args.steps, sampler,
                 seed=args.seed, callback=bar, **cond)
    bar.close()
    images = run_.to_output(out.cpu())
    original = run_.to_output(x)
    arrays = {"images": images, "original": original}
    if labels is not None:
        arrays["labels"] = labels
    _write(base, viz.image_grid(np.concatenate([original, images]), nrow=args.n + 1), arrays)
    print(f"noisecraft: {args.n} edits at strength {args.strength} (t = "
          f"{args.strength * run_.schedule.T:g}, {sampler}"
          f"{describe(guidance)}, seed {args.seed}) -> "
          f"{base.with_suffix('.png')}, {base.with_suffix('.npz')}")
    return 0


# --------------------------------------------------------------------------- inpaint
def run_inpaint(args: argparse.Namespace) -> int:
    from .. import viz
    from ..editing import inpaint, repaint_path, steps_of

    base = output_base(args.out)
    run_ = _load(args)
    if args.steps > run_.schedule.T:
        raise ValueError(f"--steps {args.steps} exceeds the run's T = {run_.schedule.T}")
    x, size = read_picture(args.image, run_.preprocess)
    known = read_mask(args.mask, size, run_.preprocess)
    if bool(known.all()):
        raise ValueError(f"--mask {args.mask} has no white pixels: nothing to fill")
    x0 = _on(run_, x.expand(args.n, *x.shape[1:]).contiguous())
    cond = {k: _on(run_, v) for k, v in _labels(run_, args.label, args.n).items()}
    calls = steps_of(repaint_path(args.steps, args.resample, args.jump))
    bar = _Bar(calls, "inpaint", not args.no_progress)
    out = inpaint(run_.denoiser, x0, _on(run_, known), run_.schedule, args.steps,
                  resample=args.resample, jump=args.jump, seed=args.seed, callback=bar, **cond)
    bar.close()
    images = run_.to_output(out.cpu())
    original = run_.to_output(x)
    shown = run_.to_output((x * known - (1 - known)).clamp(-1, 1))   # the hole drawn black
    _write(base, viz.image_grid(np.concatenate([original, shown, images]), nrow=args.n + 2),
           {"images": images, "original": original, "known": known[0, 0].bool().numpy()})
    print(f"noisecraft: {args.n} fills ({args.steps} steps, resample {args.resample}, jump "
          f"{args.jump}, seed {args.seed}) -> {base.with_suffix('.png')}, {base.with_suffix('.npz')}")
    return 0
