"""``train --max-time``: a time budget ends the run at the step it predicts, with a checkpoint
there, and a resumed run continues (or extends) the same budget, bit for bit.

No test reads a real clock: the trainer reads time only through ``trainer.clock(kind)`` — once
per clock before and once after each optimizer step — which these tests replace by a fake clock
that advances a fixed cost per reading, so each step costs exactly that and the time used after
k steps is k × cost (costs and budgets are binary fractions: no rounding at the boundary)."""

import dataclasses
import json
import math

import pytest
import safetensors.torch
import torch

import noisecraft.train.trainer as trainer_module
from noisecraft.cli import main
from noisecraft.config import TrainConfig, duration_seconds
from noisecraft.train import load_run
from train_helpers import image_config, train

COST = {"cpu": 1.5, "wall": 0.5}  # seconds per step on each clock; different, to tell them apart


class FakeClock:
    """Reading i of clock ``kind`` returns i × COST[kind]: a step, between two readings, costs
    COST[kind] (and so does the untimed work between steps, which the budget must not count)."""

    def __init__(self):
        self.now = {kind: 0.0 for kind in COST}

    def __call__(self, kind: str) -> float:
        value = self.now[kind]
        self.now[kind] += COST[kind]
        return value

    def advance(self, seconds: float) -> None:
        """Time passing without a reading (work the budget must not count)."""
        self.now = {kind: t + seconds for kind, t in self.now.items()}


@pytest.fixture
def fake_clock(monkeypatch):
    def install():
        clock = FakeClock()  # a fresh one per call: a resumed run is a new process
        monkeypatch.setattr(trainer_module, "clock", clock)
        return clock
    install()
    return install


def budget_config(max_time, clock="cpu", steps=30):
    config, dataset = image_config(steps=steps, max_time=max_time, max_time_clock=clock,
                                   log_every=5)
    return config, dataset


def tensors(run_dir):
    return {name: safetensors.torch.load_file(run_dir / name)
            for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors")}


@pytest.mark.parametrize("max_time, clock, expected", [
    ("10s", "cpu", 7),    # 6 × 1.5 = 9 < 10 ≤ 7 × 1.5 = 10.5
    ("4s", "wall", 8),    # 8 × 0.5 = 4 reaches the budget exactly
    ("0.25m", "cpu", 10),  # 15 s = 10 × 1.5
])
def test_the_run_stops_at_the_step_the_budget_predicts_with_a_checkpoint_there(
        tmp_path, fake_clock, max_time, clock, expected):
    config, dataset = budget_config(max_time, clock)
    result = train(tmp_path / "run", config, dataset)
    assert (result.step, result.stopped_on_time) == (expected, True)
    assert result.loss is not None and math.isfinite(result.loss)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["step"] == expected
    assert state["time_used_s"] == {kind: expected * COST[kind] for kind in COST}
    assert load_run(tmp_path / "run").step == expected
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    log = [json.loads(line)["step"] for line in lines]
    assert log[-1] == expected  # the last step is logged like the end of a run


def test_checkpoints_and_sample_grids_are_not_training_time(tmp_path, fake_clock, monkeypatch):
    clock = fake_clock()
    for name in ("_save", "_samples"):
        original = getattr(trainer_module.Trainer, name)

        def slow(self, *args, original=original, **kwargs):
            clock.advance(100.0)  # far beyond the budget, if it counted
            return original(self, *args, **kwargs)

        monkeypatch.setattr(trainer_module.Trainer, name, slow)
    config, dataset = image_config(steps=30, max_time="10s", checkpoint_every=2, sample_every=3)
    result = train(tmp_path / "run", config, dataset)
    assert (result.step, result.stopped_on_time) == (7, True)
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        "step_0000003.png", "step_0000006.png", "step_0000007.png"]


def test_steps_still_end_a_run_whose_budget_is_not_used_up(tmp_path, fake_clock):
    config, dataset = budget_config("1h", steps=4)
    result = train(tmp_path / "run", config, dataset)
    assert (result.step, result.stopped_on_time) == (4, False)
    assert result.time_used_s == {kind: 4 * COST[kind] for kind in COST}


