"""Exact answers to test against: a mixture of isotropic Gaussians and its ideal denoiser.

For data x_0 ~ Σ_k w_k N(μ_k, s_k² I) in D dimensions and x_t = α x_0 + σ ε,

    x_t | k ~ N(α μ_k, (α² s_k² + σ²) I),
    E[x_0 | x_t, k] = μ_k + α s_k² / (α² s_k² + σ²) · (x_t − α μ_k),
    E[x_0 | x_t]   = Σ_k r_k(x_t) E[x_0 | x_t, k],  r_k ∝ w_k N(x_t; α μ_k, (α² s_k² + σ²) I).

Reading the components as classes, E[x_0 | x_t, k] is the exact class-conditional denoiser and
E[x_0 | x_t] the exact unconditional one: what classifier-free guidance mixes.

So the mixture's ideal x_0-predictor, and its log-density at every t, are closed form: they
drive every sampler and the likelihood code in the tests without any training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .denoiser import PREDICTIONS, SIGMA_DATA, _edm_r, _edm_target
from .schedule import Schedule, broadcast_to


class GaussianMixture:
    """Σ_k w_k N(μ_k, s_k² I) over tensors of shape ``event_shape`` (float64 throughout)."""

    def __init__(self, weights: Sequence[float] | Tensor, means: Tensor,
                 stds: Sequence[float] | Tensor | float, event_shape: Sequence[int] | None = None):
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.ndim < 2 or mu.shape[0] != w.numel():
            raise ValueError(f"means must have shape (K, ...) with K = {w.numel()} components, "
                             f"got {tuple(mu.shape)}")
        # 1e-6 admits float32 weights (their sum is off by rounding); renormalise exactly after.
        if (w <= 0).any() or not math.isclose(float(w.sum()), 1.0, rel_tol=1e-6):
            raise ValueError(f"weights must be positive and sum to 1, got {w.tolist()}")
        w = w / w.sum()
        s = torch.as_tensor(stds, dtype=torch.float64)
        if s.numel() not in (1, w.numel()):
            raise ValueError(f"stds must be one number or K = {w.numel()} numbers, got {s.tolist()}")
        s = s.reshape(-1).expand(w.numel()).clone()
        if (s <= 0).any():
            raise ValueError(f"component standard deviations must be > 0, got {s.tolist()}")
        self.event_shape = tuple(event_shape) if event_shape is not None else tuple(mu.shape[1:])
        self.weights = w
        self.means = mu.reshape(w.numel(), -1)
        self.stds = s
        self.dim = self.means.shape[1]
        if math.prod(self.event_shape) != self.dim:
            raise ValueError(f"event_shape {self.event_shape} does not hold {self.dim} values")

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws of x_0, shape (n, *event_shape), float64."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + self.stds[k, None] * z
        return x.reshape(n, *self.event_shape)

    def component_of(self, x0: Tensor) -> Tensor:
        """The most probable component of each x_0 (for mode-weight checks)."""
        return self._log_resp(x0.reshape(x0.shape[0], -1).double(), 1.0, 0.0).argmax(1)

    def _log_resp(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """log w_k + log N(x; α μ_k, (α² s_k² + σ²) I) for each component, shape (n, K)."""
        w, mu, stds = self._on(x.device)
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=x.device).reshape(-1, 1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1)
        var = alpha**2 * stds[None] ** 2 + sigma**2                          # (n|1, K)
        diff = x[:, None, :] - alpha[:, :, None] * mu[None]                 # (n, K, D)
        sq = (diff**2).sum(-1)
        return (torch.log(w)[None] - 0.5 * sq / var
                - 0.5 * self.dim * torch.log(2 * math.pi * var))

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(weights, means, stds) on ``device``, so that x may live on any device."""
        return self.weights.to(device), self.means.to(device), self.stds.to(device)

    def log_prob(self, x: Tensor, alpha: Tensor | float = 1.0,
                 sigma: Tensor | float = 0.0) -> Tensor:
        """log p(x) in nats for the law of α x_0 + σ ε (default: the data itself), shape (n,)."""
        x = x.reshape(x.shape[0], -1).double()
        return torch.logsumexp(self._log_resp(x, alpha, sigma), dim=1)

    def _component_means(self, x: Tensor, a: Tensor, sg: Tensor) -> Tensor:
        """E[x_0 | x_t, k] for every component k, shape (n, K, D)."""
        _, mu, stds = self._on(x.device)
        var = a**2 * stds[None] ** 2 + sg**2                               # (n|1, K)
        gain = a * stds[None] ** 2 / var                                    # (n|1, K)
        return mu[None] + gain[:, :, None] * (x[:, None, :] - a[:, :, None] * mu[None])

    def posterior_mean(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                       labels: Tensor | None = None) -> Tensor:
        """E[x_0 | x_t] in closed form, shape of x_t, float64.

        With ``labels`` (shape (n,)), example i gets E[x_0 | x_t, k = labels[i]], the posterior
        mean of component k alone (the class-conditional ideal denoiser), or the mixture's
        E[x_0 | x_t] where labels[i] = −1 (the null condition).
        """
        shape = x_t.shape
        x = x_t.reshape(shape[0], -1).double()
        a = torch.as_tensor(alpha, dtype=torch.float64, device=x.device).reshape(-1, 1)
        sg = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1)
        r = torch.softmax(self._log_resp(x, a, sg), dim=1)                   # (n, K)
        cond_mean = self._component_means(x, a, sg)                         # (n, K, D)
        mean = (r[:, :, None] * cond_mean).sum(1)
        if labels is not None:
            k = self._check_labels(labels, shape[0], x.device)
            picked = cond_mean[torch.arange(shape[0], device=x.device), k.clamp(min=0)]
            mean = torch.where((k >= 0)[:, None], picked, mean)
        return mean.reshape(shape)

    def _check_labels(self, labels: Tensor, n: int, device: torch.device) -> Tensor:
        k = torch.as_tensor(labels, device=device)
        if k.shape != (n,) or k.is_floating_point():
            raise ValueError(f"labels must be integers of shape ({n},), got {k.dtype} "
                             f"{tuple(k.shape)}")
        k = k.long()
        K = self.weights.numel()
        if ((k < -1) | (k >= K)).any():
            raise ValueError(f"labels must lie in -1..{K - 1}, got {k.tolist()}")
        return k

    def net(self, schedule: Schedule, prediction: str = "x0") -> nn.Module:
        """The ideal network for ``schedule``: ``net(x_t, t, labels=None)`` returns E[x_0|x_t]
        (or E[x_0|x_t, k] for ``labels`` k ≥ 0, the mixture's where −1) as ε, x_0 or v; or, for
        ``"flow"``, the exact velocity E[ε − x_0 | x] of the straight path at the point it is fed
        (x = (1 − τ) x_0 + τ ε, τ = σ/(α + σ)), from the mixture's posterior in that
        parametrisation itself; for ``"edm"``, EDM's F at the point it is fed (x_t/r, σ_d =
        ``SIGMA_DATA``: :mod:`noisecraft.denoiser`).

        Components are the classes: the class-conditional ideal denoiser for classifier-free
        guidance, with −1 or a missing ``labels`` as the null condition, like the trained nets.
        """
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of "
                             f"{', '.join(PREDICTIONS)}")
        return _IdealNet(self, schedule, prediction)


