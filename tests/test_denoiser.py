"""The Denoiser's one reading of eps | x0 | v, checked on a known (x_0, ε) pair."""

import math

import numpy as np
import pytest
import torch

from noisecraft import Denoiser, Schedule

SCHED = Schedule.linear(100, 1e-3, 0.1)


def known_pair(batch: int = 6, shape: tuple[int, ...] = (2, 3)):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    eps = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1.0, 7.0, 33.5, 50.0, 99.0, 100.0], dtype=torch.float64)[:batch]
    abar = np.concatenate([[1.0], np.cumprod(1 - np.linspace(1e-3, 0.1, 100))])
    # Independent (α, σ): integer t from the numpy table, 33.5 by log-SNR interpolation.
    lam = np.log(abar[1:] / (1 - abar[1:]))
    lam_t = np.interp(t.numpy(), np.arange(1, 101), lam)
    alpha = torch.tensor(np.sqrt(1 / (1 + np.exp(-lam_t)))).reshape(-1, 1, 1)
    sigma = torch.tensor(np.sqrt(1 / (1 + np.exp(lam_t)))).reshape(-1, 1, 1)
    return x0, eps, t, alpha, sigma


class Oracle(torch.nn.Module):
    """Returns a fixed tensor, recording what it was called with."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out
        self.seen_t = None

    def forward(self, x_t, t):
        self.seen_t = t
        return self.out


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_exact_output_recovers_x0_and_eps(prediction):
    x0, eps, t, alpha, sigma = known_pair()
    x_t = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0
    out = {"eps": eps, "x0": x0, "v": v}[prediction]
    net = Oracle(out)
    d = Denoiser(net, SCHED, prediction)(x_t, t)
    # Float64 throughout: the only error is the rounding of a few multiplications.
    for got, want in ((d.x0, x0), (d.eps, eps), (d.v, v), (d.output, out)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-9)
    assert d.variance_fraction is None
    assert net.seen_t.dtype == torch.float32 and net.seen_t.shape == (6,)
    target = Denoiser(net, SCHED, prediction).target(x0, eps, t)
    np.testing.assert_allclose(target.numpy(), out.numpy(), rtol=1e-9, atol=1e-12)


def test_scalar_t_is_expanded_to_the_batch():
    x0, eps, *_ = known_pair()
    net = Oracle(eps)
    Denoiser(net, SCHED)(x0, 10)
    assert net.seen_t.shape == (6,) and (net.seen_t == 10).all()


def test_clip_clamps_x0_and_keeps_x_t_consistent():
    x0, eps, t, alpha, sigma = known_pair()
    x0 = 3 * x0                         # well outside [-1, 1]
    x_t = alpha * x0 + sigma * eps
    d = Denoiser(Oracle(x0), SCHED, "x0", clip=(-1, 1))(x_t, t)
    np.testing.assert_allclose(d.x0.numpy(), x0.clamp(-1, 1).numpy())
    # ε̂ and v̂ are recomputed from the clamped x̂_0, so x_t = α x̂_0 + σ ε̂ still holds.
    np.testing.assert_allclose((alpha * d.x0 + sigma * d.eps).numpy(), x_t.numpy(), atol=1e-9)
    np.testing.assert_allclose(d.v.numpy(), (alpha * d.eps - sigma * d.x0).numpy(), atol=1e-9)


def test_learned_variance_splits_the_channels():
    x0, eps, t, alpha, sigma = known_pair()
    x_t = alpha * x0 + sigma * eps
    raw_var = torch.linspace(-1, 1, x0.numel(), dtype=torch.float64).reshape(x0.shape)
    d = Denoiser(Oracle(torch.cat([eps, raw_var], dim=1)), SCHED, "eps",
                 learned_variance=True)(x_t, t)
    np.testing.assert_allclose(d.output.numpy(), eps.numpy())
    np.testing.assert_allclose(d.x0.numpy(), x0.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(d.variance_fraction.numpy(), ((raw_var + 1) / 2).numpy())


@pytest.mark.parametrize("learned", [False, True])
def test_wrong_output_shape_raises(learned):
    x = torch.zeros(4, 3, 5)
    den = Denoiser(Oracle(torch.zeros(4, 3 * (1 if learned else 2), 5)), SCHED,
                   learned_variance=learned)
    with pytest.raises(ValueError, match=r"returned shape \(4, [36], 5\), expected"):
        den(x, 5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="'epsilon'"):
        Denoiser(Oracle(torch.zeros(1)), SCHED, "epsilon")
    with pytest.raises(ValueError, match=r"\(1, -1\)"):
        Denoiser(Oracle(torch.zeros(1)), SCHED, clip=(1, -1))
    with pytest.raises(ValueError, match="Schedule"):
        Denoiser(Oracle(torch.zeros(1)), "linear")
    den = Denoiser(Oracle(torch.zeros(4, 2)), SCHED)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        den(torch.zeros(4, 2), torch.ones(3))
    with pytest.raises(ValueError, match="batch dimension"):
        den(torch.zeros(4), 1)


def test_float32_input_is_read_in_float32():
    x0, eps, t, alpha, sigma = known_pair()
    x_t = (alpha * x0 + sigma * eps).float()
    d = Denoiser(Oracle(eps.float()), SCHED)(x_t, t)
    assert d.x0.dtype == torch.float32
    # float32 rounding, amplified by 1/α at t = T (α ≈ 0.0066 here).
    assert torch.allclose(d.x0.double(), x0, atol=1e-4 / math.sqrt(SCHED.alpha_bars[-1].item()))
