"""Run directories for inference: read ``config.json`` and the last committed checkpoint and
rebuild a trained model (:func:`load_run`). Never imports the trainer.

A run directory holds

    config.json            RunConfig (see ``noisecraft.config``): rebuilds net, schedule, data transform
    model.safetensors      the trained weights
    ema.safetensors        their exponential moving average (what sampling uses by default)
    optimizer.safetensors  AdamW's state, flattened to tensors + JSON metadata
    state.json             step, RNG states, LR-schedule and data-order positions
    log.jsonl              one JSON object per logged step
    samples/               sample grids written during training

A checkpoint is saved as one transaction of ``noisecraft.io`` with ``state.json`` last (the
commit point). Each safetensors file also records its step and loading checks it against
``state.json``, so a mixed checkpoint can never load silently. Nothing is ever unpickled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import RunConfig
from .errors import RunError
from .io import JOURNAL, PREVIOUS, checkpoint_file, read_json, read_safetensors

CONFIG = "config.json"
MODEL = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
LOG = "log.jsonl"
SAMPLES = "samples"


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, refusing names torch does not know and absent CUDA."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return dev


def load_weights(net: nn.Module, path: str | os.PathLike[str]) -> dict[str, str]:
    """Load a weights file into ``net`` (strictly); returns the file's metadata. Weights with a
    NaN or ±Inf are refused: they would sample black pictures and exit 0."""
    tensors, metadata = read_safetensors(path)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise RunError(f"{path}: {len(bad)} of {len(tensors)} tensors hold NaN or Inf values "
                       f"(first: {bad[0]!r}); the run diverged or the file is damaged")
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise RunError(f"{path}: does not fit the network in config.json "
                       f"({str(e).splitlines()[0]})") from None
    return metadata


# --------------------------------------------------------------------------- reading a run
def check_run_dir(run_dir: str | os.PathLike[str]) -> Path:
    path = Path(run_dir)
    if not path.exists():
        raise RunError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise RunError(f"{path} is not a run directory (not a folder)")
    if not (path / CONFIG).is_file():
        raise RunError(f"{path / CONFIG}: missing; {path} is not a noisecraft run directory")
    return path


def read_config(run_dir: str | os.PathLike[str]) -> RunConfig:
    path = check_run_dir(run_dir) / CONFIG
    return RunConfig.from_dict(read_json(path), source=str(path))


def read_state(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = checkpoint_file(run_dir, STATE)
    state = read_json(path)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise RunError(f"{path}: not a noisecraft training state (no integer 'step')")
    return state


def check_step(path: Path, metadata: Mapping[str, str], step: int) -> None:
    """A checkpoint file must belong to the step in state.json (see the module docstring)."""
    if metadata.get("step") != str(step):
        raise RunError(f"{path}: holds step {metadata.get('step')!r} but state.json says step "
                       f"{step}; the checkpoint was interrupted while being saved")


def has_checkpoint(run_dir: str | os.PathLike[str]) -> bool:
    return (Path(run_dir) / STATE).is_file()


# --------------------------------------------------------------------------- load_run
@dataclass
class LoadedRun:
    """A trained run, ready to sample: what :func:`load_run` returns."""

    run_dir: Path
    config: RunConfig
    net: nn.Module
    denoiser: Any  # noisecraft.Denoiser
    schedule: Any  # noisecraft.Schedule
    preprocess: Any  # noisecraft.data.Preprocess
    step: int

    @property
    def num_classes(self) -> int | None:
        return self.config.data.num_classes

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's shape in model space: (C, H, W) or (D,)."""
        return tuple(self.preprocess.shape)

    def default_labels(self, n: int) -> np.ndarray | None:
        """Labels 0, 1, …, K−1, 0, 1, … for a class-conditional run; None otherwise."""
        if self.num_classes is None:
            return None
        return np.arange(n, dtype=np.int64) % self.num_classes

    @torch.no_grad()
    def generate_tensor(self, n: int, sampler: str = "ddim", steps: int = 50, seed: int = 0,
                        batch_size: int = 256, callback: Callable[..., Any] | None = None,
                        labels: np.ndarray | None = None,
                        device: str | torch.device | None = None) -> torch.Tensor:
        """``n`` samples in model space, float32 (n, *shape) on the CPU.

        Example i is drawn with the noise stream of index i under ``seed`` whatever the batch
        size. ``callback(i, t, x_t, x0_hat)`` is called for the first batch only.
        """
        from .samplers import sample

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (n,):
                raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
            if self.num_classes is None:
                raise ValueError(f"{self.run_dir} is not class-conditional; labels do not apply")
        dev = torch.device(device) if device is not None else next(self.net.parameters()).device
        self.net.to(dev)
        out = []
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            cond = {}
            if labels is not None:
                cond["labels"] = torch.as_tensor(labels[start:stop], dtype=torch.long, device=dev)
            x = sample(self.denoiser, (stop - start, *self.shape), self.schedule, sampler=sampler,
                       steps=steps,
                       seed=seed, seed_offset=start, device=dev,
                       callback=callback if start == 0 else None, **cond)
            out.append(x.float().cpu())
        return torch.cat(out)

    def generate(self, n: int, sampler: str = "ddim", steps: int = 50, seed: int = 0,
                 batch_size: int = 256, callback: Callable[..., Any] | None = None,
                 labels: np.ndarray | None = None) -> np.ndarray:
        """``n`` samples as the data's own kind: uint8 (N, H, W, C) pictures for image runs,
        float32 (N, D) vectors in data units for vector runs. See :meth:`generate_tensor`."""
        x = self.generate_tensor(n, sampler, steps, seed, batch_size, callback, labels)
        return self.to_output(x)

    def to_output(self, x: torch.Tensor) -> np.ndarray:
        """Model-space samples → uint8 pictures (images) or float32 data-unit vectors."""
        from .data import denormalize, to_uint8

        if self.preprocess.kind == "image":
            return to_uint8(x, self.preprocess)
        return denormalize(x, self.preprocess).numpy().astype(np.float32)


