"""Small, fast training runs shared by the train/checkpoint/CLI tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

from noisecraft import data
from noisecraft.train import TrainConfig, Trainer, new_run_config

# A 2-block U-Net small enough for a CPU step in milliseconds on 8×8 digits.
SMALL_UNET = {"base_channels": 8, "attention_resolutions": [], "norm_groups": 4}
SMALL_MLP = {"width": 32, "depth": 1}


def vector_config(steps: int = 6, **train):
    dataset = data.load("moons")
    tc = dict(steps=steps, batch_size=32, lr=1e-3, warmup=2, log_every=2, sample_every=0,
              checkpoint_every=0, ema_decay=0.9)
    tc.update(train)
    config = new_run_config(dataset, "moons", net="mlp", net_overrides=SMALL_MLP, T=50,
                            train=TrainConfig(**tc))
    return config, dataset


def image_config(steps: int = 4, **train):
    dataset = data.load("digits")
    tc = dict(steps=steps, batch_size=16, lr=1e-3, warmup=2, log_every=2, sample_every=0,
              checkpoint_every=0, ema_decay=0.9)
    tc.update(train)
    config = new_run_config(dataset, "digits", net="tiny", net_overrides=SMALL_UNET, T=50,
                            train=TrainConfig(**tc))
    config.sampling.steps = 5
    config.sampling.n = 8
    return config, dataset


def train(run_dir: Path, config, dataset, resume: bool = False, stop_at: int | None = None):
    return Trainer(config, run_dir, dataset, resume=resume, device="cpu", progress=False).fit(stop_at)
