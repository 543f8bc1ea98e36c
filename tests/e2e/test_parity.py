"""Python and the command line give the same bytes and numbers (issue 21): each command is one
call of ``noisecraft.LoadedRun`` (or ``noisecraft.train.prepare``), so the same call from Python
must reproduce what the command wrote — on a class-conditional pixel run and on a latent run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from noisecraft import data
from noisecraft.cli import main
from noisecraft.run import load_run

pytestmark = pytest.mark.slow  # trains two tiny runs and an autoencoder (~30 s on 2 busy cores)

TRAIN = ["--steps", "2", "--batch-size", "8", "--timesteps", "20", "--sample-every", "0",
         "--no-progress"]


def nc(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    assert nc("train", "--data", "digits", "--class-cond", "--out", root / "cond", *TRAIN) == 0
    assert nc("train-autoencoder", "--data", "digits", "--out", root / "ae", "--steps", 2,
              "--batch-size", 16, "--factor", 2, "--latent-channels", 2, "--sample-every", 0,
              "--no-progress") == 0
    assert nc("train", "--data", "digits", "--autoencoder", root / "ae", "--out", root / "latent",
              *TRAIN) == 0
    ds = data.load("digits", split="test")
    paths = []
    for i in range(2):
        a = ((ds[i]["x"][0].numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(a).save(root / f"d{i}.png")
        paths.append(root / f"d{i}.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return {"cond": root / "cond", "latent": root / "latent", "pictures": paths,
            "mask": root / "mask.png"}


@pytest.mark.parametrize("which", ["cond", "latent"])
def test_sample(runs, tmp_path, which):
    extra = ["--class", "3,5", "--guidance", 2] if which == "cond" else []
    assert nc("sample", runs[which], "--n", 3, "--steps", 4, "--seed", 7, *extra,
              "--out", tmp_path / "s", "--no-progress") == 0
    saved = np.load(tmp_path / "s.npz")
    run = load_run(runs[which])
    drawn = run.sample(3, classes=[3, 5] if which == "cond" else None, steps=4, seed=7,
                       guidance=2.0 if which == "cond" else None)
    np.testing.assert_array_equal(saved["images"], drawn.output)
    if which == "cond":
        assert saved["labels"].tolist() == drawn.labels.tolist() == [3, 3, 3, 5, 5, 5]


def test_generate_is_the_pipeline(runs, tmp_path):
    from noisecraft import Pipeline

    assert nc("generate", runs["cond"], "--class", 4, "--n", 2, "--steps", 3, "--seed", 1,
              "--out", tmp_path / "g", "--no-progress") == 0
    out = Pipeline.from_run(runs["cond"])(labels=4, n=2, steps=3, seed=1, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "g.npz")["images"], out.images)
    # and the pipeline is LoadedRun.sample's draw
    np.testing.assert_array_equal(out.images,
                                  load_run(runs["cond"]).sample(2, classes=4, steps=3, seed=1).output)


@pytest.mark.parametrize("which", ["cond", "latent"])
def test_nll(runs, tmp_path, capsys, which):
    options = ["--n", 5, "--rtol", 1e-3, "--atol", 1e-3, "--batch-size", 3]
    assert nc("nll", runs[which], "--data", "digits", *options, "--json", "--no-progress") == 0
    record = json.loads(capsys.readouterr().out)
    run = load_run(runs[which])
    mine = run.score("digits", n=5, rtol=1e-3, atol=1e-3, batch_size=3)
    assert record["mean"] == mine["mean"] and record["n"] == 5
    assert record["units"] == ("latent bits/dim" if which == "latent" else "bits/dim")
    # the per-example call reads the same unclipped density as the score
    ds = data.load("digits", split="test")
    x = torch.stack([ds[i]["x"] for i in range(3)])
    labels = torch.tensor([ds[i]["label"] for i in range(3)]) if which == "cond" else None
    bits = run.nll(x, labels, rtol=1e-3, atol=1e-3, batch_size=3)
    assert float(bits.mean()) == pytest.approx(float(np.mean(_first_batch(run, 3))), abs=0)


def _first_batch(run, n):
    from noisecraft.scoring import NllOptions, score_split

    return score_split(run, "digits", "test", n, NllOptions(rtol=1e-3, atol=1e-3, batch_size=n)
                       ).numpy()


def test_nll_ignores_the_sampling_clip(runs):
    """The density is the unclipped network's (a clip is a sampler's choice): scoring with the
    sampling Denoiser gives another number, and the score uses the unclipped one."""
    from noisecraft.likelihood import nll
    from noisecraft.scoring import likelihood_denoiser

    run = load_run(runs["cond"])
    assert run.denoiser.clip is not None and likelihood_denoiser(run).clip is None
    ds = data.load("digits", split="test")
    x = torch.stack([ds[i]["x"] for i in range(2)])
    kw = dict(discrete=False, generator=torch.Generator().manual_seed(0), rtol=1e-3, atol=1e-3)
    a = nll(likelihood_denoiser(run), x, run.schedule, "ode", **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    b = nll(run.denoiser, x, run.schedule, "ode", **kw)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("which", ["cond", "latent"])
def test_encode_edit_inpaint_interpolate(runs, tmp_path, which):
    pics, mask = runs["pictures"], runs["mask"]
    run = load_run(runs[which])
    x = torch.cat([run.read_picture(p) for p in pics])

    assert nc("encode", runs[which], "--image", pics[0], "--image", pics[1], "--steps", 4,
              "--out", tmp_path / "e", "--no-progress") == 0
    saved = np.load(tmp_path / "e.npz")
    inv = run.invert(x, steps=4)
    np.testing.assert_array_equal(saved["x_T"], inv.x_T.numpy())
    np.testing.assert_array_equal(saved["psnr_db"], inv.psnr_db.numpy().astype(np.float32))

    extra = ["--class", 2] if which == "cond" else []
    assert nc("edit", runs[which], "--image", pics[0], "--strength", 0.6, "--n", 2, "--steps", 4,
              "--seed", 3, *extra, "--out", tmp_path / "ed", "--no-progress") == 0
    out, _ = run.edit(x[:1], 0.6, 2, steps=4, seed=3, classes=[2, 2] if extra else None)
    np.testing.assert_array_equal(np.load(tmp_path / "ed.npz")["images"], _uint8(run, out))

    assert nc("inpaint", runs[which], "--image", pics[0], "--mask", mask, "--n", 2, "--steps", 4,
              "--seed", 3, "--out", tmp_path / "f", "--no-progress") == 0
    fill = run.inpaint(x[:1], run.read_mask(mask, pics[0]), 2, steps=4, seed=3)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npz")["images"], _uint8(run, fill))

    assert nc("interpolate", runs[which], "--seeds", 0, 1, "--frames", 3, "--steps", 4,
              "--out", tmp_path / "i", "--no-progress") == 0
    frames = run.interpolate_pictures(0, 1, 3, steps=4)
    np.testing.assert_array_equal(np.load(tmp_path / "i.npz")["images"], _uint8(run, frames))


def _uint8(run, x):
    from noisecraft.data import to_uint8

    return to_uint8(x, run.preprocess)


def test_a_python_class_conditional_run_is_the_commands_run_and_can_be_guided(runs, tmp_path):
    """nc.train.prepare (what `train` calls) from Python, and the command, give the same config
    and bit-identical weights — so the same guided accuracy — and the Python run, with label
    dropout 0.1 by default, guides (w = 2 differs from w = 1)."""
    from safetensors.torch import load_file

    from noisecraft.train.setup import prepare

    prepare(tmp_path / "py", data="digits", class_cond=True, steps=2, batch_size=8, timesteps=20,
            sample_every=0, progress=False).fit()
    cli, py = load_run(runs["cond"]), load_run(tmp_path / "py")
    assert py.config.train == cli.config.train and py.config.train.label_dropout == 0.1
    a, b = load_file(runs["cond"] / "ema.safetensors"), load_file(tmp_path / "py" / "ema.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # model space: two training steps move the branches apart by less than a uint8 level
    guided = py.generate_tensor(2, steps=3, labels=np.array([1, 1]), guidance=2.0)
    plain = py.generate_tensor(2, steps=3, labels=np.array([1, 1]), guidance=1.0)
    assert not torch.equal(guided, plain)
