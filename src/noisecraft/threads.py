"""How many CPU threads torch uses, for the command line and the Python API alike.

Measured on this project's 2-CPU machine (noisecraft train on digits, 40 steps at batch 64, and
noisecraft sample, 64 images by DDIM-20): while other processes used the CPUs, torch's default
of one intra-op thread per core was 2–3× slower than one thread, and up to 12× slower beside one
extra busy process (30× in the Python API on a loaded machine): an OpenMP team waits for a
thread that has no core. With both cores free a second thread gains at most 1.3× (the demo's
measurement), so on machines with at most SMALL_MACHINE_CPUS CPUs one thread is the default.

The CLI applies that default to every command (``--threads N`` overrides it). The Python API
applies it once, lazily, when :func:`noisecraft.load_run` or :class:`noisecraft.Trainer` is
first used — not on ``import noisecraft``, which changes nothing — and only if the thread count
is still the one torch had when noisecraft was imported (a count you set after the import is
kept). Call :func:`set_threads` to choose yourself; on larger machines, or with
``OMP_NUM_THREADS`` set, the default leaves torch alone.
"""

from __future__ import annotations

import os

import torch

from .checks import positive_int

SMALL_MACHINE_CPUS = 2

_at_import = torch.get_num_threads()
_settled = False  # set_threads was called, or the lazy default has been applied once


def default_threads() -> int | None:
    """1 on a machine with at most SMALL_MACHINE_CPUS CPUs, else None (torch's own default);
    None also when OMP_NUM_THREADS is set, which is the user's choice."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if cpus <= SMALL_MACHINE_CPUS else None


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads to ``n`` (None: :func:`default_threads`, which may leave
    torch's choice alone); returns the count in force. The API's lazy default then stays off."""
    global _settled
    if n is not None:
        positive_int("threads", n)
    _settled = True
    n = default_threads() if n is None else n
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def apply_default_threads() -> None:
    """The Python API's entry points call this: the CLI's default, once, unless the user chose."""
    global _settled
    if _settled:
        return
    _settled = True
    if torch.get_num_threads() == _at_import:
        n = default_threads()
        if n is not None:
            torch.set_num_threads(n)


__all__ = ["SMALL_MACHINE_CPUS", "apply_default_threads", "default_threads", "set_threads"]
