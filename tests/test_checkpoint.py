import json
import os

import numpy as np
import pytest
import safetensors.torch
import torch

import noisecraft.io as ncio
import noisecraft.run as ncrun
from noisecraft import Denoiser, RunError
from noisecraft.run import load_run
from noisecraft.train import checkpoint as ckpt
from train_helpers import image_config, train, vector_config


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vec") / "run"
    config, dataset = vector_config(steps=4)
    train(run_dir, config, dataset)
    return run_dir


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("img") / "run"
    config, dataset = image_config(steps=3)
    train(run_dir, config, dataset)
    return run_dir


def copy_run(src, dst):
    dst.mkdir()
    for name in os.listdir(src):
        if os.path.isfile(src / name):
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    ncio.atomic_write(path, "old")

    def crash(*args):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        ncio.atomic_write(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.json"]  # no temp file left behind


def test_crash_while_serialising_keeps_the_previous_checkpoint(vector_run, tmp_path, monkeypatch):
    run_dir = copy_run(vector_run, tmp_path / "run")
    files = (ncrun.MODEL, ncrun.EMA_WEIGHTS, ncrun.OPTIMIZER, ncrun.STATE)
    before = {n: (run_dir / n).read_bytes() for n in files}
    config, dataset = vector_config(steps=8)
    calls = {"n": 0}
    real_save = ncio.safetensors_save

    def save_then_crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # model.safetensors serialised, ema.safetensors crashes
            raise OSError("simulated crash while saving")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(ncio, "safetensors_save", save_then_crash)
    with pytest.raises(OSError, match="simulated"):
        train(run_dir, config, dataset, resume=True)
    monkeypatch.undo()
    assert {n: (run_dir / n).read_bytes() for n in files} == before  # every file intact
    assert not [n for n in os.listdir(run_dir) if n.endswith(".tmp")]
    assert load_run(run_dir).step == 4


def test_crash_between_renames_keeps_the_previous_checkpoint(vector_run, tmp_path, monkeypatch):
    run_dir = copy_run(vector_run, tmp_path / "run")
    files = (ncrun.MODEL, ncrun.EMA_WEIGHTS, ncrun.OPTIMIZER, ncrun.STATE)
    before = {n: (run_dir / n).read_bytes() for n in files}
    config, dataset = vector_config(steps=8)
    real_replace = os.replace
    calls = {"n": 0}

    def replace_then_crash(src, dst):
        if str(dst).endswith(ncrun.EMA_WEIGHTS):
            calls["n"] += 1
            raise OSError("simulated crash between renames")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_crash)
    with pytest.raises(OSError, match="simulated"):
        train(run_dir, config, dataset, resume=True)
    monkeypatch.undo()
    assert calls["n"] == 1
    assert not [n for n in os.listdir(run_dir) if n.endswith(".tmp")]
    # model.safetensors already holds step 8, but the save never committed (state.json is the
    # step-4 one): readers must see the complete step-4 checkpoint, raw weights and EMA alike.
    assert ncio.read_safetensors(run_dir / ncrun.MODEL)[1]["step"] == "8"
    for use_ema in (False, True):
        run = load_run(run_dir, use_ema=use_ema)
        assert run.step == 4
        expected = safetensors.torch.load(before[ncrun.EMA_WEIGHTS if use_ema else ncrun.MODEL])
        for k, v in run.net.state_dict().items():
            assert torch.equal(v, expected[k]), k
    # The next save puts the previous files back first, then commits the new step.
    ncio.recover(run_dir)
    assert {n: (run_dir / n).read_bytes() for n in files} == before
    assert not (run_dir / ncio.PREVIOUS).exists()
    train(run_dir, config, dataset, resume=True)
    assert load_run(run_dir).step == 8 and not (run_dir / ncio.PREVIOUS).exists()


def test_committed_save_with_leftover_backup_reads_the_new_files(vector_run, tmp_path):
    run_dir = copy_run(vector_run, tmp_path / "run")
    # A kill after state.json's rename but before .previous/ was removed: the save committed.
    ncio.atomic_write_many(run_dir, {"a.bin": b"old", ncrun.STATE: b'{"step": 3}'})
    prev = run_dir / ncio.PREVIOUS
    prev.mkdir()
    (prev / "a.bin").write_bytes(b"old")
    (prev / ncrun.STATE).write_bytes(b'{"step": 3}')
    (prev / ncio.JOURNAL).write_text('{"files": ["a.bin", "state.json"]}')
    (run_dir / "a.bin").write_bytes(b"new")
    (run_dir / ncrun.STATE).write_bytes(b'{"step": 5}')
    assert ncio.checkpoint_file(run_dir, "a.bin") == run_dir / "a.bin"
    assert ncrun.read_state(run_dir)["step"] == 5
    (run_dir / ".model.safetensors.x1y2.tmp").write_bytes(b"half")  # a killed save's temp file
    ncio.recover(run_dir)
    assert (run_dir / "a.bin").read_bytes() == b"new" and not prev.exists()
    assert not list(run_dir.glob(".*.tmp"))


