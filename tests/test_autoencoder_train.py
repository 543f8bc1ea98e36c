"""train-autoencoder: the loss equation, exact resume, and the run folder loads through the contract."""

import math

import pytest
import torch
from safetensors.torch import load_file

from noisecraft import data
from noisecraft.autoencoders import AutoencoderTrainConfig, load_autoencoder
from noisecraft.cli import main
from noisecraft.nets.autoencoder import build_autoencoder
from noisecraft.train.autoencoder import AutoencoderTrainer, ae_losses, new_autoencoder_config


def test_kl_term_is_the_gaussian_kl():
    """Σ ½(μ² + σ² − 1 − log σ²) is KL(N(μ, σ²) ‖ N(0, 1)); checked by Monte Carlo on one value."""
    torch.manual_seed(0)
    net = build_autoencoder("ae32", image_size=8, factor=2, base_channels=8, latent_channels=1)
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    net.requires_grad_(False)
    _, _, kl = ae_losses(net, x, 0.0, "l1", None)
    mean, logvar = net.encode(x)
    mu, s = mean.flatten()[0].double(), torch.exp(0.5 * logvar.flatten()[0]).double()
    z = mu + s * torch.randn(400_000, dtype=torch.float64)
    # log q(z) − log p(z) averaged over z ~ q
    mc = (-0.5 * ((z - mu) / s) ** 2 - torch.log(s) + 0.5 * z ** 2).mean()
    exact = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()
    # Monte-Carlo error of one value: sd of the summand / √n ≲ 0.01 here; compare value 0 only
    one = 0.5 * (mu ** 2 + s ** 2 - 1 - 2 * torch.log(s))
    assert float(mc) == pytest.approx(float(one), abs=0.01)
    assert float(kl) == pytest.approx(float(exact), rel=1e-5)


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
    from noisecraft.train.autoencoder import psnr, reconstruction_psnr

    ds, config = _config(2)
    trainer = AutoencoderTrainer(config, tmp_path / "ae", ds, device="cpu", progress=False)
    r = trainer.fit()
    assert r.reference_images == 512
    ae = load_autoencoder(tmp_path / "ae")
    assert r.scale_factor == ae.scale_factor
    net = trainer.net.eval()
    x = torch.stack([ds[i]["x"] for i in range(10)])
    with torch.no_grad():
        whole = float(psnr(net.decode(net.encode(x)[0]), x).mean())
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
