"""Latent datasets: encoded once, cached by content, re-encoded when the autoencoder or the data
change; the measured scale makes the latents unit-variance."""

import numpy as np
import pytest
import torch

from noisecraft import data
from noisecraft.autoencoders import AutoencoderRunConfig, load_autoencoder
from noisecraft.config import DataConfig
from noisecraft.io import tensors_to_bytes
from noisecraft.latent import latent_dataset
from noisecraft.nets.autoencoder import build_autoencoder


def write_autoencoder(path, seed=0, image_size=8, channels=1, factor=2, latent_channels=2):
    """A randomly initialised noisecraft autoencoder folder, as train-autoencoder writes one."""
    torch.manual_seed(seed)
    net = build_autoencoder("ae32", image_size=image_size, in_channels=channels, factor=factor,
                            latent_channels=latent_channels, base_channels=8)
    path.mkdir(parents=True, exist_ok=True)
    config = AutoencoderRunConfig(net=net.config, data=DataConfig(spec="test"))
    (path / "config.json").write_text(config.to_json())
    (path / "model.safetensors").write_bytes(
        tensors_to_bytes(net.state_dict(), {"step": "0", "scale_factor": "1.0"}))
    return path


def _pictures(path, n=64, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    np.savez(path, images=images, labels=np.arange(n) % 10)
    return str(path)


def test_cache_hit_and_invalidation(tmp_path):
    ae_dir = write_autoencoder(tmp_path / "ae")
    spec = _pictures(tmp_path / "pics.npz")
    first = latent_dataset(data.load(spec), load_autoencoder(ae_dir))
    again = latent_dataset(data.load(spec), load_autoencoder(ae_dir))
    assert not first.from_cache and again.from_cache and first.cache_key == again.cache_key
    assert torch.equal(first.mean, again.mean)

    # other autoencoder weights: a new key and a fresh encoding that differs from the old one
    write_autoencoder(ae_dir, seed=1)
    changed_ae = latent_dataset(data.load(spec), load_autoencoder(ae_dir))
    assert not changed_ae.from_cache and not torch.equal(changed_ae.mean, first.mean)

    # one pixel of the data changed: re-encoded too
    images = np.load(spec)["images"]
    images[3, 4, 4, 0] ^= 1
    np.savez(spec, images=images, labels=np.arange(64) % 10)
    changed_data = latent_dataset(data.load(spec), load_autoencoder(ae_dir))
    assert not changed_data.from_cache
    assert not torch.equal(changed_data.mean[3], changed_ae.mean[3])
    assert torch.equal(changed_data.mean[4], changed_ae.mean[4])

    # labels are part of the identity as well
    np.savez(spec, images=images, labels=(np.arange(64) + 1) % 10)
    assert not latent_dataset(data.load(spec), load_autoencoder(ae_dir)).from_cache


def test_items_are_scaled_posterior_means_with_unit_variance(tmp_path):
    ae = load_autoencoder(write_autoencoder(tmp_path / "ae"))
    pixels = data.load("digits")
    ds = latent_dataset(pixels, ae)
    # computed another way: encode every picture directly
    x = torch.stack([pixels[i]["x"] for i in range(len(pixels))])
    mean, _ = ae.encode(x)
    scale = 1 / float(mean.double().std())
    assert ds.latent.scale_factor == pytest.approx(scale, rel=1e-6)
    item = ds[5]
    assert torch.allclose(item["x"], mean[5] * scale, atol=1e-6)
    assert item["label"] == pixels[5]["label"] and item["key"] == pixels[5]["key"]
    z = torch.stack([ds[i]["x"] for i in range(len(ds))])
    assert float(z.double().std()) == pytest.approx(1.0, rel=1e-6)
    assert list(z.shape[1:]) == ds.latent.shape == [2, 4, 4]


def test_posterior_draws_have_unit_variance(tmp_path):
    """With posterior='sample' the scale comes from Var(mean) + E[exp(logvar)], with no draw;
    the drawn latents must then have variance 1 up to Monte-Carlo error."""
    ae = load_autoencoder(write_autoencoder(tmp_path / "ae"))
    ds = latent_dataset(data.load("digits"), ae, posterior="sample")
    torch.manual_seed(0)
    z = torch.stack([ds[i]["x"] for i in range(len(ds))]).double()
    # n = 1618 · 32 values (correlated within an example, so use the 1618 examples): the sd of a
    # sample variance is ≈ √(2/n) ≈ 0.035 per example-level value; 0.1 is ≈ 3 sd
    assert float(z.var()) == pytest.approx(1.0, abs=0.1)
    assert ds.latent.scale_factor < latent_dataset(data.load("digits"), ae).latent.scale_factor


def test_flip_encodes_mirrored_pictures(tmp_path):
    ae = load_autoencoder(write_autoencoder(tmp_path / "ae"))
    spec = _pictures(tmp_path / "pics.npz")
    ds = latent_dataset(data.load(spec), ae, flip=True)
    x = torch.stack([data.load(spec)[i]["x"] for i in range(64)])
    assert torch.allclose(ds.mean_flipped, ae.encode(x.flip(-1))[0], atol=1e-6)
    torch.manual_seed(0)
    picks = [torch.equal(ds[0]["x"], ds.mean_flipped[0] * ds.latent.scale_factor) for _ in range(200)]
    assert 60 < sum(picks) < 140  # p = ½, n = 200: sd ≈ 7, so ±40 is far outside chance
    with pytest.raises(ValueError, match="without flips"):
        latent_dataset(data.load(spec, flip=True), ae)
