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


def test_nll_reads_the_unclipped_density_however_it_is_called(runs):
    """The density is the unclipped network's (a clip is a sampler's choice): nc.nll on the
    run's own (clipped) sampling Denoiser gives the command's number, and differs from a
    bound computed with the clip kept (the reading the issue found in Python)."""
    from noisecraft.likelihood import nll

    run = load_run(runs["cond"])
    assert run.denoiser.clip is not None and run.denoiser.unclipped().clip is None
    ds = data.load("digits", split="test")
    x = torch.stack([ds[i]["x"] for i in range(2)])
    labels = torch.tensor([ds[i]["label"] for i in range(2)])
    kw = dict(rtol=1e-3, atol=1e-3, batch_size=2)
    mine = nll(run.denoiser, x, run.schedule, "ode", discrete=False, labels=labels,
               generator=_seeded(run, 0), **kw)
    assert torch.equal(mine, run.nll(x, labels, **kw))
    clipped = _ClipKept(run.denoiser)
    other = nll(clipped, x, run.schedule, "ode", discrete=False, labels=labels,
                generator=_seeded(run, 0), **kw)
    assert not torch.equal(mine, other)


def _seeded(run, start):
    """The generator `noisecraft nll` gives the batch starting at ``start`` (seed 0)."""
    from noisecraft.seeding import derive_seed

    return torch.Generator().manual_seed(derive_seed("noisecraft-nll", 0, start))


def _ClipKept(den):
    """The run's clipped reading, as a Denoiser subclass nll leaves alone (what scoring with the
    sampling Denoiser used to compute)."""
    from noisecraft.denoiser import Denoiser

    class ClipKept(Denoiser):
        pass

    return ClipKept(den.net, den.schedule, den.prediction, clip=den.clip)


def test_classes_must_be_integers(runs):
    """A class 3.7 from Python is refused, not silently read as 3 (integral floats are classes)."""
    run = load_run(runs["cond"])
    with pytest.raises(ValueError, match=r"class values must be integers, got \[3.7\]"):
        run.conditions(2, classes=[3.7])
    assert run.conditions(1, classes=[3.0])[1].tolist() == [3]
