import math

import pytest
import torch

from noisecraft.ode import dopri5


def test_dopri5_solves_linear_decay_per_example():
    # dy/du = −r y has y(1) = y0 e^{−r}; each row has its own rate, and the stiffer row must not
    # make the others take its small steps.
    y0 = torch.tensor([[1.0, -2.0], [1.0, 0.5], [3.0, 1.0]], dtype=torch.float64)
    rate = torch.tensor([1.0, 2.0, 25.0], dtype=torch.float64)
    sol = dopri5(lambda u, y, idx: -rate[idx, None] * y, y0, 0.0, 1.0, rtol=1e-8, atol=1e-11)
    exact = y0 * torch.exp(-rate)[:, None]
    torch.testing.assert_close(sol.y, exact, rtol=1e-6, atol=1e-10)
    assert sol.nfe[2] > 2 * sol.nfe[0]
    assert (sol.nfe == 2 + 6 * (sol.steps + sol.rejected)).all()  # FSAL: 6 calls per try


def test_dopri5_passes_times_and_is_fifth_order():
    # dy/du = cos(u) y has y(u1) = y0 exp(sin u1 − sin u0): checks that func gets each stage's u.
    def func(u, y, idx):
        return torch.cos(u)[:, None] * y

    y0 = torch.ones(1, 1, dtype=torch.float64)
    exact = math.exp(math.sin(3.0) - math.sin(0.0))
    errors, nfes = [], []
    for tol in (1e-4, 1e-6, 1e-8):
        sol = dopri5(func, y0, 0.0, 3.0, rtol=tol, atol=tol)
        errors.append(abs(sol.y.item() - exact))
        nfes.append(sol.nfe.item())
    # Tolerance proportionality: 100× tighter tolerance costs about 100^(1/5) ≈ 2.5× the steps
    # for a 5th-order method, and the error follows the tolerance down.
    assert errors[2] < errors[1] < errors[0] < 1e-3
    assert 1.5 < nfes[2] / nfes[1] < 4.0


def test_dopri5_rejects_bad_arguments():
    y0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="u0 < u1"):
        dopri5(lambda u, y, i: y, y0, 1.0, 1.0)
    with pytest.raises(ValueError, match="rtol"):
        dopri5(lambda u, y, i: y, y0, 0.0, 1.0, rtol=0.0)
    with pytest.raises(ValueError, match="shape"):
        dopri5(lambda u, y, i: y, torch.zeros(3), 0.0, 1.0)
    with pytest.raises(ValueError, match="returned shape"):
        dopri5(lambda u, y, i: y[:, :1], y0, 0.0, 1.0)


def test_dopri5_gives_up_on_a_blow_up():
    # dy/du = y², y(0) = 1 blows up at u = 1: the solver must stop with a clear error.
    with pytest.raises(RuntimeError, match="steps"):
        dopri5(lambda u, y, i: y * y, torch.ones(1, 1, dtype=torch.float64), 0.0, 2.0,
               max_steps=200)
