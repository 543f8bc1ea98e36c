"""The README's examples must run as printed: a newcomer copies them first.

Every line of every ```sh block is a command, and every command appears in ``RUNS`` below with
the only changes this test makes to it, each for a stated reason (mostly fewer steps, so that the
whole README runs in minutes on a CPU). A command added to the README without an entry here, or
an entry whose command left the README, fails ``test_every_readme_command_is_run``.

The commands run in order (later ones read what earlier ones wrote) in a scratch folder laid out
like a checkout: ``../shared/data`` there is a link to this checkout's ``../shared/data``, so
the paths are the README's own. ``noisecraft ...`` is called in-process (``noisecraft.cli.main``
with the same argv), which saves a Python start per command; ``make`` targets are dry-run
(``make -n``): installing a virtual environment is beyond a test.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHARED = ROOT.parent / "shared"

# README command → the flags this test changes (flag: new value; appended when absent).
FEWER_STEPS = "fewer steps: the README trains for real, the test checks the command works"
NO_GPU = "no GPU in CI: on the CPU, the command's parsing and data path run"
# Latent runs encode their whole data set first (all 60,000 MNIST images: ~4 CPU-minutes; the
# 64-px emoji through the 9.4M-parameter ae64: minutes), so the test's `train --autoencoder`
# reads a cut of the same files through the same reader, made by `data_cuts` below.
MNIST_CUT, EMOJI_CUT, CIFAR_CUT = "cuts/mnist", "cuts/twemoji64", "cuts/cifar10"
CUT = "the first {} pictures of the same files through the same reader: all cost minutes to encode"
RUNS: dict[str, tuple[dict[str, str], str]] = {
    "make demo": ({}, "dry run (make -n): shows the target exists and what it runs"),
    "make test": ({}, "dry run (make -n): running the suite from inside the suite would recurse"),
    "noisecraft train --data digits --out runs/digits --steps 2000": (
        {"--steps": "3", "--batch-size": "16"}, FEWER_STEPS),
    "noisecraft sample runs/digits --n 64 --sampler ddim --steps 50 --seed 0 --out samples": (
        {"--steps": "5"}, FEWER_STEPS),
    "noisecraft sample runs/digits --n 16 --format png --out pictures": ({}, "as printed"),
    "noisecraft train --data digits --out runs/digits --steps 3000 --resume": (
        {"--steps": "5"}, FEWER_STEPS),
    "noisecraft nll runs/digits --data digits --n 200": (
        {"--n": "8", "--rtol": "1e-3", "--atol": "1e-3"}, "8 examples and a loose ODE: time"),
    "noisecraft nll runs/digits --image pictures/000007.png --data digits --n 200": (
        {"--n": "8", "--rtol": "1e-3", "--atol": "1e-3"}, "8 examples and a loose ODE: time"),
    "noisecraft train --data ../shared/data/mnist --out runs/mnist --net mnist-cpu --prediction edm "
    "--time-sampler log-normal --batch-size 32 --lr 1e-3 --lr-schedule cosine --adam-betas 0.9 0.99 "
    "--precision bf16 --steps 100000 --max-time 10m": (
        {"--steps": "2", "--batch-size": "8", "--sample-every": "0"},
        FEWER_STEPS + "; no sample grid (64 MNIST samples cost a minute)"),
    "noisecraft sample runs/mnist --n 1000 --out samples": (
        {"--n": "8", "--steps": "2"}, "8 samples of 2 steps: time"),
    "noisecraft fid samples.npz ../shared/data/mnist --split test": (
        {"--n": "8"}, "8 images a side: Inception costs ~0.2 s per image on a CPU"),
    "noisecraft evaluate runs/mnist --data ../shared/data/mnist --n 10000 "
    "--metrics fid,kid,pr,memorization": (
        {"--n": "8", "--steps": "2"}, "8 samples of 2 steps (Inception features): time"),
    "noisecraft train --data ../shared/data/fsdd --out runs/fsdd --class-cond --n-mels 32 --frames 32 "
    "--n-fft 512 --hop-length 256 --prediction edm --time-sampler log-normal --batch-size 32 --lr 1e-3 "
    "--lr-schedule cosine --warmup 20 --ema-decay 0.995 --precision bf16 --steps 100000 "
    "--max-time 30m": ({"--steps": "1", "--batch-size": "4", "--sample-every": "0"}, FEWER_STEPS),
    "noisecraft sample runs/fsdd --n 10 --guidance 2 --out speech": ({"--steps": "2"}, FEWER_STEPS),
    "noisecraft demo --out demo-out": ({"--steps": "3"}, FEWER_STEPS),
    "noisecraft train --data digits --out runs/text --condition text --caption-template "
    "\"a handwritten digit {name}\"": (
        {"--steps": "3", "--batch-size": "16", "--sample-every": "0"}, FEWER_STEPS),
    "noisecraft sample runs/text --prompt \"seven\" --prompt \"the number 3\" --n 8 --guidance 3 "
    "--out prompted": ({"--steps": "3"}, FEWER_STEPS),
    "noisecraft explain runs/digits --out report.html": (
        {"--samples": "16", "--held-out": "16", "--steps": "5"}, "fewer samples and steps: time"),
    "noisecraft encode runs/digits --image pictures/000001.png --image pictures/000002.png "
    "--sampler heun --steps 50 --out enc": ({"--steps": "5"}, FEWER_STEPS),
    "noisecraft interpolate runs/digits --images pictures/000001.png pictures/000002.png "
    "--frames 8 --out strip": ({"--steps": "5"}, FEWER_STEPS),
    "noisecraft edit runs/digits --image pictures/000003.png --strength 0.5 --out edits": (
        {"--steps": "5"}, FEWER_STEPS),
    "noisecraft train-autoencoder --data ../shared/data/mnist --out runs/ae-mnist --factor 4 "
    "--latent-channels 4 --steps 300 --batch-size 32": (
        {"--steps": "2", "--batch-size": "8"}, FEWER_STEPS),
    "noisecraft train --data ../shared/data/mnist --autoencoder runs/ae-mnist --out runs/ldm-mnist "
    "--condition text --caption-template \"a handwritten digit {name}\" --steps 1500 --batch-size 64 "
    "--lr 1e-3 --ema-decay 0.995": (
        {"--data": MNIST_CUT, "--steps": "3", "--batch-size": "16", "--sample-every": "0"},
        FEWER_STEPS + "; " + CUT.format(256)),
    "noisecraft generate runs/ldm-mnist --prompt \"a handwritten digit seven\" --prompt "
    "\"the number 3\" --n 8 --guidance 3 --steps 25 --explain --out ldm-prompts": (
        {"--steps": "3"}, FEWER_STEPS),
    "noisecraft train-autoencoder --data ../shared/data/twemoji64 --channels 3 --out runs/ae-emoji "
    "--preset ae64 --factor 4 --latent-channels 4 --steps 20000 --batch-size 64 --device cuda": (
        {"--data": EMOJI_CUT, "--device": "cpu", "--steps": "1", "--batch-size": "2",
         "--sample-every": "0"}, NO_GPU + "; one step; " + CUT.format(16)),
    "noisecraft train --data ../shared/data/twemoji64 --channels 3 --autoencoder runs/ae-emoji "
    "--out runs/ldm-emoji --net mnist --condition text --steps 50000 --batch-size 128 --device cuda": (
        {"--data": EMOJI_CUT, "--device": "cpu", "--steps": "1", "--batch-size": "2",
         "--sample-every": "0"}, NO_GPU + "; one step; " + CUT.format(16)),
    "noisecraft generate runs/ldm-emoji --prompt \"a smiling face with sunglasses\" --n 8 "
    "--guidance 4 --steps 25 --device cuda --explain --out emoji": (
        {"--device": "cpu", "--n": "2", "--steps": "2"}, NO_GPU + "; 2 images of 2 steps"),
    "noisecraft train-autoencoder --data ../shared/data/cifar10 --out runs/ae-cifar --factor 2 "
    "--latent-channels 4 --steps 20000 --device cuda": (
        {"--data": CIFAR_CUT, "--device": "cpu", "--steps": "1", "--batch-size": "4",
         "--sample-every": "0"}, NO_GPU + "; one step; " + CUT.format(16)),
    "noisecraft train --data ../shared/data/cifar10 --autoencoder runs/ae-cifar --out runs/ldm-cifar "
    "--net mnist --condition text --caption-template \"a photo of a {name}\" --steps 50000 "
    "--batch-size 128 --device cuda": (
        {"--data": CIFAR_CUT, "--device": "cpu", "--steps": "1", "--batch-size": "4",
         "--sample-every": "0"}, NO_GPU + "; one step; " + CUT.format(16)),
    "noisecraft data download mnist data/mnist": (
        {"--mirror": (SHARED / "data" / "mnist").as_uri() + "/"},
        "tests have no network: the same files from the local copy, through the same code"),
}


def readme_commands() -> list[str]:
    """Every command in the README's ```sh blocks, trailing comments removed, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    lines = (line.split("  #")[0].strip() for block in blocks for line in block.splitlines())
    return [line for line in lines if line]


