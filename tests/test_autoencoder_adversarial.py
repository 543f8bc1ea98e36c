"""train-autoencoder's patch-adversarial term: the adaptive weight, the hinge loss, that weight 0
and a late start change nothing, exact resume with a discriminator, and a discriminator that learns;
plus the channels_last training step against the contiguous one."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from noisecraft import data
from noisecraft.autoencoders import AutoencoderTrainConfig
from noisecraft.nets.discriminator import PatchDiscriminator, hinge_d_loss
from noisecraft.train import autoencoder as ae_train
from noisecraft.train.autoencoder import (
    Adversary,
    AutoencoderTrainer,
    adaptive_weight,
    discriminator_step,
    generator_objective,
    new_autoencoder_config,
)

# The per-step losses of _config(4) with log_every 1, recorded by the trainer on main at commit
# 941fece (before the adversarial term and channels_last existed), OMP_NUM_THREADS=1.
MAIN_LOSSES = [0.8580935001373291, 0.8343445658683777, 0.7731459140777588, 0.726615846157074]


def _config(steps, **train):
    ds = data.load("digits")
    train = AutoencoderTrainConfig(**{**dict(steps=steps, batch_size=16, lr=2e-3, warmup=2,
                                             log_every=1, sample_every=0, checkpoint_every=0,
                                             seed=1), **train})
    return ds, new_autoencoder_config(ds, "digits", latent_channels=2, factor=2, train=train,
                                      net_overrides={"base_channels": 8})


def _fit(config, ds, out, **kw):
    trainer = AutoencoderTrainer(config, out, ds, device="cpu", progress=False,
                                 resume=kw.pop("resume", False))
    trainer.fit(**kw)
    return trainer


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- the equations
def _finite_difference_grad(f, w, h=1e-6):
    """∂f/∂w by central differences, one element at a time (float64: error ~h² + 1e-16/h)."""
    g = torch.zeros_like(w)
    for i in range(w.numel()):
        e = torch.zeros_like(w).view(-1)
        e[i] = h
        e = e.view_as(w)
        g.view(-1)[i] = (f(w + e) - f(w - e)) / (2 * h)
    return g


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    """λ = ‖∇_w L_rec‖ / (‖∇_w L_adv‖ + 1e-4) with w a last conv layer, the gradients taken by
    finite differences; clamped to 1e4 and detached."""
    torch.manual_seed(0)
    h = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    w0 = 0.3 * torch.randn(2, 4, 3, 3, dtype=torch.float64)
    disc = nn.Conv2d(2, 1, 3).double()

    def rec(w):
        return (F.conv2d(h, w, padding=1) - x).square().mean()

    def adv(w):
        return -disc(F.conv2d(h, w, padding=1)).mean()

    with torch.no_grad():
        expected = (_finite_difference_grad(rec, w0).norm()
                    / (_finite_difference_grad(adv, w0).norm() + 1e-4))
    w = w0.clone().requires_grad_(True)
    lam = adaptive_weight(rec(w), adv(w), w)
    assert not lam.requires_grad
    # finite-difference error ≈ h² · third derivative ≈ 1e-12 relative; float64 rounding ≈ 1e-10
    assert float(lam) == pytest.approx(float(expected), rel=1e-7)
    # a discriminator blind to the output: ‖∇ L_adv‖ = 0, λ = ‖∇ L_rec‖ / 1e-4 hits the clamp
    nn.init.zeros_(disc.weight)
    big = 1e6 * rec(w)
    assert float(adaptive_weight(big, adv(w), w)) == 1e4


def test_generator_term_has_the_reconstruction_gradient_times_the_weight():
    """What λ is for: at the decoder's last layer ‖∇(a·λ·L_adv)‖ = a·‖∇L‖ (up to the 1e-4 in λ's
    denominator, 1e-4/‖∇L_adv‖ ≈ 1e-5 relative here); D's own parameters get no gradient."""
    torch.manual_seed(1)
    h = torch.randn(4, 8, 8, 8)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    w = (0.1 * torch.randn(1, 8, 3, 3)).requires_grad_(True)
    disc = PatchDiscriminator(1, 8, 1)
    x_hat = F.conv2d(h, w, padding=1)
    loss = (x_hat - x).abs().mean()
    g_rec = torch.autograd.grad(loss, w, retain_graph=True)[0]
    total, adv_loss, lam = generator_objective(loss, x_hat, disc, w, 0.5)
    total.backward()
    assert float((w.grad - g_rec).norm()) == pytest.approx(0.5 * float(g_rec.norm()), rel=1e-3)
    with torch.no_grad():
        assert float(adv_loss) == pytest.approx(-float(disc(x_hat).mean()), rel=1e-6)
    assert all(p.requires_grad and p.grad is None for p in disc.parameters())


def test_hinge_loss_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 − r) = 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + f) = 0, 1, 2
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (2.5 / 3 + 3 / 3), rel=1e-6)
    assert float(hinge_d_loss(torch.zeros(5), torch.zeros(5))) == 1.0  # an undecided D


