"""`noisecraft train` end to end: a real subprocess for the happy path, main() for the refusals."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from noisecraft.cli import main
from noisecraft.train import load_run


def noisecraft(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "noisecraft", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train") / "run"
    proc = noisecraft("train", "--data", "digits", "--out", run_dir, "--steps", 20, "--batch-size", 16,
                      "--lr", "1e-3", "--warmup", 5, "--log-every", 10, "--sample-every", 20,
                      "--checkpoint-every", 10, "--schedule", "cosine", "--timesteps", 200,
                      "--prediction", "v", "--seed", 3, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc


def test_train_writes_a_complete_run_directory(digits_run):
    run_dir, proc = digits_run
    assert "step 20" in proc.stdout
    assert sorted(os.listdir(run_dir)) == [".lock", "config.json", "ema.safetensors", "log.jsonl",
                                           "model.safetensors", "optimizer.safetensors", "samples",
                                           "state.json"]
    assert os.listdir(run_dir / "samples") == ["step_0000020.png"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["prediction"] == "v" and config["schedule"]["kind"] == "cosine"
    assert config["schedule"]["T"] == 200 and config["train"]["seed"] == 3
    assert config["net"]["arch"] == "unet" and config["data"]["preprocess"]["value_range"] == [0.0, 16.0]
    log = (run_dir / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [10, 20]
    assert load_run(run_dir).step == 20


def test_resume_continues_to_more_steps_and_refuses_changed_settings(digits_run, tmp_path, capsys):
    src, _ = digits_run
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in os.listdir(src):
        if (src / name).is_file():
            (run_dir / name).write_bytes((src / name).read_bytes())
    assert main(["train", "--out", str(run_dir), "--resume", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("noisecraft: error: --lr 0.5 conflicts") and err.count("\n") == 1
    # The same command line plus --resume is accepted (flags repeating the run's settings).
    assert main(["train", "--data", "digits", "--out", str(run_dir), "--resume", "--steps", "22",
                 "--batch-size", "16", "--schedule", "cosine", "--net", "tiny", "--sample-every", "0",
                 "--no-progress"]) == 0
    assert load_run(run_dir).step == 22
    assert json.loads((run_dir / "config.json").read_text())["train"]["steps"] == 22


def test_training_on_vectors_uses_the_mlp_and_scatter_plots(tmp_path, capsys):
    run_dir = tmp_path / "moons"
    assert main(["train", "--data", "moons", "--out", str(run_dir), "--steps", "4", "--batch-size", "64",
                 "--sample-every", "4", "--timesteps", "50", "--no-progress"]) == 0
    assert json.loads((run_dir / "config.json").read_text())["net"]["arch"] == "mlp"
    assert (run_dir / "samples" / "step_0000004.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--steps", "-3"], "argument --steps: '-3' must be an integer >= 1"),
    (["--lr", "fast"], "argument --lr: 'fast' is not a number"),
    (["--schedule", "zigzag"], "argument --schedule: invalid choice: 'zigzag'"),
    (["--net", "huge"], "argument --net: invalid choice: 'huge'"),
    (["--net", "tiny", "--data", "moons"], "use --net mlp"),
    (["--data", "no/such/data"], "data 'no/such/data' not found"),
    (["--label-dropout", "0.2"], "(--label-dropout) needs a class-conditional run"),
])
def test_bad_flags_exit_2_with_one_line_and_no_traceback(tmp_path, capsys, argv, message):
    base = ["train", "--data", "digits", "--out", str(tmp_path / "run"), "--steps", "1"]
    try:
        code = main(base + argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("noisecraft: error:")


def test_resume_of_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "nothing" in err and "does not exist" in err and err.count("\n") == 1


def test_refuses_to_train_into_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("precious")
    assert main(["train", "--data", "digits", "--out", str(tmp_path), "--steps", "1"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_help():
    proc = noisecraft("train", "--help")
    assert proc.returncode == 0 and "--resume" in proc.stdout and "torchrun" in proc.stdout


@pytest.mark.slow
def test_train_runs_unchanged_under_torchrun_with_two_cpu_processes(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={port}", "-m", "noisecraft", "train", "--data", "moons", "--out", str(run_dir),
         "--steps", "4", "--batch-size", "32", "--timesteps", "50", "--log-every", "2",
         "--sample-every", "4", "--no-progress"],
        capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("step 4") == 1  # only rank 0 reports
    state = json.loads((run_dir / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 4
    log = (run_dir / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [2, 4]
    assert load_run(run_dir).generate(3, steps=2).shape == (3, 2)


def test_skip_bad_trains_past_a_truncated_picture_and_names_it(tmp_path, capsys):
    """`train --skip-bad`: one truncated picture among good ones is skipped, counted and named
    in one warning line; without the flag it stops the run with an error naming the file."""
    from PIL import Image

    from noisecraft.cli import main
    from noisecraft.run import read_config

    folder = tmp_path / "pics"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    data = (folder / "3.png").read_bytes()
    (folder / "3.png").write_bytes(data[: len(data) // 2])
    base = ["train", "--data", str(folder), "--steps", "1", "--batch-size", "4", "--timesteps", "10",
            "--sample-every", "0", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    assert "3.png" in capsys.readouterr().err
    # a subprocess: pytest would capture the warning instead of letting the command print it
    proc = noisecraft(*base, "--out", str(tmp_path / "b"), "--skip-bad")
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and warning[0].startswith("noisecraft: warning: ")
    assert "skipped 1 of 6" in warning[0] and "3.png" in warning[0]
    assert read_config(tmp_path / "b").data.skip_bad
    # a resumed run reads its data the same way (and still skips the file)
    assert main(["train", "--out", str(tmp_path / "b"), "--resume", "--steps", "2",
                 "--no-progress"]) == 0
