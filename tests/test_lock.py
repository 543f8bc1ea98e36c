"""One writer per run directory (noisecraft.lock): a second writer is refused at once with one
line naming the run and the holder; the lock dies with its holder, even under kill -9."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from noisecraft.lock import LOCK, RunLock, RunLockedError, writer_active
from train_helpers import train, vector_config

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}

# Imports noisecraft.lock without the package's __init__ (and torch), so the child starts fast.
HOLD = """
import sys, time, types
pkg = types.ModuleType("noisecraft")
pkg.__path__ = [sys.argv[2]]
sys.modules["noisecraft"] = pkg
from noisecraft.lock import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def hold_lock(run_dir):
    """A child process that holds run_dir's lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir),
                             str(REPO / "src" / "noisecraft")], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_naming_the_run_and_holder(tmp_path):
    proc = hold_lock(tmp_path / "run")
    try:
        assert writer_active(tmp_path / "run")
        with pytest.raises(RunLockedError) as e:
            RunLock(tmp_path / "run").acquire()
        msg = str(e.value)
        assert str(tmp_path / "run") in msg and f"pid {proc.pid}" in msg and "\n" not in msg
    finally:
        proc.kill()
        proc.wait()


def test_lock_is_released_by_kill_9_and_never_stale(tmp_path):
    proc = hold_lock(tmp_path / "run")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not writer_active(tmp_path / "run")
    with RunLock(tmp_path / "run") as lock:  # the file is still there; the lock is not
        assert json.loads((tmp_path / "run" / LOCK).read_text())["pid"] == os.getpid()
        assert lock.held
    assert not writer_active(tmp_path / "run")


def test_trainer_refuses_a_locked_run_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    proc = hold_lock(run)
    try:
        config, dataset = vector_config(steps=2)
        with pytest.raises(RunLockedError, match="being written by pid"):
            train(run, config, dataset)
        assert sorted(os.listdir(run)) == [LOCK]  # no config.json from the refused writer
    finally:
        proc.kill()
        proc.wait()
    train(run, config, dataset)
    assert not writer_active(run)  # released when fit() ends


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "noisecraft", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_cli_writer_refused_with_exit_2_and_one_line(tmp_path):
    run = tmp_path / "run"
    config, dataset = vector_config(steps=2)
    train(run, config, dataset)
    proc = hold_lock(run)
    try:
        writer = cli("train", "--out", str(run), "--resume", "--steps", "4", "--no-progress")
        assert writer.wait(timeout=300) == 2
        err = writer.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"noisecraft: error: {run} is being written by pid {proc.pid} on ")


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True])
def test_two_cli_writers_at_once_one_refused(tmp_path, resume):
    """Two `noisecraft train --out R` at once (seed 0/eps and seed 1/x0), or two `--resume`:
    exactly one trains; the other exits 2 with one line; config.json and the checkpoint are the
    winner's, and log.jsonl has each step once."""
    run = tmp_path / "run"
    base = ["train", "--data", "moons", "--out", str(run), "--net", "mlp", "--batch-size", "32",
            "--log-every", "1", "--sample-every", "0", "--checkpoint-every", "5", "--no-progress"]
    if resume:
        first = cli(*base, "--steps", "5")
        assert first.wait(timeout=300) == 0, first.stderr.read()
        procs = [cli("train", "--out", str(run), "--resume", "--steps", "150", "--no-progress")
                 for _ in range(2)]
    else:
        procs = [cli(*base, "--steps", "150", "--seed", str(i), "--prediction", p)
                 for i, p in enumerate(("eps", "x0"))]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert loser.count("\n") == 1 and "Traceback" not in loser
    assert loser.startswith("noisecraft: error: ") and str(run) in loser
    if not resume:
        won = [rc for rc, _ in results].index(0)
        assert json.loads((run / "config.json").read_text())["prediction"] == ("eps", "x0")[won]
        assert json.loads((run / "config.json").read_text())["train"]["seed"] == won
    assert json.loads((run / "state.json").read_text())["step"] == 150
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 151))


def test_fresh_run_drops_the_log_of_a_run_killed_before_its_first_save(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"step": 1, "loss": 9}\n{"step": 2, "loss": 9}\n')
    config, dataset = vector_config(steps=2, log_every=1)
    train(run, config, dataset)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_resume_survives_foreign_lines_in_the_log(tmp_path):
    run = tmp_path / "run"
    config, dataset = vector_config(steps=2, log_every=1)
    train(run, config, dataset)
    with open(run / "log.jsonl", "a") as f:
        f.write("[1, 2]\n3\n\"x\"\n{\"step\": \"7\"}\n")
    config, dataset = vector_config(steps=3, log_every=1)
    train(run, config, dataset, resume=True)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_autoencoder_trainer_takes_the_same_lock(tmp_path):
    from noisecraft import data
    from noisecraft.autoencoders import AutoencoderTrainConfig
    from noisecraft.train.autoencoder import AutoencoderTrainer, new_autoencoder_config

    ds = data.load("digits")
    tc = AutoencoderTrainConfig(steps=1, batch_size=16, sample_every=0, checkpoint_every=0)
    config = new_autoencoder_config(ds, "digits", latent_channels=2, factor=2, train=tc,
                                    net_overrides={"base_channels": 8})
    proc = hold_lock(tmp_path / "ae")
    try:
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            AutoencoderTrainer(config, tmp_path / "ae", ds, device="cpu", progress=False).fit()
        assert sorted(os.listdir(tmp_path / "ae")) == [LOCK]
    finally:
        proc.kill()
        proc.wait()
    AutoencoderTrainer(config, tmp_path / "ae", ds, device="cpu", progress=False).fit()
    assert not writer_active(tmp_path / "ae")
