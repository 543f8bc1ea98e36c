"""Sharded inference: the batch split, the gather, and 2-process gloo runs of the CLI that must
equal one process's output bit for bit."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import noisecraft
from noisecraft import shard
from noisecraft.run import load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_helpers import image_config, train  # noqa: E402


def test_batches_cover_every_example_once_in_the_one_process_layout():
    assert shard.batches(10, 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert shard.batches(0, 3) == []
    two = [shard.my_batches(10, 3, shard.Ranks(r, 2)) for r in range(2)]
    assert two == [[(0, 3), (6, 9)], [(3, 6), (9, 10)]]
    three = sorted(b for r in range(3) for b in shard.my_batches(10, 3, shard.Ranks(r, 3)))
    assert three == shard.batches(10, 3)
    with pytest.raises(ValueError, match="batch_size"):
        shard.batches(5, 0)


def test_iter_batches_deals_the_same_batches():
    items = list(range(10))
    got = {r: list(shard.iter_batches(iter(items), 3, shard.Ranks(r, 2))) for r in range(2)}
    assert got[0] == [(0, [0, 1, 2]), (6, [6, 7, 8])]
    assert got[1] == [(3, [3, 4, 5]), (9, [9])]


def test_gather_in_one_process_orders_by_start_and_checks_the_count():
    parts = {3: np.array([3, 4]), 0: np.array([0, 1, 2])}
    np.testing.assert_array_equal(shard.gather(parts, 5, shard.Ranks()), np.arange(5))
    with pytest.raises(RuntimeError, match="expected 6"):
        shard.gather(parts, 6, shard.Ranks())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("shard") / "run"
    config, dataset = image_config(steps=2)
    train(path, config, dataset)
    return path


def _env():
    src = str(Path(noisecraft.__file__).resolve().parents[1])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}


def _noisecraft(*args, ranks: int):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={ranks}"] if ranks > 1 else [sys.executable])
    proc = subprocess.run([*launcher, "-m", "noisecraft", *map(str, args)], capture_output=True,
                          text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_two_gloo_ranks_sample_and_score_exactly_what_one_process_does(run_dir, tmp_path):
    # n = 10 in batches of 3: rank 0 runs batches 0 and 2, rank 1 batches 1 and 3 (the short one).
    common = ["--count", 10, "--batch-size", 3, "--steps", 4, "--seed", 5]
    for ranks in (1, 2):
        _noisecraft("sample", run_dir, "--out", tmp_path / f"r{ranks}", "--sampler", "ddpm",
                    *common, ranks=ranks)
    with np.load(tmp_path / "r1.npz") as one, np.load(tmp_path / "r2.npz") as two:
        assert one["images"].shape == (10, 8, 8, 1)
        np.testing.assert_array_equal(one["images"], two["images"])
    # Not vacuous: another seed gives other pictures.
    other = load_run(run_dir).generate(10, "ddpm", 4, seed=6, batch_size=3)
    with np.load(tmp_path / "r1.npz") as one:
        assert not np.array_equal(one["images"], other)

    nll = ["nll", run_dir, "--data", "digits", "--count", 7, "--batch-size", 3, "--method", "vlb",
           "--json"]
    one, two = (_noisecraft(*nll, ranks=r) for r in (1, 2))
    assert one == two and '"n": 7' in one


@pytest.mark.slow
def test_map_batches_matches_one_process_under_two_gloo_ranks(tmp_path):
    """The library path alone (no CLI): torch.multiprocessing spawns 2 gloo ranks."""
    with socket.socket() as s:     # a free port, so parallel test runs do not collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_rank_main, args=(2, str(tmp_path), port), nprocs=2, join=True)
    got = np.load(tmp_path / "out.npy")
    np.testing.assert_array_equal(got, _rows(0, 11))


def _rows(start, stop):
    # Per-example values: row i depends on i alone, like a per-example seeded sample.
    return np.stack([np.random.default_rng(i).standard_normal(4) for i in range(start, stop)])


def _rank_main(rank, world, folder, port):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks = shard.join("cpu")
    try:
        out = shard.map_batches(lambda a, b: _rows(a, b), 11, 4, ranks)
        if ranks.is_main:
            np.save(Path(folder) / "out.npy", out)
        else:
            assert out is None
    finally:
        shard.leave(ranks)
