"""Run directories on disk: safetensors and JSON only, every write atomic.

A run directory holds

    config.json            RunConfig (see ``config.py``): rebuilds net, schedule, data transform
    model.safetensors      the trained weights
    ema.safetensors        their exponential moving average (what sampling uses by default)
    optimizer.safetensors  AdamW's state, flattened to tensors + JSON metadata
    state.json             step, RNG states, LR-schedule and data-order positions
    log.jsonl              one JSON object per logged step
    samples/               sample grids written during training

Every file is written to a temporary file in the same directory, fsynced and moved into place
with ``os.replace``, so a reader sees either the old file or the new one. A checkpoint is several
files, so saving one is a small transaction (:func:`atomic_write_many`):

1. every new file is written and fsynced as a temporary file (the slow part, where a crash or a
   full disk is likely; the old checkpoint is untouched);
2. the current files are hard-linked into ``.previous/`` and a journal listing the transaction's
   files is written there;
3. the new files are renamed into place with ``state.json`` last: its rename is the commit point;
4. ``.previous/`` is removed.

A kill between the renames leaves ``.previous/`` with a ``state.json`` identical to the one in
place: the save did not commit, and readers (:func:`checkpoint_file`) take the previous
checkpoint's files from there, while the trainer puts them back (:func:`recover`) before it
resumes. Each safetensors file also records its step and loading checks it against
``state.json``, so a mixed checkpoint can never load silently. Nothing is ever unpickled.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from ..errors import RunError
from .config import RunConfig

CONFIG = "config.json"
MODEL = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
LOG = "log.jsonl"
SAMPLES = "samples"
FORMAT = "noisecraft"
PREVIOUS = ".previous"       # the last committed checkpoint while a new one is renamed in
JOURNAL = "journal.json"     # inside PREVIOUS: the transaction's file names, written last


# --------------------------------------------------------------------------- atomic files
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = _write_temp(path.parent, path.name, payload)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_many(directory: str | os.PathLike[str], files: Mapping[str, bytes]) -> None:
    """Write several files as one transaction (module docstring); the last name commits it."""
    directory = Path(directory)
    recover(directory)
    temps: list[tuple[Path, str]] = []
    try:
        for name, data in files.items():
            temps.append((_write_temp(directory, name, data), name))
        _keep_previous(directory, [name for _, name in temps])
        for tmp, name in temps:
            os.replace(tmp, directory / name)
        _fsync_dir(directory)
        shutil.rmtree(directory / PREVIOUS)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
    _fsync_dir(directory)


def _keep_previous(directory: Path, names: list[str]) -> None:
    """Hard-link the current versions of ``names`` into PREVIOUS, then write the journal."""
    prev = directory / PREVIOUS
    shutil.rmtree(prev, ignore_errors=True)
    prev.mkdir()
    for name in names:
        if (directory / name).is_file():
            try:
                os.link(directory / name, prev / name)
            except OSError:  # a filesystem without hard links: copy (and fsync) instead
                shutil.copyfile(directory / name, prev / name)
                with open(prev / name, "rb+") as f:
                    os.fsync(f.fileno())
    _fsync_dir(prev)
    atomic_write(prev / JOURNAL, json.dumps({"files": names}))


def _pending(directory: Path) -> list[str] | None:
    """The files of an interrupted, uncommitted save, or None when there is none."""
    prev = directory / PREVIOUS
    try:
        names = json.loads((prev / JOURNAL).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no journal: the backup itself was interrupted; nothing was renamed yet
    commit = names[-1]
    old, new = prev / commit, directory / commit
    if old.is_file():
        committed = not new.is_file() or old.read_bytes() != new.read_bytes()
    else:
        committed = new.is_file()
    return None if committed else names


def checkpoint_file(run_dir: str | os.PathLike[str], name: str) -> Path:
    """Where to read checkpoint file ``name``: the previous version while a save is uncommitted."""
    directory = Path(run_dir)
    names = _pending(directory)
    if names is not None and name in names and (directory / PREVIOUS / name).is_file():
        return directory / PREVIOUS / name
    return directory / name


def recover(run_dir: str | os.PathLike[str]) -> None:
    """Finish what an interrupted save left: restore the previous checkpoint or drop the backup."""
    directory = Path(run_dir)
    for stale in directory.glob(".*.tmp"):  # temp files of a save that was killed (_write_temp)
        stale.unlink(missing_ok=True)
    prev = directory / PREVIOUS
    if not prev.is_dir():
        return
    names = _pending(directory)
    for name in names or []:
        if (prev / name).is_file():
            os.replace(prev / name, directory / name)
        else:  # the first save of the run: there was no previous version
            (directory / name).unlink(missing_ok=True)
    _fsync_dir(directory)
    shutil.rmtree(prev)


# --------------------------------------------------------------------------- tensors
def tensors_to_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return safetensors_save(cpu, metadata={"format": FORMAT, **metadata})


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; anything unreadable is a RunError naming it."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: missing")
    data = path.read_bytes()
    try:
        header_len = int.from_bytes(data[:8], "little")
        if len(data) < 8 or header_len > len(data) - 8:
            raise ValueError("truncated header")
        header = json.loads(data[8:8 + header_len])
        metadata = header.get("__metadata__") or {}
        tensors = safetensors_load(data)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise RunError(f"{path}: not a readable safetensors file ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else 'corrupt'})") from None
    if metadata.get("format") != FORMAT:
        raise RunError(f"{path}: not written by noisecraft (no format=noisecraft metadata)")
    return tensors, metadata


def load_weights(net: nn.Module, path: str | os.PathLike[str]) -> dict[str, str]:
    """Load a weights file into ``net`` (strictly); returns the file's metadata."""
    tensors, metadata = read_safetensors(path)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise RunError(f"{path}: does not fit the network in config.json "
                       f"({str(e).splitlines()[0]})") from None
    return metadata


