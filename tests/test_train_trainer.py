import json
import math

import numpy as np
import pytest
import safetensors.torch
import torch

from noisecraft import RunError, nets
from noisecraft.data.datasets import VectorDataset
from noisecraft.train import TrainConfig, Trainer, load_run, lr_at, new_run_config
from train_helpers import SMALL_UNET, image_config, train, vector_config


def weights(path):
    return safetensors.torch.load_file(path)


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def log_of(run_dir, key):
    return [json.loads(line)[key] for line in (run_dir / "log.jsonl").read_text().splitlines()]


def checkpoint_tensors(run_dir):
    return {name: weights(run_dir / name)
            for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors")}


def small_vectors(n=100, seed=0):
    """100 points: with batch 32 an epoch is 3 batches, so short runs cross epoch boundaries."""
    rng = np.random.default_rng(seed)
    return VectorDataset(rng.uniform(-1, 1, (n, 2)).astype(np.float32), source="small")


def small_vector_config(steps, **train):
    dataset = small_vectors()
    tc = dict(steps=steps, batch_size=32, lr=1e-2, warmup=3, log_every=1, sample_every=0,
              checkpoint_every=0, ema_decay=0.8)
    tc.update(train)
    return new_run_config(dataset, "small", net="mlp", net_overrides={"width": 16, "depth": 1}, T=20,
                          train=TrainConfig(**tc)), dataset


# ----------------------------------------------------------------------------- LR schedule
def test_lr_warms_up_linearly_then_stays_constant():
    tc = TrainConfig(lr=1e-3, warmup=4, steps=100)
    assert [lr_at(s, tc) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert lr_at(99, tc) == 1e-3


def test_cosine_decays_from_peak_to_zero_after_warmup():
    tc = TrainConfig(lr=1e-3, warmup=10, steps=110, lr_schedule="cosine")
    assert lr_at(10, tc) == pytest.approx(1e-3)  # cos(0) = 1
    assert lr_at(60, tc) == pytest.approx(0.5e-3)  # half way: ½(1 + cos(π/2))
    assert lr_at(110, tc) == pytest.approx(0.0, abs=1e-15)
    assert lr_at(35, tc) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))


# ----------------------------------------------------------------------------- reproducibility
def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    config, dataset = small_vector_config(4)
    train(tmp_path / "a", config, dataset)
    train(tmp_path / "b", config, dataset)
    assert_same_tensors(weights(tmp_path / "a/model.safetensors"),
                        weights(tmp_path / "b/model.safetensors"))
    config.train.seed = 1
    train(tmp_path / "c", config, dataset)
    a, c = weights(tmp_path / "a/model.safetensors"), weights(tmp_path / "c/model.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("lr_schedule, accum", [("constant", 1), ("cosine", 2)])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path, lr_schedule, accum):
    # 8 steps of 3-batch epochs (accum 2: 16 micro-batches): the interruption at step 4 falls
    # mid-epoch, so data order, noise streams, optimizer moments, EMA and LR must all resume.
    config, dataset = small_vector_config(8, lr_schedule=lr_schedule, accum=accum)
    train(tmp_path / "straight", config, dataset)
    train(tmp_path / "resumed", config, dataset, stop_at=4)
    state = json.loads((tmp_path / "resumed/state.json").read_text())
    assert state["step"] == 4 and state["data"][0] == {"epoch": (4 * accum) // 3,
                                                       "position": (4 * accum) % 3}
    train(tmp_path / "resumed", config, dataset, resume=True)
    a, b = checkpoint_tensors(tmp_path / "straight"), checkpoint_tensors(tmp_path / "resumed")
    for name in a:
        assert_same_tensors(a[name], b[name])
    log = [json.loads(line) for line in (tmp_path / "resumed/log.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "straight/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))
    assert [r["loss"] for r in log] == [r["loss"] for r in ref]


def test_steps_half_then_resume_to_steps_equals_steps(tmp_path):
    """`--steps N/2`, then `--steps N --resume` (constant LR after warm-up)."""
    config, dataset = small_vector_config(8)
    train(tmp_path / "straight", config, dataset)
    half, _ = small_vector_config(4)
    train(tmp_path / "two_part", half, dataset)
    train(tmp_path / "two_part", config, dataset, resume=True)
    for name, tensors in checkpoint_tensors(tmp_path / "straight").items():
        assert_same_tensors(tensors, checkpoint_tensors(tmp_path / "two_part")[name])


def test_resume_drops_log_lines_written_after_the_checkpoint(tmp_path):
    config, dataset = small_vector_config(6)
    run = tmp_path / "run"
    train(run, config, dataset, stop_at=3)
    with open(run / "log.jsonl", "a") as f:  # the interrupted process got further than its checkpoint
        f.write(json.dumps({"step": 4, "loss": 123.0}) + "\n" + '{"step": 5, "lo')
    train(run, config, dataset, resume=True)
    assert log_of(run, "step") == [1, 2, 3, 4, 5, 6]
    assert 123.0 not in log_of(run, "loss")


def test_resume_at_the_final_step_trains_nothing(tmp_path):
    config, dataset = small_vector_config(3)
    train(tmp_path / "run", config, dataset)
    before = checkpoint_tensors(tmp_path / "run")
    result = train(tmp_path / "run", config, dataset, resume=True)
    assert result.step == 3 and result.loss is None
    after = checkpoint_tensors(tmp_path / "run")
    assert_same_tensors(before["model.safetensors"], after["model.safetensors"])


# ----------------------------------------------------------------------------- EMA in the loop
def test_ema_weights_move_during_training_and_lag_the_model(tmp_path):
    config, dataset = small_vector_config(6, ema_decay=0.8)
    trainer = Trainer(config, tmp_path / "run", dataset, device="cpu", progress=False)
    trainer.fit()
    torch.manual_seed(config.train.seed)
    initial = nets.from_config(config.net).state_dict()  # the trainer's initial weights
    ema = weights(tmp_path / "run/ema.safetensors")
    model = weights(tmp_path / "run/model.safetensors")
    assert trainer.ema.num_updates == 6
    # An EMA that never updated would still equal the initial weights.
    floats = [k for k in initial if initial[k].is_floating_point()]
    assert all(not torch.equal(ema[k], initial[k]) for k in floats)
    assert any(not torch.equal(ema[k], model[k]) for k in model)  # and it averages, not copies
    assert_same_tensors(load_run(tmp_path / "run").net.state_dict(), ema)  # sampling uses it


def test_ema_decay_zero_tracks_the_model_exactly(tmp_path):
    config, dataset = small_vector_config(3, ema_decay=0.0)
    train(tmp_path / "run", config, dataset)
    assert_same_tensors(weights(tmp_path / "run/ema.safetensors"),
                        weights(tmp_path / "run/model.safetensors"))


# ----------------------------------------------------------------------------- outputs
def test_log_and_periodic_sample_grids(tmp_path):
    config, dataset = image_config(steps=4, sample_every=2, log_every=2)
    config.sampling.n, config.sampling.steps = 4, 2
    result = train(tmp_path / "run", config, dataset)
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]
    assert set(log[0]) == {"step", "loss", "grad_norm", "lr", "examples_per_s", "elapsed_s"}
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in log)
    assert result.loss == log[-1]["loss"]
    assert sorted(p.name for p in (tmp_path / "run/samples").iterdir()) == [
        "step_0000002.png", "step_0000004.png"]


