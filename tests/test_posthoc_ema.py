"""Power-function EMA profiles and post-hoc EMA (EDM2): the tracked profile against its closed
form, σ_rel ↔ γ against numerical integration, the least-squares reconstruction against a directly
tracked profile on a known trajectory, snapshots in the trainer's checkpoint transaction (exact
resume, crash between renames), ``noisecraft ema`` and ``--autoguide RUN@STEP``."""

import json
import os

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

import noisecraft.io as ncio
from noisecraft import posthoc
from noisecraft.cli import main
from noisecraft.run import load_run
from noisecraft.train import PowerEMA, TrainConfig, Trainer
from train_helpers import train, vector_config


def random_walk(net: nn.Module, profiles: list[PowerEMA], steps: int, seed: int = 0):
    """A known trajectory θ_1..θ_n: a drift plus a random walk; each profile updated after each
    step; returns the weights θ_τ (float64, one row per step)."""
    g = torch.Generator().manual_seed(seed)
    thetas = []
    for _ in range(steps):
        with torch.no_grad():
            net.weight.add_(0.05 + torch.randn(net.weight.shape, generator=g))
        thetas.append(net.weight.detach().double().flatten().numpy().copy())
        for p in profiles:
            p.update(net)
    return np.stack(thetas)


def closed_form(thetas: np.ndarray, gamma: float, t: int) -> np.ndarray:
    """Σ_{i≤t} w_i θ_i with w_i ∝ i^γ, written out in float64."""
    i = np.arange(1, t + 1, dtype=np.float64)
    w = i ** gamma
    return (w[:, None] * thetas[:t]).sum(0) / w.sum()


# ----------------------------------------------------------------------------- the profiles
@pytest.mark.parametrize("sigma_rel", [0.05, 0.15, 1 / np.sqrt(12)])
def test_power_ema_is_the_closed_form_weighted_average(sigma_rel):
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    initial = net.weight.detach().clone()
    ema = PowerEMA(net, [sigma_rel])
    thetas = random_walk(net, [ema], steps=60)
    got = ema.nets[0].weight.double().flatten().numpy()
    expected = closed_form(thetas, ema.gammas[0], 60)
    # float32 lerps: each of 60 updates rounds to ~6e-8 relative of |θ| (≤ ~10 here), so the
    # error stays far below 1e-5 absolute; a wrong weight (e.g. t^γ / S_{t−1}) is off by O(1).
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert not torch.equal(ema.nets[0].weight, initial) and ema.num_updates == 60
    if sigma_rel == 1 / np.sqrt(12):  # γ = 0: the plain mean of θ_1..θ_n
        assert ema.gammas[0] == pytest.approx(0.0, abs=1e-9)
        np.testing.assert_allclose(got, thetas.mean(0), atol=1e-5)


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.1, 0.2, 0.28])
def test_sigma_rel_is_the_relative_std_of_the_profile(sigma_rel):
    """σ_rel is the std of x = τ/t under the continuous profile density (γ+1) x^γ on [0, 1]:
    integrated numerically on a fine grid (error ~1e-7), not from the cubic the code solves."""
    gamma = posthoc.sigma_rel_to_gamma(sigma_rel)
    x = np.linspace(0, 1, 2_000_001)
    p = (gamma + 1) * x ** gamma
    mean = np.trapezoid(x * p, x)
    std = np.sqrt(np.trapezoid((x - mean) ** 2 * p, x))
    assert std == pytest.approx(sigma_rel, rel=1e-5)
    assert posthoc.gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-12)


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.3, float("nan")])
def test_bad_lengths(bad, tmp_path):
    with pytest.raises(ValueError, match="sigma_rel"):
        posthoc.sigma_rel_to_gamma(bad)
    with pytest.raises(ValueError, match="ema_profiles"):
        TrainConfig(ema_profiles=f"0.05,{bad}")
    config, dataset = vector_config(steps=2, snapshot_every=10)
    with pytest.raises(ValueError, match="--snapshot-every needs --ema-profiles"):
        Trainer(config, tmp_path / "run", dataset)


# ----------------------------------------------------------------------------- reconstruction
STEPS, EVERY = 200, 20  # 10 snapshots of two profiles, as EDM2 stores them (but sparser)