def substitute(command: str, changes: dict[str, str]) -> list[str]:
    """argv of ``command`` with each flag in ``changes`` set to its new value (or appended)."""
    argv = shlex.split(command)
    for flag, value in changes.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def test_every_readme_command_is_run() -> None:
    commands = readme_commands()
    missing = [c for c in commands if c not in RUNS]
    assert not missing, f"README commands not run by this test (add them to RUNS): {missing}"
    stale = [c for c in RUNS if c not in commands]
    assert not stale, f"RUNS holds commands the README no longer shows: {stale}"
    assert len(commands) == len(set(commands))


def benchmark_recipe(script: str) -> list[str]:
    """``RECIPE`` of ``benchmarks/<script>.py``: the flags whose figures BENCHMARKS.md records."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(script, ROOT / "benchmarks" / f"{script}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.RECIPE


@pytest.mark.parametrize("script, command", [
    ("quality_per_compute", "noisecraft train --data ../shared/data/mnist --out runs/mnist"),
    ("audio_quality", "noisecraft train --data ../shared/data/fsdd --out runs/fsdd")])
def test_the_recipes_are_the_ones_the_benchmarks_measure(script, command) -> None:
    """BENCHMARKS.md's "Quality per CPU-minute" (MNIST) and "Audio" (spoken digits) figures are
    the README's commands, flag for flag."""
    assert " ".join([command, *benchmark_recipe(script)]) in readme_commands()