def optimizer_to_bytes(optimizer: torch.optim.Optimizer, step: int) -> bytes:
    """AdamW's ``state_dict`` as safetensors: per-parameter tensors named ``state.<i>.<key>``;
    non-tensor entries and ``param_groups`` travel as JSON in the metadata."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    meta = {"step": str(step), "param_groups": json.dumps(sd["param_groups"]),
            "scalars": json.dumps(scalars)}
    return tensors_to_bytes(tensors, meta)


def optimizer_state_from_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``state_dict`` that :func:`optimizer_to_bytes` flattened, and the file's metadata."""
    tensors, metadata = read_safetensors(path)
    try:
        groups = json.loads(metadata["param_groups"])
        scalars = json.loads(metadata["scalars"])
    except (KeyError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: optimizer metadata is missing or corrupt ({e})") from None
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in scalars.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for g in groups:
        if isinstance(g.get("betas"), list):  # JSON has no tuples; AdamW documents a tuple
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}, metadata


# --------------------------------------------------------------------------- RNG as JSON
def encode_rng(state: torch.Tensor) -> str:
    """A generator state (a uint8 tensor) as base64 text for state.json."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def decode_rng(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


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


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None


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
        from ..samplers import sample

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
        from ..data import denormalize, to_uint8

        if self.preprocess.kind == "image":
            return to_uint8(x, self.preprocess)
        return denormalize(x, self.preprocess).numpy().astype(np.float32)


def build_denoiser(net: nn.Module, config: RunConfig) -> tuple[Any, Any]:
    """(Denoiser, Schedule) as config.json describes them."""
    from ..denoiser import Denoiser
    from ..schedule import Schedule

    schedule = Schedule.from_dict(config.schedule)
    clip = tuple(config.sampling.clip) if config.sampling.clip is not None else None
    return Denoiser(net, schedule, config.prediction, clip=clip), schedule


def load_run(run_dir: str | os.PathLike[str], use_ema: bool = True,
             device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild a trained model from its run directory (no pickle, no code execution).

    ``use_ema`` picks ``ema.safetensors`` (the default, what samples look best with) over
    ``model.safetensors``. A missing or foreign directory, or a corrupt file, raises
    :class:`RunError` naming the file.
    """
    from .. import nets
    from ..data import Preprocess
    from .distributed import check_device

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
