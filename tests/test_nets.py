"""Backbones: shapes, the config round trip, conditioning, and that they can learn."""

import json

import pytest
import torch

from noisecraft import nets

# Small overrides keep every forward pass on the CPU cheap; the big presets keep their layout.
SMALL = {
    "tiny": {},
    "mnist": dict(base_channels=8, image_size=28),
    "ddpm-cifar10": dict(base_channels=8, norm_groups=4),
}


def randomise_(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter a random value: the zero-initialised last layers make a fresh net's
    output independent of t and labels, so sensitivity tests need a net that is not fresh."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


def example_input(net, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = net.config
    size = cfg.get("image_size")
    shape = (batch, cfg["in_channels"]) + ((size, size) if size is not None else ())
    return torch.randn(shape, generator=g), torch.rand(batch, generator=g) * cfg["T"]


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("learned_variance", [False, True])
def test_output_shape_and_learned_variance_doubles_channels(name, learned_variance):
    net = nets.build(name, learned_variance=learned_variance, **SMALL[name])
    x, t = example_input(net)
    out = net(x, t)
    expected = list(x.shape)
    expected[1] *= 2 if learned_variance else 1
    assert list(out.shape) == expected
    assert torch.isfinite(out).all()


def test_unet_accepts_other_sizes_divisible_by_its_depth():
    net = nets.build("tiny")  # two levels: any even size
    assert net(torch.randn(2, 1, 12, 16), torch.tensor([3.0, 700.0])).shape == (2, 1, 12, 16)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(2, 1, 9, 8), torch.tensor([3.0, 700.0]))
    with pytest.raises(ValueError, match=r"\(batch, 1, H, W\)"):
        net(torch.randn(2, 3, 8, 8), torch.tensor([3.0, 700.0]))


def test_ddpm_cifar10_has_the_papers_35_7m_parameters():
    net = nets.build("ddpm-cifar10")
    count = sum(p.numel() for p in net.parameters())
    # Ho et al. (2020) report 35.7M; diffusers' google/ddpm-cifar10-32 UNet2DModel has 35,746,307.
    assert count == 35_746_307


def test_tiny_preset_is_small():
    count = sum(p.numel() for p in nets.build("tiny").parameters())
    assert 200_000 <= count <= 500_000


@pytest.mark.parametrize("name,overrides", [
    ("tiny", dict(num_classes=10, learned_variance=True, T=250)),
    ("mnist", SMALL["mnist"]),
    ("ddpm-cifar10", dict(SMALL["ddpm-cifar10"], num_heads=2)),
])
def test_config_round_trip_rebuilds_the_same_network(name, overrides):
    net = randomise_(nets.build(name, **overrides))
    config = json.loads(json.dumps(net.config))
    assert config == net.config
    rebuilt = nets.from_config(config)
    assert rebuilt.config == net.config
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(net.state_dict())
    net.eval()
    rebuilt.eval()
    x, t = example_input(net)
    torch.testing.assert_close(rebuilt(x, t), net(x, t), rtol=0, atol=0)


def test_time_embedding_distinguishes_neighbouring_steps():
    emb = nets.TimeEmbedding(32, 64, T=1000)
    t = torch.tensor([10.0, 11.0, 10.5, 999.0, 1000.0])
    e = emb(t)
    # The sinusoid's fastest frequency is 1 rad/step, so t and t + 1 differ by ~|2 sin(1/2)| ≈ 0.96
    # in that coordinate: a clear gap, not a rounding-level difference.
    s = nets.sinusoidal_embedding(t, 32)
    assert (s[0] - s[1]).abs().max() > 0.5
    assert (s[0] - s[2]).abs().max() > 0.2
    assert (s[3] - s[4]).abs().max() > 0.5
    assert (e[0] - e[1]).abs().max() > 1e-3


def test_time_is_rescaled_by_the_schedule_length():
    # t is embedded as t · 1000 / T, so with T = 500 the step t = 5 gets the T = 1000 code of t = 10.
    short, ref = nets.TimeEmbedding(32, 64, T=500), nets.TimeEmbedding(32, 64, T=1000)
    short.load_state_dict(ref.state_dict())
    torch.testing.assert_close(short(torch.tensor([5.0, 250.0])), ref(torch.tensor([10.0, 500.0])))


def test_unet_output_depends_on_time():
    net = randomise_(nets.build("tiny")).eval()
    x = torch.randn(1, 1, 8, 8).expand(2, 1, 8, 8)
    out = net(x, torch.tensor([100.0, 101.0]))
    assert (out[0] - out[1]).abs().max() > 1e-4


def test_labels_change_the_output_and_none_is_the_null_label():
    net = randomise_(nets.build("tiny", num_classes=3)).eval()
    x = torch.randn(1, 1, 8, 8).expand(4, 1, 8, 8)
    t = torch.full((4,), 300.0)
    out = net(x, t, labels=torch.tensor([0, 1, 2, -1]))
    assert (out[0] - out[1]).abs().max() > 1e-3
    assert (out[1] - out[2]).abs().max() > 1e-3
    torch.testing.assert_close(net(x, t), out[3:].expand(4, 1, 8, 8))
    torch.testing.assert_close(net(x, t, labels=None), net(x, t))


def test_bad_conditions_are_refused():
    conditional = nets.build("tiny", num_classes=3)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="label 3 is out of range"):
        conditional(x, t, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer"):
        conditional(x, t, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="text"):
        conditional(x, t, text=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="labels"):
        nets.build("tiny")(x, t, labels=torch.tensor([0, 1]))


def test_bad_presets_and_overrides_name_the_problem():
    with pytest.raises(ValueError, match=r"'huge'.*tiny.*ddpm-cifar10"):
        nets.build("huge")
    with pytest.raises(ValueError, match=r"'chanels'.*valid:.*in_channels"):
        nets.build("tiny", chanels=3)
    with pytest.raises(ValueError, match="image_size 10 is not divisible by 2"):
        nets.build("mnist", image_size=10)
    with pytest.raises(ValueError, match="attention resolution 3"):
        nets.build("tiny", attention_resolutions=[3])
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        nets.from_config({"arch": "resnet"})
    with pytest.raises(ValueError, match="'arch'"):
        nets.from_config({"in_channels": 3})
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        nets.build("tiny", num_classes=0)


@pytest.mark.parametrize("name,overrides", [("tiny", dict(num_classes=2))])
def test_a_few_gradient_steps_reduce_a_regression_loss(name, overrides):
    torch.manual_seed(0)
    net = nets.build(name, **overrides)
    x, t = example_input(net, batch=8, seed=1)
    labels = torch.tensor([0, 1] * 4) if overrides.get("num_classes") else None
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = (net(x, t, labels=labels) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # The zero output layer starts the loss at E[target²] ≈ 1; a net that learns halves it.
    assert losses[-1] < 0.5 * losses[0]
