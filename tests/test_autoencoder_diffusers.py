"""A diffusers AutoencoderKL folder through noisecraft's contract equals diffusers' own results."""

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.slow  # importing diffusers alone takes ~12 s of CPU

from noisecraft.autoencoders import load_autoencoder  # noqa: E402
from noisecraft.errors import RunError  # noqa: E402


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=2, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.37, shift_factor=0.1)
    # a random init has near-zero log-variances; perturb every weight so the comparison means something
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(path)
    return path


def test_encode_decode_and_scale_equal_diffusers(vae_dir):
    ours = load_autoencoder(vae_dir)
    theirs = diffusers.AutoencoderKL.from_pretrained(vae_dir, local_files_only=True).eval()
    assert ours.kind == "diffusers" and ours.scale_factor == pytest.approx(0.37)
    assert ours.shift_factor == pytest.approx(0.1) and ours.factor == 2
    assert ours.latent_shape((3, 16, 16)) == (2, 8, 8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        dist = theirs.encode(x).latent_dist
        mean, logvar = ours.encode(x)
        # identical weights and graph: only float32 summation order may differ
        torch.testing.assert_close(mean, dist.mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logvar, dist.logvar, rtol=1e-5, atol=1e-6)
        # Stable Diffusion's convention: latents = (mean − shift) · scaling_factor ...
        z = (dist.mean - theirs.config.shift_factor) * theirs.config.scaling_factor
        torch.testing.assert_close(ours.to_latent(x), z, rtol=1e-5, atol=1e-6)
        # ... and images = decode(latents / scaling_factor + shift)
        expected = theirs.decode(z / theirs.config.scaling_factor + theirs.config.shift_factor).sample
        torch.testing.assert_close(ours.from_latent(z), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.decode(dist.mean), theirs.decode(dist.mean).sample,
                                   rtol=1e-5, atol=1e-6)


def test_image_size_must_divide_by_the_factor(vae_dir):
    with pytest.raises(ValueError, match="do not divide by the autoencoder's downsampling factor 2"):
        load_autoencoder(vae_dir).latent_shape((3, 15, 15))


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupt_or_mismatched_folders_name_the_file(vae_dir, tmp_path):
    corrupt = _copy(vae_dir, tmp_path / "corrupt")
    weights = corrupt / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    with pytest.raises(RunError, match="diffusion_pytorch_model.safetensors: not a readable"):
        load_autoencoder(corrupt)

    mismatched = _copy(vae_dir, tmp_path / "mismatched")
    config = json.loads((mismatched / "config.json").read_text())
    config["latent_channels"] = 3
    (mismatched / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match="diffusion_pytorch_model.safetensors: does not fit"):
        load_autoencoder(mismatched)

    no_weights = _copy(vae_dir, tmp_path / "pickle")
    weights = no_weights / "diffusion_pytorch_model.safetensors"
    weights.rename(no_weights / "diffusion_pytorch_model.bin")
    with pytest.raises(RunError, match="diffusion_pytorch_model.safetensors: missing"):
        load_autoencoder(no_weights)


def test_a_latent_run_on_a_diffusers_folder_samples_pictures(tmp_path):
    """train --autoencoder <AutoencoderKL folder> → sample: the pictures come back at data shape."""
    import numpy as np

    from noisecraft.cli import main

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=8, shift_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--autoencoder", str(tmp_path / "vae"), "--out", str(run),
                 "--steps", "2", "--batch-size", "16", "--timesteps", "20", "--sample-every", "0",
                 "--no-progress"]) == 0
    latent = json.loads((run / "config.json").read_text())["latent"]
    assert latent["kind"] == "diffusers" and latent["shape"] == [2, 4, 4]
    assert latent["shift_factor"] == 0.5 and latent["scale_factor"] != pytest.approx(0.18215)
    assert main(["sample", str(run), "--n", "3", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
