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
    record = json.loads((run_dir / "metrics.json").read_text())
    for key in ("fid", "kid", "kid_std", "precision", "recall", "memorization", "classifier",
                "reference", "feature_space", "sampler", "steps", "seed", "n", "weights", "step"):
        assert key in record, key
    assert record["n"] == 24 and record["steps"] == 3 and record["seed"] == 5
    assert record["weights"] == "ema"
    assert record["reference"]["count"] == 24 and len(record["reference"]["content_sha256"]) == 64
    assert 0 <= record["precision"] <= 1 and 0 <= record["recall"] <= 1
    assert (run_dir / "metrics-memorization.png").is_file()
    assert "fid" in capsys.readouterr().out
    assert main(["evaluate", str(run_dir), "--data", "digits", "--metrics", "fid,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
