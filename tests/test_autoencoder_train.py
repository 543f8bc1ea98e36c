"""train-autoencoder: the loss equation, exact resume, and the run folder loads through the contract."""

import math

import pytest
import torch
from safetensors.torch import load_file
from torch.distributions import Normal, kl_divergence

from noisecraft import data
from noisecraft.autoencoders import AutoencoderTrainConfig, load_autoencoder
from noisecraft.cli import main
from noisecraft.nets.autoencoder import build_autoencoder
from noisecraft.train.autoencoder import (
    AutoencoderTrainer,
    ae_loss_terms,
    ae_losses,
    new_autoencoder_config,
)


def _reference_kl(mean, logvar):
    """KL(N(μ, σ²) ‖ N(0, 1)) per example and latent value, from torch.distributions (its own
    closed form, written independently of noisecraft)."""
    q = Normal(mean.double(), torch.exp(0.5 * logvar.double()))
    kl = kl_divergence(q, Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale)))
    return kl.flatten(1).mean(1)


def test_kl_term_is_the_gaussian_kl():
    """The library's KL term against torch.distributions on values far from the prior (large and
    small σ, large μ, per example: a swapped batch axis or a dropped term shows), then through
    the network's own encoder."""
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 2, 4, 4, generator=g) * torch.tensor([0.1, 1.0, 3.0]).view(3, 1, 1, 1)
    logvar = torch.randn(3, 2, 4, 4, generator=g) * 2 - torch.tensor([4.0, 0.0, -1.0]).view(3, 1, 1, 1)
    x = torch.zeros(3, 1, 8, 8)
    _, _, kl = ae_loss_terms(x, x, mean, logvar, kl_weight=0.0, reconstruction="l1")
    # float32 arithmetic on terms up to ~e^6: relative error ~1e-6, so rel=1e-5 is loose enough
    torch.testing.assert_close(kl.double(), _reference_kl(mean, logvar), rtol=1e-5, atol=1e-7)

    torch.manual_seed(0)
    net = build_autoencoder("ae32", image_size=8, factor=2, base_channels=8, latent_channels=1)
    net.requires_grad_(False)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    _, _, kl = ae_losses(net, x, 0.0, "l1", None)
    mean, logvar = net.encode(x)
    torch.testing.assert_close(kl.double(), _reference_kl(mean, logvar), rtol=1e-5, atol=1e-7)


def test_kl_term_matches_monte_carlo():
    """E_q[log q(z) − log p(z)] by Monte Carlo for one (μ, σ), against the library's term. The
    summand is ½(z² − ((z − μ)/σ)²) − log σ; with n draws its standard error is sd/√n, measured
    from the draws themselves; 5 standard errors bound a miss by chance to ~6e-7."""
    mu, log_var = torch.tensor(1.3), torch.tensor(-0.7)
    _, _, kl = ae_loss_terms(torch.zeros(1, 1), torch.zeros(1, 1), mu.view(1, 1), log_var.view(1, 1),
                             kl_weight=0.0, reconstruction="l1")
    g = torch.Generator().manual_seed(1)
    s = torch.exp(0.5 * log_var.double())
    z = mu.double() + s * torch.randn(400_000, generator=g, dtype=torch.float64)
    terms = Normal(mu.double(), s).log_prob(z) - Normal(0.0, 1.0).log_prob(z)
    se = float(terms.std()) / len(terms) ** 0.5
    assert abs(float(terms.mean()) - float(kl)) < 5 * se, (float(terms.mean()), float(kl), se)


def _config(steps):
    ds = data.load("digits")
    train = AutoencoderTrainConfig(steps=steps, batch_size=16, lr=2e-3, warmup=2, log_every=2,
                                   sample_every=0, checkpoint_every=0, seed=1)
    return ds, new_autoencoder_config(ds, "digits", latent_channels=2, factor=2, train=train,
                                      net_overrides={"base_channels": 8})


