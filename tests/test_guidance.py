"""Classifier-free guidance and autoguidance against the exact class-conditional denoisers of a
Gaussian mixture, computed here independently (per-component Gaussian conditioning and Bayes'
rule with torch.distributions), not with the library's own mixture code."""

from __future__ import annotations

import math

import pytest
import torch

from noisecraft import Denoised, Denoiser, GaussianMixture, Guided, Schedule, interval_from_sigma, sample
from noisecraft.samplers import SAMPLERS

K, D = 3, 4
SCHED = Schedule.linear(T=100)
WEIGHTS = [0.5, 0.3, 0.2]
MEANS = torch.tensor([[2.0, 0.0, -1.0, 0.5], [-2.0, 1.0, 0.0, 0.0], [0.0, -2.0, 1.5, -1.0]])
STDS = [0.3, 0.5, 0.2]
MIX = GaussianMixture(WEIGHTS, MEANS, STDS)
# float64 throughout: the only differences left are rounding, ~1e-15 relative; 1e-10 is slack.
TOL = 1e-10


def hand_component(k: int, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor,
                   stds=STDS, means=MEANS) -> torch.Tensor:
    """E[x_0 | x_t, k] by Gaussian conditioning: x_0 ~ N(μ, s_k² I), x_t = a x_0 + s ε."""
    sk2 = stds[k] ** 2
    mu = means[k].double()
    return mu + (a * sk2 / (a**2 * sk2 + s**2))[:, None] * (x - a[:, None] * mu)


