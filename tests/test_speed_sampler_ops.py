"""The samplers' own work per step, counted as full-size tensor passes (deterministic, unlike
seconds): every aten op whose output has x_t's number of elements is one pass over memory.

The network returns a tensor made before counting starts, so only the sampler's and the
Denoiser's passes are counted. diffusers' DDIM scheduler (installed with the [latent] extra) is
counted the same way on the same problem: the issue's goal is "at most diffusers' loop".
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from noisecraft import Denoiser, Schedule, grids
from noisecraft.noise import BatchNoise
from noisecraft.samplers import SAMPLERS

SHAPE = (4, 3, 8, 8)
NUMEL = 4 * 3 * 8 * 8
# Passes per step (net excluded) on a constant network: ε-prediction, no clip. Written down
# from the update formulas, so a change that adds a pass fails here and must explain itself.
# sde is DPM-Solver++(2M)'s step with noise: its 6 passes, the draw and adding it (it was 4 as
# Euler–Maruyama, which did not converge on coarse cosine grids; see the sde docstring).
EXPECTED = {"ddim": 4, "euler": 2, "heun": 4, "dpmpp-2m": 6, "sde": 8}


class FullSizeOps(TorchDispatchMode):
    """Records every aten op that writes a tensor of ``numel`` elements."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel = numel
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, tuple | list) else [out]
        if any(isinstance(o, torch.Tensor) and o.numel() == self.numel for o in outs):
            self.ops.append(str(func.overloadpacket.__name__))
        return out


def passes_per_step(run, steps: int, counter: type = FullSizeOps) -> float:
    """(passes at 2·steps − passes at steps) / steps: per-call set-up cancels out."""
    counts = []
    for n in (steps, 2 * steps):
        with counter(NUMEL) as mode:
            run(n)
        counts.append(len(mode.ops))
    return (counts[1] - counts[0]) / steps


def noisecraft_run(name: str, prediction: str = "eps"):
    schedule = Schedule.linear(1000)
    out = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    denoiser = Denoiser(lambda x, t: out, schedule, prediction)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    fn = SAMPLERS[name]

    def run(steps: int) -> None:
        fn(denoiser, x_T, grids.make(fn.default_grid, schedule, steps),
           noise=BatchNoise(SHAPE[0], torch.Generator().manual_seed(0)))

    return run


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_passes_per_step(name):
    assert passes_per_step(noisecraft_run(name), 10) == EXPECTED[name]


def test_ddim_does_no_more_passes_than_diffusers():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                        beta_start=1e-4, beta_end=0.02, clip_sample=False)
    out = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))

    def run(steps: int) -> None:
        scheduler.set_timesteps(steps)
        x = x_T
        for t in scheduler.timesteps:
            x = scheduler.step(out, t, x).prev_sample

    theirs = passes_per_step(run, 10)
    ours = passes_per_step(noisecraft_run("ddim"), 10)
    assert theirs == 6          # x̂_0 (3 passes) and the update (3): diffusers 0.3x's step
    assert ours <= theirs


def test_the_unused_velocity_is_never_computed():
    """DDIM reads x̂_0 and ε̂ only: asking for v̂ too costs two passes more."""
    schedule = Schedule.linear(1000)
    x = torch.randn(SHAPE)
    d = Denoiser(lambda x, t: torch.ones_like(x), schedule, "eps")(x, 500.0)
    with FullSizeOps(NUMEL) as mode:
        x0, eps = d.x0, d.eps       # ε̂ is the output itself; x̂_0 = (x_t − σ ε̂)/α
    assert mode.ops == ["addcmul", "div_"]
    with FullSizeOps(NUMEL) as mode:
        v, again = d.v, d.v         # kept, not derived twice
    assert mode.ops == ["mul", "addcmul"] and v is again and d.x0 is x0 and d.eps is eps


VIEWS = {"split", "chunk", "view", "_unsafe_view", "alias", "slice", "expand", "unbind"}


class GuidedOps(FullSizeOps):
    """Full-size passes of a guided step: over n examples or the batched pair 2n, views excluded."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, tuple | list) else [out]
        name = str(func.overloadpacket.__name__)
        if name not in VIEWS and any(isinstance(o, torch.Tensor)
                                     and o.numel() in (self.numel, 2 * self.numel) for o in outs):
            self.ops.append(name)
        return out


def test_guided_ddim_reads_only_what_it_mixes():
    """Classifier-free guidance mixes ε̂ only, so neither branch derives x̂_0 or v̂ and the mix
    derives x̂_0 once for DDIM: the two input copies (cat), the mix (3 passes), x̂_0 (2), the
    update (2). Deriving every field of both branches and of the mix, as before, cost 16."""
    from noisecraft.guidance import Guided

    schedule = Schedule.linear(1000)
    out = torch.randn((2 * SHAPE[0], *SHAPE[1:]), generator=torch.Generator().manual_seed(1))
    inner = Denoiser(lambda x, t, labels: out[: x.shape[0]], schedule, "eps")
    guided = Guided(inner, 3.0, null={"labels": torch.full((SHAPE[0],), -1)})
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(SHAPE[0])
    fn = SAMPLERS["ddim"]

    def run(steps: int) -> None:
        fn(guided, x_T, grids.make(fn.default_grid, schedule, steps), cond={"labels": labels},
           noise=BatchNoise(SHAPE[0], torch.Generator().manual_seed(0)))

    with GuidedOps(NUMEL) as mode:
        run(1)
    assert passes_per_step(run, 10, GuidedOps) == 8, mode.ops
