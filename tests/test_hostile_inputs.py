"""Bad, hostile or absurd inputs: each gives one line `noisecraft: error: ...` naming the file or
flag, exit 2, no traceback, and nothing allocated from an unchecked claim."""

import gzip
import io
import json
import os
import re
import struct
import tarfile
import wave

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from noisecraft import DataError, RunError
from noisecraft import io as ncio
from noisecraft.cli import main
from noisecraft.data.audio import read_wav
from noisecraft.run import load_run
from train_helpers import train, vector_config


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vec") / "run"
    config, dataset = vector_config(steps=2)
    train(run_dir, config, dataset)
    return run_dir


def copy_run(src, dst):
    dst.mkdir()
    for name in os.listdir(src):
        if (src / name).is_file():
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


# ------------------------------------------------------------------ hostile files
def npy_claiming(shape):
    """A ~200-byte .npy whose header claims ``shape`` uint8 values."""
    header = repr({"descr": "|u1", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(64)


def idx_gz_claiming(shape):
    head = bytes([0, 0, 8, len(shape)]) + b"".join(struct.pack(">i", d) for d in shape)
    return gzip.compress(head + bytes(100))


def tar_member_claiming(size):
    """A gzip tar whose only member's header claims ``size`` bytes (the data is not there)."""
    info = tarfile.TarInfo("a.png")
    info.size = size
    return gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024))


