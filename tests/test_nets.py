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
    "mlp": {},
    "linear": {},
    "mlp-images": dict(image_size=4, in_channels=3),
    "linear-low-rank": dict(rank=3, image_size=None, in_channels=5),
}


def build(name, **overrides):
    """A preset by name; 'mlp-images' and 'linear-low-rank' are the mlp and linear presets with the
    overrides in SMALL."""
    base = name.split("-")[0]  # the SGD-trained affine net ("linear" is now solved, nets/linear.py)
    base = {"linear": "affine"}.get(base, base)
    return nets.build(base if base in ("mlp", "affine") else name, **{**SMALL[name], **overrides})


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
    net = build(name, learned_variance=learned_variance)
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


@pytest.mark.parametrize("name,image_size,attention", [
    ("tiny", 28, [14]), ("tiny", 16, [8]), ("mnist", 32, [8]), ("ddpm-cifar10", 64, [32]),
])
def test_resized_presets_keep_attention_at_the_same_depth(name, image_size, attention):
    assert nets.build(name, image_size=image_size).config["attention_resolutions"] == attention
    # An explicit choice is respected, and checked.
    assert nets.build(name, image_size=image_size, attention_resolutions=[]).config[
        "attention_resolutions"] == []


def test_scalar_t_is_broadcast_to_the_batch():
    net = randomise_(nets.build("tiny")).eval()
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(net(x, 250.0), net(x, torch.full((3,), 250.0)))
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(batch,\)"):
        net(x, torch.ones(2))


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
    ("mnist", {}),
    ("ddpm-cifar10", dict(num_heads=2)),
    ("mlp", dict(num_classes=4, dropout=0.1)),
    ("mlp-images", dict(learned_variance=True)),
    ("linear", dict(num_classes=3)),
    ("linear-low-rank", dict(learned_variance=True)),
])
def test_config_round_trip_rebuilds_the_same_network(name, overrides):
    net = randomise_(build(name, **overrides))
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


@pytest.mark.parametrize("name,overrides", [
    ("tiny", dict(num_classes=2)),
    ("mlp", dict(num_classes=2)),
    ("mlp-images", {}),
    ("linear", dict(num_classes=2)),
    ("linear-low-rank", {}),
])
def test_a_few_gradient_steps_reduce_a_regression_loss(name, overrides):
    torch.manual_seed(0)
    net = build(name, **overrides)
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


@pytest.mark.parametrize("name,overrides", [
    ("linear", dict(num_classes=3)),
    ("linear-low-rank", dict(learned_variance=True)),
])
def test_linear_net_is_affine_in_x(name, overrides):
    net = randomise_(build(name, **overrides))
    g = torch.Generator().manual_seed(3)
    x1, t = example_input(net, batch=4, seed=4)
    x2 = torch.randn(x1.shape, generator=g)
    labels = torch.tensor([0, 1, 2, -1]) if overrides.get("num_classes") else None
    f = lambda x: net(x, t, labels=labels)  # noqa: E731
    a, b = 1.7, -0.6
    lhs = f(a * x1 + b * x2)
    rhs = a * f(x1) + b * f(x2) - (a + b - 1) * f(torch.zeros_like(x1))
    torch.testing.assert_close(lhs, rhs, rtol=1e-4, atol=1e-4)


def test_the_affinity_check_detects_a_nonlinear_net():
    # The same identity fails for the MLP, so the test above is not vacuous.
    net = randomise_(nets.build("mlp"))
    x1, t = example_input(net, batch=4, seed=4)
    x2 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(3))
    a, b = 1.7, -0.6
    lhs = net(a * x1 + b * x2, t)
    rhs = a * net(x1, t) + b * net(x2, t) - (a + b - 1) * net(torch.zeros_like(x1), t)
    assert (lhs - rhs).abs().max() > 1e-2


