import numpy as np
import pytest
from PIL import Image

from noisecraft import viz


def test_grid_places_each_image_in_its_cell():
    images = np.zeros((5, 2, 3, 1), dtype=np.uint8)
    for i in range(5):
        images[i] = 10 * (i + 1)
    grid = np.asarray(viz.image_grid(images, nrow=3, padding=1, scale=2))
    # 2 rows of 3 cells of (2·2) × (3·2) pixels, 1-pixel gaps and border
    assert grid.shape == (2 * 4 + 3, 3 * 6 + 4, 3)
    for i in range(5):
        r, c = divmod(i, 3)
        y, x = 1 + r * 5, 1 + c * 7
        assert (grid[y:y + 4, x:x + 6] == 10 * (i + 1)).all()
    assert (grid[6:10, 15:21] == 255).all()  # the sixth cell is empty background
    assert (grid[0] == 255).all()


def test_grid_channels():
    rgb = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    assert tuple(np.asarray(viz.image_grid(rgb, padding=0, scale=1))[0, 0]) == (200, 0, 0)
    rgba = np.zeros((1, 4, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: the white background shows
    assert tuple(np.asarray(viz.image_grid(rgba, padding=0, scale=1))[0, 0]) == (255, 255, 255)
    two = np.zeros((1, 4, 4, 2), dtype=np.uint8)
    two[..., 1] = 90  # channels side by side, nothing dropped
    out = np.asarray(viz.image_grid(two, padding=0, scale=1))
    assert out.shape == (4, 8, 3) and (out[:, :4] == 0).all() and (out[:, 4:] == 90).all()
    gray = np.full((2, 8, 8), 7, dtype=np.uint8)  # (N, H, W) is one channel
    assert np.asarray(viz.image_grid(gray, scale=1)).shape[2] == 3


def test_small_images_are_magnified():
    grid = viz.image_grid(np.zeros((1, 8, 8, 1), dtype=np.uint8), padding=0)
    assert grid.size == (48, 48)


@pytest.mark.parametrize("bad", [np.zeros((2, 4, 4, 1), dtype=np.float32),
                                 np.zeros((4, 4, 1, 1, 1), np.uint8), np.zeros((0, 4, 4, 1), np.uint8)])
def test_grid_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        viz.image_grid(bad)


def test_forward_and_reverse_figures_have_one_cell_per_frame():
    frames = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 1), dtype=np.uint8)
    fwd = viz.forward_process(frames, [0, 10, 20, 50, 100, 1000], scale=4)
    assert fwd.width == 6 * (32 + 2) + 2 and fwd.height > 32 + 4  # a caption row above
    x_t = np.random.default_rng(1).integers(0, 255, (5, 3, 8, 8, 1), dtype=np.uint8)
    rev = viz.reverse_process(x_t, x_t, [800, 600, 400, 200, 0], scale=4)
    assert rev.height > 6 * (32 + 2)  # two rows (x_t, x̂_0) for each of 3 examples
    with pytest.raises(ValueError, match="times"):
        viz.forward_process(frames, [0, 1])
    with pytest.raises(ValueError, match="x0_hat"):
        viz.reverse_process(x_t, x_t[:, :2], [0] * 5)


def test_scatter_maps_points_to_pixels():
    img = viz.scatter(np.array([[0.0, 0.0]]), size=100, radius=2, limits=(-1, 1, -1, 1))
    a = np.asarray(img)
    margin = 24
    centre = a[margin + 50, margin + 50]
    assert tuple(centre) == (31, 90, 200)
    corner = viz.scatter(np.array([[1.0, 1.0]]), size=100, radius=2, limits=(-1, 1, -1, 1))
    # (1, 1) is the top-right corner: y grows upwards
    assert tuple(np.asarray(corner)[margin + 1, margin + 99]) == (31, 90, 200)
    with pytest.raises(ValueError, match="shape"):
        viz.scatter(np.zeros((3, 3)))


def test_scatter_uses_the_data_range_and_counts_samples_outside_it():
    margin, size = 24, 100
    reference = np.array([[-1.0, -1.0], [1.0, 1.0]])
    samples = np.array([[0.0, 0.0], [1000.0, 1000.0]])          # one wild sample
    a = np.asarray(viz.scatter(samples, reference=reference, size=size, radius=2))
    # limits = the data's box ± 5 %: (0, 0) sits in the centre, not squashed into a corner
    assert tuple(a[margin + size // 2, margin + size // 2]) == (31, 90, 200)
    assert tuple(a[margin + 5, margin + size - 5]) == (170, 170, 170)   # data point (1, 1)
    without = np.asarray(viz.scatter(samples, reference=None, size=size, radius=2))
    assert not np.array_equal(a, without)


def test_save_writes_png_atomically(tmp_path):
    path = tmp_path / "g.png"
    viz.save(viz.image_grid(np.zeros((4, 8, 8, 1), dtype=np.uint8)), path)
    assert Image.open(path).format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]
