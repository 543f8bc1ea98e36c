import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from noisecraft.cli import main
from noisecraft.metrics import inception


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NOISECRAFT_CACHE", str(tmp_path / "cache"))


def _digits_uint8():
    return np.round(load_digits().images * (255 / 16)).astype(np.uint8)[..., None]


def _fid_value(capsys) -> float:
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith("FID: ")
    return float(out.split()[1])


def test_fid_npz_vs_spec_and_identical_sets(tmp_path, capsys):
    images = _digits_uint8()
    np.savez(tmp_path / "a.npz", images=images[:800])
    np.savez(tmp_path / "noise.npz",
             images=np.random.default_rng(0).integers(0, 256, (800, 8, 8, 1), dtype=np.uint8))
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--features", "digits"]) == 0
    assert _fid_value(capsys) < 1e-6
    assert main(["fid", str(tmp_path / "a.npz"), "digits", "--features", "digits"]) == 0
    near = _fid_value(capsys)
    assert main(["fid", str(tmp_path / "noise.npz"), "digits", "--features", "digits"]) == 0
    far = _fid_value(capsys)
    assert near * 20 < far


def test_fid_reads_image_folders_and_writes_json(tmp_path, capsys):
    images = _digits_uint8()[:40]
    for name, part in (("a", images[:20]), ("b", images[20:])):
        (tmp_path / name).mkdir()
        for i, im in enumerate(part):
            Image.fromarray(im[..., 0]).save(tmp_path / name / f"{i:03d}.png")
    assert main(["fid", str(tmp_path / "a"), str(tmp_path / "b"), "--features", "digits", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["a"]["count"] == 20 and record["b"]["count"] == 20
    assert record["fid"] > 0 and record["feature_space"]["space"] == "digits"


def test_fid_user_errors_exit_2(tmp_path, capsys):
    assert main(["fid", str(tmp_path / "missing.npz"), "digits"]) == 2
    assert "missing.npz" in capsys.readouterr().err
    np.savez(tmp_path / "a.npz", images=_digits_uint8()[:10])
    bogus = tmp_path / "net.pt"
    bogus.write_bytes(b"x")
    assert main(["fid", str(tmp_path / "a.npz"), "digits", "--weights", str(bogus)]) == 2
    assert "sha256" in capsys.readouterr().err


def test_fid_split_applies_to_the_reference_only(tmp_path, capsys):
    """The README's `fid samples.npz DATA --split test`: samples.npz has no splits."""
    images = _digits_uint8()
    np.savez(tmp_path / "samples.npz", images=images[:30])
    np.savez(tmp_path / "split.npz", x_train=images[:1000], x_test=images[1000:1100])
    assert main(["fid", str(tmp_path / "samples.npz"), str(tmp_path / "split.npz"), "--split", "test",
                 "--features", "digits", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["a"]["split"], record["a"]["count"]) == ("all", 30)
    assert (record["b"]["split"], record["b"]["count"]) == ("test", 100)


def test_fid_reads_pytorch_fid_statistics_against_a_hand_computed_distance(tmp_path, capsys):
    from noisecraft.metrics.classifier import classifier_features

    images = _digits_uint8()[:300]
    np.savez(tmp_path / "a.npz", images=images)
    feats = classifier_features(images, "digits")
    mu, sigma = feats.mean(axis=0), np.cov(feats, rowvar=False)   # numpy's own estimator
    # Against N(mu + v, c² Σ) the Fréchet distance is, by hand,
    #   |v|² + tr Σ + c² tr Σ − 2 tr (c² Σ²)^{1/2} = |v|² + (1 − c)² tr Σ.
    v, c = np.linspace(-0.3, 0.5, len(mu)), 1.7
    np.savez(tmp_path / "stats.npz", mu=mu + v, sigma=c**2 * sigma)
    expected = v @ v + (1 - c) ** 2 * np.trace(sigma)
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "stats.npz"), "--features", "digits",
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    # float64 throughout; the eigen-decompositions of 64×64 matrices agree to ~1e-12 relative
    assert record["fid"] == pytest.approx(expected, rel=1e-9)
    assert record["b"]["statistics"] == str(tmp_path / "stats.npz") and record["b"]["dim"] == len(mu)
    # either side may be a statistics file; two of them need no images at all
    assert main(["fid", str(tmp_path / "stats.npz"), str(tmp_path / "a.npz"), "--features",
                 "digits"]) == 0
    assert _fid_value(capsys) == pytest.approx(expected, abs=5e-5)   # printed to 4 decimals
    np.savez(tmp_path / "same.npz", mu=mu + v, sigma=c**2 * sigma)
    assert main(["fid", str(tmp_path / "stats.npz"), str(tmp_path / "same.npz"), "--features",
                 "digits"]) == 0
    assert _fid_value(capsys) < 1e-6
    np.savez(tmp_path / "wrong.npz", mu=np.zeros(5), sigma=np.eye(5))
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "wrong.npz"), "--features",
                 "digits"]) == 2
    assert "wrong.npz: statistics of 5-d features" in capsys.readouterr().err


