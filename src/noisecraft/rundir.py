"""The run-directory format: file names, reading config.json and state.json, loading weights,
and reading one committed checkpoint while a trainer may be saving the next. Inference
(:mod:`noisecraft.run`) and the trainer both build on it; it knows nothing of either.

A run directory holds

    config.json            RunConfig (see ``noisecraft.config``): rebuilds net, schedule, data transform
    model.safetensors      the trained weights
    ema.safetensors        their exponential moving average (what sampling uses by default)
    optimizer.safetensors  AdamW's state, flattened to tensors + JSON metadata
    state.json             step, RNG states, LR-schedule and data-order positions
    log.jsonl              one JSON object per logged step
    samples/               sample grids written during training
    phema.safetensors      power-function EMA profiles (``--ema-profiles``; noisecraft.posthoc)
    phema-STEP*.safetensors  their snapshots (``--snapshot-every``), for post-hoc EMA
    .lock                  the writer's lock (``noisecraft.lock``): one trainer at a time

A checkpoint is saved as one transaction of ``noisecraft.io`` with ``state.json`` last (the
commit point). Each safetensors file also records its step and loading checks it against
``state.json``, so a mixed checkpoint can never load silently. Nothing is ever unpickled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
