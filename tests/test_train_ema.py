import numpy as np
import pytest
import torch
from torch import nn

from noisecraft.train import EMA


def closed_form_ema(initial: np.ndarray, values: list[np.ndarray], decays: list[float]) -> np.ndarray:
    """θ̄_n = (Π_k d_k) θ̄_0 + Σ_k (1 − d_k) (Π_{j>k} d_j) θ_k, in float64: the unrolled recursion."""
    n = len(values)
    total = np.prod(decays) * initial
    for k in range(n):
        total = total + (1 - decays[k]) * np.prod(decays[k + 1:]) * values[k]
    return total


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_the_unrolled_average(warmup):
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    initial = net.weight.detach().double().numpy().copy()
    decay = 0.5 if warmup else 0.9  # 0.5: the warm-up ramp reaches the cap at n = 8 of 25
    ema = EMA(net, decay=decay, warmup=warmup)
    values, decays = [], []
    for _ in range(25):
        decays.append(ema.current_decay())
        with torch.no_grad():
            net.weight.add_(torch.randn_like(net.weight))
        values.append(net.weight.detach().double().numpy().copy())
        ema.update(net)
    expected = closed_form_ema(initial, values, decays)
    # float32 accumulation of 25 lerps: relative error a few ulp per step.
    np.testing.assert_allclose(ema.net.weight.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert ema.num_updates == 25
    if warmup:  # d_n = min(decay, (1 + n)/(10 + n)): 0.1, 2/11, 3/12, ... then capped at 0.5
        assert decays[0] == pytest.approx(0.1) and decays[1] == pytest.approx(2 / 11)
        assert decays[7] == pytest.approx(8 / 17) and decays[8:] == [0.5] * 17
    else:
        assert set(decays) == {0.9}


def test_ema_is_a_separate_copy_without_gradients():
    net = nn.Linear(2, 2)
    ema = EMA(net, decay=0.5)
    assert all(not p.requires_grad for p in ema.net.parameters())
    with torch.no_grad():
        net.weight.zero_()
    assert not torch.equal(ema.net.weight, net.weight)


def test_integer_buffers_are_copied():
    net = nn.BatchNorm1d(2)
    ema = EMA(net, decay=0.99, warmup=False)
    net.num_batches_tracked += 7
    ema.update(net)
    assert int(ema.net.num_batches_tracked) == 7


def test_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(1, 1), decay=1.0)
