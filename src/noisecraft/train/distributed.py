"""One process or many: the trainer runs unchanged under ``torchrun --nproc_per_node=N``.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with ``WORLD_SIZE > 1`` we join the
process group (NCCL when CUDA is present, gloo on CPU) and each rank drives one device. Only
rank 0 writes to the run directory; collectives here are the few the trainer needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import shard
from ..run import check_device


@dataclass(frozen=True)
class Context(shard.Ranks):
    """Where this process sits (``rank`` of ``world_size``, :class:`noisecraft.shard.Ranks`)
    and the ``device`` it drives."""

    device: torch.device = torch.device("cpu")


def setup(device: str | torch.device | None = None) -> Context:
    """Join the process group when launched by torchrun; pick the device.

    ``device=None`` means CUDA (``cuda:LOCAL_RANK``) when available, else CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        dev = check_device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return Context(rank=0, world_size=1, local_rank=0, device=dev)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                   device=dev, owns_group=owns)


def teardown(ctx: Context, wait: bool = False) -> None:
    """Destroy the process group this process created. ``wait`` (after a run that ended well):
    first a barrier, so no rank destroys the group while another still talks to it — a gloo
    rank can abort then ("terminate called without an active exception", seen once in CI's
    torchrun test). Not after an error: the other ranks may never reach the barrier."""
    if ctx.owns_group and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def mean_over_ranks(values: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The element-wise mean of ``values`` over all ranks (a copy; ``values`` is untouched)."""
    out = values.detach().clone().to(ctx.device, torch.float64 if ctx.device.type == "cpu"
                                      else torch.float32)
    if ctx.distributed:
        dist.all_reduce(out)
        out /= ctx.world_size
    return out.cpu()


def gather_bytes(blob: bytes, ctx: Context) -> list[bytes]:
    """Every rank's ``blob``, in rank order (all ranks call it; blobs may differ in length)."""
    return shard.gather_bytes(blob, shard.Ranks(ctx.rank, ctx.world_size, ctx.local_rank))


def all_gather_tensors(tensors: list[torch.Tensor], ctx: Context) -> list[torch.Tensor]:
    """Each tensor concatenated over all ranks along dim 0, in rank order (equal shapes on every
    rank; all ranks call it)."""
    if not ctx.distributed:
        return [t.detach() for t in tensors]
    out = []
    for t in tensors:
        parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
        dist.all_gather(parts, t.detach().contiguous())
        out.append(torch.cat(parts))
    return out
