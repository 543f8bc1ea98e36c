"""Noise-level experts (nets/experts.py): K backbones on disjoint t intervals behind one net.

The router must be invisible: on examples whose t lies in expert k's interval its output IS
expert k's output (bit for bit, so a Denoiser over the router is a Denoiser over expert k
there), gradients reach only the owning expert, and it trains, checkpoints, resumes and samples
as any net."""

import dataclasses
import json
from fractions import Fraction

import pytest
import safetensors.torch
import torch

from noisecraft import Denoiser, Schedule, data, nets
from noisecraft.cli import main
from noisecraft.nets.experts import Experts
from noisecraft.train import TrainConfig, Trainer, new_run_config
from train_helpers import SMALL_MLP, SMALL_UNET, train, vector_config

T = 30


def router(k=3, shared_init=False, expert=None, seed=0):
    """Experts with every weight drawn at random: the backbones' zero-initialised output layers
    would make every expert output 0, and so agree whatever the routing."""
    torch.manual_seed(seed)
    expert = expert or nets.build("mlp", T=T, **SMALL_MLP).config
    net = nets.from_config({"arch": "experts", "expert": expert, "experts": k,
                            "shared_init": shared_init})
    if not shared_init:
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn_like(p) * 0.5)
    return net


def owner(t, k, steps=T):
    """Expert owning t, from the definition T·j/K < t ≤ T·(j+1)/K in exact rational arithmetic."""
    t = Fraction(t)
    for j in range(k):
        if t <= Fraction(steps * (j + 1), k):
            return j
    return k - 1


@pytest.mark.parametrize("k", [1, 2, 3, 7, 30])
def test_every_t_goes_to_the_expert_whose_interval_holds_it(k):
    net = router(k)
    ts = [0, 0.5] + list(range(1, T + 1)) + [T * j / k + d for j in range(k) for d in (-1e-3, 1e-3)]
    ts = [t for t in ts if 0 <= t <= T]
    got = net.expert_of(torch.tensor(ts, dtype=torch.float32)).tolist()
    # float32 t is compared with float64 boundaries: rationals of the float32 values
    want = [owner(Fraction(float(torch.tensor(t, dtype=torch.float32))), k) for t in ts]
    assert got == want
    # every expert owns ⌊T/K⌋ or ⌈T/K⌉ of the integer steps: equal shares of the time sampler
    counts = torch.bincount(net.expert_of(torch.arange(1, T + 1.0)), minlength=k)
    assert set(counts.tolist()) <= {T // k, -(-T // k)} and counts.sum() == T


def test_routed_output_is_the_owning_experts_output_bit_for_bit():
    net = router(3)
    x = torch.randn(64, 2)
    t = torch.randint(1, T + 1, (64,)).float()
    out = net(x, t)
    which = torch.tensor([owner(int(s), 3) for s in t])
    assert set(which.tolist()) == {0, 1, 2}
    for j in range(3):
        idx = (which == j).nonzero().squeeze(1)
        assert torch.equal(out[idx], net.experts[j](x[idx], t[idx]))
    # the experts differ, so a wrong route would show (the check above is not vacuous)
    assert not torch.equal(net.experts[0](x, t), net.experts[1](x, t))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_a_denoiser_over_the_router_is_a_denoiser_over_the_expert_on_its_interval(prediction):
    net = router(3)
    schedule = Schedule.from_name("cosine", T=T)
    x_t = torch.randn(16, 2)
    for t in (1, 7, 10, 11, 20, 21, 30):          # ends of the three intervals (1-10, 11-20, 21-30)
        d = Denoiser(net, schedule, prediction)(x_t, t)
        e = Denoiser(net.experts[owner(t, 3)], schedule, prediction)(x_t, t)
        for name in ("x0", "eps", "v"):
            assert torch.equal(getattr(d, name), getattr(e, name)), (t, name)


def test_class_labels_follow_their_examples():
    expert = nets.build("mlp", T=T, num_classes=4, **SMALL_MLP).config
    net = router(2, expert=expert)
    x, labels = torch.randn(20, 2), torch.arange(20) % 4
    t = torch.tensor([3.0, 25.0] * 10)
    out = net(x, t, labels=labels)
    for j, idx in ((0, torch.arange(0, 20, 2)), (1, torch.arange(1, 20, 2))):
        assert torch.equal(out[idx], net.experts[j](x[idx], t[idx], labels=labels[idx]))


def test_gradients_stay_in_the_owning_expert():
    net = router(3)
    x = torch.randn(32, 2)
    # a batch inside expert 1's interval: experts 0 and 2 get no gradient at all
    net(x, torch.full((32,), 15.0)).square().sum().backward()
    assert all(p.grad is None for j in (0, 2) for p in net.experts[j].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.experts[1].parameters()
               if p.requires_grad and p.dim() > 1)
    # a mixed batch: expert j's gradient is that of its own examples alone
    net.zero_grad(set_to_none=True)
    t = torch.tensor([5.0, 15.0, 25.0] * 10 + [5.0, 5.0])
    net(x, t).square().sum().backward()
    for j in range(3):
        idx = (net.expert_of(t) == j).nonzero().squeeze(1)
        alone = router(3)                         # same seed: same weights
        alone.experts[j](x[idx], t[idx]).square().sum().backward()
        pairs = zip(net.experts[j].named_parameters(), alone.experts[j].parameters(), strict=True)
        for (name, p), q in pairs:
            assert torch.equal(p.grad, q.grad), (j, name)


def test_shared_init_starts_every_expert_from_the_same_weights():
    shared = router(3, shared_init=True)
    own = nets.from_config({**shared.config, "shared_init": False})
    for j in (1, 2):
        a, b = shared.experts[0].state_dict(), shared.experts[j].state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a)
        c = own.experts[j].state_dict()
        assert not all(torch.equal(own.experts[0].state_dict()[n], c[n]) for n in c)
        # copies, not one module shared: training one leaves the others alone
        assert shared.experts[0].fc_in.weight is not shared.experts[j].fc_in.weight


