"""`noisecraft sample` end to end on a run trained for a few steps."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from noisecraft.cli import main
from noisecraft.train import load_run

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from train_helpers import SMALL_UNET, image_config, train, vector_config  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "run"
    config, dataset = image_config(steps=2)
    train(path, config, dataset)
    return path


def test_sample_writes_png_grid_and_uint8_npz(run_dir, tmp_path):
    out = tmp_path / "draws"
    proc = subprocess.run([sys.executable, "-m", "noisecraft", "sample", str(run_dir), "--n", "10",
                           "--steps", "4", "--seed", "2", "--out", str(out)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    with np.load(out.with_suffix(".npz")) as f:
        assert sorted(f.files) == ["images"]
        images = f["images"]
    assert images.dtype == np.uint8 and images.shape == (10, 8, 8, 1)
    assert Image.open(out.with_suffix(".png")).format == "PNG"


def sample(run_dir, out, *extra):
    return main(["sample", str(run_dir), "--out", str(out), *map(str, extra)])


def test_sample_is_reproducible_and_batch_size_free(run_dir, tmp_path):
    assert sample(run_dir, tmp_path / "a.png", "--n", 5, "--steps", 3) == 0
    assert sample(run_dir, tmp_path / "b", "--n", 5, "--steps", 3, "--batch-size", 2) == 0
    assert sample(run_dir, tmp_path / "c", "--n", 5, "--steps", 3, "--no-ema") == 0
    assert sample(run_dir, tmp_path / "d", "--n", 5, "--steps", 3, "--sampler", "ddpm") == 0
    a, b, c, d = (np.load(tmp_path / f"{k}.npz")["images"] for k in "abcd")
    np.testing.assert_array_equal(a, b)
    # The files hold exactly what the library draws: EMA weights by default, the raw ones with
    # --no-ema, and the run's sampler (DDIM) unless --sampler names another.
    ema, raw = load_run(run_dir), load_run(run_dir, use_ema=False)
    np.testing.assert_array_equal(a, ema.generate(5, sampler="ddim", steps=3, seed=0))
    np.testing.assert_array_equal(c, raw.generate(5, sampler="ddim", steps=3, seed=0))
    np.testing.assert_array_equal(d, ema.generate(5, sampler="ddpm", steps=3, seed=0))
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_conditional_runs_store_labels(tmp_path):
    from noisecraft import data
    from noisecraft.train import TrainConfig, new_run_config

    dataset = data.load("digits")
    config = new_run_config(dataset, "digits", net="tiny", T=20, class_conditional=True,
                            net_overrides=SMALL_UNET,
                            train=TrainConfig(steps=1, batch_size=8, sample_every=0, checkpoint_every=0))
    train(tmp_path / "run", config, dataset)
    assert sample(tmp_path / "run", tmp_path / "s", "--n", 12, "--steps", 2) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["labels"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
        assert f["images"].shape == (12, 8, 8, 1)


def test_vector_runs_write_samples_and_a_scatter(tmp_path):
    config, dataset = vector_config(steps=2)
    train(tmp_path / "run", config, dataset)
    assert sample(tmp_path / "run", tmp_path / "v", "--n", 30, "--steps", 3) == 0
    with np.load(tmp_path / "v.npz") as f:
        assert f["samples"].dtype == np.float32 and f["samples"].shape == (30, 2)
    assert (tmp_path / "v.png").is_file()


def _corrupt(run_dir, tmp_path):
    copy = tmp_path / "corrupt"
    copy.mkdir()
    for name in os.listdir(run_dir):
        if (run_dir / name).is_file():
            (copy / name).write_bytes((run_dir / name).read_bytes())
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 3])
    return copy


@pytest.mark.parametrize("case, extra, message", [
    ("sampler", ["--sampler", "magic"], "unknown sampler 'magic'"),
    ("steps", ["--steps", "0"], "argument --steps: '0' must be an integer >= 1"),
    ("threads", ["--threads", "0"], "argument --threads: '0' must be an integer >= 1"),
    ("missing", [], "does not exist"),
    ("foreign", [], "config.json: missing"),
    ("corrupt", ["--no-ema"], "model.safetensors: not a readable safetensors file"),
])
def test_errors_exit_2_with_one_line(run_dir, tmp_path, capsys, case, extra, message):
    target = {"missing": tmp_path / "nope", "foreign": tmp_path, "corrupt": None}.get(case, run_dir)
    if case == "corrupt":
        target = _corrupt(run_dir, tmp_path)
    if case == "foreign":
        (tmp_path / "holiday.jpg").write_bytes(b"\xff\xd8")
    try:
        code = main(["sample", str(target), "--out", str(tmp_path / "x"), *extra])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) in (1, 2)  # argparse adds its usage line above the error
    assert not (tmp_path / "x.npz").exists()


def test_corrupt_checkpoint_in_a_subprocess_has_no_traceback(run_dir, tmp_path):
    bad = _corrupt(run_dir, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "noisecraft", "sample", str(bad), "--no-ema",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("noisecraft: error: ") and "model.safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_threads_flag_sets_torch_threads_and_the_default_follows_the_cpu_count(run_dir, tmp_path,
                                                                                monkeypatch):
    import torch

    from noisecraft.cli import _args

    before = torch.get_num_threads()
    try:
        assert sample(run_dir, tmp_path / "t", "--n", 2, "--steps", 2, "--threads", 2) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert _args.default_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert _args.default_threads() is None          # torch's own choice on larger machines
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert _args.default_threads() is None          # the user's environment wins


def test_format_png_writes_a_folder_of_numbered_pictures_beside_the_npz(run_dir, tmp_path):
    assert sample(run_dir, tmp_path / "p", "--n", 5, "--steps", 2, "--format", "png",
                  "--no-progress") == 0
    images = np.load(tmp_path / "p.npz")["images"]
    names = sorted(os.listdir(tmp_path / "p"))
    assert names == [f"{i:06d}.png" for i in range(5)]
    for i, name in enumerate(names):  # each file is exactly sample i, grey as the data is
        picture = Image.open(tmp_path / "p" / name)
        assert picture.mode == "L"
        np.testing.assert_array_equal(np.asarray(picture), images[i, :, :, 0])
    assert not (tmp_path / "p.png").exists()


def test_progress_bar_on_stderr_and_no_progress_silences_it(run_dir, tmp_path, capsys):
    assert sample(run_dir, tmp_path / "a", "--n", 3, "--steps", 4) == 0
    err = capsys.readouterr().err
    assert "sample" in err and "4/4" in err  # one batch of 3 samples, 4 sampler steps
    assert sample(run_dir, tmp_path / "b", "--n", 3, "--steps", 4, "--no-progress") == 0
    assert capsys.readouterr().err == ""


def test_wav_format_needs_an_audio_run(run_dir, tmp_path, capsys):
    assert main(["sample", str(run_dir), "--out", str(tmp_path / "w"), "--format", "wav"]) == 2
    assert "--format wav needs an audio run" in capsys.readouterr().err


def _tone_folder(folder, digits=(0, 1, 2), per_digit=2, rate=8000):
    """FSDD-style file names (digit_speaker_index.wav) holding tones, one pitch per digit."""
    import wave

    folder.mkdir()
    for d in digits:
        for i in range(per_digit):
            n = int(rate * (0.3 + 0.1 * i))
            t = np.arange(n) / rate
            pcm = np.round(0.3 * np.sin(2 * np.pi * (300 + 200 * d) * t) * 32767).astype("<i2")
            with wave.open(str(folder / f"{d}_tone_{i}.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(rate)
                w.writeframes(pcm.tobytes())
    return folder


def test_audio_run_trains_from_the_cli_and_samples_wav_files(tmp_path):
    import json
    import wave

    from noisecraft.data.audio import AudioConfig

    data = _tone_folder(tmp_path / "tones")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--steps", "1", "--batch-size", "2",
                 "--timesteps", "20", "--sample-every", "0", "--class-cond", "--no-progress"]) == 0
    recorded = json.loads((run / "config.json").read_text())["data"]
    # The features are recorded in full, so sampling can invert them.
    assert recorded["kind"] == "audio" and recorded["num_classes"] == 3
    assert recorded["preprocess"]["audio"] == AudioConfig().to_dict()
    # a resumed audio run reads the data with the recorded features
    assert main(["train", "--out", str(run), "--steps", "2", "--resume", "--no-progress"]) == 0
    assert json.loads((run / "state.json").read_text())["step"] == 2
    out = tmp_path / "s"
    assert sample(run, out, "--n", 4, "--steps", 2, "--no-progress", "--griffin-lim-iters", 4) == 0
    config = AudioConfig()
    with np.load(out.with_suffix(".npz")) as f:
        spectrograms, labels = f["spectrograms"], f["labels"]
    assert spectrograms.shape == (4, 1, config.n_mels, config.frames)
    assert labels.tolist() == [0, 1, 2, 0]
    waveforms = load_run(run).to_audio(spectrograms, n_iter=4)
    names = sorted(os.listdir(out))
    assert names == [f"{i:06d}.wav" for i in range(4)]
    for i, name in enumerate(names):
        with wave.open(str(out / name), "rb") as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
            assert w.getnframes() == (config.frames - 1) * config.hop_length  # 127 hops of 64
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        # the file holds the inverted spectrogram, to 16-bit rounding (half a step of 1/32767)
        np.testing.assert_allclose(pcm / 32767, np.clip(waveforms[i], -1, 1), atol=0.51 / 32767)
    assert Image.open(out.with_suffix(".png")).size[0] > config.frames  # a grid of spectrograms


def test_sampler_options_reach_the_sampler(run_dir, tmp_path, capsys):
    """--option NAME=VALUE goes to the sampler (ddim's eta: a stochastic draw differs from the
    deterministic one and equals the library's with the same option); an unknown name is the
    library's one-line error."""
    from noisecraft.run import load_run

    out = tmp_path / "eta"
    assert main(["sample", str(run_dir), "--n", "4", "--steps", "5", "--sampler", "ddim",
                 "--option", "eta=1", "--out", str(out), "--no-progress"]) == 0
    got = np.load(f"{out}.npz")
    key = [k for k in got.files if k != "labels"][0]
    run = load_run(run_dir)
    want = run.generate(4, sampler="ddim", steps=5, options={"eta": 1.0})
    plain = run.generate(4, sampler="ddim", steps=5)
    np.testing.assert_array_equal(got[key], want)
    assert not np.array_equal(got[key], plain)
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--n", "2", "--steps", "5", "--sampler", "ddim",
                 "--option", "churn=3", "--out", str(tmp_path / "x")]) == 2
    assert "has no option 'churn'" in capsys.readouterr().err
