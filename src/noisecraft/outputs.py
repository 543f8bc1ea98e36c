"""Writing what a run produced: FILE.npz, picture grids, numbered PNG and WAV files.

The one home of these writers for every command and for Python (``noisecraft.outputs``): each
file is written atomically (``noisecraft.io``), respects the umask, and each writer returns the
line the commands print about it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("grid", "png", "wav")
ARRAY_KEYS = {"image": "images", "audio": "spectrograms", "vector": "samples"}


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


def choose_format(requested: str | None, kind: str) -> str:
    """--format, or the default for the run's kind of data; refuses a format the kind lacks."""
    fmt = requested or ("wav" if kind == "audio" else "grid")
    if fmt == "wav" and kind != "audio":
        raise ValueError(f"--format wav needs an audio run, but this run models {kind} data")
    if fmt == "png" and kind == "vector":
        raise ValueError("--format png needs an image or audio run; vector runs write a scatter "
                         "plot (--format grid)")
    return fmt


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """``arrays`` as one .npz file, written atomically (the one .npz writer)."""
    from .io import atomic_write

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = Path(path)
    atomic_write(path, buf.getvalue())
    return path


def write_npz(base: Path, out: np.ndarray, kind: str, labels: np.ndarray | None,
              extra: dict[str, np.ndarray]) -> str:
    key = ARRAY_KEYS[kind]
    arrays = {key: out}
    if labels is not None:
        arrays["labels"] = labels
    arrays.update(extra)
    path = save_npz(base.with_suffix(".npz"), arrays)
    names = [f"{key} {out.dtype} {tuple(out.shape)}", *list(arrays)[1:]]  # labels, prompts
    return f"{path}: {', '.join(names)}"


def picture_array(out: np.ndarray, kind: str) -> np.ndarray:
    """uint8 (N, H, W, C) pictures of image samples, or of spectrograms (low mels at the bottom)."""
    from . import viz

    return viz.spectrogram_pictures(out) if kind == "audio" else out


def reference_points(run_: Any, n: int = 2000) -> np.ndarray | None:
    """Up to ``n`` points of a vector run's training data (first two coordinates, data units),
    drawn under the samples; None, with a note, when the data cannot be read any more."""
    import sys

    import torch

    from . import data
    from .errors import NoisecraftError

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
    from . import viz

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

    from . import viz

    folder = _folder(base)
    paths = numbered(folder, len(pictures), suffix)
    for picture, path in zip(pictures, paths, strict=True):
        # uint8 (H, W) is read as grey, (H, W, 3) as RGB and (H, W, 4) as RGBA
        viz.save(Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture), path)
    return f"{folder}/: {len(paths)} PNG files {paths[0].name} … {paths[-1].name}"


def write_wavs(run_: Any, base: Path, spectrograms: np.ndarray, n_iter: int | None) -> str:
    from .data.audio import GRIFFIN_LIM_ITERS, write_wav

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
