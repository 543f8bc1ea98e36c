"""`noisecraft encode | interpolate | edit | inpaint` end to end on runs trained for a few steps."""

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from noisecraft import data
from noisecraft.cli import main
from noisecraft.editing import decode, encode
from noisecraft.run import load_run

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from train_helpers import SMALL_UNET, image_config, train, vector_config  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("editing") / "run"
    config, dataset = image_config(steps=2)
    train(path, config, dataset)
    return path


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    from noisecraft.train import TrainConfig, new_run_config

    path = tmp_path_factory.mktemp("editing_cond") / "run"
    dataset = data.load("digits")
    config = new_run_config(dataset, "digits", net="tiny", T=20, class_conditional=True,
                            net_overrides=SMALL_UNET,
                            train=TrainConfig(steps=1, batch_size=8, sample_every=0,
                                              checkpoint_every=0, label_dropout=0.1))
    train(path, config, dataset)
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    ds = data.load("digits", split="test")
    paths = []
    for i in range(2):
        x = ds[i]["x"]
        a = ((x[0].numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(a).save(root / f"d{i}.png")
        paths.append(str(root / f"d{i}.png"))
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "big.png")
    return paths, str(root / "mask.png"), str(root / "big.png")


def nc(*args):
    return main([str(a) for a in args])


def test_encode_writes_x_T_and_round_trip_matching_the_library(run_dir, pictures, tmp_path):
    paths, _, _ = pictures
    assert nc("encode", run_dir, "--image", paths[0], "--image", paths[1], "--steps", 6,
              "--sampler", "heun", "--out", tmp_path / "enc", "--no-progress") == 0
    with np.load(tmp_path / "enc.npz") as f:
        x_T, decoded, db = f["x_T"], f["decoded"], f["psnr_db"]
        assert f["images"].shape == decoded.shape == (2, 8, 8, 1) and decoded.dtype == np.uint8
    run_ = load_run(run_dir)
    from noisecraft.data.pictures import read_picture

    x0 = torch.cat([read_picture(p, run_.preprocess)[0] for p in paths])
    ref = encode(run_.denoiser, x0, run_.schedule, 6, "heun")
    np.testing.assert_allclose(x_T, ref.numpy(), atol=1e-5)
    back = decode(run_.denoiser, ref, run_.schedule, 6, "heun")
    np.testing.assert_array_equal(decoded, run_.to_output(back))
    assert db.shape == (2,) and np.isfinite(db).all()
    assert Image.open(tmp_path / "enc.png").format == "PNG"


def test_interpolate_seeds_and_images(run_dir, pictures, tmp_path):
    paths, _, _ = pictures
    assert nc("interpolate", run_dir, "--seeds", 0, 1, "--frames", 5, "--steps", 4,
              "--out", tmp_path / "s", "--no-progress") == 0
    assert nc("interpolate", run_dir, "--images", *paths, "--frames", 3, "--steps", 4,
              "--out", tmp_path / "i.png", "--no-progress") == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (5, 8, 8, 1)
        np.testing.assert_allclose(f["weights"], np.linspace(0, 1, 5))
    with np.load(tmp_path / "i.npz") as f:
        assert f["images"].shape == (3, 8, 8, 1)


def test_edit_and_inpaint_write_outputs_and_keep_the_known_half(run_dir, pictures, tmp_path):
    paths, mask, _ = pictures
    assert nc("edit", run_dir, "--image", paths[0], "--strength", 0.5, "--n", 3, "--steps", 6,
              "--out", tmp_path / "e", "--no-progress") == 0
    with np.load(tmp_path / "e.npz") as f:
        assert f["images"].shape == (3, 8, 8, 1) and f["original"].shape == (1, 8, 8, 1)
    assert nc("inpaint", run_dir, "--image", paths[0], "--mask", mask, "--n", 2, "--steps", 5,
              "--resample", 2, "--jump", 2, "--out", tmp_path / "f", "--no-progress") == 0
    with np.load(tmp_path / "f.npz") as f:
        images, original, known = f["images"], f["original"], f["known"]
    assert known[:, :4].all() and not known[:, 4:].any()
    # the kept half is the picture itself (the last step puts x_0 back exactly)
    np.testing.assert_array_equal(images[:, :, :4], np.repeat(original, 2, 0)[:, :, :4])


def test_conditional_runs_take_classes(cond_run, pictures, tmp_path):
    paths, mask, _ = pictures
    assert nc("edit", cond_run, "--image", paths[0], "--class", 3, "--n", 2, "--steps", 4,
              "--out", tmp_path / "e", "--no-progress") == 0
    with np.load(tmp_path / "e.npz") as f:
        assert f["labels"].tolist() == [3, 3]
    assert nc("edit", cond_run, "--image", paths[0], "--class", "1,2", "--guidance", 2, "--n", 2,
              "--steps", 4, "--out", tmp_path / "g", "--no-progress") == 0
    with np.load(tmp_path / "g.npz") as f:
        assert f["labels"].tolist() == [1, 1, 2, 2]   # --n of each class (LoadedRun.conditions)
    assert nc("interpolate", cond_run, "--seeds", 0, 1, "--classes", 2, 7, "--frames", 3,
              "--steps", 4, "--out", tmp_path / "c", "--no-progress") == 0
    assert nc("inpaint", cond_run, "--image", paths[0], "--mask", mask, "--class", 1, "--n", 1,
              "--steps", 4, "--out", tmp_path / "f", "--no-progress") == 0


def _fails(capsys, *args) -> str:
    try:
        code = nc(*args)
    except SystemExit as e:          # argparse's own usage errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("noisecraft: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_one_line_errors(run_dir, cond_run, pictures, tmp_path, capsys):
    paths, mask, big = pictures
    out = ["--out", tmp_path / "x", "--no-progress"]
    err = _fails(capsys, "encode", run_dir, "--image", big, *out)
    assert "10x10" in err and "(1, 8, 8)" in err
    assert "mask" in _fails(capsys, "inpaint", run_dir, "--image", paths[0], "--mask", big, *out)
    assert "(0, 1]" in _fails(capsys, "edit", run_dir, "--image", paths[0], "--strength", 1.5, *out)
    assert "(0, 1]" in _fails(capsys, "edit", run_dir, "--image", paths[0], "--strength", 0, *out)
    assert "not class-conditional" in _fails(capsys, "edit", run_dir, "--image", paths[0],
                                             "--class", 1, *out)
    assert "0..9" in _fails(capsys, "edit", cond_run, "--image", paths[0], "--class", 12, *out)
    assert "no such" in _fails(capsys, "edit", run_dir, "--image", tmp_path / "nope.png", *out)
    assert "ddpm" in _fails(capsys, "encode", run_dir, "--image", paths[0], "--sampler", "ddpm", *out)


def test_vector_runs_are_refused(tmp_path, pictures, capsys):
    config, dataset = vector_config(steps=1)
    train(tmp_path / "v", config, dataset)
    err = _fails(capsys, "edit", tmp_path / "v", "--image", pictures[0][0], "--out", tmp_path / "o")
    assert "image run" in err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        nc("--help")
    listing = capsys.readouterr().out
    for cmd in ("encode", "interpolate", "edit", "inpaint"):
        assert cmd in listing
    with pytest.raises(SystemExit) as e:
        nc("inpaint", "--help")
    assert e.value.code == 0 and "--resample" in capsys.readouterr().out