@pytest.fixture(scope="module")
def trajectory():
    """Snapshots of profiles 0.05 and 0.10 every 20 of 200 steps of a known trajectory, and the
    profiles 0.05, 0.07, 0.13 tracked directly over the same steps."""
    torch.manual_seed(1)
    net = nn.Linear(8, 8)
    stored = PowerEMA(net, [0.05, 0.10])
    direct = PowerEMA(net, [0.05, 0.07, 0.13])
    g = torch.Generator().manual_seed(2)
    snapshots, thetas = [], []
    for t in range(1, STEPS + 1):
        with torch.no_grad():
            net.weight.add_(0.05 + torch.randn(net.weight.shape, generator=g))
        thetas.append(net.weight.detach().double().flatten().numpy().copy())
        stored.update(net)
        direct.update(net)
        if t % EVERY == 0:
            snapshots += [(s, t, {k: v.clone() for k, v in state.items()})
                          for s, state in zip(stored.sigma_rels, stored.state_dicts(), strict=True)]
    return snapshots, direct, np.stack(thetas)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_basis_weights_are_the_tracked_profiles(trajectory, index):
    """The least-squares basis (profile_weights) applied to the known trajectory gives each
    directly tracked profile (itself checked against the closed form above), to float32 rounding."""
    _, direct, thetas = trajectory
    w = posthoc.profile_weights(direct.gammas[index], STEPS, STEPS + 7)  # zeros past t
    assert w[STEPS:].sum() == 0 and w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w[:STEPS] @ thetas, direct.nets[index].weight.double().flatten().numpy(),
                               rtol=0, atol=1e-5)


def test_a_stored_profile_is_reconstructed_exactly(trajectory):
    snapshots, direct, _ = trajectory
    rec = posthoc.combine(snapshots, 0.05, STEPS)
    assert rec.residual < 1e-12  # the target weight vector is one of the basis vectors
    # float32 snapshots combined in float64: the error is the snapshot's own rounding (~1e-6 of |θ|)
    np.testing.assert_allclose(rec.weights["weight"].numpy(), direct.nets[0].weight.numpy(),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("index, sigma_rel", [(1, 0.07), (2, 0.13)])
def test_an_intermediate_length_matches_the_directly_tracked_profile(trajectory, index, sigma_rel):
    """Tolerance derived, not tuned: the reconstruction is Σ_τ ŵ_τ θ_τ and the truth Σ_τ w*_τ θ_τ,
    so per coordinate c, by Cauchy–Schwarz, |error_c| ≤ ‖ŵ − w*‖ ‖θ_{·c}‖ = residual ‖w*‖ ‖θ_{·c}‖
    (plus float32 rounding, 1e-5). 0.13 lies beyond the stored 0.10: a mild extrapolation."""
    snapshots, direct, thetas = trajectory
    rec = posthoc.combine(snapshots, sigma_rel, STEPS)
    want = posthoc.profile_weights(posthoc.sigma_rel_to_gamma(sigma_rel), STEPS, STEPS)
    bound = rec.residual * np.linalg.norm(want) * np.linalg.norm(thetas, axis=0) + 1e-5
    error = np.abs(rec.weights["weight"].double().flatten().numpy()
                   - direct.nets[index].weight.double().flatten().numpy())
    assert (error <= bound).all(), (error.max(), bound.min())
    assert rec.residual < 0.02  # measured 0.9 % (0.07) and 1.3 % (0.13) with 10 snapshots
    # the error is small against how far the lengths differ: 0.07 is not just 0.05 or 0.10
    apart = np.abs(direct.nets[0].weight.double().flatten().numpy()
                   - direct.nets[index].weight.double().flatten().numpy())
    assert error.max() < 0.1 * apart.max()


def test_the_solver_matches_a_dense_least_squares_whatever_its_chunk():
    """The chunked QR solve against numpy's dense lstsq on the explicit weight matrix."""
    stored = [(posthoc.sigma_rel_to_gamma(s), t) for t in range(20, 201, 20) for s in (0.05, 0.1)]
    target = (posthoc.sigma_rel_to_gamma(0.07), 190)
    dense = np.stack([posthoc.profile_weights(g, t, 200) for g, t in stored], axis=1)
    want = posthoc.profile_weights(*target, 200)
    x, *_ = np.linalg.lstsq(dense, want, rcond=None)
    expected = np.linalg.norm(dense @ x - want) / np.linalg.norm(want)
    for chunk in (7, 64, 1 << 16):
        got, residual = posthoc.solve_coefficients(stored, target, chunk=chunk)
        assert residual == pytest.approx(expected, rel=1e-8)
        np.testing.assert_allclose(dense @ got, dense @ x, atol=1e-12)


def test_a_length_far_outside_the_stored_ones_is_out_of_reach(trajectory):
    snapshots, _, _ = trajectory
    assert posthoc.combine(snapshots, 0.02, STEPS).residual > posthoc.MAX_RESIDUAL


# ----------------------------------------------------------------------------- the trainer
def phema_files(run_dir):
    """name → (metadata, {tensor: raw bytes}): safetensors orders its JSON header by a hash map,
    so files are compared by content, bit for bit, rather than byte for byte."""
    out = {}
    for n in sorted(os.listdir(run_dir)):
        if n.startswith("phema"):
            tensors, meta = ncio.read_safetensors(run_dir / n)
            out[n] = (meta, {k: v.numpy().tobytes() for k, v in tensors.items()})
    return out


def test_resumed_run_writes_the_same_snapshots_bit_for_bit(tmp_path):
    config, dataset = vector_config(steps=8, ema_profiles="0.05,0.1", snapshot_every=3)
    train(tmp_path / "straight", config, dataset)
    train(tmp_path / "resumed", config, dataset, stop_at=4)
    assert sorted(phema_files(tmp_path / "resumed")) == [
        "phema-000000003.safetensors", "phema.safetensors"]  # no snapshot at the interruption
    train(tmp_path / "resumed", config, dataset, resume=True)
    a, b = phema_files(tmp_path / "straight"), phema_files(tmp_path / "resumed")
    assert sorted(a) == ["phema-000000003.safetensors", "phema-000000006.safetensors",
                         "phema-000000008.safetensors", "phema.safetensors"]  # 3, 6 and --steps
    assert a == b
    assert posthoc.snapshot_steps(tmp_path / "straight") == [3, 6, 8]


def test_a_default_run_writes_no_profiles(tmp_path):
    config, dataset = vector_config(steps=2)
    train(tmp_path / "run", config, dataset)
    assert phema_files(tmp_path / "run") == {}


def test_a_snapshot_of_an_uncommitted_save_is_never_read(tmp_path, monkeypatch):
    """A crash after the snapshot was renamed in but before state.json committed: readers see
    the step-3 checkpoint's snapshots only, and the writer's recovery removes the stray one."""
    config, dataset = vector_config(steps=6, ema_profiles="0.05,0.1", snapshot_every=3)
    run_dir = tmp_path / "run"
    train(run_dir, config, dataset, stop_at=3)
    real_replace = os.replace

    def crash_at_commit(src, dst):
        if str(dst).endswith("state.json") and ".previous" not in str(dst):
            raise OSError("simulated crash before the commit")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_at_commit)
    with pytest.raises(OSError, match="simulated"):
        train(run_dir, config, dataset, resume=True)
    monkeypatch.undo()
    assert (run_dir / "phema-000000006.safetensors").is_file()  # renamed in, not committed
    assert posthoc.snapshot_steps(run_dir) == [3]
    with pytest.raises(ValueError, match="no EMA snapshot at step 6"):
        posthoc.load_snapshot_run(run_dir, 6)
    ncio.recover(run_dir)
    assert not (run_dir / "phema-000000006.safetensors").exists()


