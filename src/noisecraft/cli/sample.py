"""``noisecraft sample``: draw samples from a trained run into FILE.npz and pictures or sounds.

--format grid (default for image and vector runs): FILE.png, a grid of the images (a scatter plot
  for vectors), and FILE.npz.
--format png: FILE/000000.png, FILE/000001.png, … one picture per sample, and FILE.npz.
--format wav (default for audio runs): FILE/000000.wav, … 16-bit mono at the run's sample rate,
  made by inverting the log-mel scaling recorded in config.json (inverse mel filterbank by
  non-negative least squares, then fast Griffin-Lim); FILE.png, the spectrogram grid; FILE.npz.

FILE.npz holds ``images``: uint8 (N, H, W, C) in the data's own size and channels (image runs),
``spectrograms``: float32 (N, 1, n_mels, frames) log-mel in [−1, 1] (audio runs) or ``samples``:
float32 (N, D) in data units (vector runs). Class-conditional runs cycle the labels 0, 1, …, K−1
(or the --class list) and store them as ``labels``. Text runs draw --n samples for each --prompt,
prompt after prompt (the grid's rows follow the prompts), and store them as ``prompts``; without
--prompt, a templated run cycles its template over the classes and any other text run samples
the empty prompt (unconditionally). --guidance W mixes the conditional and unconditional
predictions (classifier-free guidance; or autoguidance with --autoguide). Example i depends only
on (--seed, i), not on --batch-size.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np

from ._args import add_run_arguments, add_threads, command_parser, non_negative_int, positive_int
from ._guidance import add_guidance_arguments, describe, guidance_kwargs, labels_from_args

FORMATS = ("grid", "png", "wav")


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
    a("--format", choices=FORMATS, help="grid: FILE.png grid; png: a folder of numbered PNGs; "
      "wav: a folder of numbered WAV files (audio runs) and a spectrogram grid "
      "(default: wav for audio runs, else grid)")
    a("--griffin-lim-iters", type=positive_int, metavar="N",
      help=f"--format wav: Griffin-Lim iterations that rebuild the phase (default {GRIFFIN_LIM_ITERS})")
    a("--no-progress", action="store_true", help="no progress bar")
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


def _check_n(n: int, shape: tuple[int, ...]) -> None:
    """All n samples are held at once (float32, then the uint8/float output, the .npz and the
    grid): refuse before sampling when that cannot fit in this machine's memory."""
    import math

    from ..data.limits import human, physical_memory

    need = n * math.prod(shape) * (4 + 4 + 4)  # model space, output array, .npz buffer
    memory = physical_memory()
    if memory is not None and need > memory // 2:
        raise ValueError(f"--n {n} samples of shape {tuple(shape)} need about {human(need)} of "
                         f"memory, over half of this machine's {human(memory)}; draw them in "
                         "several runs with different --seed")


def choose_format(requested: str | None, kind: str) -> str:
    """--format, or the default for the run's kind of data; refuses a format the kind lacks."""
    fmt = requested or ("wav" if kind == "audio" else "grid")
    if fmt == "wav" and kind != "audio":
        raise ValueError(f"--format wav needs an audio run, but this run models {kind} data")
    if fmt == "png" and kind == "vector":
        raise ValueError("--format png needs an image or audio run; vector runs write a scatter "
                         "plot (--format grid)")
    return fmt


def run(args: argparse.Namespace) -> int:
    from .. import shard

    ranks = shard.join(args.device)   # under torchrun: each rank draws its share of the batches
    try:
        return _run(args, ranks)
    finally:
        shard.leave(ranks)


def _run(args: argparse.Namespace, ranks: Any) -> int:
    from .. import samplers, shard
    from ..run import load_run

    base = output_base(args.out)
    run_ = load_run(args.run_dir, use_ema=not args.no_ema,
                    device=shard.local_device(args.device, ranks))
    kind = run_.preprocess.kind
    fmt = choose_format(args.format, kind)
    if args.griffin_lim_iters is not None and fmt != "wav":
        raise ValueError("--griffin-lim-iters applies to --format wav only")
    sampler = args.sampler or run_.config.sampling.sampler
    if sampler not in samplers.SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(samplers.SAMPLERS)}")
    steps = args.steps or run_.config.sampling.steps
    if args.variance is not None and sampler != "ddpm":
        raise ValueError(f"--variance applies to --sampler ddpm, not {sampler}")
    prompts = _prompts(args, run_)
    n = len(prompts) if prompts is not None else args.n
    _check_n(n, run_.shape)
    labels = labels_from_args(run_, args, n)
    guidance = guidance_kwargs(run_, args)
    out = shard.generate(run_, n, sampler=sampler, steps=steps, seed=args.seed,
                         batch_size=args.batch_size, labels=labels, prompts=prompts,
                         options={"variance": args.variance} if args.variance else None,
                         progress=not args.no_progress, ranks=ranks, **guidance)
    if out is None:   # not rank 0: rank 0 writes the files
        return 0
    extra = {"prompts": np.array(prompts, dtype=str)} if prompts is not None else {}
    written = [write_npz(base, out, kind, labels, extra)]
    if fmt == "png":
        written.append(write_numbered(base, picture_array(out, kind), ".png"))
    else:
        written.append(write_picture(base, out, kind, reference_points(run_) if kind == "vector"
                                     else None))
    if fmt == "wav":
        written.append(write_wavs(run_, base, out, args.griffin_lim_iters))
    print(f"noisecraft: {n} samples ({sampler}, {steps} steps, seed {args.seed}"
          f"{describe(guidance)}, {'raw' if args.no_ema else 'EMA'} weights of step {run_.step})")
    for line in written:
        print(f"  {line}")
    return 0