def build_denoiser(net: nn.Module, config: RunConfig) -> tuple[Any, Any]:
    """(Denoiser, Schedule) as config.json describes them."""
    from .denoiser import Denoiser
    from .schedule import Schedule

    schedule = Schedule.from_dict(config.schedule)
    clip = tuple(config.sampling.clip) if config.sampling.clip is not None else None
    return Denoiser(net, schedule, config.prediction, clip=clip), schedule


# A reader racing a writer that saves every step retries this often before it gives up.
READ_ATTEMPTS = 40


def _commit_signature(path: Path) -> tuple[Any, ...]:
    """What a save changes when it starts (``.previous/``) and commits (``state.json``'s inode)."""
    try:
        st = os.stat(path / STATE)
        state: Any = (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        state = None
    return state, (path / PREVIOUS).exists(), (path / PREVIOUS / JOURNAL).exists()


def read_committed(run_dir: str | os.PathLike[str], read: Callable[[], Any]) -> Any:
    """``read()`` of one committed checkpoint while a writer may be saving the next.

    Readers take no lock (they may not be allowed to write the directory). ``read`` checks
    every file it takes against ``state.json``'s step, so a mix of two checkpoints raises; a
    RunError raised while a save started or committed, or while the writer lock is held, is
    such a race and the read is retried (bounded). Otherwise the error is real and raised.
    """
    from .lock import writer_active

    path = Path(run_dir)
    for attempt in range(READ_ATTEMPTS):
        before = _commit_signature(path)
        try:
            return read()
        except RunError:
            raced = _commit_signature(path) != before or writer_active(path)
            if not raced or attempt == READ_ATTEMPTS - 1:
                raise
        time.sleep(min(0.005 * (attempt + 1), 0.1))
    raise AssertionError("unreachable")


def load_run(run_dir: str | os.PathLike[str], use_ema: bool = True,
             device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild a trained model from its run directory (no pickle, no code execution).

    ``use_ema`` picks ``ema.safetensors`` (the default, what samples look best with) over
    ``model.safetensors``. A missing or foreign directory, or a corrupt file, raises
    :class:`RunError` naming the file. While a trainer saves into the run, the last committed
    checkpoint is read (:func:`read_committed`).
    """
    return read_committed(run_dir, lambda: _load_run(run_dir, use_ema, device))


def _load_run(run_dir: str | os.PathLike[str], use_ema: bool,
              device: str | torch.device) -> LoadedRun:
    from . import nets
    from .data import Preprocess

    device = check_device(device)
    path = check_run_dir(run_dir)
    config = read_config(path)
    state = read_state(path)
    try:
        net = nets.from_config(config.net)
    except (ValueError, TypeError) as e:
        raise RunError(f"{path / CONFIG}: bad 'net' entry ({e})") from None
    if config.data.preprocess is None:
        raise RunError(f"{path / CONFIG}: no data.preprocess record")
    try:
        preprocess = Preprocess.from_dict(config.data.preprocess)
        denoiser, schedule = build_denoiser(net, config)
    except (ValueError, TypeError) as e:
        raise RunError(f"{path / CONFIG}: {e}") from None
    weights = checkpoint_file(path, EMA_WEIGHTS if use_ema else MODEL)
    check_step(weights, load_weights(net, weights), state["step"])
    net.to(device).eval().requires_grad_(False)
    return LoadedRun(run_dir=path, config=config, net=net, denoiser=denoiser, schedule=schedule,
                     preprocess=preprocess, step=state["step"])
