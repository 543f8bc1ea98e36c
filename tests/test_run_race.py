"""Readers racing a writer: load_run while a trainer saves a checkpoint every step must always
return one committed checkpoint, never a mix and never a false 'interrupted' error."""

import os
import subprocess
import sys
import time
from pathlib import Path

import safetensors.torch
import torch

from noisecraft import io as ncio
from noisecraft import run as ncrun
from noisecraft.run import load_run

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}",
       "OMP_NUM_THREADS": "1"}

# The writer pauses 50 ms after each commit, so the race window (29 commits) stays open for
# well over a second even on a loaded machine, where one load_run can take longer than the
# whole of an unpaused writer's steps (the test then saw only steps 1 and 30).
WRITER = """
import sys
import time
import noisecraft.train.trainer as trainer
from train_helpers import train, vector_config
save = trainer.Trainer._save
def paused_save(self, *args, **kwargs):
    save(self, *args, **kwargs)
    time.sleep(0.05)
trainer.Trainer._save = paused_save
config, dataset = vector_config(steps=int(sys.argv[2]), checkpoint_every=1, log_every=1)
train(sys.argv[1], config, dataset, stop_at=1)
print("first", flush=True)
train(sys.argv[1], config, dataset, resume=True)
"""


def race(run_dir, steps):
    """Load the run in a loop while a writer process saves every step; (loads, errors, steps)."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir), str(steps)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "first", writer.stderr.read()
    loads, errors, seen = 0, [], []
    while writer.poll() is None:
        try:
            run = load_run(run_dir, use_ema=loads % 2 == 0)
            seen.append(run.step)
        except Exception as e:  # noqa: BLE001 - every failure is what this test counts
            errors.append(f"{type(e).__name__}: {e}")
        loads += 1
    assert writer.wait() == 0, writer.stderr.read()
    return loads, errors, seen


def test_load_run_against_a_writer_saving_every_step(tmp_path):
    loads, errors, seen = race(tmp_path / "run", steps=30)
    assert loads >= 20, loads  # the loop did race the writer
    assert errors == [], f"{len(errors)} of {loads} loads failed: {errors[:3]}"
    assert seen == sorted(seen) and len(set(seen)) > 5  # committed steps, in order
    assert load_run(tmp_path / "run").step == 30


def test_a_save_committed_between_state_and_weights_is_retried(tmp_path, monkeypatch):
    """Deterministic form of the race: the writer commits step 3 → 4 after the reader has read
    state.json (step 3) but before it opens ema.safetensors (step 4 by then)."""
    from train_helpers import train, vector_config

    config, dataset = vector_config(steps=4)
    train(tmp_path / "a", config, dataset, stop_at=3)
    train(tmp_path / "b", config, dataset)  # the step-4 checkpoint to commit mid-read
    step4 = {n: (tmp_path / "b" / n).read_bytes()
             for n in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json")}
    real_read_state, calls = ncrun.read_state, []

    def read_state_then_commit(run_dir):
        state = real_read_state(run_dir)
        if not calls:
            ncio.atomic_write_many(run_dir, step4)
        calls.append(state["step"])
        return state

    monkeypatch.setattr(ncrun, "read_state", read_state_then_commit)
    run = load_run(tmp_path / "a")
    assert calls == [3, 4] and run.step == 4
    expected = safetensors.torch.load(step4["ema.safetensors"])
    assert all(torch.equal(v, expected[k]) for k, v in run.net.state_dict().items())


def test_a_real_error_is_raised_at_once_without_a_writer(tmp_path):
    calls = []

    def read():
        calls.append(time.monotonic())
        from noisecraft import RunError
        raise RunError("damaged")

    try:
        ncrun.read_committed(tmp_path, read)
    except ValueError as e:
        assert str(e) == "damaged"
    assert len(calls) == 1