def hand_mixture(x: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """E[x_0 | x_t] = Σ_k P(k | x_t) E[x_0 | x_t, k], P(k | x_t) by Bayes' rule."""
    logp = []
    for k in range(K):
        out = []
        for i in range(x.shape[0]):
            var = a[i] ** 2 * STDS[k] ** 2 + s[i] ** 2
            mvn = torch.distributions.MultivariateNormal(a[i] * MEANS[k].double(),
                                                         var * torch.eye(D, dtype=torch.float64))
            out.append(math.log(WEIGHTS[k]) + mvn.log_prob(x[i]))
        logp.append(torch.stack(out))
    post = torch.softmax(torch.stack(logp, 1), 1)
    return sum(post[:, k, None] * hand_component(k, x, a, s) for k in range(K))


def hand_label(labels, x, a, s):
    rows = [hand_component(int(k), x[i:i + 1], a[i:i + 1], s[i:i + 1]) if k >= 0
            else hand_mixture(x[i:i + 1], a[i:i + 1], s[i:i + 1]) for i, k in enumerate(labels)]
    return torch.cat(rows)


class Counting(torch.nn.Module):
    """Records the batch size of every forward pass."""

    def __init__(self, net):
        super().__init__()
        self.inner, self.calls = net, []

    def forward(self, x, t, **cond):
        self.calls.append(x.shape[0])
        return self.inner(x, t, **cond)


def point(n=6, t=40.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64) * 1.5
    tt = torch.full((n,), t, dtype=torch.float64)
    a, s = SCHED.marginal(tt)
    labels = torch.arange(n) % K
    return x, tt, a, s, labels


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_scale_one_is_the_conditional_and_zero_the_unconditional(prediction):
    x, t, a, s, labels = point()
    den = Denoiser(MIX.net(SCHED, prediction), SCHED, prediction)
    cond = Guided(den, 1.0)(x, t, labels=labels).x0
    assert torch.allclose(cond, hand_label(labels, x, a, s), atol=TOL, rtol=0)
    uncond = Guided(den, 0.0)(x, t, labels=labels).x0
    assert torch.allclose(uncond, hand_mixture(x, a, s), atol=TOL, rtol=0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("w", [2.0, 3.0, 7.5])
def test_scale_above_one_matches_the_closed_form(prediction, w):
    # Mixed on ε̂ inside Guided; checked here on x̂_0: the same thing, since the weights sum to 1.
    x, t, a, s, labels = point()
    d = Guided(Denoiser(MIX.net(SCHED, prediction), SCHED, prediction), w)(x, t, labels=labels)
    c, u = hand_label(labels, x, a, s), hand_mixture(x, a, s)
    want_x0 = u + w * (c - u)
    assert torch.allclose(d.x0, want_x0, atol=TOL, rtol=0)
    want_eps = (x - a[:, None] * want_x0) / s[:, None]
    assert torch.allclose(d.eps, want_eps, atol=1e-9, rtol=0)
    assert torch.allclose(d.v, a[:, None] * d.eps - s[:, None] * d.x0, atol=TOL, rtol=0)
    want_out = {"eps": want_eps, "x0": want_x0, "v": a[:, None] * want_eps - s[:, None] * want_x0}
    assert torch.allclose(d.output, want_out[prediction], atol=1e-9, rtol=0)


def test_one_batched_pass_equals_two_separate_calls():
    x, t, _, _, labels = point()
    net = Counting(MIX.net(SCHED, "eps"))
    den = Denoiser(net, SCHED, "eps")
    got = Guided(den, 4.0)(x, t, labels=labels)
    assert net.calls == [2 * x.shape[0]]                  # one forward pass of 2n
    net.calls.clear()
    c, u = den(x, t, labels=labels), den(x, t, labels=torch.full_like(labels, -1))
    assert net.calls == [x.shape[0]] * 2
    assert torch.allclose(got.eps, u.eps + 4.0 * (c.eps - u.eps), atol=TOL, rtol=0)


def test_interval_switches_at_the_right_t():
    lo, hi = 30.0, 60.0
    x, _, _, _, labels = point(n=7)
    # Values exact in float32, the dtype the net receives t in.
    t = torch.tensor([10.0, 29.75, 30.0, 45.0, 60.0, 60.25, 90.0], dtype=torch.float64)
    a, s = SCHED.marginal(t)
    den = Denoiser(MIX.net(SCHED, "eps"), SCHED, "eps")
    got = Guided(den, 3.0, interval=(lo, hi))(x, t, labels=labels).x0
    c, u = hand_label(labels, x, a, s), hand_mixture(x, a, s)
    inside = (t >= lo) & (t <= hi)
    want = torch.where(inside[:, None], u + 3.0 * (c - u), c)
    assert inside.tolist() == [False, False, True, True, True, False, False]
    assert torch.allclose(got, want, atol=1e-9, rtol=0)
    # Outside the interval only the conditional pass runs.
    net = Counting(MIX.net(SCHED, "eps"))
    Guided(Denoiser(net, SCHED, "eps"), 3.0, interval=(lo, hi))(x, torch.full((7,), 80.0),
                                                                labels=labels)
    assert net.calls == [7]


def test_interval_from_sigma_inverts_the_schedule():
    t_lo, t_hi = interval_from_sigma(SCHED, 0.28, 1.2)
    for t, want in ((t_lo, 0.28), (t_hi, 1.2)):
        a, s = SCHED.marginal(torch.tensor(t, dtype=torch.float64))
        assert math.isclose((s / a).item(), want, rel_tol=1e-9)
    assert interval_from_sigma(SCHED, 0.0, math.inf) == (0.0, float(SCHED.T))
    # This T = 100 schedule reaches σ/α ≈ 1.3 only: the paper's σ_hi = 5.42 means "up to T".
    assert interval_from_sigma(SCHED, 0.28, 5.42) == (t_lo, float(SCHED.T))
    with pytest.raises(ValueError, match="sigma_lo < sigma_hi"):
        interval_from_sigma(SCHED, 2.0, 1.0)


def as_picture(net):
    """The 4-coordinate mixture read as 1×2×2 pictures (rescale is defined on pictures only)."""
    def picture_net(x, t, **cond):
        return net(x.flatten(1), t, **cond).reshape(x.shape)
    return picture_net


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_rescale_matches_a_hand_computation(phi):
    x, t, a, s, labels = point()
    w = 5.0
    got = Guided(Denoiser(as_picture(MIX.net(SCHED, "eps")), SCHED, "eps"), w, rescale=phi)(
        x.reshape(-1, 1, 2, 2), t, labels=labels)
    got = Denoised(x0=got.x0.flatten(1), eps=got.eps.flatten(1), v=got.v.flatten(1),
                   output=got.output.flatten(1))
    c, u = hand_label(labels, x, a, s), hand_mixture(x, a, s)
    cfg = u + w * (c - u)
    # Biased std here (the code's is unbiased): the ratio of two stds of one length is the same.
    ratio = c.var(1, unbiased=False).sqrt() / cfg.var(1, unbiased=False).sqrt()
    want = cfg * (phi * ratio + 1 - phi)[:, None]
    assert torch.allclose(got.x0, want, atol=TOL, rtol=0)
    if phi == 1.0:
        assert torch.allclose(got.x0.std(1), c.std(1), atol=TOL, rtol=0)
    assert torch.allclose(got.eps, (x - a[:, None] * got.x0) / s[:, None], atol=1e-9, rtol=0)


@pytest.mark.parametrize("shape", [(6, 1), (6, 2), (6, 4), (6, 1, 1, 1)])
def test_rescale_is_refused_on_vectors_and_single_values(shape):
    """The std of x̂_0 across a vector's coordinates is not an exposure (the coordinates are not
    samples of one intensity distribution) and a single value has no std at all: the former
    code returned all-NaN x̂_0 on (n, 1) data and a ratio of two coordinate differences on
    (n, 2). φ = 0 (no rescale) still runs."""
    def net(x, t, labels):                          # ε̂ depends on the label
        return x * (1 + labels.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)) / 10)
    den = Denoiser(net, SCHED, "eps")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.arange(shape[0]) % K
    with pytest.raises(ValueError, match=r"rescale .*shape \(" + ", ".join(map(str, shape[1:]))):
        Guided(den, 3.0, rescale=0.7)(x, 40.0, labels=labels)
    assert torch.isfinite(Guided(den, 3.0)(x, 40.0, labels=labels).x0).all()


