"""File I/O that every part of noisecraft shares: atomic writes, multi-file transactions, and
safetensors/JSON readers that never unpickle. Imports nothing from the rest of the package
except its error type, so the trainer, inference, viz and the CLI can all use it.

Every file is written to a temporary file in the same directory, fsynced and moved into place
with ``os.replace``, so a reader sees either the old file or the new one. A checkpoint is several
files, so saving one is a small transaction (:func:`atomic_write_many`):

1. every new file is written and fsynced as a temporary file (the slow part, where a crash or a
   full disk is likely; the old checkpoint is untouched);
2. the current files are hard-linked into ``.previous/`` and a journal listing the transaction's
   files is written there;
3. the new files are renamed into place with the last name (``state.json`` for a checkpoint)
   last: its rename is the commit point;
4. ``.previous/`` is removed.

A kill between the renames leaves ``.previous/`` with a last file identical to the one in
place: the save did not commit, and readers (:func:`checkpoint_file`) take the previous
versions from there, while the writer puts them back (:func:`recover`) before it continues.

Only what this protocol writes is trusted: a ``.previous`` that is a symlink or not a directory,
a journal that is not a non-empty list of distinct plain file names, or an entry that is not a
regular file is a RunError naming it, for readers and the writer alike, and nothing is changed
(no journal at all is the legitimate "backup interrupted" case and is dropped).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from .errors import NoisecraftError, RunError

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


class WriteError(NoisecraftError, OSError):
    """A file could not be written (no space, no permission, ...); the message names the file
    the user asked for, not a temporary one, and says that the previous version is intact."""


def _open_temp(directory: Path, name: str) -> tuple[int, Path]:
    """A new temp file ``.NAME.RANDOM.tmp``: created exclusively, never through a symlink, with
    mode 0666 less the umask (the kernel applies it; ``mkstemp`` would force 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{directory}: cannot create a temporary file for {name}")


def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    tmp: Path | None = None
    try:
        fd, tmp = _open_temp(directory, name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        why = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}.get(
            e.errno or 0, e.strerror or str(e))
        err = WriteError(f"{directory / name}: cannot write ({why}); any previous version of it "
                         "is intact")
        err.errno = e.errno  # str(err) stays the one line above
        raise err from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return tmp


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
    if not _plain_names(list(files)):
        raise ValueError(f"atomic_write_many takes plain, non-hidden file names, got {list(files)}")
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


def _previous(directory: Path) -> Path | None:
    """PREVIOUS inside ``directory``, or None when there is none. Anything but a real directory
    is refused, never followed: a symlink's target would be read as the run's checkpoint and its
    files renamed over the run's own."""
    prev = directory / PREVIOUS
    try:
        mode = os.lstat(prev).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise RunError(f"{prev}: cannot be read ({e.strerror or e})") from None
    if stat.S_ISLNK(mode):
        raise RunError(f"{prev}: is a symbolic link (to {os.readlink(prev)}), which noisecraft "
                       "does not follow; remove it if the files beside it are the checkpoint")
    if not stat.S_ISDIR(mode):
        raise RunError(f"{prev}: not a directory (noisecraft keeps the previous checkpoint "
                       "there while it saves); remove it if the files beside it are the checkpoint")
    return prev


def _journal(prev: Path) -> list[str] | None:
    """The file names the journal in ``prev`` covers, or None when there is no journal (the
    backup itself was interrupted; nothing was renamed yet). Any other journal is not one this
    module wrote (it never writes an empty list, a path or a dot name): following it could
    replace or delete files anywhere, and ignoring it could leave a half-renamed checkpoint in
    place, so it is a RunError naming it."""
    path = prev / JOURNAL
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RunError(f"{path}: cannot be read ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read()
    try:
        names = json.loads(raw.decode("utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        names = None
    if not _plain_names(names) or len(set(names)) != len(names):
        raise RunError(f"{path}: not a journal noisecraft wrote (it must list the saved files as "
                       f'{{"files": [plain names, ...]}}); the save it describes cannot be '
                       f"checked, so remove {prev} if the files beside it are the checkpoint")
    for name in names:
        try:
            mode = os.lstat(prev / name).st_mode
        except FileNotFoundError:  # the first save of a run has no previous version
            continue
        if not stat.S_ISREG(mode):
            raise RunError(f"{prev / name}: not a regular file; noisecraft does not follow it")
    return names


def _pending(directory: Path) -> list[str] | None:
    """The files of an interrupted, uncommitted save, or None when there is none."""
    prev = _previous(directory)
    names = None if prev is None else _journal(prev)
    if prev is None or names is None:
        return None
    commit = names[-1]
    old, new = prev / commit, directory / commit
    if old.is_file():
        committed = not new.is_file() or old.read_bytes() != new.read_bytes()
    else:
        committed = new.is_file()
    return None if committed else names


def _plain_names(names: Any) -> bool:
    """A non-empty list of plain file names inside the directory (no paths, no dot names)."""
    return (isinstance(names, list) and bool(names)
            and all(isinstance(n, str) and n and n == os.path.basename(n) and not n.startswith(".")
                    and "\0" not in n for n in names))


def checkpoint_file(run_dir: str | os.PathLike[str], name: str) -> Path:
    """Where to read checkpoint file ``name``: the previous version while a save is uncommitted."""
    directory = Path(run_dir)
    names = _pending(directory)
    if names is not None and name in names and (directory / PREVIOUS / name).is_file():
        return directory / PREVIOUS / name
    return directory / name


def recover(run_dir: str | os.PathLike[str]) -> None:
    """Finish what an interrupted save left: restore the previous checkpoint or drop the backup.

    A PREVIOUS that is not a plain directory, or a journal this module did not write, is a
    RunError naming it, and nothing is changed: which checkpoint is the real one is then the
    user's call."""
    directory = Path(run_dir)
    prev = _previous(directory)  # checked before anything is removed
    for stale in directory.glob(".*.tmp"):  # temp files of a save that was killed (_write_temp)
        stale.unlink(missing_ok=True)
    if prev is None:
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


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None
