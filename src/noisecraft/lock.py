"""One writer per run directory: an exclusive ``flock`` on ``RUN_DIR/.lock``, held for as long
as the writer (the trainer, the autoencoder trainer, …) runs.

``flock`` locks belong to the open file, so the kernel drops them when the holder exits in any
way, ``kill -9`` included: a lock is never stale and nobody has to clean it up. The file itself
stays (removing it would let a late opener lock an unlinked inode while a new writer locks a new
file); it only holds the last holder's pid, host, start time and command, for the message a
second writer gets. Readers never take this lock (they may not be allowed to write the
directory); ``load_run`` verifies what it read instead (see ``noisecraft.run``).

Advisory locks need a filesystem that implements ``flock`` across clients: local disks do, and
so does NFSv4 (Linux emulates ``flock`` with byte-range locks there).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from .errors import RunError

LOCK = ".lock"
# A reader probing whether a writer is active holds a shared lock for microseconds; a starting
# writer retries that long before it concludes that another writer holds the run.
_RETRY_S = 0.2


class RunLockedError(RunError):
    """Another process is writing this run directory; the message names it and the holder."""


def _holder_text(path: Path) -> str:
    """The holder recorded in the lock file, in words (best effort: the file is advisory)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return (f"pid {int(info['pid'])} on {info['host']} since {since} "
                f"({str(info.get('command', '?'))[:80]})")
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return "another process"


class RunLock:
    """The writer's lock on ``run_dir``: ``with RunLock(run_dir): ...`` or acquire()/release().

    ``acquire`` raises :class:`RunLockedError` at once when another process holds it.
    """

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:  # no O_TRUNC: the holder's record must survive a refused opener
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise RunError(f"{self.path}: cannot open the run's lock file ({e.strerror})") from None
        deadline = time.monotonic() + _RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                os.close(fd)
                raise RunLockedError(f"{self.run_dir} is being written by {_holder_text(self.path)};"
                                     " one writer at a time (wait for it, or stop it)") from None
            except OSError as e:
                os.close(fd)
                raise RunError(f"{self.path}: cannot lock the run directory ({e.strerror})") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(sys.argv)}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError:
            pass  # the record only improves another writer's message; the lock is what counts
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def writer_active(run_dir: str | os.PathLike[str]) -> bool:
    """Whether some process holds ``run_dir``'s writer lock now (a reader's probe: it opens the
    lock file read-only, so it works on runs the reader may not write)."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's shared lock
    return False