# ----------------------------------------------------------------------------- optimizer state
def test_optimizer_state_round_trip_continues_identically(tmp_path):
    torch.manual_seed(0)
    net_a = torch.nn.Linear(4, 3)
    net_b = torch.nn.Linear(4, 3)
    net_b.load_state_dict(net_a.state_dict())
    opt_a = torch.optim.AdamW(net_a.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    x = torch.randn(8, 4)
    for _ in range(3):
        net_a(x).pow(2).sum().backward()
        opt_a.step()
        opt_a.zero_grad()
    (tmp_path / "opt.safetensors").write_bytes(ckpt.optimizer_to_bytes(opt_a, step=3))
    net_b.load_state_dict(net_a.state_dict())
    opt_b = torch.optim.AdamW(net_b.parameters(), lr=1.0)
    state, meta = ckpt.optimizer_state_from_file(tmp_path / "opt.safetensors")
    assert meta["step"] == "3"
    opt_b.load_state_dict(state)
    assert opt_b.param_groups[0]["betas"] == (0.8, 0.95) and opt_b.param_groups[0]["lr"] == 1e-2
    for net, opt in ((net_a, opt_a), (net_b, opt_b)):
        net(x).pow(2).sum().backward()
        opt.step()
    for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_rng_state_round_trips_through_text():
    g = torch.Generator().manual_seed(123)
    torch.randn(5, generator=g)  # move the state away from the seed
    text = ckpt.encode_rng(g.get_state())
    h = torch.Generator()
    h.set_state(ckpt.decode_rng(text))
    assert torch.equal(torch.randn(7, generator=g), torch.randn(7, generator=h))


# ----------------------------------------------------------------------------- load_run
def test_run_directory_layout_is_safetensors_and_json(image_run):
    names = set(os.listdir(image_run))
    assert {"config.json", "model.safetensors", "ema.safetensors", "optimizer.safetensors",
            "state.json", "log.jsonl", "samples"} <= names
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        _, meta = ncio.read_safetensors(image_run / name)
        assert meta["format"] == "noisecraft" and meta["step"] == "3"
    state = json.loads((image_run / "state.json").read_text())
    assert state["step"] == 3 and state["ema_updates"] == 3
    log = (image_run / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [2, 3]


def test_load_run_rebuilds_a_sampler_ready_model(image_run):
    run = load_run(image_run)
    assert isinstance(run.denoiser, Denoiser) and run.denoiser.net is run.net
    assert run.schedule.T == 50 and run.preprocess.shape == (1, 8, 8)
    assert run.config.data.spec == "digits" and run.step == 3
    ema = safetensors.torch.load_file(image_run / "ema.safetensors")
    for name, value in run.net.state_dict().items():
        assert torch.equal(value, ema[name])
    raw = load_run(image_run, use_ema=False)
    model = safetensors.torch.load_file(image_run / "model.safetensors")
    assert all(torch.equal(v, model[k]) for k, v in raw.net.state_dict().items())
    images = run.generate(5, steps=4, seed=1)
    assert images.dtype == np.uint8 and images.shape == (5, 8, 8, 1)


def test_generate_does_not_depend_on_the_batch_size(image_run):
    run = load_run(image_run)
    whole = run.generate(6, steps=3, seed=4, batch_size=256)
    pieces = run.generate(6, steps=3, seed=4, batch_size=4)
    np.testing.assert_array_equal(whole, pieces)
    assert not np.array_equal(whole, run.generate(6, steps=3, seed=5))


def test_generate_calls_back_with_the_reverse_process(image_run):
    seen = []
    load_run(image_run).generate(2, steps=3, callback=lambda i, t, x, x0: seen.append((i, x.shape)))
    assert [i for i, _ in seen] == [0, 1, 2] and seen[0][1] == (2, 1, 8, 8)


def test_vector_runs_generate_float_vectors(vector_run):
    out = load_run(vector_run).generate(7, steps=3)
    assert out.dtype == np.float32 and out.shape == (7, 2)


def test_missing_and_foreign_directories(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(RunError, match="config.json: missing"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text('{"name": "someone else\'s"}')
    with pytest.raises(RunError, match="config.json.*version"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="config.json: not valid JSON"):
        load_run(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "empty"])
def test_corrupt_weights_raise_runerror_naming_the_file(image_run, tmp_path, damage):
    run_dir = copy_run(image_run, tmp_path / "run")
    path = run_dir / "ema.safetensors"
    data = path.read_bytes()
    path.write_bytes({"garbage": b"\x00\x01garbage" * 10, "truncate": data[: len(data) // 2],
                      "empty": b""}[damage])
    with pytest.raises(RunError, match="ema.safetensors"):
        load_run(run_dir)


def test_weights_of_another_network_are_rejected(image_run, vector_run, tmp_path):
    run_dir = copy_run(image_run, tmp_path / "run")
    (run_dir / "ema.safetensors").write_bytes((vector_run / "ema.safetensors").read_bytes())
    with pytest.raises(RunError, match="ema.safetensors: does not fit"):
        load_run(run_dir)


def test_missing_state_is_named(image_run, tmp_path):
    run_dir = copy_run(image_run, tmp_path / "run")
    (run_dir / "state.json").unlink()
    with pytest.raises(RunError, match="state.json: missing"):
        load_run(run_dir)
