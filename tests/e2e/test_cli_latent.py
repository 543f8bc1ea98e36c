"""Latent diffusion end to end: train-autoencoder → train --autoencoder → sample, and the refusals."""

import json

import numpy as np
import pytest

from noisecraft.cli import main
from noisecraft.run import load_run

pytestmark = pytest.mark.slow  # trains an autoencoder and a latent run (~40 s on 2 busy cores)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    ae, run = root / "ae", root / "run"
    assert main(["train-autoencoder", "--data", "digits", "--out", str(ae), "--steps", "2",
                 "--batch-size", "16", "--factor", "2", "--latent-channels", "2", "--sample-every", "0",
                 "--no-progress"]) == 0
    assert main(["train", "--data", "digits", "--autoencoder", str(ae), "--out", str(run),
                 "--steps", "2", "--batch-size", "16", "--class-cond", "--sample-every", "2",
                 "--timesteps", "50", "--no-progress",
                 "--label-dropout", "0"]) == 0  # (--class-cond alone now means 0.1)
    return ae, run


def test_latent_run_records_its_autoencoder_and_samples_pictures(latent_run, tmp_path, capsys):
    ae, run = latent_run
    config = json.loads((run / "config.json").read_text())
    lat = config["latent"]
    assert lat["autoencoder"] == str(ae.resolve()) and lat["posterior"] == "mean"
    assert lat["shape"] == [2, 4, 4] and config["net"]["in_channels"] == 2
    assert config["net"]["image_size"] == 4 and config["data"]["shape"] == [1, 8, 8]
    assert lat["scale_factor"] > 0
    # x̂_0 is clipped to the range of the training latents, computed here another way: every
    # digit encoded by the run's autoencoder and scaled by the recorded factor
    from noisecraft import data

    pictures = data.load("digits")
    import torch

    x = torch.stack([pictures[i]["x"] for i in range(len(pictures))])
    z = load_run(run).encode(x)
    assert config["sampling"]["clip"] == pytest.approx([float(z.min()), float(z.max())], abs=1e-4)
    assert (run / "samples" / "step_0000002.png").is_file()
    assert main(["sample", str(run), "--n", "6", "--steps", "3", "--out", str(tmp_path / "s")]) == 0
    out = np.load(tmp_path / "s.npz")
    # decoded: pictures of the data's own shape and channels, not latents
    assert out["images"].shape == (6, 8, 8, 1) and out["images"].dtype == np.uint8
    assert list(out["labels"]) == [0, 1, 2, 3, 4, 5]
    assert (tmp_path / "s.png").is_file()
    assert load_run(run).shape == (2, 4, 4)


def test_resume_a_latent_run_and_refuse_another_autoencoder(latent_run, tmp_path, capsys):
    ae, run = latent_run
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--sample-every", "0",
                 "--no-progress"]) == 0
    assert "latents from the cache" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--resume", "--autoencoder", str(tmp_path),
                 "--steps", "4"]) == 2
    assert "--autoencoder" in capsys.readouterr().err