def test_config_round_trips_through_json_and_weights_through_safetensors(tmp_path):
    net = router(2, expert=nets.build("tiny", T=T, **SMALL_UNET).config)
    config = json.loads(json.dumps(net.config))
    assert config == net.config and config["arch"] == "experts"
    safetensors.torch.save_file(net.state_dict(), tmp_path / "m.safetensors")
    again = nets.from_config(config)
    again.load_state_dict(safetensors.torch.load_file(tmp_path / "m.safetensors"))
    assert {n.split(".")[1] for n in again.state_dict()} == {"0", "1"}   # experts.0.…, experts.1.…
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1.0, 14.0, 16.0, 30.0])
    assert torch.equal(again(x, t), net(x, t))
    assert (again.in_channels, again.divisor) == (1, 2)   # the experts' own attributes show through


@pytest.mark.parametrize("config, match", [
    ({"experts": 0}, "experts"),
    ({"experts": T + 1}, "more than T"),
    ({"experts": 2.5}, "experts"),
    ({"expert": nets.build("linear").config}, "closed form"),
    ({"expert": {"arch": "experts"}}, "one network's config"),
    ({"expert": {"arch": "mlp", "width": -1}}, "width"),
])
def test_bad_configs_are_refused_naming_the_value(config, match):
    base = {"arch": "experts", "expert": nets.build("mlp", T=T, **SMALL_MLP).config, "experts": 2}
    with pytest.raises(ValueError, match=match):
        nets.from_config({**base, **config})


def experts_config(steps, k=2, shared_init=False):
    dataset = data.load("moons")
    tc = TrainConfig(steps=steps, batch_size=8, lr=1e-3, warmup=1, log_every=1, sample_every=0,
                     checkpoint_every=0, ema_decay=0.8)
    config = new_run_config(dataset, "moons", net="mlp", net_overrides={"width": 16, "depth": 1},
                            T=50, train=tc)
    net = nets.from_config({"arch": "experts", "expert": config.net, "experts": k,
                            "shared_init": shared_init})
    return dataclasses.replace(config, net=net.config), dataset


@pytest.mark.parametrize("shared_init", [False, True])
def test_half_then_resume_is_bit_identical_to_straight(tmp_path, shared_init):
    config, dataset = experts_config(steps=4, shared_init=shared_init)
    train(tmp_path / "straight", config, dataset)
    train(tmp_path / "resumed", config, dataset, stop_at=2)
    train(tmp_path / "resumed", config, dataset, resume=True)
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = safetensors.torch.load_file(tmp_path / "straight" / name)
        b = safetensors.torch.load_file(tmp_path / "resumed" / name)
        assert a.keys() == b.keys()
        assert [k for k in a if not torch.equal(a[k], b[k])] == []
    model = safetensors.torch.load_file(tmp_path / "straight" / "model.safetensors")
    assert any(k.startswith("experts.1.") for k in model)


def test_train_experts_then_sample_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--experts", "2", "--experts-shared-init",
                 "--steps", "2", "--batch-size", "8", "--sample-every", "0", "--out", str(run),
                 "--timesteps", "20"]) == 0
    saved = json.loads((run / "config.json").read_text())["net"]
    assert (saved["arch"], saved["experts"], saved["shared_init"]) == ("experts", 2, True)
    assert saved["expert"]["arch"] == "unet"
    assert main(["sample", str(run), "--n", "2", "--steps", "3", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.npz").is_file()
    # a resumed run keeps its experts: a different K is refused in one line
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--experts", "3"]) == 2
    assert "--experts 3 conflicts" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--experts", "2", "--net", "tiny",
                 "--steps", "3"]) == 0


@pytest.mark.parametrize("argv, match", [
    (["--experts", "2", "--net", "linear"], "closed form"),
    (["--experts", "21"], "more than T"),
    (["--experts-shared-init"], "needs --experts"),
    (["--experts", "2", "--learned-variance", "--loss", "hybrid"],
     "not supported with a net with learned_variance"),
])
def test_train_refuses_experts_it_cannot_build(tmp_path, capsys, argv, match):
    assert main(["train", "--data", "digits", "--timesteps", "20", "--steps", "1",
                 "--out", str(tmp_path / "r"), *argv]) == 2
    assert match in capsys.readouterr().err


def test_experts_is_a_registered_architecture():
    assert nets.ARCHITECTURES["experts"] is Experts


def _ddp_worker(rank: int, world: int, port: int, run_dir: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    config, dataset = vector_config(steps=4, batch_size=8, log_every=2)
    net = nets.from_config({"arch": "experts", "expert": config.net, "experts": 25})
    Trainer(dataclasses.replace(config, net=net.config), run_dir, dataset, device="cpu",
            progress=False).fit()


@pytest.mark.slow
def test_two_gloo_processes_train_experts_absent_from_their_batches(tmp_path):
    """25 experts, 8 examples a rank: most experts are unused on a rank at every step, which
    DistributedDataParallel refuses unless told to expect unused parameters."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "run")), nprocs=2, join=True)
    assert (tmp_path / "run" / "model.safetensors").is_file()