def test_rescale_leaves_a_flat_guided_x0_alone():
    """Where the guided x̂_0 has no spread there is nothing to match: the factor is 1, not ∞."""
    def net(x, t, labels):                          # ε̂ = x/σ: x̂_0 = 0 for every label
        return x / SCHED.marginal(t)[1].reshape(-1, 1, 1, 1).to(x.dtype)
    x = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = Guided(Denoiser(net, SCHED, "eps"), 3.0, rescale=1.0)(x, 40.0, labels=torch.arange(4))
    assert torch.isfinite(d.x0).all() and d.x0.abs().max() < 1e-12


@pytest.mark.parametrize("w", [0.5, 3.0])
def test_clip_applies_once_to_the_guided_x0(w):
    x, t, a, s, labels = point(t=10.0)
    den = Denoiser(MIX.net(SCHED, "eps"), SCHED, "eps", clip=(-1.0, 1.0))
    got = Guided(den, w)(x, t, labels=labels).x0
    c, u = hand_label(labels, x, a, s), hand_mixture(x, a, s)
    assert torch.allclose(got, (u + w * (c - u)).clamp(-1, 1), atol=TOL, rtol=0)
    # Clipping each branch first would give another answer here (the test can tell them apart).
    per_branch = (u.clamp(-1, 1) + w * (c.clamp(-1, 1) - u.clamp(-1, 1))).clamp(-1, 1)
    assert (per_branch - got).abs().max() > 1e-3


def test_autoguidance_uses_the_weaker_denoiser_with_the_same_condition():
    wide = [0.9, 1.2, 0.8]                 # the "bad version": a blurrier model of the same data
    bad_mix = GaussianMixture(WEIGHTS, MEANS, wide)
    good_net, bad_net = Counting(MIX.net(SCHED, "eps")), Counting(bad_mix.net(SCHED, "x0"))
    good, bad = Denoiser(good_net, SCHED, "eps"), Denoiser(bad_net, SCHED, "x0")
    x, t, a, s, labels = point()
    got = Guided(good, 2.5, unconditional=bad)(x, t, labels=labels).x0
    assert good_net.calls == [6] and bad_net.calls == [6]      # two nets: two passes
    c = hand_label(labels, x, a, s)
    weak = torch.cat([hand_component(int(k), x[i:i + 1], a[i:i + 1], s[i:i + 1], stds=wide)
                      for i, k in enumerate(labels)])
    assert torch.allclose(got, weak + 2.5 * (c - weak), atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="schedule"):
        Guided(good, 2.0, unconditional=Denoiser(bad_net, Schedule.cosine(T=100), "x0"))


