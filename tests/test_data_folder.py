"""Image-folder reader: labels, captions, splits, conversions and every bad-input case."""

import numpy as np
import pytest
from PIL import Image

from noisecraft import DataError
from noisecraft.data import load


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return array


def rgb(seed, h=6, w=6):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_class_subfolders_captions_and_exact_pixels(tmp_path):
    cat = save(tmp_path / "cat" / "a.png", rgb(0))
    save(tmp_path / "dog" / "deep" / "b.png", rgb(1))
    save(tmp_path / "ant" / "c.png", rgb(2))
    (tmp_path / "cat" / "a.txt").write_text("a sleepy cat\n", encoding="utf-8")
    (tmp_path / "cat" / "a.json").write_text("{}")  # metadata sidecar, not an image
    ds = load(str(tmp_path))
    assert ds.info["classes"] == ["ant", "cat", "dog"] and ds.info["num_classes"] == 3
    items = {ds[i]["key"]: ds[i] for i in range(len(ds))}
    assert sorted(items) == ["ant/c", "cat/a", "dog/deep/b"]
    assert [items[k]["label"] for k in ("ant/c", "cat/a", "dog/deep/b")] == [0, 1, 2]
    assert items["cat/a"]["caption"] == "a sleepy cat" and items["ant/c"]["caption"] == ""
    np.testing.assert_allclose(items["cat/a"]["x"].permute(1, 2, 0).numpy(), cat / 127.5 - 1,
                               atol=1e-6)  # PNG is lossless


def test_flat_folder_has_no_labels_and_no_test_split(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", rgb(i))
    ds = load(str(tmp_path))
    assert ds.labels is None and ds[0]["label"] == -1 and ds.info["num_classes"] is None
    with pytest.raises(DataError, match="no test split"):
        load(str(tmp_path), split="test")


def test_split_subfolders_share_one_class_list(tmp_path):
    save(tmp_path / "train" / "a" / "0.png", rgb(0))
    save(tmp_path / "train" / "b" / "0.png", rgb(1))
    save(tmp_path / "test" / "b" / "0.png", rgb(2))
    test = load(str(tmp_path), split="test")
    assert len(test) == 1 and test[0]["label"] == 1 and test.info["classes"] == ["a", "b"]
    assert len(load(str(tmp_path), split="all")) == 3


def test_rgba_kept_or_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0], a[:2, :, 3] = 200, 255  # top half opaque red-ish, bottom half transparent
    save(tmp_path / "x.png", a, "RGBA")
    assert load(str(tmp_path)).info["channels"] == 4
    x = load(str(tmp_path), channels=3)[0]["x"]
    assert x.shape == (3, 4, 4)
    np.testing.assert_allclose(x[:, 2:].numpy(), 1.0)  # transparent → white
    np.testing.assert_allclose(x[0, :2].numpy(), 200 / 127.5 - 1, atol=1e-6)


def test_mixed_channels_need_an_explicit_choice(tmp_path):
    save(tmp_path / "a.png", rgb(0))
    save(tmp_path / "b.png", rgb(1)[..., 0])
    with pytest.raises(DataError, match=r"b\.png.*1 channels.*a\.png.*3.*channels="):
        load(str(tmp_path))
    ds = load(str(tmp_path), channels=3)
    assert ds[1]["x"].shape == (3, 6, 6) and (ds[1]["x"][0] == ds[1]["x"][2]).all()


def test_mixed_sizes_need_image_size(tmp_path):
    save(tmp_path / "a.png", rgb(0, 6, 6))
    save(tmp_path / "b.jpg", rgb(1, 10, 20))
    with pytest.raises(DataError, match=r"b\.jpg.*20x10.*image_size"):
        load(str(tmp_path))
    ds = load(str(tmp_path), image_size=5, flip=True)
    assert ds[1]["x"].shape == (3, 5, 5) and ds.preprocess.flip


def test_truncated_image_is_named_or_skipped_with_a_count(tmp_path):
    save(tmp_path / "good.png", rgb(0, 32, 32))
    save(tmp_path / "cut.png", rgb(1, 32, 32))
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: not a readable image"):
        load(str(tmp_path))
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 file\(s\) that could not be read: cut\.png "
                                         r"\(cut\.png: not a readable image"):
        ds = load(str(tmp_path), skip_bad=True)
    assert len(ds) == 1 and ds.skipped == 1 and ds.skipped_files[0].endswith("cut.png")


def test_non_image_file_is_an_error(tmp_path):
    save(tmp_path / "a.png", rgb(0))
    (tmp_path / "notes.md").write_text("# not a picture")
    with pytest.raises(DataError, match=r"notes\.md: not a readable image"):
        load(str(tmp_path))


def test_empty_and_unreadable_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty.*no image files"):
        load(str(empty))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no readable image"):
        load(str(junk), skip_bad=True)


def test_loose_pictures_beside_class_folders_are_an_error(tmp_path):
    save(tmp_path / "cat" / "a.png", rgb(0))
    save(tmp_path / "stray.png", rgb(1))
    with pytest.raises(DataError, match=r"stray\.png.*class subfolders"):
        load(str(tmp_path))


def test_skip_bad_counts_and_names_what_it_skipped_in_one_line(tmp_path):
    for i in range(2):
        save(tmp_path / f"good{i}.png", rgb(i, 8, 8))
    for i in range(5):  # a decoder error can span lines; the warning must still be one
        (tmp_path / f"bad{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 20)
    with pytest.warns(UserWarning) as record:
        ds = load(str(tmp_path), skip_bad=True)
    assert len(record) == 1
    message = str(record[0].message)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{tmp_path}: skipped 5 of 7 file(s)"), message
    assert "bad0.png, bad1.png, bad2.png and 2 more" in message, message
    assert len(ds) == 2 and ds.skipped == 5
    assert ds.skipped_files == [str(tmp_path / f"bad{i}.png") for i in range(5)]