def test_a_changed_autoencoder_is_refused_by_name(latent_run, tmp_path, capsys):
    ae, run = latent_run
    copy_ae, copy_run = tmp_path / "ae", tmp_path / "run"
    for src, dst in ((ae, copy_ae), (run, copy_run)):
        dst.mkdir()
        for f in src.iterdir():
            if f.is_file():
                (dst / f.name).write_bytes(f.read_bytes())
    config = json.loads((copy_run / "config.json").read_text())
    config["latent"]["autoencoder"] = str(copy_ae)
    (copy_run / "config.json").write_text(json.dumps(config))
    assert main(["sample", str(copy_run), "--n", "2", "--steps", "2", "--out", str(tmp_path / "a")]) == 0
    # another checkpoint in the autoencoder folder: the latent run's decoder is not that one any more
    (copy_ae / "model.safetensors").write_bytes((copy_ae / "model.safetensors").read_bytes()[:-4]
                                                + b"\0\0\0\0")
    capsys.readouterr()
    assert main(["sample", str(copy_run), "--n", "2", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"noisecraft: error: {copy_ae}: the autoencoder changed")
    assert err.count("\n") == 1


@pytest.mark.parametrize("damage", ["corrupt", "mismatched", "missing"])
def test_bad_autoencoder_folder_is_one_line_naming_the_file(latent_run, tmp_path, capsys, damage):
    ae, _ = latent_run
    bad = tmp_path / "ae"
    bad.mkdir()
    for f in ae.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    if damage == "corrupt":
        (bad / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad")
        expected = "model.safetensors: not a readable safetensors file"
    elif damage == "mismatched":
        config = json.loads((bad / "config.json").read_text())
        config["net"]["latent_channels"] = 3
        (bad / "config.json").write_text(json.dumps(config))
        expected = "model.safetensors: does not fit the autoencoder"
    else:
        (bad / "config.json").unlink()
        expected = "config.json: missing"
    assert main(["train", "--data", "digits", "--autoencoder", str(bad), "--out",
                 str(tmp_path / "run"), "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("noisecraft: error: ") and err.count("\n") == 1
    assert str(bad) in err and expected in err


def test_generate_classes_with_the_stage_figure_and_the_python_pipeline(latent_run, tmp_path, capsys):
    from noisecraft import Pipeline

    _, run = latent_run
    out = tmp_path / "g"
    assert main(["generate", str(run), "--class", "3", "--class", "7", "--n", "2", "--steps", "4",
                 "--seed", "5", "--out", str(out), "--explain", "--no-progress"]) == 0
    saved = np.load(out.with_suffix(".npz"))
    assert list(saved["labels"]) == [3, 3, 7, 7] and saved["images"].shape == (4, 8, 8, 1)
    assert out.with_suffix(".png").is_file() and (tmp_path / "g_explain.png").is_file()
    # the Python object gives the same pictures, and the same as `sample`'s path (LoadedRun.generate)
    pipe = Pipeline.from_run(run)
    images = pipe(labels=[3, 7], n=2, steps=4, seed=5, progress=False).images
    assert np.array_equal(images, saved["images"])
    direct = pipe.run.generate(4, steps=4, seed=5, labels=np.array([3, 3, 7, 7]))
    assert np.array_equal(direct, saved["images"])
    # the run was trained without label dropout: there is no unconditional branch to guide with
    capsys.readouterr()
    assert main(["generate", str(run), "--class", "3", "--guidance", "3", "--out",
                 str(tmp_path / "h")]) == 2
    assert "label-dropout" in capsys.readouterr().err


def test_text_to_image_on_latents(latent_run, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    ae, _ = latent_run
    run = tmp_path / "text"
    assert main(["train", "--data", "digits", "--autoencoder", str(ae), "--out", str(run),
                 "--condition", "text", "--caption-template", "a handwritten digit {name}",
                 "--steps", "2", "--batch-size", "16", "--timesteps", "50", "--sample-every", "0",
                 "--no-progress"]) == 0
    out = tmp_path / "t"
    assert main(["generate", str(run), "--prompt", "a handwritten digit seven", "--prompt",
                 "seven, written by hand", "--n", "2", "--guidance", "4", "--steps", "3",
                 "--out", str(out), "--explain", "--no-progress"]) == 0
    saved = np.load(out.with_suffix(".npz"))
    assert list(saved["prompts"]) == ["a handwritten digit seven"] * 2 + ["seven, written by hand"] * 2
    assert saved["images"].shape == (4, 8, 8, 1)
    # generate takes the shared guidance flags, and they reach the sampler (an untrained net's
    # pictures barely move with them, so the test looks at what generate_tensor receives)
    from noisecraft.run import LoadedRun

    seen = {}
    real = LoadedRun.generate_tensor

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LoadedRun, "generate_tensor", spy)
    assert main(["generate", str(run), "--prompt", "a handwritten digit seven", "--n", "2",
                 "--guidance", "4", "--guidance-rescale", "0.7", "--guidance-interval", "10", "40",
                 "--steps", "3", "--out", str(tmp_path / "tuned"), "--no-progress"]) == 0
    assert (seen["guidance"], seen["guidance_rescale"], seen["guidance_interval"]) == \
        (4.0, 0.7, (10.0, 40.0))


def test_nll_of_a_latent_run_is_in_latent_units(latent_run, capsys):
    import torch

    from noisecraft import data, nll

    _, run = latent_run
    assert main(["nll", str(run), "--data", "digits", "--n", "4", "--method", "vlb", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["units"] == "latent bits/dim" and record["convention"].startswith("latent:")
    # the same number from the library on the encoded pictures: the CLI scored latents, not pixels
    loaded = load_run(run)
    x = torch.stack([data.load("digits", split="test")[i]["x"] for i in range(4)])
    labels = torch.tensor([data.load("digits", split="test")[i]["label"] for i in range(4)])
    from noisecraft.denoiser import Denoiser

    den = Denoiser(loaded.net, loaded.schedule, loaded.denoiser.prediction, clip=None)
    from noisecraft.seeding import derive_seed

    # the CLI draws each batch's noise from a generator of (--seed, batch start): one batch here
    generator = torch.Generator().manual_seed(derive_seed("noisecraft-nll", 0, 0))
    bits = nll(den, loaded.encode(x), loaded.schedule, "vlb", discrete=False,
               generator=generator, labels=labels)
    assert record["mean"] == pytest.approx(float(bits.mean()), rel=1e-5)