def test_discriminator_learns_real_from_blurred():
    """On digits against their 3×3 box blur D's hinge loss starts at ~1 (logits ≈ 0 at
    N(0, 0.02) init) and falls below ½ within 30 steps."""
    torch.manual_seed(0)
    ds = data.load("digits")
    x = torch.stack([ds[i]["x"] for i in range(256)])
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    disc = PatchDiscriminator(1, 16, 1)
    adv = Adversary(disc, torch.optim.AdamW(disc.parameters(), lr=2e-3, betas=(0.5, 0.9)))
    losses = []
    for i in range(30):
        batch = slice(64 * (i % 4), 64 * (i % 4 + 1))
        losses.append(float(discriminator_step(adv, x[batch], blurred[batch], 2e-3, 1.0)))
    assert losses[0] == pytest.approx(1.0, abs=0.05)
    assert sum(losses[-5:]) / 5 < 0.5


# --------------------------------------------------------------------------- the trainer
def test_weight_zero_is_the_plain_run(tmp_path, monkeypatch):
    """No discriminator, no extra files or log keys, and the loss sequence recorded on main:
    equal to float rounding (kernels summing in another order differ by ~1e-7 relative, e.g.
    with 2 threads), in channels_last (the default) and contiguous alike."""
    ds, config = _config(4)
    trainer = _fit(config, ds, tmp_path / "cl")
    assert trainer.adversary is None
    assert trainer.net.decoder[-1].weight.is_contiguous(memory_format=torch.channels_last)
    assert not (tmp_path / "cl" / ae_train.DISCRIMINATOR).exists()
    log = _log(tmp_path / "cl")
    assert "d_loss" not in log[-1]
    assert [r["loss"] for r in log] == pytest.approx(MAIN_LOSSES, rel=1e-6)
    monkeypatch.setattr(ae_train, "MEMORY_FORMAT", torch.contiguous_format)
    _fit(config, ds, tmp_path / "contiguous")
    assert [r["loss"] for r in _log(tmp_path / "contiguous")] == pytest.approx(MAIN_LOSSES, rel=1e-6)


def test_late_start_never_touches_the_discriminator(tmp_path, monkeypatch):
    """Weight > 0 but start ≥ steps: D is built and saved, never called; the run is the plain one."""
    def untouchable(*args, **kwargs):
        raise AssertionError("the discriminator was used before adversarial_start")

    ds, plain = _config(4)
    _fit(plain, ds, tmp_path / "plain")
    ds, config = _config(4, adversarial_weight=0.5, adversarial_start=4)
    monkeypatch.setattr(PatchDiscriminator, "forward", untouchable)
    trainer = _fit(config, ds, tmp_path / "late")
    assert trainer.adversary is not None
    log = _log(tmp_path / "late")
    assert [r["loss"] for r in log] == [r["loss"] for r in _log(tmp_path / "plain")]
    assert log[-1]["d_loss"] is None and log[-1]["adaptive_weight"] is None
    assert load_file(tmp_path / "late" / ae_train.DISCRIMINATOR_OPTIMIZER) == {}


def test_resume_with_the_term_is_exact(tmp_path):
    """6 steps at once = 1 (before the start: D's optimizer still empty) + 3 + 2 with resumes."""
    ds, config = _config(6, adversarial_weight=0.5, adversarial_start=2)
    _fit(config, ds, tmp_path / "full")
    _fit(config, ds, tmp_path / "parts", stop_at=1)
    _fit(config, ds, tmp_path / "parts", stop_at=4, resume=True)
    _fit(config, ds, tmp_path / "parts", resume=True)
    for name in ("model.safetensors", ae_train.DISCRIMINATOR, ae_train.DISCRIMINATOR_OPTIMIZER,
                 "optimizer.safetensors"):
        full, parts = (load_file(tmp_path / d / name) for d in ("full", "parts"))
        assert full.keys() == parts.keys() and full, name
        for k in full:
            assert torch.equal(full[k], parts[k]), (name, k)
    full, parts = _log(tmp_path / "full"), _log(tmp_path / "parts")
    for record in full + parts:
        record.pop("elapsed_s")
    assert full == parts
    assert full[0]["d_loss"] is None and full[2]["d_loss"] is not None
    assert full[-1]["adaptive_weight"] > 0 and full[-1]["g_adv"] is not None


def test_cli_flags_write_the_discriminator_and_guard_the_resume(tmp_path, capsys):
    from noisecraft.cli import main

    out = tmp_path / "ae"
    assert main(["train-autoencoder", "--data", "digits", "--out", str(out), "--steps", "2",
                 "--batch-size", "8", "--factor", "2", "--latent-channels", "2", "--log-every", "1",
                 "--adversarial-weight", "0.5", "--adversarial-start", "1", "--sample-every", "0",
                 "--no-progress"]) == 0
    log = _log(out)
    assert log[0]["d_loss"] is None and log[1]["d_loss"] > 0
    assert load_file(out / ae_train.DISCRIMINATOR_OPTIMIZER)  # one D step: AdamW has state
    capsys.readouterr()
    assert main(["train-autoencoder", "--out", str(out), "--resume", "--steps", "3",
                 "--adversarial-weight", "0"]) == 2
    assert capsys.readouterr().err.startswith("noisecraft: error: --adversarial-weight 0")