def write_npz(base: Path, out: np.ndarray, kind: str, labels: np.ndarray | None,
              extra: dict[str, np.ndarray]) -> str:
    from ..io import atomic_write

    key = {"image": "images", "audio": "spectrograms"}.get(kind, "samples")
    arrays = {key: out}
    if labels is not None:
        arrays["labels"] = labels
    arrays.update(extra)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = base.with_suffix(".npz")
    atomic_write(path, buf.getvalue())
    names = [f"{key} {out.dtype} {tuple(out.shape)}", *list(arrays)[1:]]  # labels, prompts
    return f"{path}: {', '.join(names)}"


def picture_array(out: np.ndarray, kind: str) -> np.ndarray:
    """uint8 (N, H, W, C) pictures of image samples, or of spectrograms (low mels at the bottom)."""
    from .. import viz

    return viz.spectrogram_pictures(out) if kind == "audio" else out


def reference_points(run_: Any, n: int = 2000) -> np.ndarray | None:
    """Up to ``n`` points of a vector run's training data (first two coordinates, data units),
    drawn under the samples; None, with a note, when the data cannot be read any more."""
    import sys

    import torch

    from .. import data
    from ..errors import NoisecraftError

    spec = run_.config.data.spec
    try:
        dataset = data.load(spec, shuffle=False)
    except (NoisecraftError, ValueError, OSError) as e:
        print(f"noisecraft: note: scatter plot without the data ({e})", file=sys.stderr)
        return None
    x = torch.stack([dataset[i]["x"][:2] for i in range(min(n, len(dataset)))])
    return data.denormalize(x, run_.preprocess).numpy()


def write_picture(base: Path, out: np.ndarray, kind: str, reference: np.ndarray | None = None
                  ) -> str:
    from .. import viz

    if kind == "vector":
        picture = viz.scatter(out[:, :2], reference=reference)
        what = "scatter plot of the first two coordinates" + (
            " over the training data, on the data's range" if reference is not None else "")
    elif kind == "audio":
        picture, what = viz.spectrogram_grid(out), "spectrogram grid (time →, mel ↑)"
    else:
        picture, what = viz.image_grid(out), "image grid"
    path = base.with_suffix(".png")
    viz.save(picture, path)
    return f"{path}: {what}"


def numbered(folder: Path, n: int, suffix: str) -> list[Path]:
    """folder/000000.suffix … — six digits, so names sort in sample order up to a million."""
    return [folder / f"{i:06d}{suffix}" for i in range(n)]


def _folder(base: Path) -> Path:
    if base.exists() and not base.is_dir():
        raise ValueError(f"--out {base}: exists and is not a folder")
    base.mkdir(exist_ok=True)
    return base


def write_numbered(base: Path, pictures: np.ndarray, suffix: str) -> str:
    from PIL import Image

    from .. import viz

    folder = _folder(base)
    paths = numbered(folder, len(pictures), suffix)
    for picture, path in zip(pictures, paths, strict=True):
        # uint8 (H, W) is read as grey, (H, W, 3) as RGB and (H, W, 4) as RGBA
        viz.save(Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture), path)
    return f"{folder}/: {len(paths)} PNG files {paths[0].name} … {paths[-1].name}"


def write_wavs(run_: Any, base: Path, spectrograms: np.ndarray, n_iter: int | None) -> str:
    from ..data.audio import GRIFFIN_LIM_ITERS, write_wav

    n_iter = n_iter or GRIFFIN_LIM_ITERS
    config = run_.audio_config
    waveforms = run_.to_audio(spectrograms, n_iter=n_iter)
    folder = _folder(base)
    paths = numbered(folder, len(waveforms), ".wav")
    for waveform, path in zip(waveforms, paths, strict=True):
        write_wav(path, waveform, config.sample_rate)
    seconds = waveforms.shape[-1] / config.sample_rate
    return (f"{folder}/: {len(paths)} WAV files {paths[0].name} … {paths[-1].name}, 16-bit mono, "
            f"{config.sample_rate} Hz, {waveforms.shape[-1]} samples ({seconds:.2f} s) each; "
            f"inverse mel + {n_iter} Griffin-Lim iterations")


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
