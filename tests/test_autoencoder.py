"""The autoencoder contract: shapes, the padding crop, the latent scale, and loading errors."""

import json

import pytest
import torch

from noisecraft.autoencoders import LoadedAutoencoder, load_autoencoder
from noisecraft.errors import RunError
from noisecraft.nets.autoencoder import FACTORS, build_autoencoder


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("size", [8, 28, 32])
def test_encode_decode_shapes(factor, size):
    torch.manual_seed(0)
    ae = build_autoencoder("ae32", image_size=size, factor=factor, latent_channels=3, in_channels=1,
                           base_channels=8)
    x = torch.rand(2, 1, size, size) * 2 - 1
    mean, logvar = ae.encode(x)
    # the latent side is the padded side / f, and the padded side is the next multiple of 4 f
    side = -(-size // (4 * factor)) * 4
    assert mean.shape == logvar.shape == (2, 3, side, side) == (2, *ae.latent_shape((1, size, size)))
    assert ae.decode(mean).shape == x.shape


def test_padding_is_cropped_from_the_decoded_centre():
    """28 px pads to 32 (2 px a side by edge replication); decode crops the same 2 px back."""
    ae = build_autoencoder("ae32", image_size=28, factor=4, base_channels=8)
    ae.decoder = torch.nn.Identity()  # decode(z) = the centre crop of z itself
    z = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32)
    assert torch.equal(ae.decode(z), z[..., 2:30, 2:30])


def test_scaled_latent_round_trip():
    """to_latent = (mean − shift) · scale; from_latent undoes it before decoding."""
    torch.manual_seed(0)
    net = build_autoencoder("ae32", image_size=8, factor=2, base_channels=8).eval()
    ae = LoadedAutoencoder(module=net, kind="noisecraft", path=None, sha256="", scale_factor=0.37,
                           shift_factor=0.25, latent_channels=4, factor=2)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        mean, logvar = net.encode(x)
        assert torch.allclose(ae.to_latent(x), (mean - 0.25) * 0.37)
        assert torch.allclose(ae.from_latent(ae.to_latent(x)), net.decode(mean), atol=1e-6)
        # a posterior draw: z = mean + exp(½ logvar) ε with the generator's ε
        g = torch.Generator().manual_seed(5)
        eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
        drawn = ae.to_latent(x, sample=True, generator=g)
        assert torch.allclose(drawn, (mean + torch.exp(0.5 * logvar) * eps - 0.25) * 0.37)


def test_refuses_folders_that_are_not_autoencoders(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        load_autoencoder(tmp_path / "nope")
    with pytest.raises(RunError, match="config.json: missing"):
        load_autoencoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"net": {}, "schedule": {}, "version": 1}))
    with pytest.raises(RunError, match="is a diffusion run, not an autoencoder"):
        load_autoencoder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="config.json: not valid JSON"):
        load_autoencoder(tmp_path)