def exact_reverse_conditional(mixture: GaussianMixture, schedule: Schedule, t: int, x_t: float,
                              xs: Tensor) -> Tensor:
    """The density q(x_{t−1} | x_t) of 1-D mixture data on the points ``xs`` (float64).

    Bayes on the grid: q(x_{t−1} | x_t) ∝ q(x_t | x_{t−1}) p_{t−1}(x_{t−1}), with p_{t−1} the
    mixture's marginal at t − 1 and q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t); normalised by the
    trapezoid rule over ``xs`` (which must cover the mass).
    """
    if mixture.dim != 1:
        raise ValueError(f"exact_reverse_conditional needs 1-D data, got dimension {mixture.dim}")
    xs = xs.double().reshape(-1)
    a_prev, s_prev = (v.item() for v in schedule.marginal(float(t - 1)))
    log_alpha = (schedule.log_alpha_bar(float(t)) - schedule.log_alpha_bar(float(t - 1))).item()
    beta = -math.expm1(log_alpha)
    log_prior = mixture.log_prob(xs[:, None], a_prev, s_prev)
    log_lik = -0.5 * (x_t - math.exp(0.5 * log_alpha) * xs) ** 2 / beta
    log_p = log_prior + log_lik
    p = torch.exp(log_p - log_p.max())
    return p / torch.trapezoid(p, xs)


class _IdealNet(nn.Module):
    def __init__(self, mixture: GaussianMixture, schedule: Schedule, prediction: str):
        super().__init__()
        self.mixture, self.schedule, self.prediction = mixture, schedule, prediction

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        alpha, sigma = self.schedule.marginal(t.double())
        if self.prediction == "flow":
            # x_t here is x = (1 − τ) x_0 + τ ε: condition on it directly, with (1 − τ, τ).
            tau = sigma / (alpha + sigma)
            x0 = self.mixture.posterior_mean(x_t, 1 - tau, tau, labels)
            x = x_t.double()
            a, s = broadcast_to(1 - tau, x), broadcast_to(tau, x)
            return ((x - a * x0) / s - x0).to(x_t.dtype)      # E[ε | x] − E[x_0 | x]
        if self.prediction == "edm":  # fed x_t/r (noisecraft.denoiser, σ_d = SIGMA_DATA): EDM's F
            r = broadcast_to(_edm_r(alpha, sigma, SIGMA_DATA), x_t, torch.float64)
            x = x_t.double() * r
            x0 = self.mixture.posterior_mean(x, alpha, sigma, labels)
            a, s = broadcast_to(alpha, x), broadcast_to(sigma, x)
            return _edm_target(x0, (x - a * x0) / s, a, s, SIGMA_DATA).to(x_t.dtype)
        x0 = self.mixture.posterior_mean(x_t, alpha, sigma, labels)
        x = x_t.double()
        a, s = broadcast_to(alpha, x), broadcast_to(sigma, x)
        if self.prediction == "x0":
            out = x0
        elif self.prediction == "eps":
            out = (x - a * x0) / s
        else:  # v = α ε − σ x_0
            out = a * (x - a * x0) / s - s * x0
        return out.to(x_t.dtype)