def test_linear_net_fits_the_best_affine_denoiser_of_gaussian_data():
    """For x_0 ~ N(μ, Σ) and x_t = α x_0 + σ ε the posterior mean is affine, found by Gaussian
    conditioning: E[x_0 | x_t] = μ + α Σ (α² Σ + σ² I)⁻¹ (x_t − α μ). Least squares on samples must
    recover it."""
    g = torch.Generator().manual_seed(0)
    n, alpha, sigma, t_value = 20_000, 0.8, 0.6, 300.0
    mu = torch.tensor([1.0, -2.0])
    L = torch.tensor([[1.0, 0.0], [0.9, 0.5]])
    cov = L @ L.T
    x0 = mu + torch.randn(n, 2, generator=g) @ L.T
    x_t = alpha * x0 + sigma * torch.randn(n, 2, generator=g)
    gain = alpha * cov @ torch.linalg.inv(alpha**2 * cov + sigma**2 * torch.eye(2))
    net = nets.build("affine", in_channels=2, image_size=None, num_basis=4)
    t = torch.full((n,), t_value)
    opt = torch.optim.LBFGS(net.parameters(), lr=1, max_iter=200, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = (net(x_t, t) - x0).square().mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        t2 = torch.full((3,), t_value)
        probes = torch.cat([torch.zeros(1, 2), torch.eye(2)])
        out = net(probes, t2)
    bias, weight = out[0], (out[1:] - out[0]).T
    # Sampling error of least squares: coefficient i of output j has standard error
    # √(Σ_post[j, j] · ((AᵀA)⁻¹)[i, i]), A = [x_t, 1], Σ_post = Σ − α gain Σ the residual covariance.
    # Five standard errors: a false failure has probability < 1e-5 per coefficient.
    design = torch.cat([x_t, torch.ones(n, 1)], dim=1).double()
    post_var = torch.diagonal(cov - alpha * gain @ cov).double()
    se = (post_var[:, None] * torch.diagonal(torch.linalg.inv(design.T @ design))[None, :]).sqrt()
    error = torch.cat([weight - gain, (bias - (mu - gain @ (alpha * mu)))[:, None]], dim=1)
    assert (error.abs() < 5 * se).all(), (error, se)


def test_none_valued_conditions_are_the_null_condition_for_any_net():
    net = nets.build("mlp")
    x, t = example_input(net)
    torch.testing.assert_close(net(x, t, labels=None, text=None), net(x, t))
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        net(torch.randn(3, 3), t)


# --- text conditioning: cross-attention and the pooled embedding -------------------------------

TEXT_DIM = 6


def text_net(**overrides):
    return randomise_(nets.build("tiny", text_dim=TEXT_DIM, **overrides), seed=1)


def text_batch(lengths, pad_to, seed=0):
    """Random token rows of the given lengths, zero-padded to ``pad_to``, with their mask."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), pad_to, TEXT_DIM)
    mask = torch.zeros(len(lengths), pad_to, dtype=torch.bool)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randn(n, TEXT_DIM, generator=g)
        mask[i, :n] = True
    return tokens, mask, torch.randn(len(lengths), TEXT_DIM, generator=g)


def test_text_net_places_cross_attention_and_rebuilds_from_its_config():
    net = nets.build("tiny", text_dim=TEXT_DIM)
    assert net.config["cross_attention_resolutions"] == net.config["attention_resolutions"] == [4]
    crossed = [name for name, m in net.named_modules() if isinstance(m, nets.CrossAttentionBlock)]
    assert crossed and all(n.startswith(("down.2", "up.0", "up.1", "mid")) for n in crossed)
    config = json.loads(json.dumps(net.config))
    rebuilt = nets.from_config(config)
    assert rebuilt.config == net.config
    assert rebuilt.state_dict().keys() == net.state_dict().keys()
    assert "text_dim" not in nets.build("tiny").config  # configs without text stay as they were
    only_mid = nets.build("tiny", text_dim=TEXT_DIM, cross_attention_resolutions=[])
    assert sum(isinstance(m, nets.CrossAttentionBlock) for m in only_mid.modules()) == 1


def test_cross_attention_ignores_padding_tokens():
    net = text_net()
    x, t = example_input(net, batch=3)
    tokens, mask, pooled = text_batch([2, 4, 1], pad_to=4)
    out = net(x, t, text=tokens, text_mask=mask, text_pooled=pooled)
    assert out.shape == x.shape
    # the same prompts padded further, with garbage in the padding: the mask hides it exactly
    longer = torch.randn(3, 9, TEXT_DIM)
    longer[:, :4] = tokens
    longer_mask = torch.zeros(3, 9, dtype=torch.bool)
    longer_mask[:, :4] = mask
    out2 = net(x, t, text=longer, text_mask=longer_mask, text_pooled=pooled)
    torch.testing.assert_close(out2, out, atol=1e-5, rtol=1e-5)
    # and the tokens do matter: changing a real token changes the output
    tokens[0, 0] = torch.randn(TEXT_DIM)  # (not a constant shift: the context LayerNorm removes those)
    assert not torch.allclose(net(x, t, text=tokens, text_mask=mask, text_pooled=pooled), out,
                              atol=1e-3)


def test_missing_text_and_an_all_false_mask_are_the_same_learned_null():
    net = text_net()
    x, t = example_input(net, batch=3)
    tokens, mask, pooled = text_batch([3, 0, 2], pad_to=3)
    out = net(x, t, text=tokens, text_mask=mask, text_pooled=pooled)
    null = net(x, t)
    torch.testing.assert_close(out[1], null[1], atol=1e-5, rtol=1e-5)  # the empty prompt row
    torch.testing.assert_close(net(x, t, text=None, text_mask=None, text_pooled=None), null)
    assert not torch.allclose(out[0], null[0], atol=1e-3)
    # the pooled embedding enters too: same tokens, another pooled vector, another output
    other = net(x, t, text=tokens, text_mask=mask, text_pooled=pooled.flip(0))
    assert not torch.allclose(other[0], out[0], atol=1e-3)


def test_bad_text_conditions_name_the_problem():
    net = text_net()
    x, t = example_input(net, batch=2)
    tokens, mask, pooled = text_batch([1, 2], pad_to=2)
    with pytest.raises(ValueError, match="text must have shape"):
        net(x, t, text=tokens[..., :3], text_mask=mask, text_pooled=pooled)
    with pytest.raises(ValueError, match="text_pooled"):
        net(x, t, text=tokens, text_mask=mask)
    with pytest.raises(ValueError, match="need the text tokens"):
        net(x, t, text_pooled=pooled)
    with pytest.raises(ValueError, match="text_mask must be a bool"):
        net(x, t, text=tokens, text_mask=mask.float(), text_pooled=pooled)
    with pytest.raises(ValueError, match="cannot use the condition.*text"):
        nets.build("tiny")(x, t, text=tokens, text_mask=mask, text_pooled=pooled)
    with pytest.raises(ValueError, match="cross_attention_resolutions needs text_dim"):
        nets.build("tiny", cross_attention_resolutions=[4])
    with pytest.raises(ValueError, match="attention resolution 3"):
        nets.build("tiny", text_dim=4, cross_attention_resolutions=[3])
