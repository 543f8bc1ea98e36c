"""Size bounds checked before allocating: a small or hostile file must not make a reader
allocate what its header claims before that claim has been checked against the file.

- A stored array (``.npy``, an ``.npz`` member, an IDX file) may not claim more bytes than the
  file can hold: its own size when stored raw, ``DEFLATE_MAX_RATIO`` times its compressed size
  when deflated (the format's own ceiling, 1032:1), and never more than this machine's memory.
- A tar member (shards, archives) holds at most ``MAX_MEMBER_BYTES``: shards carry one picture
  or clip per member, and a gzip shard can inflate a member to any size from a few KiB.
"""

from __future__ import annotations

import os

from ..errors import DataError

DEFLATE_MAX_RATIO = 1032
MAX_MEMBER_BYTES = 1 << 30  # 1 GiB: ~15 min of 48 kHz stereo float WAV, a 16k×16k PNG


def physical_memory() -> int | None:
    """This machine's RAM in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def human(n: int | float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_claim(where: str, claimed: int, *, available: int, compressed: bool = False) -> None:
    """Refuse a header's ``claimed`` byte count that the ``available`` stored bytes cannot hold
    (``compressed``: deflated bytes, at most DEFLATE_MAX_RATIO× larger) or memory cannot hold."""
    ceiling = available * DEFLATE_MAX_RATIO if compressed else available
    if claimed > ceiling:
        raise DataError(f"{where}: the header claims {human(claimed)} of data, but the "
                        f"{'compressed ' if compressed else ''}file holds only {human(available)}"
                        f"{' (at most ' + human(ceiling) + ' inflated)' if compressed else ''}: "
                        "truncated, corrupt or forged")
    memory = physical_memory()
    if memory is not None and claimed > memory:
        raise DataError(f"{where}: the header claims {human(claimed)} of data, more than this "
                        f"machine's {human(memory)} of memory")

