"""A latent (or vector) run clips x̂_0 to its training range, so the cosine schedule's ~2·10⁴-fold
amplification of the ε̂ error at t = T cannot blow the sample up (the defect: latents with
std ~2,700 from a latent run on the cosine schedule).

The exact denoiser of a Gaussian mixture stands in for a trained latent network; an ε̂ error of
0.08 — what a small latent U-Net makes — is added to it."""

import pytest
import torch

import noisecraft as nc
from noisecraft.analytic import GaussianMixture
from noisecraft.data.datasets import VectorDataset
from noisecraft.train import new_run_config
from noisecraft.train.trainer import training_range

EPS_ERROR = 0.08


class _Noisy(torch.nn.Module):
    """The mixture's exact ε-predictor plus a fixed error field of size EPS_ERROR per value."""

    def __init__(self, exact: torch.nn.Module):
        super().__init__()
        self.exact = exact

    def forward(self, x_t, t):
        g = torch.Generator().manual_seed(1)
        err = torch.randn(x_t.shape, generator=g, dtype=x_t.dtype)
        return self.exact(x_t, t) + EPS_ERROR * err


@pytest.fixture(scope="module")
def problem():
    # "latents": 16 values, unit variance overall, two modes at ±0.8 with spread 0.6
    mix = GaussianMixture([0.5, 0.5], torch.stack([torch.full((16,), 0.8), torch.full((16,), -0.8)]),
                          0.6)
    data = mix.sample(4000, torch.Generator().manual_seed(0)).float()
    schedule = nc.Schedule.cosine(T=1000)
    return mix, data, schedule


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp-2m"])
def test_cosine_latents_stay_in_range_with_the_runs_clip(problem, sampler):
    mix, data, schedule = problem
    net = _Noisy(mix.net(schedule, "eps"))
    config = new_run_config(VectorDataset(data.numpy(), source="latents"), "latents", net="mlp",
                            schedule="cosine")
    clip = tuple(config.sampling.clip)
    assert clip == training_range(VectorDataset(data.numpy(), source="latents"))
    assert clip == (float(data.min()), float(data.max()))
    unclipped = nc.sample(nc.Denoiser(net, schedule, "eps"), (256, 16), schedule, sampler,
                          steps=50, seed=0)
    clipped = nc.sample(nc.Denoiser(net, schedule, "eps", clip=clip), (256, 16), schedule,
                        sampler, steps=50, seed=0)
    # Without the clip the first step's x̂_0 error is 0.08·σ_T/α_T ≈ 1.6·10³ (the defect);
    # deterministic DDIM carries it to the end (std ~30 measured); ancestral noise and
    # DPM-Solver's multistep damp it partly, so only DDIM is checked for the blow-up.
    if sampler == "ddim":
        assert unclipped.std() > 10
    # With it the samples keep the data's spread: std 1.0 (the mixture's), within what an ε̂
    # error of 0.08 per step can move it (a generous ±30 %; the unclipped value is ×50 off).
    assert 0.7 < float(clipped.std()) < 1.3
    assert clipped.min() >= clip[0] - 1e-6 and clipped.max() <= clip[1] + 1e-6
