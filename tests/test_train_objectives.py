"""Runs can use every objective: --loss, --learned-variance and --time-sampler are recorded in
config.json, trained by the Trainer, loaded by load_run and used by sample and nll."""

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from noisecraft import losses
from noisecraft.cli import main
from noisecraft.data.datasets import VectorDataset
from noisecraft.run import load_run
from noisecraft.train import TrainConfig, Trainer, new_run_config


def vectors():
    rng = np.random.default_rng(0)
    return VectorDataset(rng.uniform(-1, 1, (100, 2)).astype(np.float32), source="small")


def importance_config(steps):
    # T = 5 and batch 32: every t has its 10 recorded losses after a few steps, so most of the
    # run draws t from the learned, non-uniform p_t.
    tc = TrainConfig(steps=steps, batch_size=32, lr=1e-2, warmup=2, log_every=1, sample_every=0,
                     checkpoint_every=0, ema_decay=0.8, loss="hybrid", time_sampler="importance")
    return new_run_config(vectors(), "small", net="mlp", T=5, train=tc,
                          net_overrides={"width": 16, "depth": 1, "learned_variance": True})


def fit(run_dir, config, resume=False, stop_at=None):
    return Trainer(config, run_dir, vectors(), resume=resume, device="cpu", progress=False).fit(stop_at)


def test_importance_time_sampler_state_survives_resume_exactly(tmp_path):
    config = importance_config(12)
    fit(tmp_path / "straight", config)
    fit(tmp_path / "resumed", config, stop_at=6)
    state = json.loads((tmp_path / "resumed/state.json").read_text())
    sampler = losses.ImportanceTimeSampler(5)
    sampler.load_state_dict(state["time_sampler"])
    assert sampler.warmed_up and not torch.allclose(sampler.probabilities(),
                                                    torch.full((5,), 0.2, dtype=torch.float64))
    fit(tmp_path / "resumed", config, resume=True)
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = safetensors.torch.load_file(tmp_path / "straight" / name)
        b = safetensors.torch.load_file(tmp_path / "resumed" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    end = [json.loads((tmp_path / d / "state.json").read_text())["time_sampler"]
           for d in ("straight", "resumed")]
    assert end[0] == end[1]


def test_the_trainer_draws_t_from_the_configured_sampler_and_weights_the_loss(tmp_path, monkeypatch):
    seen = []
    real = losses.ImportanceTimeSampler.sample

    def spy(self, batch, generator=None, device=None):
        t, w = real(self, batch, generator, device)
        seen.append(w)
        return t, w

    monkeypatch.setattr(losses.ImportanceTimeSampler, "sample", spy)
    fit(tmp_path / "run", importance_config(8))
    assert len(seen) == 8 and not torch.equal(seen[-1], torch.ones_like(seen[-1]))


@pytest.mark.parametrize("loss", ["min-snr", "vlb"])
def test_each_loss_trains_from_a_config(tmp_path, loss):
    tc = TrainConfig(steps=3, batch_size=16, lr=1e-3, warmup=1, log_every=1, sample_every=0,
                     checkpoint_every=0, loss=loss)
    config = new_run_config(vectors(), "small", net="mlp", T=20, train=tc,
                            net_overrides={"width": 16, "depth": 1})
    result = fit(tmp_path / "run", config)
    assert result.step == 3 and np.isfinite(result.loss)


def test_a_learned_variance_run_trains_samples_and_scores_from_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(run), "--learned-variance",
                 "--loss", "hybrid", "--schedule", "cosine", "--timesteps", "30", "--steps", "3",
                 "--batch-size", "8", "--warmup", "1", "--sample-every", "0", "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["net"]["learned_variance"] is True and config["train"]["loss"] == "hybrid"
    loaded = load_run(run)
    assert loaded.denoiser.learned_variance
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--sampler", "ddpm", "--variance", "learned", "--steps", "5",
                 "--n", "4", "--out", str(out)]) == 0
    images = np.load(str(out) + ".npz")["images"]
    assert images.shape == (4, 8, 8, 1)
    capsys.readouterr()
    assert main(["nll", str(run), "--data", "digits", "--method", "vlb", "--variance", "learned",
                 "--n", "4", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["variance"] == "learned" and record["n"] == 4 and np.isfinite(record["mean"])


def test_a_learned_variance_net_samples_with_its_variance_by_default(tmp_path):
    """Unset, ddpm reads the learned variance: the same samples as variance='learned' and not
    the same as beta_tilde (the variance channels start at f = 1/2, between β and β̃)."""
    run = tmp_path / "run"
    assert main(["train", "--data", "moons", "--out", str(run), "--learned-variance", "--loss", "vlb",
                 "--timesteps", "20", "--steps", "2", "--batch-size", "16", "--warmup", "1",
                 "--sample-every", "0", "--no-progress"]) == 0
    loaded = load_run(run)
    draw = {v: loaded.generate_tensor(6, "ddpm", 10, options=None if v is None else {"variance": v})
            for v in (None, "learned", "beta_tilde")}
    assert torch.equal(draw[None], draw["learned"])
    assert not torch.allclose(draw[None], draw["beta_tilde"])


@pytest.mark.parametrize("loss", ["hybrid", "vlb"])
def test_a_learned_variance_latent_run_trains(tmp_path, monkeypatch, loss):
    """Latents are continuous and unbounded: the bound's decoder at t = 1 must be the Gaussian
    one, not the 8-bit discretised one that the pictures' [0, 255] value range would suggest
    (which refuses latents outside [−1, 1] on the first batch)."""
    from noisecraft import data
    from noisecraft.autoencoders import load_autoencoder
    from noisecraft.latent import latent_dataset
    from test_latent import _pictures, write_autoencoder
    from train_helpers import SMALL_UNET

    pixels = data.load(_pictures(tmp_path / "pics.npz", n=16))
    latents = latent_dataset(pixels, load_autoencoder(write_autoencoder(tmp_path / "ae")),
                             progress=False)
    assert latents.preprocess.value_range == (0.0, 255.0)  # the pictures' record, kept
    tc = TrainConfig(steps=2, batch_size=8, lr=1e-3, warmup=1, log_every=1, sample_every=0,
                     checkpoint_every=0, ema_decay=0.9, loss=loss)
    config = new_run_config(latents, "pics", net="tiny", T=20, train=tc,
                            net_overrides={**SMALL_UNET, "learned_variance": True})
    assert config.latent is not None
    discrete = []
    real = losses.objective

    def spy(*args, **kw):
        discrete.append(kw["discrete"])
        return real(*args, **kw)

    monkeypatch.setattr(losses, "objective", spy)
    result = Trainer(config, tmp_path / "run", latents, device="cpu", progress=False).fit()
    assert result.step == 2 and np.isfinite(result.loss) and discrete == [False, False]
