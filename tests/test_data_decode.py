"""Image decoding: the simplejpeg fast path against Pillow (the reference), and bad bytes."""

import io
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from noisecraft.data import decode
from noisecraft.data.decode import ImageDecodeError, decode_image

needs_simplejpeg = pytest.mark.skipif(decode.simplejpeg is None, reason="simplejpeg not installed")


def encode(array, fmt="JPEG", mode=None, **options):
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format=fmt, **options)
    return buf.getvalue()


def pillow(data):
    """The reference: Pillow, as the readers decoded every picture before the fast path."""
    return decode_image(data, "jpg", use_simplejpeg=False)


def picture(h=24, w=40, seed=0):
    """A smooth picture plus noise, so JPEG's chroma subsampling and IDCT both matter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def assert_same_pixels(a, b):
    # Both decoders are libjpeg-turbo with the accurate integer IDCT and smooth upsampling, so
    # today they agree exactly; allow one 8-bit step for a future libjpeg-turbo in either wheel,
    # never more, and on average almost nothing.
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01


@needs_simplejpeg
def test_cifar10_jpegs_decode_like_pillow(shared_data):
    with tarfile.open(os.path.join(shared_data, "cifar10", "test-0000.tar.gz")) as t:
        jpgs = [t.extractfile(m).read() for m in t if m.name.endswith(".jpg")][:500]
    for data in jpgs:
        fast = decode_image(data, "jpg")
        assert fast.shape == (32, 32, 3)
        assert_same_pixels(fast, pillow(data))


@needs_simplejpeg
@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
def test_colour_jpegs_of_odd_sizes_decode_like_pillow(subsampling):
    data = encode(picture(37, 53), quality=85, subsampling=subsampling)
    assert_same_pixels(decode_image(data, "jpeg"), pillow(data))


@needs_simplejpeg
def test_gray_jpeg_keeps_one_channel():
    data = encode(picture()[..., 0], mode="L")
    fast = decode_image(data, "jpg")
    assert fast.shape == (24, 40, 1)
    assert_same_pixels(fast, pillow(data))


def test_cmyk_jpeg_goes_to_pillow_and_becomes_rgb():
    data = encode(np.asarray(Image.fromarray(picture()).convert("CMYK")), mode="CMYK")
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data, "jpg"), ref)


def test_jpeg_pillow_tolerates_is_still_read():
    # libjpeg warns about junk before a marker; simplejpeg (strict) refuses, Pillow reads on
    data = encode(picture(), quality=90)
    sos = data.index(b"\xff\xda")
    damaged = data[:sos] + b"\x00\x01\x02" + data[sos:]
    np.testing.assert_array_equal(decode_image(damaged, "jpg"), pillow(data))


@pytest.mark.parametrize("fast", [True, False])
def test_unreadable_bytes_raise(fast):
    data = encode(picture(), quality=90)
    for bad in (data[: len(data) - 60], data[:100], b"", b"\xff\xd8 not a jpeg", b"\x89PNG broken"):
        with pytest.raises(ImageDecodeError):
            decode_image(bad, "jpg", use_simplejpeg=fast)


def test_png_keeps_natural_channels():
    rgba = np.dstack([picture(), np.full((24, 40), 128, np.uint8)])
    assert decode_image(encode(rgba, "PNG"), "png").shape == (24, 40, 4)
    np.testing.assert_array_equal(decode_image(encode(picture(), "PNG"), "png"), picture())
    # the extension only picks the fast path: a PNG named .jpg is still read
    np.testing.assert_array_equal(decode_image(encode(picture(), "PNG"), "jpg"), picture())


def test_pillow_pixel_limit_holds_on_the_fast_path_too(monkeypatch):
    data = encode(picture(), quality=90)  # 24 x 40 = 960 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above twice the limit
    with pytest.raises(ImageDecodeError, match="exceeds limit"):
        decode_image(data, "jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # no limit at all
    assert decode_image(data, "jpg").shape == (24, 40, 3)
