"""Inference over many ranks: ``sample``, ``evaluate`` and ``nll`` under ``torchrun``.

The examples 0, …, n−1 are cut into the batches a single process would run,
[0, B), [B, 2B), …; rank r of W runs batches r, r + W, r + 2W, … and rank 0 gathers the results
in example order. A batch is computed exactly as one process computes it — the same examples,
the same per-example seeds (``seed_offset`` = the batch's first index) — so the gathered result
equals one process's bit for bit, whatever W (tests/test_shard.py checks it under 2-process gloo).

Imports nothing from ``noisecraft.train``: inference stands alone (tests/test_layout.py).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place: ``rank`` of ``world_size``; ``owns_group`` when :func:`join`
    started the process group (and :func:`leave` should end it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def join(device: str | torch.device = "cpu") -> Ranks:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (NCCL for CUDA, else gloo).

    One process (no torchrun) gets ``Ranks()``; nothing is initialised.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return Ranks()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.device(device).type == "cuda" else "gloo")
        owns = True
    return Ranks(dist.get_rank(), dist.get_world_size(), local, owns)


def leave(ranks: Ranks) -> None:
    if ranks.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str | torch.device = "cpu") -> Iterator[Ranks]:
    """:func:`join` for the ``with`` block, then :func:`leave`, however the block ends: the one
    wrapper of every command that shards its work under torchrun."""
    ranks = join(device)
    try:
        yield ranks
    finally:
        leave(ranks)


def local_device(device: str | torch.device, ranks: Ranks) -> torch.device:
    """``cuda`` without an index means this rank's own GPU, ``cuda:LOCAL_RANK``."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and ranks.distributed:
        return torch.device("cuda", ranks.local_rank)
    return dev


def batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """The (start, stop) ranges one process runs: [0, B), [B, 2B), …, the last one shorter."""
    if n < 0 or batch_size < 1:
        raise ValueError(f"need n >= 0 and batch_size >= 1, got n={n!r}, batch_size={batch_size!r}")
    return [(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]


def my_batches(n: int, batch_size: int, ranks: Ranks) -> list[tuple[int, int]]:
    """This rank's share of :func:`batches`: every ``world_size``-th, from ``rank`` on."""
    return batches(n, batch_size)[ranks.rank::ranks.world_size]


def _device_for_collectives() -> torch.device:
    # NCCL moves CUDA tensors only; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_bytes(blob: bytes, ranks: Ranks) -> list[bytes]:
    """Every rank's ``blob``, in rank order (all ranks call it; blobs may differ in length)."""
    if not ranks.distributed:
        return [blob]
    dev = _device_for_collectives()
    n = torch.tensor([len(blob)], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(ranks.world_size)]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    buf = torch.zeros(max(longest, 1), dtype=torch.uint8, device=dev)
    if blob:
        buf[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(dev)
    bufs = [torch.zeros_like(buf) for _ in range(ranks.world_size)]
    dist.all_gather(bufs, buf)
    return [bytes(b[: int(s.item())].cpu().numpy().tobytes()) for b, s in zip(bufs, sizes, strict=True)]


def _to_bytes(parts: dict[int, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{str(start): a for start, a in parts.items()})
    return buf.getvalue()


def _from_bytes(blob: bytes) -> dict[int, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as f:   # arrays only, never objects
        return {int(k): f[k] for k in f.files}


def gather(parts: dict[int, np.ndarray], n: int, ranks: Ranks) -> np.ndarray | None:
    """Rank 0 gets the concatenation of every rank's ``{start: rows}`` in example order (n rows
    in all); the other ranks get None."""
    blobs = gather_bytes(_to_bytes(parts), ranks)
    if not ranks.is_main:
        return None
    everything: dict[int, np.ndarray] = {}
    for blob in blobs:
        everything.update(_from_bytes(blob))
    out = np.concatenate([everything[start] for start in sorted(everything)])
    if len(out) != n:
        raise RuntimeError(f"gathered {len(out)} rows from {ranks.world_size} ranks, expected {n}")
    return out


def map_batches(fn: Callable[[int, int], torch.Tensor | np.ndarray], n: int, batch_size: int,
                ranks: Ranks) -> np.ndarray | None:
    """``fn(start, stop)`` over this rank's batches, gathered on rank 0 in example order.

    ``fn`` must compute rows start..stop−1 from their indices alone (per-example seeds), so the
    result is one process's whatever the number of ranks.
    """
    parts = {}
    for start, stop in my_batches(n, batch_size, ranks):
        out = fn(start, stop)
        parts[start] = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return gather(parts, n, ranks)


def iter_batches(items: Iterator, batch_size: int, ranks: Ranks) -> Iterator[tuple[int, list]]:
    """(start, items) for this rank's batches of an iterable read in order by every rank."""
    chunk: list = []
    start = 0
    index = 0
    for item in items:
        chunk.append(item)
        if len(chunk) == batch_size:
            if index % ranks.world_size == ranks.rank:
                yield start, chunk
            start, index, chunk = start + batch_size, index + 1, []
    if chunk and index % ranks.world_size == ranks.rank:
        yield start, chunk


def generate(run: object, n: int, *, batch_size: int, ranks: Ranks,
             labels: np.ndarray | None = None, prompts: list[str] | None = None,
             **options: object) -> np.ndarray | None:
    """``run.generate(n, ...)`` sharded: rank 0 gets the same pictures (or spectrograms, or
    data-unit vectors) as one process, the other ranks None. ``options`` go to
    :meth:`~noisecraft.run.LoadedRun.generate_tensor` (sampler, steps, seed, guidance, …);
    ``labels`` and ``prompts`` are per example and are cut with the batches. Under torchrun the
    progress bar is off (one bar per rank's batch would interleave)."""
    if not ranks.distributed:
        return run.generate(n, batch_size=batch_size, labels=labels, prompts=prompts,  # type: ignore[attr-defined]
                            **options)
    options["progress"] = False

    def one_batch(start: int, stop: int) -> torch.Tensor:
        return run.generate_tensor(  # type: ignore[attr-defined]
            stop - start, batch_size=batch_size, offset=start,
            labels=None if labels is None else labels[start:stop],
            prompts=None if prompts is None else list(prompts[start:stop]), **options)

    x = map_batches(one_batch, n, batch_size, ranks)
    return None if x is None else run.to_output(torch.from_numpy(x))  # type: ignore[attr-defined]