def test_a_resumed_run_continues_the_budget_and_ends_bit_identical(tmp_path, fake_clock):
    config, dataset = budget_config("10s")
    train(tmp_path / "straight", config, dataset)
    train(tmp_path / "resumed", config, dataset, stop_at=3)   # interrupted after 4.5 s
    fake_clock()                                              # a new process, a new clock
    result = train(tmp_path / "resumed", config, dataset, resume=True)
    assert (result.step, result.stopped_on_time) == (7, True)
    a, b = tensors(tmp_path / "straight"), tensors(tmp_path / "resumed")
    different = [f"{f}:{k}" for f in a for k in a[f] if not torch.equal(a[f][k], b[f][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"

    # Resumed again with the same budget: it is used up, so nothing trains and nothing changes.
    fake_clock()
    again = train(tmp_path / "resumed", config, dataset, resume=True)
    assert (again.step, again.stopped_on_time, again.loss) == (7, True, None)
    assert tensors(tmp_path / "resumed")["model.safetensors"].keys() == a["model.safetensors"].keys()


def test_a_resume_may_extend_the_budget_from_the_command_line(tmp_path, fake_clock, capsys):
    config, dataset = budget_config("10s")
    run_dir = tmp_path / "run"
    train(run_dir, config, dataset)                           # stops at 7, 10.5 s used
    fake_clock()
    assert main(["train", "--out", str(run_dir), "--resume", "--max-time", "16s",
                 "--no-progress"]) == 0                       # 16.5 s at step 11
    out = capsys.readouterr().out
    assert "step 11," in out and "stopped on --max-time" in out
    assert json.loads((run_dir / "config.json").read_text())["train"]["max_time"] == "16s"
    # the same budget again: already used, said so
    fake_clock()
    assert main(["train", "--out", str(run_dir), "--resume", "--no-progress"]) == 0
    assert "the --max-time budget was already used" in capsys.readouterr().out
    # and the other clock: 11 steps used 5.5 wall seconds, so a 6 s wall budget allows one more
    fake_clock()
    assert main(["train", "--out", str(run_dir), "--resume", "--max-time", "6s",
                 "--max-time-clock", "wall", "--no-progress"]) == 0
    assert "step 12," in capsys.readouterr().out


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("2d", 172800),
                                           ("45", 45), (" .5m ", 30)])
def test_durations(text, seconds):
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["10x", "-5s", "0s", "", "1h30m", "inf", "nan", "5 minutes"])
def test_bad_durations_are_one_error_naming_the_value(text, tmp_path, capsys):
    with pytest.raises(ValueError, match=rf"max_time \(--max-time\) '{text}' is not a duration"):
        TrainConfig(max_time=text)
    if text:
        assert main(["train", "--data", "digits", "--out", str(tmp_path / "run"),
                     f"--max-time={text}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("noisecraft: error: ") and f"'{text}'" in err and err.count("\n") == 1


def test_the_budget_settings_are_resumable_and_round_trip():
    config, _ = budget_config("90s", "wall")
    d = json.loads(json.dumps(config.to_dict()))
    assert (d["train"]["max_time"], d["train"]["max_time_clock"]) == ("90s", "wall")
    assert dataclasses.replace(config.train, max_time=None).max_time is None
    from noisecraft.train.setup import resumable_settings

    assert {"max_time", "max_time_clock"} <= set(resumable_settings())


@pytest.mark.slow
def test_ranks_under_torchrun_stop_together(tmp_path):
    """Each rank's CPU clock differs, so the ranks stop on their mean time (one all-reduce per
    step): the run must end cleanly on one step, checkpoint and exit on every rank. The budget,
    1 µs, is used up by the first step whatever the machine's speed (so this checks the DDP path
    runs and ends, not that ranks with different clocks agree: no test can set a rank's clock)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={port}", "-m", "noisecraft", "train", "--data", "moons", "--out", str(run_dir),
         "--steps", "50", "--batch-size", "32", "--timesteps", "50", "--sample-every", "0",
         "--max-time", "0.000001s", "--no-progress"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("step 1, ") == 1 and "stopped on --max-time" in proc.stdout
    state = json.loads((run_dir / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 1


def test_a_cosine_schedule_decays_over_the_time_budget_when_it_ends_before_steps(
        tmp_path, fake_clock):
    """With --max-time and --lr-schedule cosine the decay spans the budget: step k starts after
    k × 1.5 CPU-s of a 15 s budget, so its lr is lr·½(1 + cos(π k/10)), reaching the last
    (10th) step at ½(1 + cos(0.9π)) of the peak — not the ~lr a 1000-step cosine would give."""
    config, dataset = image_config(steps=1000, max_time="15s", max_time_clock="cpu", log_every=1,
                                   warmup=0, lr_schedule="cosine", lr=1e-3)
    result = train(tmp_path / "run", config, dataset)
    assert (result.step, result.stopped_on_time) == (10, True)
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    lrs = [json.loads(line)["lr"] for line in lines]
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_a_budget_end_keeps_a_post_hoc_ema_snapshot_like_the_end_of_steps(tmp_path, fake_clock):
    """Snapshots every 4 steps, and one where the 15 s budget ends the run (step 10): post-hoc
    EMA then reconstructs the run's final weights, not those 2 steps before."""
    config, dataset = image_config(steps=1000, max_time="15s", max_time_clock="cpu",
                                   ema_profiles="0.1", snapshot_every=4)
    result = train(tmp_path / "run", config, dataset)
    assert result.step == 10
    assert sorted(p.name for p in (tmp_path / "run").glob("phema-*.safetensors")) == [
        "phema-000000004.safetensors", "phema-000000008.safetensors",
        "phema-000000010.safetensors"]
