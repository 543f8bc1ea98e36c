"""Preprocessing steps against answers computed another way (plain float formulas, Pillow)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from noisecraft.data.transforms import (
    Preprocess,
    convert_channels,
    denormalize,
    prepare_array,
    random_flip,
    resize_center_crop,
    scale_to_unit,
    to_uint8,
)


def test_scaling_round_trips_every_8bit_value():
    pre = Preprocess(channels=1, height=16, width=16)
    v = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    x = scale_to_unit(v, pre)
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    # x = v / 127.5 - 1 written directly
    np.testing.assert_allclose(x[0].numpy(), v[..., 0] / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(to_uint8(x, pre)[0], v)


def test_uint8_float_and_tensor_inputs_scale_alike_channels_first():
    # uint8 arrays go through a 256-entry table, float arrays and tensors through arithmetic
    pre = Preprocess(channels=3, height=5, width=7, value_range=(3.0, 200.0))
    v = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    direct = 2 * (v.transpose(0, 3, 1, 2) - 3.0) / 197.0 - 1  # the formula, in float64
    for source in (v, v.astype(np.float64), torch.from_numpy(v)):
        x = scale_to_unit(source, pre)
        assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32
        np.testing.assert_allclose(x.numpy(), direct, atol=1e-6)
    assert scale_to_unit(v, pre).is_contiguous()  # a fresh array, not a view of the picture


def test_digit_range_maps_0_16_to_unit_interval_and_back():
    pre = Preprocess(channels=1, height=1, width=17, value_range=(0, 16))
    v = np.arange(17, dtype=np.uint8).reshape(1, 17, 1)
    x = scale_to_unit(v, pre)
    np.testing.assert_allclose(x.numpy().ravel(), np.arange(17) / 8 - 1, atol=1e-6)
    np.testing.assert_allclose(denormalize(x, pre).numpy().ravel(), np.arange(17), atol=1e-5)
    # On the 0..255 scale a PNG expects: 16 → 255, 8 → 128.
    assert to_uint8(x, pre)[0, 0, [0, 8, 16], 0].tolist() == [0, 128, 255]


def test_alpha_is_composited_on_white():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgb = convert_channels(rgba, 3)
    a = rgba[..., 3:4] / 255.0
    exact = rgba[..., :3] * a + 255 * (1 - a)
    assert np.abs(rgb - exact).max() <= 0.5 + 1e-9  # rounded to nearest
    # fully transparent → white, fully opaque → unchanged
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    rgb = convert_channels(rgba, 3)
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == rgba[0, 1, :3].tolist()


def test_gray_matches_pillow_luma():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ours = convert_channels(rgb, 1)[..., 0].astype(int)
    pillow = np.asarray(Image.fromarray(rgb, "RGB").convert("L")).astype(int)
    assert np.abs(ours - pillow).max() <= 1  # Pillow rounds in fixed point


def test_gray_to_rgb_and_rgba():
    g = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    rgb = convert_channels(g, 3)
    assert (rgb == g).all() and rgb.shape == (4, 4, 3)
    rgba = convert_channels(g, 4)
    assert (rgba[..., :3] == g).all() and (rgba[..., 3] == 255).all()


def test_center_crop_takes_the_middle():
    # Width 20, height 40, size 20: no resize, only the rows 10..30 survive.
    a = np.arange(40 * 20, dtype=np.int64).reshape(40, 20) % 251
    a = a.astype(np.uint8)[..., None]
    np.testing.assert_array_equal(resize_center_crop(a, 20), a[10:30])


def test_resize_of_constant_picture_is_constant_and_square():
    a = np.full((30, 50, 3), 77, np.uint8)
    out = resize_center_crop(a, 12)
    assert out.shape == (12, 12, 3) and (out == 77).all()


def test_prepare_array_order_composites_before_resizing():
    # A transparent red picture: compositing first gives pure white; resizing first could not
    # change that, but a premultiplication bug would give pink.
    a = np.zeros((10, 10, 4), np.uint8)
    a[..., 0] = 255
    pre = Preprocess(channels=3, height=5, width=5, image_size=5)
    assert (prepare_array(a, pre) == 255).all()


def test_flip_mirrors_exactly_and_both_ways_occur():
    torch.manual_seed(0)
    pre = Preprocess(channels=1, height=2, width=3, flip=True)
    x = torch.arange(6.0).reshape(1, 2, 3)
    seen = set()
    for _ in range(64):  # P(one orientation never seen) = 2 · 2^-64
        y = random_flip(x, pre)
        assert torch.equal(y, x) or torch.equal(y, x.flip(-1))
        seen.add(torch.equal(y, x))
    assert seen == {True, False}
    assert torch.equal(random_flip(x, Preprocess(channels=1, height=2, width=3)), x)


def test_preprocess_json_round_trip_and_unknown_key():
    pre = Preprocess(channels=3, height=32, width=32, image_size=32, flip=True, value_range=(0, 16))
    d = json.loads(json.dumps(pre.to_dict()))
    assert Preprocess.from_dict(d) == pre
    d["colour"] = "blue"
    with pytest.raises(ValueError, match="'colour'"):
        Preprocess.from_dict(d)
    with pytest.raises(ValueError, match="channels"):
        Preprocess(channels=2)


def test_to_uint8_checks_shape_and_channels():
    pre = Preprocess(channels=3, height=4, width=4)
    out = to_uint8(torch.zeros(2, 3, 4, 4), pre)
    assert out.shape == (2, 4, 4, 3) and out.dtype == np.uint8
    assert (out == 128).all()  # 0 ↦ round(127.5) = 128 (round half to even gives 128)
    with pytest.raises(ValueError, match="1 channels"):
        to_uint8(torch.zeros(2, 1, 4, 4), pre)
    with pytest.raises(ValueError, match="vector"):
        to_uint8(torch.zeros(2, 2), Preprocess(kind="vector", dim=2))