def png(value=0):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def setup_files(tmp_path, vector_run):
    """name -> (argv, fragment the one-line message must contain)."""
    t = tmp_path
    (t / "file").write_text("x")
    (t / "huge.npy").write_bytes(npy_claiming((10**9, 8, 8)))
    buf = io.BytesIO()
    with __import__("zipfile").ZipFile(buf, "w") as z:
        z.writestr("images.npy", npy_claiming((10**9, 8, 8)))
    (t / "huge.npz").write_bytes(buf.getvalue())
    (t / "idx").mkdir()
    (t / "idx/train-images-idx3-ubyte.gz").write_bytes(idx_gz_claiming((10**9, 28, 28)))
    (t / "bomb.tar.gz").write_bytes(tar_member_claiming(6 << 30))
    np.savez(t / "biglabel.npz", images=np.zeros((4, 8, 8), np.uint8),
             labels=np.array([0, 1, 2, 2**40]))
    (t / "nocls").mkdir()
    (t / "nocls/classes.txt").write_text("zero\none\n")
    shard(t / "nocls/train-0.tar", {f"s{i}": {"png": png(i), **({"cls": b"1"} if i % 2 else {})}
                                    for i in range(8)})
    (t / "badcls").mkdir()
    (t / "badcls/classes.txt").write_text("zero\none\n")
    shard(t / "badcls/train-0.tar", {f"s{i}": {"png": png(i), "cls": b"7" if i == 3 else b"1"}
                                     for i in range(8)})

    wide = copy_run(vector_run, t / "wide")
    cfg = json.loads((wide / "config.json").read_text())
    cfg["net"]["width"] = 200_000
    (wide / "config.json").write_text(json.dumps(cfg))
    longT = copy_run(vector_run, t / "longT")
    cfg = json.loads((longT / "config.json").read_text())
    cfg["schedule"]["T"] = 10**10
    (longT / "config.json").write_text(json.dumps(cfg))
    nan = copy_run(vector_run, t / "nan")
    tensors, meta = ncio.read_safetensors(nan / "ema.safetensors")
    tensors = {k: torch.full_like(v, float("nan")) for k, v in tensors.items()}
    (nan / "ema.safetensors").write_bytes(safetensors.torch.save(tensors, meta))
    negpos = copy_run(vector_run, t / "negpos")
    state = json.loads((negpos / "state.json").read_text())
    state["data"][0]["position"] = -5
    (negpos / "state.json").write_text(json.dumps(state))
    farpos = copy_run(vector_run, t / "farpos")
    state = json.loads((farpos / "state.json").read_text())
    state["data"][0]["position"] = 10**9
    (farpos / "state.json").write_text(json.dumps(state))

    out = str(t / "o")
    small = ["--steps", "2", "--batch-size", "4", "--no-progress", "--sample-every", "0"]
    return {
        "demo --out FILE": (["demo", "--out", str(t / "file")], "is a file"),
        "download into FILE": (["data", "download", "mnist", str(t / "file")], "is a file"),
        "download ftp mirror": (["data", "download", "mnist", str(t / "d"), "--mirror",
                                 "ftp://example.com/"], "refused"),
        "download http mirror": (["data", "download", "mnist", str(t / "d"), "--mirror",
                                  "http://example.com/"], "refused"),
        ".npy header claims 64 GB": (["train", "--data", str(t / "huge.npy"), "--out", out, *small],
                                     "claims"),
        ".npz member claims 64 GB": (["train", "--data", str(t / "huge.npz"), "--out", out, *small],
                                     "claims"),
        "IDX gzip claims 784 GB": (["train", "--data", str(t / "idx"), "--out", out, *small],
                                   "claims"),
        "shard member claims 6 GiB": (["train", "--data", str(t / "bomb.tar.gz"), "--out", out,
                                       *small], "over the"),
        "--timesteps 2e9": (["train", "--data", "digits", "--timesteps", "2000000000", "--out", out,
                             *small], "too many"),
        "--image-size 50000": (["train", "--data", "digits", "--image-size", "50000", "--out", out,
                                *small], "too large"),
        "label 2**40 with --class-cond": (["train", "--data", str(t / "biglabel.npz"), "--class-cond",
                                           "--out", out, *small], "example 3"),
        "--seed 2**70": (["train", "--data", "moons", "--seed", str(2**70), "--out", out, *small],
                         "seed"),
        "shard samples without .cls": (["train", "--data", str(t / "nocls"), "--class-cond",
                                        "--out", out, *small], "has no label"),
        "shard label beyond classes.txt": (["train", "--data", str(t / "badcls"), "--class-cond",
                                            "--out", out, "--batch-size", "8", "--steps", "2",
                                            "--no-progress", "--sample-every", "0"],
                                           "has label 7"),
        "config.json width 200000": (["sample", str(wide), "--out", str(t / "s")], "too large"),
        "config.json T 1e10": (["sample", str(longT), "--out", str(t / "s")], "too many"),
        "NaN weights": (["sample", str(nan), "--out", str(t / "s")], "ema.safetensors"),
        "sample --n 1e12": (["sample", str(vector_run), "--n", str(10**12), "--out", str(t / "s")],
                            "memory"),
        "state.json position -5": (["train", "--out", str(negpos), "--resume", "--steps", "3",
                                    "--no-progress"], "state.json"),
        "state.json position 1e9": (["train", "--out", str(farpos), "--resume", "--steps", "3",
                                     "--no-progress"], "consumed before"),
    }


CASES = ["demo --out FILE", "download into FILE", "download ftp mirror", "download http mirror",
         ".npy header claims 64 GB", ".npz member claims 64 GB", "IDX gzip claims 784 GB",
         "shard member claims 6 GiB", "--timesteps 2e9", "--image-size 50000",
         "label 2**40 with --class-cond", "--seed 2**70", "shard samples without .cls",
         "shard label beyond classes.txt", "config.json width 200000", "config.json T 1e10",
         "NaN weights", "sample --n 1e12", "state.json position -5", "state.json position 1e9"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_clean_line(case, tmp_path, vector_run, capsys):
    argv, fragment = setup_files(tmp_path, vector_run)[case]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own checks exit from inside parse_args
        rc = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("noisecraft: error:")]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


def test_the_case_table_is_complete(tmp_path, vector_run):
    assert sorted(CASES) == sorted(setup_files(tmp_path, vector_run))


# ------------------------------------------------------------------ library-level cases
def wav_bytes(rate, samples, width=2):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples)
    return buf.getvalue()