def test_vector_runs_save_scatter_plots(tmp_path):
    config, dataset = vector_config(steps=2, sample_every=2)
    train(tmp_path / "run", config, dataset)
    assert (tmp_path / "run/samples/step_0000002.png").stat().st_size > 0


def test_class_conditional_training_with_label_dropout(tmp_path):
    from noisecraft import data

    dataset = data.load("digits")
    config = new_run_config(dataset, "digits", net="tiny", T=20, class_conditional=True,
                            net_overrides=SMALL_UNET,
                            train=TrainConfig(steps=2, batch_size=8, label_dropout=0.3, sample_every=0,
                                              checkpoint_every=0, log_every=1))
    assert config.net["num_classes"] == 10 and config.data.num_classes == 10
    train(tmp_path / "run", config, dataset)
    run = load_run(tmp_path / "run")
    labels = run.default_labels(12)
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert run.generate(12, steps=2, labels=labels).shape == (12, 8, 8, 1)


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_gradient_clipping_bounds_what_the_optimizer_sees(tmp_path, monkeypatch, clip):
    seen = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    config, dataset = small_vector_config(3, grad_clip=clip)
    train(tmp_path / "run", config, dataset)
    logged = log_of(tmp_path / "run", "grad_norm")
    assert len(seen) == 3 and min(logged) > 0.05  # the log holds the norm before clipping
    if clip:
        assert all(float(n) == pytest.approx(clip, rel=1e-4) for n in seen)
    else:
        assert [float(n) for n in seen] == pytest.approx(logged, rel=1e-5)


# ----------------------------------------------------------------------------- refusals
def test_refuses_to_overwrite_or_resume_nothing(tmp_path):
    config, dataset = small_vector_config(1)
    train(tmp_path / "run", config, dataset)
    with pytest.raises(ValueError, match="already holds a trained run"):
        Trainer(config, tmp_path / "run", dataset)
    with pytest.raises(RunError, match="does not exist; nothing to resume"):
        Trainer(config, tmp_path / "empty", dataset, resume=True)


def test_batch_larger_than_the_data_is_a_dataerror(tmp_path):
    from noisecraft import DataError

    config, dataset = small_vector_config(1, batch_size=101)
    with pytest.raises(DataError, match="fewer than one batch of 101"):
        train(tmp_path / "run", config, dataset)


def test_vector_data_needs_a_vector_net():
    with pytest.raises(ValueError, match="use --net mlp"):
        new_run_config(small_vectors(), "small", net="tiny")
    with pytest.raises(ValueError, match="unknown network preset 'huge'"):
        new_run_config(small_vectors(), "small", net="huge")


# ----------------------------------------------------------------------------- precision
def test_precision_bf16_autocasts_on_a_cpu_and_auto_stays_fp32_there(tmp_path):
    """``auto`` on a CPU is plain float32 (the same weights as ``fp32``); ``bf16`` rounds the
    network's matmuls to bf16 (8 mantissa bits), so its weights differ from float32's after a
    few steps, while staying float32 tensors near them (relative change ≪ 1)."""
    runs = {}
    for precision in ("auto", "fp32", "bf16"):
        config, dataset = small_vector_config(4, precision=precision)
        train(tmp_path / precision, config, dataset)
        runs[precision] = weights(tmp_path / precision / "model.safetensors")
    assert_same_tensors(runs["auto"], runs["fp32"])
    assert any(not torch.equal(runs["bf16"][k], runs["fp32"][k]) for k in runs["fp32"])
    for k, w in runs["bf16"].items():
        assert w.dtype == torch.float32
        assert (w - runs["fp32"][k]).norm() <= 0.1 * runs["fp32"][k].norm() + 1e-6


def test_precision_must_be_one_of_the_choices():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