def test_resume_is_exact(tmp_path):
    ds, config = _config(6)
    AutoencoderTrainer(config, tmp_path / "full", ds, device="cpu", progress=False).fit()
    AutoencoderTrainer(config, tmp_path / "half", ds, device="cpu", progress=False).fit(stop_at=3)
    r = AutoencoderTrainer(config, tmp_path / "half", ds, resume=True, device="cpu",
                           progress=False).fit()
    assert r.step == 6 and math.isfinite(r.psnr)
    full, half = (load_file(tmp_path / d / "model.safetensors") for d in ("full", "half"))
    assert full.keys() == half.keys()
    for k in full:
        assert torch.equal(full[k], half[k]), k
    assert ((tmp_path / "full" / "log.jsonl").read_text().splitlines()[-1]
            == (tmp_path / "half" / "log.jsonl").read_text().splitlines()[-1].replace(
                *_elapsed((tmp_path / "half" / "log.jsonl"), (tmp_path / "full" / "log.jsonl"))))


def _elapsed(a, b):
    """The elapsed_s field differs between runs; everything else in the last log line must not."""
    import json

    la, lb = (json.loads(p.read_text().splitlines()[-1]) for p in (a, b))
    return json.dumps(la["elapsed_s"]), json.dumps(lb["elapsed_s"])


def test_cli_trains_a_folder_that_loads_with_its_scale(tmp_path, capsys):
    out = tmp_path / "ae"
    assert main(["train-autoencoder", "--data", "digits", "--out", str(out), "--steps", "2",
                 "--batch-size", "16", "--factor", "2", "--latent-channels", "2", "--sample-every", "2",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "latent scale factor" in printed and "(on 512 training images)" in printed
    assert (out / "samples" / "recon_0000002.png").is_file()
    ae = load_autoencoder(out)
    assert ae.kind == "noisecraft" and ae.latent_shape((1, 8, 8)) == (2, 4, 4)
    # the recorded scale is 1/std of the posterior means of the 512 reference images
    ds = data.load("digits")
    stride = len(ds) // 512
    x = torch.stack([ds[i * stride]["x"] for i in range(512)])
    assert ae.scale_factor == pytest.approx(1 / float(ae.encode(x)[0].double().std()), rel=1e-5)
    # a resume with a changed setting is refused in one line
    assert main(["train-autoencoder", "--out", str(out), "--resume", "--factor", "4"]) == 2
    assert capsys.readouterr().err.startswith("noisecraft: error: --factor 4 conflicts")


def test_the_final_figures_are_the_saved_ones_and_batched_psnr_is_psnr(tmp_path):
    """The result reports the scale factor the last checkpoint recorded (now taken from that
    save instead of measured again) and the reference count it was measured on, and the batched
    PSNR equals the per-example definition computed in one pass."""
    from noisecraft.quality import psnr
    from noisecraft.train.autoencoder import reconstruction_psnr

    ds, config = _config(2)
    trainer = AutoencoderTrainer(config, tmp_path / "ae", ds, device="cpu", progress=False)
    r = trainer.fit()
    assert r.reference_images == 512
    ae = load_autoencoder(tmp_path / "ae")
    assert r.scale_factor == ae.scale_factor
    net = trainer.net.eval()
    x = torch.stack([ds[i]["x"] for i in range(10)])
    with torch.no_grad():
        whole = float(psnr(net.decode(net.encode(x)[0]), x, clamp=(-1.0, 1.0)).mean())
    assert reconstruction_psnr(net, x, batch_size=3) == pytest.approx(whole, rel=1e-6)


def test_a_seed_torch_cannot_take_is_one_error(tmp_path, capsys):
    """Seeds share the diffusion trainer's range (config.SEED_RANGE, a signed 64-bit integer),
    checked exactly: 2⁶³ is one past the end (a float bound let it in)."""
    with pytest.raises(SystemExit) as exit_:   # argparse's own one-line error, exit status 2
        main(["train-autoencoder", "--data", "digits", "--out", str(tmp_path / "ae"), "--steps", "1",
              "--seed", str(2**63), "--no-progress"])
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(err) == 1 and "--seed" in err[0] and str(2**63) in err[0]
    assert not (tmp_path / "ae").exists()