def test_null_contract_for_other_keywords():
    """A text-like keyword: the null value (the empty prompt, leading dimension 1) broadcasts."""
    calls = []

    def net(x, t, text=None):
        calls.append(x.shape[0])
        return x * 0 + text.sum((1, 2))[:, None]          # ε̂ = Σ text, per example

    den = Denoiser(net, SCHED, "eps")
    x, t, a, s, _ = point(n=3)
    text = torch.arange(3 * 2 * 5, dtype=torch.float64).reshape(3, 2, 5)
    empty = torch.full((1, 2, 5), 0.5, dtype=torch.float64)
    got = Guided(den, 2.0, null={"text": empty})(x, t, text=text).eps
    want = 5.0 + 2.0 * (text.sum((1, 2)) - 5.0)
    assert calls == [6] and torch.allclose(got, want[:, None].expand(3, D), atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="'text'"):
        Guided(den, 2.0)(x, t, text=text)            # default null knows labels only
    with pytest.raises(ValueError, match="keywords"):
        Guided(den, 2.0, null=lambda **c: {})(x, t, text=text)


@pytest.mark.parametrize("bad", [dict(scale=-1.0), dict(scale=math.nan), dict(scale=2.0, rescale=1.5),
                                 dict(scale=2.0, interval=(50, 10)),
                                 dict(scale=2.0, interval=(200, 300))])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        Guided(Denoiser(MIX.net(SCHED), SCHED, "x0"), **bad)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_runs_guided(name):
    """Every sampler on ``Guided`` (scale 3, rescale 0.5, interval [5, 80]) over the analytic
    class-conditional mixture gives what the same sampler gives on a plain x̂_0-network that
    returns the guided prediction written here from the Gaussian-conditioning formulas:
    cfg = u + w (c − u) inside the interval, rescaled by φ std(c)/std(cfg) + 1 − φ over each
    1×2×2 picture, and c outside it. Stochastic samplers (ddpm, sde) share the per-example seed,
    so they draw the same noise and must agree too. float64: only rounding differs (1e-8). All
    run on the respaced (integer) grid: the network receives t as float32, exact for integers,
    so the hand formula sees the very t that Guided's interval test and marginals see."""
    w, phi, (lo, hi) = 3.0, 0.5, (5.0, 80.0)
    labels = torch.arange(8) % K

    def hand_guided(x, t, labels):
        t = t.double()
        a, s = SCHED.marginal(t)
        flat = x.double().flatten(1)
        c, u = hand_label(labels, flat, a, s), hand_mixture(flat, a, s)
        cfg = u + w * (c - u)
        cfg = cfg * (phi * c.std(1) / cfg.std(1) + 1 - phi)[:, None]
        inside = ((t >= lo) & (t <= hi))[:, None]
        return torch.where(inside, cfg, c).reshape(x.shape)

    den = Denoiser(as_picture(MIX.net(SCHED, "eps")), SCHED, "eps")
    shape = (8, 1, 2, 2)
    run = {"sampler": name, "steps": 8, "grid": "respaced", "seed": 1, "dtype": torch.float64,
           "labels": labels}
    got = sample(Guided(den, w, rescale=phi, interval=(lo, hi)), shape, SCHED, **run)
    want = sample(Denoiser(hand_guided, SCHED, "x0"), shape, SCHED, **run)
    assert torch.allclose(got, want, atol=1e-8, rtol=0), (got - want).abs().max()
    # The guidance is active on this grid: the conditional sampler ends elsewhere.
    plain = sample(den, shape, SCHED, **run)
    assert (got - plain).abs().max() > 1e-3