@pytest.mark.parametrize("rate", [0, 1, 10**9])
def test_wav_with_an_absurd_sample_rate_is_refused(rate):
    data = wav_bytes(8000, np.zeros(100, "<i2").tobytes())
    data = data[:24] + struct.pack("<I", rate) + data[28:]  # the fmt chunk's sample rate
    with pytest.raises(DataError, match=f"clip.wav: sample rate {rate} Hz"):
        read_wav(data, name="clip.wav")


def test_float_wav_with_nan_is_refused(tmp_path):
    from scipy.io import wavfile

    a = np.zeros(100, np.float32)
    a[5] = np.nan
    wavfile.write(tmp_path / "nan.wav", 8000, a)
    with pytest.raises(DataError, match="nan.wav: WAV holds NaN"):
        read_wav(tmp_path / "nan.wav")


def test_disk_full_during_a_save_is_one_line_and_keeps_the_checkpoint(vector_run, tmp_path,
                                                                      monkeypatch, capsys):
    run = copy_run(vector_run, tmp_path / "run")
    before = {n: (run / n).read_bytes() for n in os.listdir(run) if n.endswith((".json", "tensors"))}
    real_fsync = os.fsync

    def full(fd):
        if os.fstat(fd).st_size > 0 and not os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(ncio.os, "fsync", full)
    rc = main(["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "no space left on the device" in err and "intact" in err
    assert ".tmp" not in err  # names the file the user knows, not a temporary one
    assert {n: (run / n).read_bytes() for n in before} == before
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]
    assert load_run(run).step == 2


def checkpoint_bytes(run):
    """The checkpoint's files (the trainer rewrites config.json and .lock before it reads them)."""
    return {n: (run / n).read_bytes() for n in os.listdir(run)
            if n.endswith((".safetensors", "state.json")) and (run / n).is_file()}


FORGED_JOURNALS = {"no files": {"files": []}, "a parent path": {"files": ["../outside"]},
                   "an absolute path": {"files": ["/etc/x"]}, "a string": {"files": "state.json"},
                   "a list": [], "a dot name": {"files": [".lock"]},
                   "a repeated name": {"files": ["state.json", "state.json"]},
                   "not JSON": "{files: [", "no files key": {"names": ["state.json"]}}


@pytest.mark.parametrize("what", FORGED_JOURNALS)
def test_a_forged_journal_is_refused_naming_it_and_touches_nothing(vector_run, tmp_path, capsys,
                                                                     what):
    # io.py never writes an empty journal or one that names a path: such a journal is not one
    # of its transactions, so neither a reader nor the writer may guess what it covers.
    run = copy_run(vector_run, tmp_path / "run")
    journal = FORGED_JOURNALS[what]
    (tmp_path / "outside").write_text("keep me")
    (run / ".previous").mkdir()
    (run / ".previous" / "journal.json").write_text(
        journal if isinstance(journal, str) else json.dumps(journal))
    (run / ".previous" / "outside").write_text("forged")
    before = checkpoint_bytes(run)
    journal_path = str(run / ".previous" / "journal.json")
    rc = main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "s"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert journal_path in err, err
    with pytest.raises(RunError, match=re.escape(journal_path)):
        load_run(run)
    with pytest.raises(RunError, match=re.escape(journal_path)):
        ncio.recover(run)
    config, dataset = vector_config(steps=3)
    with pytest.raises(RunError, match=re.escape(journal_path)):
        train(run, config, dataset, resume=True)
    assert (tmp_path / "outside").read_text() == "keep me"
    assert (run / ".previous" / "outside").read_text() == "forged"  # left for the user to judge
    assert checkpoint_bytes(run) == before


def _valid_previous(where):
    """A .previous/ whose journal is valid and would put a forged state.json in place."""
    where.mkdir()
    (where / "state.json").write_text('{"step": 99}')
    (where / "journal.json").write_text('{"files": ["state.json"]}')
    return where


@pytest.mark.parametrize("kind", ["symlink to a directory", "dangling symlink", "regular file"])
def test_a_previous_that_is_not_a_directory_is_refused_and_never_followed(vector_run, tmp_path,
                                                                           capsys, kind):
    run = copy_run(vector_run, tmp_path / "run")
    prev = run / ".previous"
    target = tmp_path / "elsewhere"
    if kind == "symlink to a directory":
        _valid_previous(target)
        prev.symlink_to(target)
    elif kind == "dangling symlink":
        prev.symlink_to(target)
    else:
        prev.write_text("not a directory")
    before = checkpoint_bytes(run)
    what = "symbolic link" if "symlink" in kind else "not a directory"
    with pytest.raises(RunError, match=f"{re.escape(str(prev))}: .*{what}"):
        ncio.recover(run)
    with pytest.raises(RunError, match=f"{re.escape(str(prev))}: .*{what}"):
        load_run(run)
    rc = main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "s"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and str(prev) in err, err
    config, dataset = vector_config(steps=3)
    with pytest.raises(RunError, match=re.escape(str(prev))):
        train(run, config, dataset, resume=True)
    assert checkpoint_bytes(run) == before
    if kind == "symlink to a directory":  # nothing was taken from or removed at the target
        assert sorted(os.listdir(target)) == ["journal.json", "state.json"]
        assert prev.is_symlink()


def test_nan_weights_are_refused_by_load_run_naming_the_file(vector_run, tmp_path):
    run = copy_run(vector_run, tmp_path / "run")
    tensors, meta = ncio.read_safetensors(run / "model.safetensors")
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].clone()
    tensors[first].view(-1)[0] = float("inf")
    (run / "model.safetensors").write_bytes(safetensors.torch.save(tensors, meta))
    load_run(run)  # the EMA weights are fine
    with pytest.raises(RunError, match=f"model.safetensors: 1 of .* tensors hold NaN or Inf .*{first}"):
        load_run(run, use_ema=False)


