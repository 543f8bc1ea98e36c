"""Files noisecraft writes get mode 0666 less the umask, like any other tool's (mkstemp's 0600
would keep a teammate from reading a run, a sample grid or metrics.json), and downloads never
write through a link planted at their partial file."""

import os
import stat

import pytest

from noisecraft import DataError
from noisecraft import io as ncio
from noisecraft.data import download as dl
from train_helpers import train, vector_config


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_respect_the_umask(tmp_path, umask):
    ncio.atomic_write(tmp_path / "a.json", "{}")
    ncio.atomic_write_many(tmp_path, {"b.bin": b"1", "c.json": b"{}"})
    for name in ("a.json", "b.bin", "c.json"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name


def test_every_file_of_a_run_has_the_umask_mode(tmp_path, umask):
    config, dataset = vector_config(steps=2, log_every=1)
    train(tmp_path / "run", config, dataset)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "state.json", "log.jsonl",
                                       "model.safetensors", "ema.safetensors"}
    for p in files:
        if "tensorboard" not in p.parts:  # TensorBoard's own writer
            assert mode(p) == 0o666 & ~umask, p


def test_a_symlink_planted_at_the_part_file_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    served = tmp_path / "served"
    served.mkdir()
    name = dl.DATASETS["mnist"].files[0].name
    (served / name).write_bytes(b"not the real file")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(victim, dest / f"{name}.part")
    with pytest.raises(DataError, match="checksum mismatch"):
        dl.download("mnist", str(dest), mirror=served.as_uri(), log=lambda s: None)
    assert victim.read_text() == "precious"
    assert not (dest / f"{name}.part").exists()


@pytest.mark.parametrize("url", ["http://example.com/", "ftp://example.com/", "gopher://x/",
                                 "example.com/mnist/"])
def test_only_https_and_local_mirrors_unless_opted_in(url, tmp_path):
    with pytest.raises(ValueError, match="refused"):
        dl.download("mnist", str(tmp_path), mirror=url, log=lambda s: None)
    if url.startswith(("http:", "ftp:")):
        dl.check_mirror(url, allow_insecure=True)
    for ok in ("https://example.com/", "file:///srv/mnist/", "http://127.0.0.1:8000/"):
        dl.check_mirror(ok)


def test_wav_files_and_metric_caches_respect_the_umask(tmp_path, umask):
    import numpy as np

    from noisecraft.cache import load_arrays, save_arrays
    from noisecraft.data.audio import write_wav

    write_wav(tmp_path / "a.wav", np.zeros(100, dtype=np.float32), 8000)
    save_arrays(tmp_path / "stats.safetensors", {"mu": np.arange(3.0)}, {"n": 3})
    for name in ("a.wav", "stats.safetensors"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name
    arrays, meta = load_arrays(tmp_path / "stats.safetensors")
    assert arrays["mu"].tolist() == [0.0, 1.0, 2.0] and meta == {"n": 3}