# ----------------------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def snapshot_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ph") / "run"
    config, dataset = vector_config(steps=40, ema_profiles="0.05,0.1", snapshot_every=4)
    train(run_dir, config, dataset)
    return run_dir


def test_noisecraft_ema_writes_a_run_that_samples(snapshot_run, tmp_path, capsys):
    out = tmp_path / "ema07"
    assert main(["ema", str(snapshot_run), "--length", "0.07", "--out", str(out)]) == 0
    assert "EMA length 0.07 at step 40 from 10 snapshots" in capsys.readouterr().out
    stored = [(s, t, state) for t in range(4, 41, 4)
              for s, state in zip(*posthoc.read_snapshot(snapshot_run, t), strict=True)]
    expected = posthoc.combine(stored, 0.07, 40).weights
    run = load_run(out)
    assert run.step == 40
    assert all(torch.equal(v, expected[k]) for k, v in run.net.state_dict().items())
    raw = safetensors.torch.load_file(snapshot_run / "model.safetensors")
    assert all(torch.equal(v, raw[k]) for k, v in load_run(out, use_ema=False).net.state_dict().items())
    record = json.loads((out / "state.json").read_text())["posthoc_ema"]
    assert record["sigma_rel"] == 0.07 and record["snapshots"] == list(range(4, 41, 4))
    assert main(["sample", str(out), "--n", "5", "--steps", "3", "--out", str(tmp_path / "s")]) == 0