def test_a_symlink_inside_previous_is_refused_and_never_renamed_in(vector_run, tmp_path):
    run = copy_run(vector_run, tmp_path / "run")
    before = checkpoint_bytes(run)
    (tmp_path / "forged.json").write_text('{"step": 99}')
    prev = run / ".previous"
    prev.mkdir()
    (prev / "state.json").symlink_to(tmp_path / "forged.json")
    (prev / "journal.json").write_text('{"files": ["state.json"]}')
    (run / "state.json").unlink()  # so the save looks uncommitted and recover would rename
    with pytest.raises(RunError, match=f"{re.escape(str(prev / 'state.json'))}: not a regular"):
        ncio.recover(run)
    assert not (run / "state.json").exists() and (prev / "state.json").is_symlink()
    assert checkpoint_bytes(run) == {n: b for n, b in before.items() if n != "state.json"}


# ------------------------------------------------------------------ refused before any work
def test_sample_steps_beyond_T_is_refused_before_the_progress_bar(vector_run, tmp_path, capsys):
    """`sample --steps 5000` on T = 50: one error line, and no progress bar drawn first."""
    assert main(["sample", str(vector_run), "--steps", "5000", "--sampler", "ddim",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("noisecraft: error: steps = 5000 exceeds T") and err.count("\n") == 1, err
    assert not (tmp_path / "s.npz").exists()


def test_train_out_an_existing_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("precious")
    assert main(["train", "--data", "moons", "--out", str(target), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"noisecraft: error: --out {target}: exists and is not a folder; choose a new " \
                  "or empty folder\n"
    assert target.read_text() == "precious"
    assert main(["train-autoencoder", "--data", "digits", "--out", str(target), "--steps", "1"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_a_foreign_sampler_option_is_refused_before_any_work(vector_run, tmp_path, capsys):
    """`--variance` on ddim: the library's option check (run.generate_tensor) answers, one line,
    before a progress bar; from Python the same call gives the same error."""
    assert main(["sample", str(vector_run), "--sampler", "ddim", "--variance", "beta", "--steps", "3",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err == ("noisecraft: error: sampler 'ddim' has no option 'variance'; its options are "
                   "['eta']\n")
    with pytest.raises(ValueError, match="sampler 'ddim' has no option 'variance'"):
        load_run(vector_run).generate(2, sampler="ddim", steps=3, options={"variance": "beta"})
