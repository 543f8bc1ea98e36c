"""Linear denoisers: "Linear Diffusion" solved in closed form, and the affine yardstick.

**LinearDiffusion** (the ``linear`` preset, arch ``linear-diffusion``) is the "Linear Diffusion"
construction made good. Its pieces are linear: a fixed PCA basis per component and, at every t,
a linear noise regressor in that basis. Each is solved in closed form from the data's moments
(:meth:`LinearDiffusion.fit_closed_form`, what ``noisecraft train`` calls instead of SGD), so
fitting 8×8 digits takes well under a second.

Why a mixture. For Gaussian data x_0 ~ N(μ, Σ) and x_t = α_t x_0 + σ_t ε, Gaussian conditioning
gives the exact noise regressor, linear in x_t:

    E[ε | x_t] = σ_t C_t⁻¹ (x_t − α_t μ),   C_t = α_t² Σ + σ_t² I,            (1)

the least-squares optimum of ε on (x_t, 1) at that t (:func:`least_squares_noise_regressor` fits
it from samples; the tests check that the two agree). The probability-flow ODE driven by (1)
maps N(0, I) exactly onto N(μ, Σ): one Gaussian over every digit draws blurred superpositions
(on 8×8 digits the classifier reads them with mean confidence 0.69; the SGD-trained affine net
below, which approximates the same optimum, 0.50; BENCHMARKS.md "Linear baseline on digits").
So the data is split into K
components (K-means; within each class when ``num_classes`` is set), each a Gaussian N(μ_k, Σ_k)
with its own regressor (1), and they are combined by the exact responsibilities:

    E[ε | x_t] = Σ_k r_k(x_t) σ_t C_{k,t}⁻¹ (x_t − α_t μ_k),
    r_k(x_t) ∝ w_k N(x_t; α_t μ_k, C_{k,t})                                   (2)

— the exact denoiser of the fitted mixture, i.e. the analytic mixture denoiser of
:mod:`noisecraft.analytic` with full (or low-rank) covariances. **The nonlinearity that remains
is the softmax over components in r_k**: with K = 1 the net is affine in x_t (the best affine
denoiser), with K > 1 it is piecewise-almost-linear, switching regressors where the components
meet. Sampling the ODE of (2) draws from the fitted mixture of Gaussians.

The choice, measured (BENCHMARKS.md; 500 DDPM-100 samples, digits classifier): mean confidence
0.69 at K = 1, 0.91 at K = 10, 0.95 at K = 20, 0.96 at K = 40, all ten classes covered from
K = 10 on; the demo's U-Net reads 0.91. The preset takes K = 20: past the goal (0.80) with a
margin, while the samples stay new (their nearest training digit is as far as the second
nearest, median ratio 0.95, no near-copies); K → n would end at the training set itself (the
exact denoiser of the empirical distribution copies). Components come from K-means rather than
the labels so that unlabelled data works the same; with ``num_classes`` each class gets its own
K (0.98 when the label is asked for). Full covariances, since D = 64 is cheap: PCA rank 16
reads the same (0.94) with a quarter of the numbers, the setting for larger pictures.

Σ_k = U_k diag(λ_k) U_kᵀ + ν_k (I − U_k U_kᵀ): the top ``rank`` principal directions U_k of
component k with their variances λ_k, and the mean ν_k of the remaining variances on the rest
(probabilistic PCA; ``rank=None`` keeps every direction). In that basis C_{k,t}⁻¹ is diagonal,
α_t² λ + σ_t² per direction, so (2) costs O(K D rank) per example at any continuous t. Variances
are floored at ``min_variance`` so that a pixel constant in a component (a digit's empty corner)
keeps a proper, if very narrow, Gaussian. The per-t regressors are evaluated from the moments at
the t asked for rather than fitted on a grid of t: the same numbers in the limit, for every
fractional t a solver asks for, with nothing to interpolate.

The net carries what (2) needs to turn t into (α_t, σ_t): the β_t of the schedule it was fitted
for (a buffer saved with the weights), and which field the run's ``Denoiser`` reads (ε, x_0 or v).
An unfitted net refuses to run.

**LinearDenoiser** (arch ``linear``, the ``affine`` preset) is the earlier baseline, trained by
SGD like any net:

    f(x_t, t) = W(t) x_t + b(t),   W(t) = Σ_k φ_k(t) W_k,   b(t) = Σ_k φ_k(t) b_k,

with the fixed cosine basis φ_k(t) = cos(π k t / T), k = 0, …, K − 1 (a smooth, complete basis
on [0, T]). x is flattened, so any shape works. Because the output is linear in the parameters
too, fitting it by squared error is a convex problem: its optimum is the best affine denoiser,
i.e. the one that only knows the data's mean and covariance — LinearDiffusion with one component,
found here by gradient descent. With ``rank`` set, W_k = U_k V_kᵀ + diag(d_k) (low rank plus
diagonal) keeps large images cheap. Class labels, when used, add a per-class offset
Σ_k φ_k(t) c_{k,y}: still affine in x. Runs saved with arch ``linear`` keep loading.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..denoiser import PREDICTIONS, from_eps, input_scale
from ..schedule import Schedule, broadcast_to
from .config import (
    boolean,
    jsonable,
    optional_positive_int,
    positive_int,
    positive_number,
    sample_shape,
)
from .layers import LabelEmbedding, expand_time, take_labels

# Seed of the K-means initialisation: a fit is a function of the data alone.
KMEANS_SEED = 0
KMEANS_ITERATIONS = 50
EMPTY_LOG_WEIGHT = -1e30


class LinearDenoiser(nn.Module):
    """``linear(x_t, t, labels=None) -> Tensor`` of x_t's shape (2× channels if ``learned_variance``).

    Args:
        in_channels: features of a vector x (batch, in_channels), or channels of an image.
        image_size: None for vectors; S for images (batch, in_channels, S, S).
        num_basis: K, the number of cosine basis functions of t.
        rank: None for full matrices W_k; r for W_k = U_k V_kᵀ + diag(d_k).
        learned_variance: output twice the channels (dim 1).
        num_classes: class-conditional offsets when set (labels −1 or None: the null offset).
        T: the schedule's length; the basis lives on t / T ∈ [0, 1].
    """

    arch = "linear"

    def __init__(self, in_channels: int = 1, image_size: int | None = 8, num_basis: int = 16,
                 rank: int | None = None, learned_variance: bool = False,
                 num_classes: int | None = None, T: int = 1000):
        super().__init__()
        self.sample_shape = sample_shape(in_channels, image_size)
        num_basis = positive_int("num_basis", num_basis)
        rank = optional_positive_int("rank", rank)
        learned_variance = boolean("learned_variance", learned_variance)
        num_classes = optional_positive_int("num_classes", num_classes)
        self.T = positive_number("T", T)
        self._config = dict(in_channels=in_channels, image_size=image_size, num_basis=num_basis,
                            rank=rank, learned_variance=learned_variance, num_classes=num_classes, T=T)
        self.num_classes = num_classes
        self.out_shape = (2 * in_channels if learned_variance else in_channels, *self.sample_shape[1:])
        d_in, d_out = math.prod(self.sample_shape), math.prod(self.out_shape)
        self.register_buffer("frequencies", math.pi * torch.arange(num_basis, dtype=torch.float32),
                             persistent=False)
        # Zero start: the fit is convex, so no symmetry needs breaking (except in the low-rank factor).
        self.bias = nn.Parameter(torch.zeros(num_basis, d_out))
        if rank is None:
            self.weight = nn.Parameter(torch.zeros(num_basis, d_out, d_in))
        else:
            self.left = nn.Parameter(torch.zeros(num_basis, d_out, rank))
            self.right = nn.Parameter(torch.randn(num_basis, rank, d_in) / math.sqrt(d_in))
            self.diagonal = nn.Parameter(torch.zeros(num_basis, d_out))
        self.label_offset = None
        if num_classes is not None:
            self.label_offset = LabelEmbedding(num_classes, num_basis * d_out)
            nn.init.zeros_(self.label_offset.table.weight)

    @property
    def config(self) -> dict[str, Any]:
        """The JSON-able arguments that rebuild this architecture: ``nets.from_config(config)``."""
        return {"arch": self.arch, **jsonable(self._config)}

    def basis(self, t: Tensor) -> Tensor:
        """φ_k(t) = cos(π k t / T), shape (batch, K)."""
        return torch.cos((t / self.T)[:, None] * self.frequencies[None, :])

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"LinearDenoiser expects x of shape "
                             f"(batch, {', '.join(map(str, self.sample_shape))}), got {tuple(x.shape)}")
        labels = take_labels(cond, self.num_classes)
        batch = x.shape[0]
        phi = self.basis(expand_time(t, x)).to(self.bias.dtype)  # (batch, K)
        flat = x.flatten(1).to(self.bias.dtype)  # (batch, D_in)
        if self._config["rank"] is None:
            per_basis = torch.einsum("koi,bi->bko", self.weight, flat)
        else:
            low = torch.einsum("kor,bkr->bko", self.left, torch.einsum("kri,bi->bkr", self.right, flat))
            # diag(d_k) acts on x tiled to D_out (learned variance doubles the outputs).
            tiled = flat.repeat(1, self.diagonal.shape[1] // flat.shape[1])
            per_basis = low + self.diagonal[None] * tiled[:, None, :]
        offset = self.bias[None]
        if self.label_offset is not None:
            offset = offset + self.label_offset(labels, batch, x.device).view(batch, *self.bias.shape)
        out = torch.einsum("bk,bko->bo", phi, per_basis + offset)
        return out.reshape(batch, *self.out_shape)


# --------------------------------------------------------------------------- LinearDiffusion
def kmeans(x: Tensor, k: int, generator: torch.Generator,
           iterations: int = KMEANS_ITERATIONS) -> Tensor:
    """Lloyd's K-means of the rows of ``x`` (n, D) from a k-means++ start: the cluster of each
    row, shape (n,). A cluster left empty keeps its centre (and so its place)."""
    n = x.shape[0]
    if k > n:
        raise ValueError(f"cannot split {n} examples into num_components = {k} components")
    centres = x[torch.randint(n, (1,), generator=generator)]
    for _ in range(k - 1):  # k-means++: each new centre drawn ∝ squared distance to the nearest
        d2 = torch.cdist(x, centres).min(dim=1).values.square()
        pick = torch.multinomial(d2 / d2.sum(), 1, generator=generator) if d2.sum() > 0 \
            else torch.randint(n, (1,), generator=generator)
        centres = torch.cat([centres, x[pick]])
    assign = torch.cdist(x, centres).argmin(dim=1)
    for _ in range(iterations):
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        centres = torch.where((counts > 0)[:, None], sums / counts.clamp(min=1)[:, None], centres)
        new = torch.cdist(x, centres).argmin(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


def gaussian_moments(x: Tensor, rank: int | None, min_variance: float
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mean μ, top-``rank`` principal directions U (D, r), their variances λ (r,) and the mean
    variance ν of the other D − r directions (0 when r = D) of the rows of ``x`` (n, D).

    Maximum-likelihood (1/n) covariance, whose eigenvectors are the PCA basis; every variance is
    floored at ``min_variance``."""
    dim = x.shape[1]
    r = dim if rank is None else min(rank, dim)
    mean = x.mean(dim=0)
    centred = x - mean
    variances, basis = torch.linalg.eigh(centred.T @ centred / x.shape[0])  # ascending
    variances, basis = variances.flip(0), basis.flip(1)
    residual = variances[r:].mean() if r < dim else variances.new_zeros(())
    return (mean, basis[:, :r], variances[:r].clamp(min=min_variance),
            residual.clamp(min=min_variance) if r < dim else residual)