def test_guided_ddim_equals_ddim_on_the_hand_guided_denoiser():
    """Over a whole trajectory: DDIM on Guided = DDIM on a plain x̂_0-network that returns the
    hand-made guided prediction u + w (c − u) from the Gaussian-conditioning formulas."""
    w = 3.0
    labels = torch.tensor([0, 1, 2, 0])

    def hand_guided(x, t, labels):
        a, s = SCHED.marginal(t.double())
        x = x.double()
        c, u = hand_label(labels, x, a, s), hand_mixture(x, a, s)
        return u + w * (c - u)

    x_T = torch.randn(4, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = sample(Guided(Denoiser(MIX.net(SCHED, "eps"), SCHED, "eps"), w), (4, D), SCHED,
                 sampler="ddim", steps=10, x_T=x_T, labels=labels)
    want = sample(Denoiser(hand_guided, SCHED, "x0"), (4, D), SCHED, sampler="ddim", steps=10,
                  x_T=x_T, labels=labels)
    assert torch.allclose(got, want, atol=1e-8, rtol=0)
    # Sanity: guidance moved the samples away from the conditional ones.
    cond = sample(Denoiser(MIX.net(SCHED, "eps"), SCHED, "eps"), (4, D), SCHED, sampler="ddim",
                  steps=10, x_T=x_T, labels=labels)
    assert (got - cond).abs().max() > 1e-3


def test_per_example_seeds_stay_batch_independent():
    den = Guided(Denoiser(MIX.net(SCHED, "eps"), SCHED, "eps"), 3.0)
    labels = torch.tensor([2, 0, 1, 1, 0])
    big = sample(den, (5, D), SCHED, sampler="ddpm", steps=10, seed=7, labels=labels)
    small = sample(den, (2, D), SCHED, sampler="ddpm", steps=10, seed=7, seed_offset=3,
                   labels=labels[3:])
    assert torch.equal(big[3:], small)


@pytest.mark.parametrize("p_drop", [0.0, 0.3])
def test_the_trainer_shows_the_net_null_labels_at_the_label_dropout_rate(tmp_path, monkeypatch,
                                                                         p_drop):
    """Count the null labels (−1) the network itself receives during training steps."""
    from noisecraft import data
    from noisecraft.nets.layers import LabelEmbedding
    from noisecraft.train import TrainConfig, Trainer, new_run_config

    seen = []
    real = LabelEmbedding.forward

    def recording(self, labels, batch, device):
        seen.append(torch.as_tensor(labels).clone())
        return real(self, labels, batch, device)

    monkeypatch.setattr(LabelEmbedding, "forward", recording)
    dataset = data.load("digits")
    steps, batch = 3, 64
    config = new_run_config(dataset, "digits", net="tiny", T=20, class_conditional=True,
                            net_overrides={"base_channels": 8, "attention_resolutions": [],
                                           "norm_groups": 4},
                            train=TrainConfig(steps=steps, batch_size=batch, label_dropout=p_drop,
                                              sample_every=0, checkpoint_every=0))
    Trainer(config, tmp_path / "run", dataset, device="cpu", progress=False).fit()
    labels = torch.cat(seen)
    assert labels.numel() == steps * batch
    nulls = int((labels == -1).sum())
    if p_drop == 0:
        assert nulls == 0
    else:
        # Binomial(192, 0.3): mean 57.6, sd 6.3; ±5 sd leaves a false alarm below 1e-6.
        n = labels.numel()
        assert abs(nulls - n * p_drop) <= 5 * math.sqrt(n * p_drop * (1 - p_drop))
    assert ((labels >= 0) & (labels < 10) | (labels == -1)).all()


def test_learned_variance_passes_through_from_the_conditional_branch():
    ideal = MIX.net(SCHED, "eps")

    def net(x, t, labels=None):      # variance channels: +0.5 where the label is given, −0.5 null
        raw = torch.where(labels[:, None] >= 0, 0.5, -0.5).to(x.dtype).expand_as(x)
        return torch.cat([ideal(x, t, labels=labels), raw], dim=1)

    den = Denoiser(net, SCHED, "eps", learned_variance=True)
    x, t, _, _, labels = point()
    d = Guided(den, 3.0)(x, t, labels=labels)
    assert torch.equal(d.variance_fraction, torch.full_like(x, 0.75))   # (0.5 + 1) / 2
    out = sample(Guided(den, 3.0), (4, D), SCHED, sampler="ddpm", steps=5, seed=0,
                 labels=labels[:4], options={"variance": "learned"})
    assert torch.isfinite(out).all()
