"""``noisecraft data download``: fetch a dataset's canonical files and check published checksums.

The only place noisecraft touches the network, and only when asked. Each file is streamed to
``<name>.part`` while it is hashed, compared with the published md5/sha256, and only then moved
into place (os.replace), so a broken or forged download never looks like data. A redirect is
followed only to a URL the mirror itself could have been, and never from https to another
scheme. A file already
present with the right checksum is not fetched again.

- ``mnist``: the four original IDX gzip files (md5s from the MNIST page); the folder is then a
  valid ``--data`` spec.
- ``cifar10``: the "binary version" archive (md5 from the CIFAR page; never the pickled Python
  version). Its six ``.bin`` batches are read in memory, with no extraction to disk, and written
  as ``cifar10.npz`` (x_train/y_train/x_test/y_test uint8 + class names), a valid ``--data``
  spec; the archive is kept beside it.
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from ..io import atomic_write
from .tar import TarFormatError, iter_members

CHUNK = 1 << 20
TIMEOUT_S = 60
SAFE_SCHEMES = ("https", "file")
LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class RemoteFile:
    name: str
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class RemoteDataset:
    mirrors: tuple[str, ...]  # base URLs tried in order; a file's URL is base + name
    files: tuple[RemoteFile, ...]
    finish: Callable[[str], str] | None = None  # builds the loadable form, returns its path


def _cifar10_to_npz(folder: str) -> str:
    """cifar-10-binary.tar.gz → cifar10.npz: each record is 1 label byte + 3072 bytes R, G, B planes."""
    archive = os.path.join(folder, "cifar-10-binary.tar.gz")
    out = os.path.join(folder, "cifar10.npz")
    record = 1 + 3 * 32 * 32  # 10,000 records per batch in the real archive
    batches: dict[str, np.ndarray] = {}
    classes: list[str] = []
    try:
        for name, data in iter_members(archive):
            base = os.path.basename(name)
            if base.endswith(".bin"):
                if len(data) == 0 or len(data) % record:
                    raise DataError(f"{archive}: {name} has {len(data)} bytes, not a "
                                    f"whole number of {record}-byte records")
                batches[base] = np.frombuffer(data, np.uint8)
            elif base == "batches.meta.txt":
                classes = data.decode().split()
    except (OSError, TarFormatError, UnicodeDecodeError) as e:
        raise DataError(f"{archive}: cannot read archive: {e}") from None
    names = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
    missing = [n for ns in names.values() for n in ns if n not in batches]
    if missing:
        raise DataError(f"{archive}: missing {', '.join(missing)}")
    arrays = {}
    for split, files in names.items():
        raw = np.concatenate([batches[f] for f in files]).reshape(-1, record)
        arrays[f"y_{split}"] = raw[:, 0].astype(np.int64)
        arrays[f"x_{split}"] = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    if classes:
        arrays["classes"] = np.array(classes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(out, buf.getvalue())  # temp file created exclusively, never through a link
    return out


DATASETS: dict[str, RemoteDataset] = {
    "mnist": RemoteDataset(
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        files=(RemoteFile("train-images-idx3-ubyte.gz", md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
               RemoteFile("train-labels-idx1-ubyte.gz", md5="d53e105ee54ea40749a09fcbcd1e9432"),
               RemoteFile("t10k-images-idx3-ubyte.gz", md5="9fb629c4189551a2d022fa330f9573f3"),
               RemoteFile("t10k-labels-idx1-ubyte.gz", md5="ec29112dd5afa0611ce80d1b7f02629c")),
    ),
    "cifar10": RemoteDataset(
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        files=(RemoteFile("cifar-10-binary.tar.gz", md5="c32a1d4ab5d03f1284b67883e8d87530",
                          sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),),
        finish=_cifar10_to_npz,
    ),
}


def _digests(path: str) -> dict[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def checksum_problem(path: str, remote: RemoteFile) -> str | None:
    """None when every published checksum of ``remote`` matches the file, else what differs."""
    got = _digests(path)
    for kind in ("md5", "sha256"):
        want = getattr(remote, kind)
        if want is not None and got[kind] != want.lower():
            return f"{kind} {got[kind]} but the published {kind} is {want}"
    return None


def _open_part(dest: str) -> int:
    """``dest`` (a ``.part`` file) created anew: a leftover file or a symlink planted there is
    removed (unlinking a link never touches its target), then the file is created exclusively
    and without following links, so nothing outside the folder can be overwritten."""
    try:
        os.unlink(dest)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise DataError(f"{dest}: cannot remove the old partial download ({e.strerror})") from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(dest, flags, 0o666)
    except OSError as e:
        raise DataError(f"{dest}: cannot create the partial download ({e.strerror}); another "
                        "download into this folder at the same time?") from None


def check_mirror(url: str, allow_insecure: bool = False) -> None:
    """Only https (and file:// or http://localhost for a local mirror) unless ``allow_insecure``:
    the checksums stop a forged file, but plain http leaks what is fetched and invites tampering."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in SAFE_SCHEMES or (scheme == "http" and parts.hostname in LOOPBACK):
        return  # http to this machine itself is a local mirror too
    if scheme not in ("http", "ftp") or not allow_insecure:
        raise ValueError(f"--mirror {url}: scheme {scheme or '(none)'!r} refused; use https:// or "
                         "file:// (or http/ftp with --allow-insecure-mirror)")


class RedirectRefused(DataError):
    """A mirror redirected to a URL that the mirror itself could not have been (module docs)."""


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL that ``check_mirror`` would accept, and never from https
    to anything else: a downgrade hands the request to whoever sits on the path, which the
    https mirror was chosen to avoid (``--allow-insecure-mirror`` does not change that)."""

    def __init__(self, allow_insecure: bool):
        super().__init__()
        self.allow_insecure = allow_insecure

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        old, new = req.full_url, urllib.parse.urljoin(req.full_url, newurl)
        if (urllib.parse.urlsplit(old).scheme.lower() == "https"
                and urllib.parse.urlsplit(new).scheme.lower() != "https"):
            raise RedirectRefused(f"{old} redirects to {new}: a redirect from https to another "
                                  "scheme is refused; use a mirror that stays on https")
        try:
            check_mirror(new, self.allow_insecure)
        except ValueError as e:
            raise RedirectRefused(f"{old} redirects to {new}, which is refused: "
                                  f"{str(e).split(': ', 1)[-1]}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, dest: str, allow_insecure: bool = False) -> None:
    fd = _open_part(dest)
    opener = urllib.request.build_opener(_CheckedRedirects(allow_insecure))
    try:
        with opener.open(url, timeout=TIMEOUT_S) as response, os.fdopen(fd, "wb") as f:
            fd = -1
            while chunk := response.read(CHUNK):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except RedirectRefused:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DataError(f"cannot download {url}: {e}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def download(name: str, folder: str, *, mirror: str | None = None,
             log: Callable[[str], None] = print, allow_insecure: bool = False) -> str:
    """Fetch dataset ``name`` into ``folder``; return the path to pass to `noisecraft.data.load`.

    ``mirror`` replaces the canonical base URL (a file is fetched from ``mirror/<file name>``);
    the published checksums are checked either way.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} to download; valid: {', '.join(sorted(DATASETS))}")
    remote = DATASETS[name]
    if mirror:
        check_mirror(mirror, allow_insecure)
    bases = (mirror,) if mirror else remote.mirrors
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise DataError(f"{folder} is a file, not a folder to download {name} into")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the download folder ({e.strerror})") from None
    for file in remote.files:
        path = os.path.join(folder, file.name)
        if os.path.isfile(path) and checksum_problem(path, file) is None:
            log(f"{path}: present, checksum ok")
            continue
        part = path + ".part"
        errors = []
        for base in bases:
            url = base.rstrip("/") + "/" + file.name
            log(f"downloading {url}")
            try:
                _fetch(url, part, allow_insecure)
            except DataError as e:
                errors.append(str(e))
                if os.path.isfile(part) and not os.path.islink(part):
                    os.unlink(part)  # what a failed fetch wrote is not data
                continue
            problem = checksum_problem(part, file)
            if problem is None:
                os.replace(part, path)
                log(f"{path}: checksum ok")
                break
            os.unlink(part)
            errors.append(f"{url}: checksum mismatch: {problem}")
        else:
            raise DataError(f"{file.name}: no good copy: " + "; ".join(errors))
    return remote.finish(folder) if remote.finish else folder
