"""``noisecraft sample``: draw samples from a trained run into FILE.npz and pictures or sounds.

--format grid (default for image and vector runs): FILE.png, a grid of the images (a scatter plot
  for vectors), and FILE.npz.
--format png: FILE/000000.png, FILE/000001.png, … one picture per sample, and FILE.npz.
--format wav (default for audio runs): FILE/000000.wav, … 16-bit mono at the run's sample rate,
  made by inverting the log-mel scaling recorded in config.json (inverse mel filterbank by
  non-negative least squares, then fast Griffin-Lim); FILE.png, the spectrogram grid; FILE.npz.

FILE.npz holds ``images``: uint8 (N, H, W, C) in the data's own size and channels (image runs),
``spectrograms``: float32 (N, 1, n_mels, frames) log-mel in [−1, 1] (audio runs) or ``samples``:
float32 (N, D) in data units (vector runs). Conditions follow one rule
(``LoadedRun.conditions``): --n samples of each --class or --prompt given, one after the other
(the grid's rows follow them); without either, a class-conditional run cycles its labels
0, 1, …, K−1 over --n samples, a templated text run its template over the classes, and any other
text run samples the empty prompt (unconditionally). Labels are stored as ``labels``, prompts as
``prompts``. --guidance W mixes the conditional and unconditional
predictions (classifier-free guidance; or autoguidance with --autoguide). Example i depends only
on (--seed, i), not on --batch-size.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ._args import add_run_arguments, add_threads, command_parser, non_negative_int, positive_int
from ._guidance import add_guidance_arguments, describe, guidance_kwargs


def register(sub: argparse._SubParsersAction) -> None:
    from ..data.mel import GRIFFIN_LIM_ITERS

    p = command_parser(sub, "sample", __doc__, "draw samples from a trained run",
                       "noisecraft sample runs/digits --n 64 --out samples")
    add_run_arguments(p)
    a = p.add_argument
    a("--out", required=True, metavar="FILE",
      help="output path without extension: FILE.npz plus FILE.png and/or the folder FILE/")
    a("--n", "--count", type=positive_int, default=64,
      help="number of samples (default 64); with --prompt, per prompt (spell it --count under "
      "torchrun, whose own parser claims --n)")
    a("--prompt", action="append", metavar="TEXT",
      help="text runs: a prompt (repeat for several; --n samples each)")
    a("--negative-prompt", metavar="TEXT", help="text runs, with --guidance: the prompt of the "
      "unconditional branch instead of the empty prompt (diffusers' negative_prompt)")
    from ..config import SamplingConfig
    from ..process import VARIANCES

    a("--sampler", help="one of noisecraft.SAMPLERS: ddpm, ddim, euler, heun, dpmpp-2m, sde, ... "
      f"(default: the run's, {SamplingConfig.sampler} unless set otherwise)")
    a("--steps", type=positive_int,
      help=f"sampling steps (default: the run's, {SamplingConfig.steps} unless set otherwise)")
    a("--option", action="append", type=_option, metavar="NAME=VALUE", default=[],
      help="a sampler-specific option (repeat for several), e.g. eta=0.5 for ddim, S_churn=40 "
      "for edm; the sampler's own names (noisecraft.samplers.options_of), checked by the library")
    a("--variance", choices=VARIANCES, help="ddpm: the reverse-step variance (default: learned "
      "if the run's net has it, else beta_tilde)")
    a("--seed", type=non_negative_int, default=0, help="noise seed (default 0)")
    a("--batch-size", type=positive_int, default=256, help="samples per forward pass (default 256)")
    from ..outputs import FORMATS

    a("--format", choices=FORMATS, help="grid: FILE.png grid; png: a folder of numbered PNGs; "
      "wav: a folder of numbered WAV files (audio runs) and a spectrogram grid "
      "(default: wav for audio runs, else grid)")
    a("--griffin-lim-iters", type=positive_int, metavar="N",
      help=f"--format wav: Griffin-Lim iterations that rebuild the phase (default {GRIFFIN_LIM_ITERS})")
    a("--no-progress", action="store_true", help="no progress bar")
    add_guidance_arguments(p)
    add_threads(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import shard
    from ..outputs import (
        choose_format,
        output_base,
        picture_array,
        reference_points,
        write_npz,
        write_numbered,
        write_picture,
        write_wavs,
    )
    from ..run import load_run

    base = output_base(args.out)
    with shard.session(args.device) as ranks:  # under torchrun each rank draws its share
        run_ = load_run(args.run_dir, use_ema=not args.no_ema,
                        device=shard.local_device(args.device, ranks))
        kind = run_.preprocess.kind
        fmt = choose_format(args.format, kind)
        if args.griffin_lim_iters is not None and fmt != "wav":
            raise ValueError("--griffin-lim-iters applies to --format wav only")
        guidance = guidance_kwargs(run_, args)
        if args.negative_prompt is not None:
            guidance["negative_prompt"] = args.negative_prompt
        drawn = run_.sample(args.n, prompts=args.prompt, classes=args.classes, sampler=args.sampler,
                            steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                            options=_options(args),
                            progress=not args.no_progress, ranks=ranks, **guidance)
    if drawn is None:   # not rank 0: rank 0 writes the files
        return 0
    out = drawn.output
    extra = {"prompts": np.array(drawn.prompts, dtype=str)} if drawn.prompts is not None else {}
    written = [write_npz(base, out, kind, drawn.labels, extra)]
    if fmt == "png":
        written.append(write_numbered(base, picture_array(out, kind), ".png"))
    else:
        written.append(write_picture(base, out, kind, reference_points(run_) if kind == "vector"
                                     else None))
    if fmt == "wav":
        written.append(write_wavs(run_, base, out, args.griffin_lim_iters))
    print(f"noisecraft: {len(out)} samples ({drawn.sampler}, {drawn.steps} steps, seed {args.seed}"
          f"{describe(guidance)}, {_weights(run_, args.no_ema)})")
    for line in written:
        print(f"  {line}")
    return 0


def _weights(run_: Any, raw: bool) -> str:
    """Which weights drew the samples, in words."""
    if getattr(run_, "source", None):  # a diffusers folder: its one set of weights
        return f"the weights of {run_.run_dir}"
    return f"{'raw' if raw else 'EMA'} weights of step {run_.step}"


def _option(text: str) -> tuple[str, float | str]:
    """NAME=VALUE, the value a number where it reads as one."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (e.g. eta=0.5)")
    try:
        return name, float(value)
    except ValueError:
        return name, value


def _options(args: argparse.Namespace) -> dict[str, Any] | None:
    """--option pairs and --variance as the sampler's options (unknown names: the library says)."""
    options = dict(args.option)
    if len(options) != len(args.option):
        raise ValueError(f"--option names repeat: {[n for n, _ in args.option]}")
    if args.variance:
        options["variance"] = args.variance
    return options or None
