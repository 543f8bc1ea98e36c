"""EDM from the command line: train an EDM-preconditioned run on moons with EDM's log-normal
noise levels, sample it with EDM's sampler and the others, score it. The maths is tested in
tests/test_edm.py; here the settings' path from the flags to config.json and back into a
Denoiser is under test."""

import json

import numpy as np
import pytest

from noisecraft import data, losses
from noisecraft.cli import main
from noisecraft.train import TrainConfig, load_run, new_run_config

EDM_FLAGS = ["--prediction", "edm", "--time-sampler", "log-normal"]


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("edm") / "run"
    assert main(["train", "--data", "moons", *EDM_FLAGS, "--timesteps", "200", "--steps", "200",
                 "--batch-size", "64", "--lr", "2e-3", "--sample-every", "0", "--out", str(run_dir),
                 "--no-progress"]) == 0
    return run_dir


def test_config_json_records_the_edm_settings_and_the_run_rebuilds_them(edm_run):
    config = json.loads((edm_run / "config.json").read_text())
    assert config["prediction"] == "edm" and config["train"]["time_sampler"] == "log-normal"
    run = load_run(edm_run)
    assert run.denoiser.prediction == "edm" and run.denoiser.sigma_data == 0.5
    python = new_run_config(data.load("moons"), "moons", T=200, prediction="edm",
                            train=TrainConfig(time_sampler="log-normal")).to_dict()
    for key in ("schedule", "prediction", "net"):
        assert python[key] == config[key], key
    assert python["train"]["time_sampler"] == config["train"]["time_sampler"]
    assert isinstance(losses.time_sampler("log-normal", run.schedule), losses.LogNormalTimeSampler)
    # The F-loss (EDM's λ-weighted loss) logged every 50 steps falls: the objective reaches the net.
    log = [json.loads(line) for line in (edm_run / "log.jsonl").read_text().splitlines()]
    values = [entry["loss"] for entry in log if "loss" in entry]
    assert len(values) == 4 and values[-1] < values[0]


@pytest.mark.parametrize("sampler", ["edm", "heun", "dpmpp-2m", "ddim"])
def test_samplers_draw_from_an_edm_run(edm_run, tmp_path, sampler):
    out = tmp_path / sampler
    assert main(["sample", str(edm_run), "--sampler", sampler, "--steps", "8", "--n", "64",
                 "--out", str(out), "--no-progress"]) == 0
    x = np.load(f"{out}.npz")["samples"]
    assert x.shape == (64, 2) and np.isfinite(x).all()


@pytest.mark.parametrize("method", ["ode", "vlb"])
def test_nll_scores_an_edm_run(edm_run, capsys, method):
    assert main(["nll", str(edm_run), "--data", "moons", "--n", "8", "--continuous", "--method",
                 method, "--rtol", "1e-3", "--atol", "1e-3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["n"] == 8 and np.isfinite(record["mean"])


def test_explain_draws_an_edm_run(edm_run, tmp_path):
    page = tmp_path / "explain.html"
    assert main(["explain", str(edm_run), "--out", str(page), "--samples", "32", "--held-out",
                 "16", "--steps", "6", "--no-progress"]) == 0
    assert page.stat().st_size > 10_000
