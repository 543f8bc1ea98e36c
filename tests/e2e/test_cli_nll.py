"""`noisecraft nll` end to end on a tiny run trained for a few steps on 8-bit 8×8 digits."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from noisecraft import data
from noisecraft.cli import main
from noisecraft.train import TrainConfig, Trainer, new_run_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_helpers import SMALL_UNET  # noqa: E402

FAST = ["--rtol", "1e-3", "--atol", "1e-3"]   # a loose ODE: the CLI's plumbing is under test


@pytest.fixture(scope="module")
def run8(tmp_path_factory):
    """(run dir, .npz spec, a test picture's path): 8-bit digits with a train/test split."""
    root = tmp_path_factory.mktemp("nll")
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    spec = str(root / "digits8.npz")
    np.savez(spec, x_train=images[:1500], y_train=digits.target[:1500],
             x_test=images[1500:], y_test=digits.target[1500:])
    dataset = data.load(spec)
    train = TrainConfig(steps=2, batch_size=16, lr=1e-3, warmup=1, log_every=1, sample_every=0,
                        checkpoint_every=0, ema_decay=0.9)
    config = new_run_config(dataset, spec, net="tiny", net_overrides=SMALL_UNET, T=50, train=train)
    Trainer(config, root / "run", dataset, device="cpu", progress=False).fit()
    picture = root / "test0.png"
    Image.fromarray(images[1500]).save(picture)
    return str(root / "run"), spec, str(picture)


def _record(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_nll_over_a_split_in_both_conventions(run8, capsys):
    run_dir, spec, _ = run8
    assert main(["nll", run_dir, "--data", spec, "--n", "5", "--json", *FAST]) == 0
    eight_bit = _record(capsys)
    assert eight_bit["n"] == 5 and eight_bit["split"] == "test" and eight_bit["units"] == "bits/dim"
    assert eight_bit["convention"].startswith("8-bit") and "dequantisation" in eight_bit["convention"]
    assert math.isfinite(eight_bit["mean"]) and eight_bit["standard_error"] > 0
    assert main(["nll", run_dir, "--data", spec, "--n", "5", "--json", "--continuous", *FAST]) == 0
    continuous = _record(capsys)
    assert continuous["convention"].startswith("continuous")
    # The stated convention: dequantised 8-bit bits/dim = continuous bits/dim + log₂ 127.5, up to
    # the dequantisation noise (u of width 2/255 moves an untrained net's log-density very little).
    assert abs(eight_bit["mean"] - continuous["mean"] - math.log2(127.5)) < 0.05


def test_nll_by_the_bound_prints_mean_and_standard_error(run8, capsys):
    run_dir, spec, _ = run8
    assert main(["nll", run_dir, "--data", spec, "--n", "4", "--method", "vlb",
                 "--variance", "beta"]) == 0
    out = capsys.readouterr().out
    assert "vlb (variance beta)" in out and "discretised decoder" in out
    assert "n = 4:" in out and "bits/dim (mean ± standard error)" in out


def test_nll_of_one_image_with_its_percentile(run8, capsys):
    run_dir, spec, picture = run8
    assert main(["nll", run_dir, "--image", picture, "--data", spec, "--n", "6", "--json",
                 *FAST]) == 0
    record = _record(capsys)
    assert record["image"] == picture and record["n"] == 6
    assert 0.0 <= record["percentile"] <= 100.0
    # The picture is the split's first example, read back from PNG through the run's own
    # preprocessing: its score is of the split's kind (only the probe and u draws differ).
    assert math.isfinite(record["image_bits_per_dim"])
    assert abs(record["image_bits_per_dim"] - record["mean"]) < 1.0


def test_nll_user_errors_exit_2(run8, tmp_path, capsys):
    run_dir, spec, _ = run8
    assert main(["nll", run_dir]) == 2
    assert "--data DATA" in capsys.readouterr().err
    assert main(["nll", run_dir, "--image", str(tmp_path / "none.png"), "--data", spec,
                 "--n", "1", *FAST]) == 2
    assert "none.png" in capsys.readouterr().err
    assert main(["nll", run_dir, "--data", spec, "--variance", "beta"]) == 2
    assert "--method vlb only" in capsys.readouterr().err
    assert main(["nll", str(tmp_path / "no_run"), "--data", spec]) == 2
    assert "no_run" in capsys.readouterr().err
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(big)
    assert main(["nll", run_dir, "--image", str(big), "--data", spec, "--n", "1", *FAST]) == 2
    assert "(1, 8, 8)" in capsys.readouterr().err


def test_image_percentile_uses_a_bounded_reference_set_and_says_so(run8, capsys, monkeypatch):
    from noisecraft import scoring

    run_dir, spec, picture = run8
    monkeypatch.setattr(scoring, "IMAGE_REFERENCE_N", 7)   # the default --n of --image
    assert main(["nll", run_dir, "--image", picture, "--data", spec, "--json", *FAST]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n"] == 7
    assert "among the first 7 examples" in captured.err
    assert "nll" in captured.err and "7/7" in captured.err            # the progress bar
    assert main(["nll", run_dir, "--image", picture, "--data", spec, "--n", "3", "--json",
                 "--no-progress", *FAST]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n"] == 3
    assert captured.err.strip().splitlines() == [
        f"noisecraft: ranking {picture} among the first 3 examples of {spec} [test] (--n 3)"]
