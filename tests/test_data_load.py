"""The spec resolver: one function, one reader per format, clear refusals."""

import io
import tarfile
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from noisecraft import DataError
from noisecraft.data import BUILTIN_NAMES, load
from noisecraft.data.__init__ import resolve_format
from noisecraft.data.toy import load_toy


def write_wav_tar(path):
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("a.wav")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"RIFF"))


def test_each_spec_goes_to_its_reader(tmp_path, shared_data):
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "pics" / "a.png")
    np.save(tmp_path / "x.npy", np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "sounds").mkdir()
    (tmp_path / "sounds" / "a.wav").write_bytes(b"RIFF")
    write_wav_tar(tmp_path / "speech.tar")
    assert resolve_format("digits") == "digits"
    assert all(resolve_format(n) == "toy" for n in BUILTIN_NAMES[1:])
    assert resolve_format(str(tmp_path / "pics")) == "folder"
    assert resolve_format(str(tmp_path / "x.npy")) == "arrays"
    assert resolve_format(str(tmp_path / "sounds")) == "audio"
    assert resolve_format(str(tmp_path / "sounds" / "a.wav")) == "audio"
    assert resolve_format(str(tmp_path / "speech.tar")) == "audio"
    assert resolve_format(f"{shared_data}/mnist") == "idx"
    assert resolve_format(f"{shared_data}/cifar10") == "shards"
    assert resolve_format(f"{shared_data}/cifar10/test-{{0000..0001}}.tar.gz") == "shards"
    assert resolve_format(f"{shared_data}/fsdd") == "audio"


def test_unknown_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(DataError, match="'mnist-fake'.*digits, moons, swissroll, gmm8, checkerboard"):
        load("mnist-fake")
    with pytest.raises(DataError, match=r"does-not-exist.*not found"):
        load(str(tmp_path / "does-not-exist"))
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"data\.csv: unknown data file type"):
        load(str(tmp_path / "data.csv"))


def test_options_are_validated_before_reading():
    with pytest.raises(ValueError, match="channels must be 1, 3 or 4, got 2"):
        load("digits", channels=2)
    with pytest.raises(ValueError, match="image_size must be a positive integer, got 0"):
        load("digits", image_size=0)
    with pytest.raises(ValueError, match="split must be.*'valid'"):
        load("digits", split="valid")
    with pytest.raises(ValueError, match="n_mels apply only to audio"):
        load("digits", n_mels=64)
    with pytest.raises(ValueError, match="skip_bad applies only to folder, shards, audio data, "
                                         "but 'digits' is digits data"):
        load("digits", skip_bad=True)


def test_audio_folder_gets_a_preprocess_record(tmp_path):
    t = np.arange(1600) / 8000
    for i, f in enumerate((440.0, 880.0)):
        with wave.open(str(tmp_path / f"{i}_tone.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes((0.3 * 32767 * np.sin(2 * np.pi * f * t)).astype("<i2").tobytes())
    ds = load(str(tmp_path))
    assert len(ds) == 2 and ds.info["kind"] == "audio"
    assert ds.preprocess.kind == "audio" and ds.preprocess.audio["n_mels"] == ds.info["height"]
    assert tuple(ds[0]["x"].shape) == (1, ds.info["height"], ds.info["width"])
    with pytest.raises(ValueError, match="audio data; image_size"):
        load(str(tmp_path), image_size=32)


def test_a_path_named_like_a_builtin_is_an_error_that_says_how_to_name_either(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    for i in range(3):
        Image.new("RGB", (6, 6), (40 * i, 0, 0)).save(tmp_path / "digits" / f"{i}.png")
    (tmp_path / "moons").write_text("a file is a path too")
    for name in ("digits", "moons"):
        with pytest.raises(ValueError, match=rf"'{name}' names both the built-in dataset and the "
                                             rf"path {tmp_path / name}.*'\./{name}'.*'builtin:{name}'"):
            load(name)
        with pytest.raises(ValueError, match=f"'./{name}'"):
            resolve_format(name)
    folder = load("./digits")
    assert len(folder) == 3 and folder.info["image_size"] == 6
    builtin = load("builtin:digits")
    assert resolve_format("builtin:digits") == "digits" and builtin.info["image_size"] == 8
    assert len(builtin) == len(load("builtin:digits", split="train")) > 1000
    moons = load("builtin:moons")
    assert resolve_format("builtin:moons") == "toy" and moons.info["dim"] == 2
    assert torch.equal(moons.vectors, load_toy("moons").vectors)
    with pytest.raises(ValueError, match="'builtin:mnist'.*digits, moons, swissroll, gmm8"):
        load("builtin:mnist")


def test_the_builtin_spelling_is_recorded_and_loads_again(tmp_path, monkeypatch):
    from noisecraft.train import new_run_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "moons").mkdir()
    config = new_run_config(load("builtin:moons"), "builtin:moons", net="mlp")
    assert config.data.spec == "builtin:moons"
    assert load(config.data.spec).info["dim"] == 2


def _tones(folder):
    t = np.arange(4000) / 8000
    for i, f in enumerate((440.0, 880.0, 1320.0)):
        with wave.open(str(folder / f"{i}_tone.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes((0.3 * 32767 * np.sin(2 * np.pi * f * t)).astype("<i2").tobytes())


def test_train_flags_set_the_audio_features_and_a_resume_keeps_them(tmp_path, capsys):
    import json

    from noisecraft.cli import main

    (tmp_path / "tones").mkdir()
    _tones(tmp_path / "tones")
    run = tmp_path / "run"
    flags = ["--n-mels", "16", "--frames", "24", "--n-fft", "128", "--hop-length", "32"]
    assert main(["train", "--data", str(tmp_path / "tones"), "--out", str(run), "--steps", "1",
                 "--batch-size", "2", "--no-progress", *flags]) == 0
    audio = json.loads((run / "config.json").read_text())["data"]["preprocess"]["audio"]
    # the four flags, and the window follows the FFT size (a shorter one only zero-pads it)
    assert {k: audio[k] for k in ("n_mels", "frames", "n_fft", "hop_length", "win_length")} == {
        "n_mels": 16, "frames": 24, "n_fft": 128, "hop_length": 32, "win_length": 128}
    from noisecraft import load_run

    assert load_run(run).generate(1, steps=1).shape[-2:] == (16, 24)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "2", "--no-progress",
                 *flags]) == 0
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--n-mels", "32"]) == 2
    err = capsys.readouterr().err
    assert "--n-mels 32 conflicts with the run being resumed (--n-mels 16)" in err
    assert err.count("\n") == 1
    # on pictures the audio flags are an error, not ignored
    assert main(["train", "--data", "digits", "--out", str(tmp_path / "d"), "--frames", "8"]) == 2
    assert "frames apply only to audio data" in capsys.readouterr().err
    # nor with an autoencoder, whose latent runs encode pictures (checked before any loading)
    assert main(["train", "--data", "digits", "--out", str(tmp_path / "l"), "--n-fft", "256",
                 "--autoencoder", str(tmp_path / "no-such-ae")]) == 2
    assert "--n-fft set spectrogram features, but a latent run" in capsys.readouterr().err