def least_squares_noise_regressor(x0: Tensor, alpha: float, sigma: float, draws: int,
                                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(A, b) minimising the mean of ‖ε − A x_t − b‖² over ``draws`` pairs (x_t = α x_0 + σ ε,
    x_0 drawn from the rows of ``x0``): the per-t linear noise regressor fitted by least squares,
    the route that (1) of the module docstring solves from the moments instead."""
    idx = torch.randint(x0.shape[0], (draws,), generator=generator)
    eps = torch.randn(draws, x0.shape[1], generator=generator, dtype=x0.dtype)
    x_t = alpha * x0[idx] + sigma * eps
    design = torch.cat([x_t, torch.ones(draws, 1, dtype=x0.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, eps).solution  # (D + 1, D)
    return solution[:-1].T, solution[-1]


class LinearDiffusion(nn.Module):
    """``net(x_t, t, labels=None) -> Tensor``: the exact denoiser (2) of a fitted mixture of
    Gaussians, each with a linear per-t noise regressor in its PCA basis (module docstring).

    Args:
        in_channels: features of a vector x (batch, in_channels), or channels of an image.
        image_size: None for vectors; S for images (batch, in_channels, S, S).
        num_components: K-means components of the data (of each class's data with num_classes).
        rank: principal directions kept per component; None keeps all D.
        min_variance: floor on every component variance, in data units squared.
        num_classes: labels pick their class's components (−1 or None: all of them).
        T: the schedule's length (the β_t buffer holds T values).

    :meth:`fit_closed_form` solves it; until then it refuses to run.
    """

    arch = "linear-diffusion"

    def __init__(self, in_channels: int = 1, image_size: int | None = 8, num_components: int = 10,
                 rank: int | None = None, min_variance: float = 1e-4,
                 num_classes: int | None = None, T: int = 1000):
        super().__init__()
        self.sample_shape = sample_shape(in_channels, image_size)
        num_components = positive_int("num_components", num_components)
        rank = optional_positive_int("rank", rank)
        min_variance = positive_number("min_variance", min_variance)
        num_classes = optional_positive_int("num_classes", num_classes)
        T = positive_int("T", T)
        self._config = dict(in_channels=in_channels, image_size=image_size,
                            num_components=num_components, rank=rank, min_variance=min_variance,
                            num_classes=num_classes, T=T)
        self.num_classes = num_classes
        dim = math.prod(self.sample_shape)
        r = dim if rank is None else min(rank, dim)
        k = num_components * (num_classes or 1)
        f64 = dict(dtype=torch.float64)

        # Solved, not trained: parameters (so the trainer's optimizer and EMA see an ordinary
        # net) that need no gradient. float64: at small σ_t, C⁻¹ spans 1/σ_t² ~ 10⁴ and beyond.
        def fixed(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*shape, **f64), requires_grad=False)

        self.log_weights, self.means = fixed(k), fixed(k, dim)
        self.basis, self.variances, self.residual = fixed(k, dim, r), fixed(k, r), fixed(k)
        self.betas = fixed(T)  # the fitted schedule; all zero = not fitted
        self.register_buffer("component_class", torch.zeros(k, dtype=torch.long))
        self.register_buffer("prediction", torch.zeros((), dtype=torch.long))  # PREDICTIONS index

    @property
    def config(self) -> dict[str, Any]:
        """The JSON-able arguments that rebuild this architecture: ``nets.from_config(config)``."""
        return {"arch": self.arch, **jsonable(self._config)}

    @torch.no_grad()
    def fit_closed_form(self, dataset: Any, schedule: Schedule, prediction: str = "eps") -> None:
        """Solve the net on every example of ``dataset`` (``{"x", "label"}`` items) for
        ``schedule``, outputting ``prediction``: K-means components (per class with num_classes),
        then each component's weight, mean and PCA moments. Deterministic given the data."""
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a noisecraft.Schedule, got {type(schedule).__name__}")
        if schedule.T != self._config["T"]:
            raise ValueError(f"schedule has T = {schedule.T}, this net was built for "
                             f"T = {self._config['T']}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of "
                             f"{', '.join(PREDICTIONS)}")
        x, labels = _examples(dataset, self.sample_shape)
        per_class = self._config["num_components"]
        groups = [torch.arange(len(x))] if self.num_classes is None else [
            (labels == c).nonzero().flatten() for c in range(self.num_classes)]
        generator = torch.Generator().manual_seed(KMEANS_SEED)
        members, classes = [], []
        for c, rows in enumerate(groups):
            if len(rows) == 0:
                raise ValueError(f"class {c} has no examples; a class-conditional linear net "
                                 "needs some of every class")
            assign = kmeans(x[rows], per_class, generator)
            members += [rows[assign == j] for j in range(per_class)]
            classes += [c] * per_class
        moments = [gaussian_moments(x[m], self._config["rank"], self._config["min_variance"])
                   if len(m) else None for m in members]
        counts = torch.tensor([float(len(m)) for m in members], dtype=torch.float64)
        # An empty component (K-means left it nothing) gets weight 0, written as a finite
        # EMPTY_LOG_WEIGHT because weight files refuse ±Inf.
        self.log_weights.copy_(torch.log(counts / counts.sum()).clamp(min=EMPTY_LOG_WEIGHT))
        for i, m in enumerate(moments):
            if m is not None:
                self.means[i], self.basis[i], self.variances[i], self.residual[i] = m
        self.component_class.copy_(torch.tensor(classes))
        self.betas.copy_(schedule.betas)
        self.prediction.fill_(PREDICTIONS.index(prediction))

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"LinearDiffusion expects x of shape "
                             f"(batch, {', '.join(map(str, self.sample_shape))}), got {tuple(x.shape)}")
        if not bool((self.betas > 0).all()):
            raise ValueError("this LinearDiffusion net is not fitted: call fit_closed_form "
                             "(`noisecraft train --net linear` does)")
        labels = take_labels(cond, self.num_classes)
        flat = x.flatten(1).to(torch.float64)
        schedule = Schedule.from_betas(self.betas.detach().cpu())
        alpha, sigma = (v.to(flat.device) for v in schedule.marginal(
            expand_time(t, x).detach().cpu().to(torch.float64)))
        a, s = alpha[:, None], sigma[:, None]  # (batch, 1)
        # A flow, EDM or consistency Denoiser feeds x_t/(α + σ) or x_t/r (denoiser.input_scale): undo it.
        flat = flat * input_scale(PREDICTIONS[int(self.prediction)], a, s)
        eps, log_r = self._component_noise(flat, a, s)
        if labels is not None:  # a label keeps its class's components; −1 keeps them all
            labels = _check_labels(labels, flat.shape[0], self.num_classes, flat.device)
            keep = (labels[:, None] < 0) | (self.component_class[None] == labels[:, None])
            log_r = log_r.masked_fill(~keep, -math.inf)
        eps = (torch.softmax(log_r, dim=1)[:, :, None] * eps).sum(dim=1)   # (2)
        out = eps if self.prediction == 0 else from_eps(
            eps, flat, broadcast_to(alpha, flat), broadcast_to(sigma, flat),
            prediction=PREDICTIONS[int(self.prediction)]).output
        return out.to(x.dtype).reshape(x.shape)

    def _component_noise(self, x: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """E[ε | x_t, k] = σ C_k⁻¹ (x_t − α μ_k) of every component (batch, K, D), and
        log w_k + log N(x_t; α μ_k, C_k) (batch, K), with C_k = α² Σ_k + σ² I in the PCA basis:
        α² λ + σ² along U_k, α² ν + σ² on the rest."""
        dim, r = x.shape[1], self.basis.shape[2]
        diff = x[:, None, :] - a[:, :, None] * self.means[None]              # (batch, K, D)
        coords = torch.einsum("bkd,kdr->bkr", diff, self.basis)              # in the PCA basis
        along = a[:, :, None] ** 2 * self.variances[None] + s[:, :, None] ** 2  # (batch, K, r)
        rest = a**2 * self.residual[None] + s**2                             # (batch, K)
        outside = diff - torch.einsum("bkr,kdr->bkd", coords, self.basis)
        eps = s[:, :, None] * (torch.einsum("bkr,kdr->bkd", coords / along, self.basis)
                               + (outside / rest[:, :, None] if r < dim else 0.0))
        maha = (coords.square() / along).sum(-1)
        log_det = torch.log(along).sum(-1)
        if r < dim:
            maha = maha + outside.square().sum(-1) / rest
            log_det = log_det + (dim - r) * torch.log(rest)
        return eps, self.log_weights[None] - 0.5 * (maha + log_det + dim * math.log(2 * math.pi))


def _examples(dataset: Any, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Every example of a map-style or iterable dataset: x flattened (n, D) float64, labels (n,)
    (−1 where an example has none)."""
    items = ([dataset[i] for i in range(len(dataset))]
             if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__") else list(dataset))
    if not items:
        raise ValueError("the dataset is empty; a linear net needs examples to fit")
    xs = [torch.as_tensor(item["x"]) for item in items]
    bad = next((tuple(v.shape) for v in xs if tuple(v.shape) != shape), None)
    if bad is not None:
        raise ValueError(f"an example of shape {bad}; this net was built for {shape}")
    labels = [item.get("label") for item in items]
    return (torch.stack(xs).flatten(1).to(torch.float64),
            torch.tensor([-1 if v is None else int(v) for v in labels], dtype=torch.long))


def _check_labels(labels: Tensor, n: int, num_classes: int | None, device: torch.device) -> Tensor:
    labels = torch.as_tensor(labels, device=device)
    if labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if num_classes is not None and bool(((labels < -1) | (labels >= num_classes)).any()):
        raise ValueError(f"labels must lie in -1..{num_classes - 1}, got {labels.tolist()}")
    return labels.long()
