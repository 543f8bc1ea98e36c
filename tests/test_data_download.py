"""Downloads against a local HTTP server on 127.0.0.1 serving files the test writes."""

import email.message
import functools
import hashlib
import io
import os
import re
import shutil
import tarfile
import threading
import urllib.request
import urllib.response
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from noisecraft import DataError
from noisecraft.cli import main
from noisecraft.data import download as dl
from noisecraft.data import load


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL): http.server in a thread, bound to 127.0.0.1 only."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    thread.join()


def test_mnist_download_checks_the_canonical_md5s(server, tmp_path, shared_data, capsys):
    root, url = server
    for f in dl.DATASETS["mnist"].files:  # the shared copies are byte-identical to the originals
        shutil.copy(os.path.join(shared_data, "mnist", f.name), root / f.name)
    dest = tmp_path / "dest"
    assert main(["data", "download", "mnist", str(dest), "--mirror", url]) == 0
    assert f"--data {dest}" in capsys.readouterr().out
    assert len(load(str(dest), split="test")) == 10_000
    assert not list(dest.glob("*.part"))
    # A second run finds the files intact and fetches nothing (the server is gone from the list).
    for f in root.iterdir():
        f.unlink()
    assert main(["data", "download", "mnist", str(dest), "--mirror", url]) == 0
    assert "present, checksum ok" in capsys.readouterr().out


def test_checksum_mismatch_is_refused_and_nothing_kept(server, tmp_path, capsys):
    root, url = server
    for f in dl.DATASETS["mnist"].files:
        (root / f.name).write_bytes(b"forged " + f.name.encode())
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*checksum mismatch.*md5"):
        dl.download("mnist", str(dest), mirror=url, log=lambda s: None)
    assert list(dest.iterdir()) == []
    assert main(["data", "download", "mnist", str(dest), "--mirror", url]) == 2
    assert "noisecraft: error:" in capsys.readouterr().err


def test_missing_file_on_server(server, tmp_path):
    _, url = server
    with pytest.raises(DataError, match=r"cannot download .*t(rain|10k).*404"):
        dl.download("mnist", str(tmp_path / "d"), mirror=url, log=lambda s: None)
    assert os.listdir(tmp_path / "d") == []


def fake_cifar_archive(path, n=20):
    """A small archive in the CIFAR binary layout (n records per batch instead of 10,000):
    records of one label byte + R, G, B planes."""
    rng = np.random.default_rng(0)
    truth = {}
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for name in names + ["batches.meta.txt"]:
            if name.endswith(".bin"):
                labels = rng.integers(0, 10, n, dtype=np.uint8)
                planes = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
                data = np.concatenate([labels[:, None], planes.reshape(n, -1)], 1).tobytes()
                truth[name] = (labels, planes)
            else:
                data = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n"
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return truth


def test_cifar10_binary_becomes_a_loadable_npz(server, tmp_path, monkeypatch):
    root, url = server
    truth = fake_cifar_archive(root / "cifar-10-binary.tar.gz")
    data = (root / "cifar-10-binary.tar.gz").read_bytes()
    fake = dl.RemoteFile("cifar-10-binary.tar.gz", md5=hashlib.md5(data).hexdigest(),
                         sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(dl.DATASETS, "cifar10", dl.RemoteDataset(
        mirrors=(url,), files=(fake,), finish=dl._cifar10_to_npz))
    path = dl.download("cifar10", str(tmp_path / "c"), log=lambda s: None)
    test = load(path, split="test")
    labels, planes = truth["test_batch.bin"]
    assert len(test) == 20 and test.info["classes"][3] == "cat" and test.info["num_classes"] == 10
    item = test[17]
    assert item["label"] == labels[17]
    np.testing.assert_allclose(item["x"].numpy(), planes[17] / 127.5 - 1, atol=1e-6)
    train = load(path)
    assert len(train) == 100 and train[20]["label"] == truth["data_batch_2.bin"][0][0]


def test_published_checksums_are_recorded():
    cifar = dl.DATASETS["cifar10"].files[0]
    assert cifar.md5 == "c32a1d4ab5d03f1284b67883e8d87530" and len(cifar.sha256) == 64
    assert all(len(f.md5) == 32 for f in dl.DATASETS["mnist"].files)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*cifar10, mnist"):
        dl.download("imagenet", "x")


class _Requests(_QuietHandler):
    seen: list = []

    def do_GET(self):
        self.seen.append(self.path)
        super().do_GET()


def test_an_https_mirror_that_redirects_to_http_is_refused(tmp_path, monkeypatch, capsys):
    """The https mirror is faked inside urllib (no TLS server here): its transport answers 302
    with a Location on a real local http server, and urllib's own redirect machinery runs. The
    http server must never be asked, and the one error line names both URLs."""
    root = tmp_path / "served"
    root.mkdir()
    for f in dl.DATASETS["mnist"].files:  # good files: following the redirect would succeed
        (root / f.name).write_bytes(b"x")
    _Requests.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Requests, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    plain = f"http://127.0.0.1:{httpd.server_address[1]}/"

    class RedirectingHTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):
            name = req.full_url.rsplit("/", 1)[1]
            headers = email.message.Message()
            headers["Location"] = plain + name
            response = urllib.response.addinfourl(io.BytesIO(b""), headers, req.full_url, 302)
            response.msg = "Found"
            return response

    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(urllib.request, "HTTPSHandler", RedirectingHTTPS)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen's cached opener, if any
    mirror = "https://mirror.example/mnist/"
    first = dl.DATASETS["mnist"].files[0].name
    try:
        with pytest.raises(DataError, match=re.escape(f"{mirror}{first} redirects to {plain}{first}")):
            dl.download("mnist", str(tmp_path / "d"), mirror=mirror, log=lambda s: None)
        rc = main(["data", "download", "mnist", str(tmp_path / "d"), "--mirror", mirror,
                   "--allow-insecure-mirror"])  # allowing http mirrors does not allow a downgrade
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"{mirror}{first}" in err and f"{plain}{first}" in err and "https" in err, err
        assert _Requests.seen == []
        assert os.listdir(tmp_path / "d") == []  # no partial download left behind
    finally:
        httpd.shutdown()
        thread.join()