def test_noisecraft_ema_refusals(snapshot_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert main(["ema", str(snapshot_run), "--length", "0.07", "--out", str(tmp_path / "taken")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["ema", str(snapshot_run), "--length", "0.02", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of reach of the stored profiles (0.05, 0.1)" in err
    assert not (tmp_path / "x").exists()
    config, dataset = vector_config(steps=2)
    train(tmp_path / "plain", config, dataset)
    assert main(["ema", str(tmp_path / "plain"), "--length", "0.07", "--out", str(tmp_path / "y")]) == 2
    assert "no EMA snapshots" in capsys.readouterr().err


def test_autoguide_run_at_step_loads_that_snapshot(snapshot_run, tmp_path, capsys):
    run = posthoc.load_snapshot_run(snapshot_run, 8)
    sigma_rels, states = posthoc.read_snapshot(snapshot_run, 8)
    assert run.step == 8 and sigma_rels == [0.05, 0.1]
    assert all(torch.equal(v, states[0][k]) for k, v in run.net.state_dict().items())
    assert posthoc.split_run_step(f"{snapshot_run}@8") == (str(snapshot_run), 8)
    assert posthoc.split_run_step(str(snapshot_run)) == (str(snapshot_run), None)
    base = ["sample", str(snapshot_run), "--n", "5", "--steps", "3", "--guidance", "2"]
    assert main([*base, "--autoguide", f"{snapshot_run}@8", "--out", str(tmp_path / "a")]) == 0
    assert f"autoguide {snapshot_run}" in capsys.readouterr().out
    assert main([*base, "--autoguide", f"{snapshot_run}@9", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "no EMA snapshot at step 9; snapshots: 4, 8, 12" in err


RACE_WRITER = """
import sys
from train_helpers import train, vector_config
config, dataset = vector_config(steps=30, checkpoint_every=1, log_every=1, ema_profiles="0.05,0.1",
                                snapshot_every=1)
train(sys.argv[1], config, dataset, stop_at=2)
print("first", flush=True)
train(sys.argv[1], config, dataset, resume=True)
"""


def test_reconstructing_while_the_trainer_saves_every_step(tmp_path):
    """Readers racing a writer that saves (and snapshots) every step (tests/test_run_race.py's
    pattern): every reconstruction reads committed, complete snapshots, and never fails."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{repo / 'src'}{os.pathsep}{repo / 'tests'}",
           "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "run"
    writer = subprocess.Popen([sys.executable, "-c", RACE_WRITER, str(run_dir)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "first", writer.stderr.read()
    seen, raw, errors = [], 0, []
    while writer.poll() is None:
        try:
            rec = posthoc.reconstruct(run_dir, 0.1)
            assert rec.residual < 1e-12 and rec.snapshots == list(range(1, rec.step + 1))
            seen.append(rec.step)
            # Without the retry of read_committed: the newest snapshot file on disk, committed or
            # not, is complete (renamed into place whole), so reading it never fails.
            names = sorted(n for n in os.listdir(run_dir) if posthoc.SNAPSHOT_RE.match(n))
            ncio.read_safetensors(run_dir / names[-1])
            raw += 1
        except Exception as e:  # noqa: BLE001 - every failure is what this test counts
            errors.append(f"{type(e).__name__}: {e}")
    assert writer.wait() == 0, writer.stderr.read()
    assert errors == [], f"{len(errors)} of {len(seen) + len(errors)} reads failed: {errors[:3]}"
    assert len(seen) >= 10 and raw >= 10 and seen == sorted(seen), seen


def test_sweep_scores_each_length_by_the_runs_yardstick(snapshot_run, capsys):
    """The sweep's score of a stored length is the yardstick (sliced W2 to held-out moons,
    explain's) of samples drawn from that profile's weights loaded by hand; best is the minimum."""
    from noisecraft.explain.context import Context, draw, held_out
    from noisecraft.explain.sampling import yardstick

    result = posthoc.sweep(snapshot_run, [0.05, 0.07, 0.1], n=200)
    assert "sliced Wasserstein" in result.yardstick and len(result.rows) == 3
    assert result.best == min(result.rows, key=lambda r: r["score"])["sigma_rel"]
    run = load_run(snapshot_run)
    run.net.load_state_dict(posthoc.read_snapshot(snapshot_run, 40)[1][1])  # profile 0.1 at 40
    ctx = Context(run, held_out(run, 512)[0], None, 0, 200, run.sampler_and_steps()[1],
                  "sliced-wasserstein")
    direct = yardstick(ctx)[1](draw(ctx, run.sampler_and_steps()[0], 200, ctx.steps))
    assert result.rows[2]["score"] == pytest.approx(direct, rel=1e-6)
    assert main(["ema", str(snapshot_run), "--sweep", "0.05,0.1", "--n", "50"]) == 0
    assert "best: sigma_rel" in capsys.readouterr().out


def test_a_solved_net_refuses_ema_profiles(tmp_path):
    from noisecraft import data
    from noisecraft.train import new_run_config

    dataset = data.load("moons")
    config = new_run_config(dataset, "moons", net="linear",
                            train=TrainConfig(steps=1, ema_profiles="0.05", sample_every=0))
    with pytest.raises(ValueError, match="--ema-profiles needs a trained net"):
        train(tmp_path / "run", config, dataset)