def test_substitute_only_changes_the_named_flags() -> None:
    assert substitute("noisecraft x --steps 50 --n 3", {"--steps": "2", "--seed": "1"}) == [
        "noisecraft", "x", "--steps", "2", "--n", "3", "--seed", "1"]


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A scratch folder beside a link to ../shared, as the README's commands expect."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"{SHARED / 'data'} not found")
    (tmp_path / "shared").symlink_to(SHARED, target_is_directory=True)
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    monkeypatch.setenv("NOISECRAFT_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield repo
    torch.set_num_threads(threads)


def write_idx(path: Path, values: np.ndarray) -> None:
    """A raw uint8 IDX file: magic 0 0 0x08 ndim, the sizes as big-endian int32, the values."""
    header = bytes([0, 0, 8, values.ndim]) + np.asarray(values.shape, ">i4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(values, np.uint8).tobytes())


def cut_shard(source: Path, target: Path, n: int) -> None:
    """The members of ``source``'s first ``n`` samples, byte for byte, as the shard ``target``."""
    import tarfile

    target.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    with tarfile.open(source) as src, tarfile.open(target, "w:gz") as dst:
        for member in src:
            key = member.name.split(".")[0]
            if key not in keys:
                if len(keys) == n:
                    break
                keys.append(key)
            dst.addfile(member, src.extractfile(member))


def data_cuts(repo: Path) -> None:
    """MNIST_CUT, EMOJI_CUT and CIFAR_CUT: small cuts of ../shared/data for the latent runs."""
    from noisecraft.data.idx import read_idx

    mnist, data = repo / MNIST_CUT, SHARED / "data"
    mnist.mkdir(parents=True)
    for kind in ("images-idx3", "labels-idx1"):
        write_idx(mnist / f"train-{kind}-ubyte", read_idx(str(data / "mnist" /
                                                                f"train-{kind}-ubyte.gz"))[:256])
    cut_shard(data / "twemoji64" / "twemoji-0000.tar.gz", repo / EMOJI_CUT / "twemoji-0000.tar.gz", 16)
    cut_shard(data / "cifar10" / "train-0000.tar.gz", repo / CIFAR_CUT / "train-0000.tar.gz", 16)
    (repo / CIFAR_CUT / "classes.txt").write_bytes((data / "cifar10" / "classes.txt").read_bytes())


def run_command(command: str, capsys) -> str:
    from noisecraft.cli import main

    changes, _why = RUNS[command]
    argv = substitute(command, changes)
    if argv[0] == "make":
        proc = subprocess.run(["make", "-n", "-C", str(ROOT), *argv[1:]], capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    assert argv[0] == "noisecraft"
    code = main(argv[1:])
    out, err = capsys.readouterr()
    assert code == 0, f"{' '.join(argv)} exited {code}: {err[-2000:]}"
    return out


@pytest.mark.slow
def test_readme_shell_examples_run(checkout, capsys) -> None:
    data_cuts(checkout)
    outputs = {command: run_command(command, capsys) for command in readme_commands()}
    # What the examples promise, beyond exit code 0:
    assert "noisecraft demo --out demo-out" in outputs["make demo"]
    assert "pytest" in outputs["make test"]
    assert sorted(os.listdir("pictures")) == [f"{i:06d}.png" for i in range(16)]
    assert "<html" in (checkout / "report.html").read_text(encoding="utf-8")[:500].lower()
    assert list(np.load(checkout / "prompted.npz")["prompts"]) == ["seven"] * 8 + ["the number 3"] * 8
    for base in ("enc", "strip", "edits"):
        assert (checkout / f"{base}.png").is_file() and (checkout / f"{base}.npz").is_file(), base
    assert (checkout / "samples.npz").is_file() and (checkout / "samples.png").is_file()
    assert "percentile" in outputs["noisecraft nll runs/digits --image pictures/000007.png "
                                   "--data digits --n 200"]
    assert outputs["noisecraft fid samples.npz ../shared/data/mnist --split test"].startswith("FID: ")
    assert (checkout / "runs" / "mnist" / "metrics.json").is_file()
    assert sorted(os.listdir("speech")) == [f"{i:06d}.wav" for i in range(10)]
    assert (checkout / "demo-out" / "summary.txt").is_file()
    assert sorted(os.listdir("data/mnist")) == sorted(os.listdir(SHARED / "data" / "mnist"))
    # The latent recipes: decoded pictures of the data's own shape, one row per prompt.
    ldm = np.load(checkout / "ldm-prompts.npz")
    assert ldm["images"].shape == (16, 28, 28, 1) and ldm["images"].dtype == np.uint8
    assert list(ldm["prompts"]) == ["a handwritten digit seven"] * 8 + ["the number 3"] * 8
    assert (checkout / "ldm-prompts_explain.png").is_file()
    assert np.load(checkout / "emoji.npz")["images"].shape == (2, 64, 64, 3)
    assert (checkout / "runs" / "ldm-cifar" / "ema.safetensors").is_file()


@pytest.mark.slow
def test_readme_python_examples_run(checkout) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 3, "the README holds three Python examples: the maths, flow, runs"
    flow: dict = {}
    exec(compile(blocks.pop(1), str(README), "exec"), flow)
    assert flow["denoiser"].prediction == "flow" and flow["x"].shape == (64, 2)
    assert flow["loss"].ndim == 0 and torch.isfinite(flow["loss"])
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    # What the example promises: per-example losses reduced to a scalar, samples of the asked
    # shape, and one finite bits/dim figure per example.
    assert namespace["loss"].ndim == 0 and torch.isfinite(namespace["loss"])
    assert namespace["x"].shape == (64, 2)
    assert namespace["bpd"].shape == (16,) and torch.isfinite(namespace["bpd"]).all()
    # The runs example, with one change: steps=2000 → 3 (fewer steps, as for the CLI above).
    assert blocks[1].count("steps=2000") == 1
    runs: dict = {}
    exec(compile(blocks[1].replace("steps=2000", "steps=3"), str(README), "exec"), runs)
    assert runs["images"].shape == (500, 8, 8, 1) and runs["images"].dtype.name == "uint8"
    assert runs["drawn"].labels.tolist() == [3] * 250 + [7] * 250
    assert runs["fid"] > 0 and (checkout / "runs" / "api-digits" / "ema.safetensors").is_file()
    assert runs["record"]["n"] == 20 and np.isfinite(runs["record"]["mean"])
    assert runs["edits"].shape == (4, 1, 8, 8) and runs["labels"].tolist() == [8] * 4
    assert runs["run"].config.train.label_dropout == 0.1