def test_fid_converts_rgba_and_resizes_on_request(tmp_path, capsys):
    grey = _digits_uint8()[:40, :, :, 0]
    alpha = np.random.default_rng(1).integers(0, 256, grey.shape, dtype=np.uint8)
    folder = tmp_path / "rgba"
    folder.mkdir()
    for i, (g, a) in enumerate(zip(grey, alpha, strict=True)):
        Image.fromarray(np.stack([g, g, g, a], axis=-1), mode="RGBA").save(folder / f"{i:03d}.png")
    # composited on white by hand: g·a/255 + 255·(1 − a/255), rounded (never a tie: 255 is odd)
    on_white = np.rint(grey.astype(np.float64) * alpha / 255 + 255 * (1 - alpha / 255))
    np.savez(tmp_path / "white.npz", images=on_white.astype(np.uint8)[..., None])
    assert main(["fid", str(folder), str(tmp_path / "white.npz"), "--features", "digits"]) == 2
    assert "channels" in capsys.readouterr().err           # RGBA is refused unless converted
    assert main(["fid", str(folder), str(tmp_path / "white.npz"), "--features", "digits",
                 "--channels", "1"]) == 0
    assert _fid_value(capsys) < 1e-6                        # the same pictures after conversion
    Image.fromarray(np.full((10, 12), 200, np.uint8)).save(folder / "zz_big.png")
    assert main(["fid", str(folder), "digits", "--features", "digits", "--channels", "1"]) == 2
    assert "image_size" in capsys.readouterr().err          # mixed sizes need --image-size
    assert main(["fid", str(folder), "digits", "--features", "digits", "--channels", "1",
                 "--image-size", "8", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["a"]["count"] == 41 and record["image_size"] == 8 and record["channels"] == 1


@pytest.mark.slow
def test_fid_inception_on_a_few_images(tmp_path, capsys):
    try:
        inception.locate_weights()
    except FileNotFoundError:
        pytest.skip("FID Inception weights not installed")
    images = _digits_uint8()
    # 8 images a side: the Inception net costs ~0.1-0.3 s per image on one CPU core
    np.savez(tmp_path / "a.npz", images=images[:8])
    np.savez(tmp_path / "b.npz", images=images[8:16])
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--batch-size", "4"]) == 0
    assert _fid_value(capsys) > 0
    assert list((tmp_path / "cache" / "reference").glob("*inception*.safetensors"))


def test_evaluate_writes_metrics_json(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(run_dir), "--steps", "3", "--batch-size", "8",
                 "--timesteps", "20", "--warmup", "1", "--sample-every", "0", "--no-progress"]) == 0
    assert main(["evaluate", str(run_dir), "--data", "digits", "--n", "24", "--steps", "3",
                 "--features", "digits", "--seed", "5"]) == 0
    captured = capsys.readouterr()
    assert "sample" in captured.err and "3/3" in captured.err  # sampling progress: 1 batch, 3 steps
    record = json.loads((run_dir / "metrics.json").read_text())
    for key in ("fid", "kid", "kid_std", "precision", "recall", "memorization", "classifier",
                "reference", "feature_space", "sampler", "steps", "seed", "n", "weights", "step"):
        assert key in record, key
    assert record["n"] == 24 and record["steps"] == 3 and record["seed"] == 5
    assert record["weights"] == "ema"
    assert record["reference"]["count"] == 24 and len(record["reference"]["content_sha256"]) == 64
    assert 0 <= record["precision"] <= 1 and 0 <= record["recall"] <= 1
    assert (run_dir / "metrics-memorization.png").is_file()
    assert "fid" in captured.out
    assert main(["evaluate", str(run_dir), "--data", "digits", "--metrics", "fid,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
