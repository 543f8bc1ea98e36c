"""What only the trainer writes: AdamW's state as safetensors and generator states as JSON text.

The run-directory layout, the atomic transactions and the readers live in ``noisecraft.run``
and ``noisecraft.io``, which inference uses without importing the trainer.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import numpy as np
import torch

from ..errors import RunError
from ..io import atomic_write, read_safetensors, tensors_to_bytes


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


# --------------------------------------------------------------------------- log.jsonl
def truncate_log(path: os.PathLike[str] | str, step: int) -> None:
    """Drop the log lines written after the checkpoint at ``step`` (by the run that was
    interrupted), so a resumed run never logs a step twice; a line cut short by a crash, or one
    that is not one of our records (a JSON object with an integer ``step``), is dropped too."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f.read().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) \
                    and record["step"] <= step:
                kept.append(line)
    atomic_write(path, "".join(f"{line}\n" for line in kept))
