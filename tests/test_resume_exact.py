"""N optimizer steps straight equal N/2 steps + resume to N, bit for bit, for every preset family
(with and without dropout) and the options that touch randomness: DataLoader workers, gradient
accumulation, class conditioning with label dropout, random flips. Nets are shrunk to a few
thousand parameters on 8×8 digits so each case takes about a second."""

import pytest
import safetensors.torch
import torch

from noisecraft import data
from noisecraft.train import TrainConfig, new_run_config
from train_helpers import train

SHRINK = {
    "tiny": {"base_channels": 8, "attention_resolutions": [], "norm_groups": 4},
    "mnist": {"base_channels": 8, "norm_groups": 4},          # dropout 0.1
    "ddpm-cifar10": {"base_channels": 8, "norm_groups": 4},   # dropout 0.1, additive time
    "mlp": {"width": 16, "depth": 1},
}
CASES = {
    "tiny": dict(net="tiny"),
    "mnist": dict(net="mnist"),
    "mnist-workers": dict(net="mnist", num_workers=2),
    "mnist-accum-classcond-flip": dict(net="mnist", accum=2, class_cond=True, label_dropout=0.3,
                                       flip=True),
    "ddpm-cifar10-rgb": dict(net="ddpm-cifar10", channels=3),
    "mlp": dict(net="mlp"),
}


def config_for(net, steps, num_workers=0, accum=1, class_cond=False, label_dropout=0.0,
               flip=False, channels=None):
    if net == "mlp":
        dataset, spec = data.load("moons"), "moons"
    else:
        extra = {"channels": channels} if channels else {}
        dataset, spec = data.load("digits", flip=flip, **extra), "digits"
    tc = TrainConfig(steps=steps, batch_size=8, lr=1e-3, warmup=1, log_every=1, sample_every=0,
                     checkpoint_every=0, ema_decay=0.8, accum=accum, num_workers=num_workers,
                     label_dropout=label_dropout)
    config = new_run_config(dataset, spec, net=net, net_overrides=SHRINK[net], T=50,
                            class_conditional=class_cond, train=tc)
    return config, dataset


def tensors(run_dir):
    return {name: safetensors.torch.load_file(run_dir / name)
            for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors")}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if "workers" in c else c
                                  for c in CASES])
def test_half_then_resume_is_bit_identical_to_straight(tmp_path, case):
    opts = CASES[case]
    config, dataset = config_for(steps=4, **opts)
    train(tmp_path / "straight", config, dataset)
    train(tmp_path / "resumed", config, dataset, stop_at=2)
    train(tmp_path / "resumed", config, dataset, resume=True)
    a, b = tensors(tmp_path / "straight"), tensors(tmp_path / "resumed")
    different = [f"{f}:{k}" for f in a for k in a[f] if not torch.equal(a[f][k], b[f][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
