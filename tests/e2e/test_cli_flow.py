"""Flow matching from the command line: train a flow run on moons, sample it with every ODE
sampler, score it with both likelihoods. The maths is tested in tests/test_flow.py; here the
settings' path from the flags to config.json and back into a Denoiser is under test."""

import json

import numpy as np
import pytest

from noisecraft import Schedule, data
from noisecraft.cli import main
from noisecraft.train import TrainConfig, load_run, new_run_config

FLOW_FLAGS = ["--schedule", "flow", "--prediction", "flow", "--time-sampler", "logit-normal"]


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("flow") / "run"
    assert main(["train", "--data", "moons", *FLOW_FLAGS, "--timesteps", "200", "--steps", "200",
                 "--batch-size", "64", "--lr", "2e-3", "--sample-every", "0", "--out", str(run_dir),
                 "--no-progress"]) == 0
    return run_dir


def test_config_json_records_the_flow_settings_and_the_run_rebuilds_them(flow_run):
    config = json.loads((flow_run / "config.json").read_text())
    assert config["schedule"] == {"kind": "flow", "T": 200, "max_beta": 0.999}
    assert config["prediction"] == "flow" and config["train"]["time_sampler"] == "logit-normal"
    run = load_run(flow_run)
    assert run.denoiser.prediction == "flow" and run.schedule == Schedule.flow(200)
    # Python says it with the same three settings and gets the same record.
    python = new_run_config(data.load("moons"), "moons", schedule="flow", T=200, prediction="flow",
                            train=TrainConfig(time_sampler="logit-normal")).to_dict()
    for key in ("schedule", "prediction", "net"):
        assert python[key] == config[key], key
    assert python["train"]["time_sampler"] == config["train"]["time_sampler"]
    # The velocity loss logged every 50 steps falls: the objective reaches the net.
    log = [json.loads(line) for line in (flow_run / "log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < losses[0]


@pytest.mark.parametrize("sampler", ["ddim", "euler", "heun", "dpmpp-2m"])
def test_every_ode_sampler_draws_from_a_flow_run(flow_run, tmp_path, sampler):
    out = tmp_path / sampler
    assert main(["sample", str(flow_run), "--sampler", sampler, "--steps", "8", "--n", "64",
                 "--out", str(out), "--no-progress"]) == 0
    x = np.load(f"{out}.npz")["samples"]
    assert x.shape == (64, 2) and np.isfinite(x).all()


@pytest.mark.parametrize("method", ["ode", "vlb"])
def test_nll_scores_a_flow_run(flow_run, capsys, method):
    assert main(["nll", str(flow_run), "--data", "moons", "--n", "8", "--continuous", "--method",
                 method, "--rtol", "1e-3", "--atol", "1e-3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["n"] == 8 and np.isfinite(record["mean"])


def test_explain_draws_a_flow_run(flow_run, tmp_path):
    page = tmp_path / "explain.html"
    assert main(["explain", str(flow_run), "--out", str(page), "--samples", "32", "--held-out",
                 "16", "--steps", "6", "--no-progress"]) == 0
    assert page.stat().st_size > 10_000


def test_evaluate_scores_a_flow_run_on_images(tmp_path):
    """evaluate measures pictures only: a 2-step flow run on the 8×8 digits."""
    run_dir = tmp_path / "digits"
    assert main(["train", "--data", "digits", *FLOW_FLAGS, "--timesteps", "50", "--steps", "2",
                 "--batch-size", "8", "--sample-every", "0", "--out", str(run_dir),
                 "--no-progress"]) == 0
    assert main(["evaluate", str(run_dir), "--data", "digits", "--n", "32", "--ref-n", "32",
                 "--steps", "4", "--features", "digits", "--no-progress"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 4 and np.isfinite(metrics["fid"])
