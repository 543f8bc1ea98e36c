"""Reflow (Liu, Gong & Liu 2022, "Flow straight and fast"): straighten a run's ODE paths.

A deterministic sampler couples each noise x_T with one sample x_0 = ODE(x_T). A new flow run
(``Schedule.flow``, ``prediction="flow"``) trained on these *pairs* — x^flow = (1 − τ) x_0 + τ x_T
with the paired x_T as the noise, instead of fresh noise — learns a velocity field whose paths
are straighter, so few-step samplers lose less. What it takes:

    pairs = ode_pairs(denoiser, x_T, sampler="heun", steps=50)     # (x_T, x_0), seeded
    PairedDataset(pairs.x_0, pairs.x_T, ...)                      # items carry "noise"
    reflow("runs/moons", "runs/moons-reflow", pairs=4000)         # `noisecraft reflow`

Straightness (Liu et al. 2022, eq. 4) of the ODE path z_τ in the straight-path coordinates
z = x_t/(α + σ), τ = σ/(α + σ) (z_1 ≈ x_T, z_0 = x_0; any VP path rescales onto them):

    S = ∫₀¹ E ‖(z_1 − z_0) − ż_τ‖² dτ,   ż_τ = ε̂ − x̂_0,

zero exactly when every path is a straight line travelled at constant speed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from . import samplers
from .checks import number
from .data import NO_LABEL
from .denoiser import Denoiser
from .io import atomic_write
from .noise import ExampleNoise
from .schedule import Schedule
from .straightness import straightness, straightness_grid  # noqa: F401  (re-exported)

DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp-2m")
"""The samplers that are functions of x_T alone, hence a coupling (x_T, x_0)."""

MADE_BY_FILE = "reflow.json"  # the run's record of its teacher and pairs (see train.setup)


@dataclass(frozen=True)
class Pairs:
    """The ODE coupling: ``x_T[i]`` decodes to ``x_0[i]``; drawn with ``seed`` (example i's noise
    depends only on (seed, i)) by ``sampler`` in ``steps`` steps."""

    x_T: Tensor
    x_0: Tensor
    sampler: str
    steps: int
    seed: int


def ode_pairs(denoiser: Denoiser, n: int, event_shape: tuple[int, ...], *, sampler: str = "heun",
              steps: int = 50, seed: int = 0, batch_size: int = 1024,
              dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Pairs:
    """``n`` pairs (x_T, x_0 = ODE(x_T)) from ``denoiser``'s probability-flow ODE, solved by the
    deterministic ``sampler`` (one of :data:`DETERMINISTIC`) on its default grid."""
    samplers.check_sampler(sampler, DETERMINISTIC)
    number("n", n, 1, None)
    number("steps", steps, 1, None)
    xs, x0s = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x_T = ExampleNoise(seed, b, start).randn(tuple(event_shape), dtype=dtype, device=device)
        x0s.append(samplers.sample(denoiser, (b, *event_shape), denoiser.schedule, sampler, steps,
                                   x_T=x_T, seed=seed, seed_offset=start))
        xs.append(x_T)
    return Pairs(torch.cat(xs), torch.cat(x0s), sampler, steps, seed)


class PairedDataset(Dataset):
    """The coupled pairs as a map-style dataset: items ``{"x": x_0, "noise": x_T, "label",
    "caption", "key"}``; ``info`` and ``preprocess`` are the teacher data's (same units)."""

    def __init__(self, pairs: Pairs, *, info: dict[str, Any], preprocess: Any, source: str):
        if pairs.x_0.shape != pairs.x_T.shape:
            raise ValueError(f"x_0 {tuple(pairs.x_0.shape)} and x_T {tuple(pairs.x_T.shape)} "
                             "differ in shape")
        self.x_0, self.x_T = pairs.x_0.float().cpu(), pairs.x_T.float().cpu()
        self.info, self.preprocess, self.source = dict(info), preprocess, source

    def __len__(self) -> int:
        return self.x_0.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x_0[i], "noise": self.x_T[i], "label": NO_LABEL, "caption": "",
                "key": f"{self.source}_{i:06d}"}


# ---------------------------------------------------------------------------- the command
def _trainer_class() -> type:
    from . import losses
    from .train.trainer import Trainer

    class PairedTrainer(Trainer):
        """A :class:`Trainer` whose loss uses each item's paired ``noise`` as ε (reflow): the
        flow-matching regression ``losses.simple`` at t from the run's time sampler, whatever
        the teacher's ``--loss`` (a bound term has no meaning for a coupling)."""

        def _loss(self, denoiser: Any, batch: dict[str, Any], gen: torch.Generator,
                  ctx: Any) -> Tensor:
            dev = ctx.device
            x0, noise = batch["x"].to(dev), batch["noise"].to(dev)
            t, weights = self.time_sampler.sample(x0.shape[0], generator=gen, device=dev)
            per_example = losses.simple(denoiser, x0, t=t, noise=noise).float()
            return (per_example * weights).mean()

    return PairedTrainer


def reflow(run: str | Path, out: str | Path, *, pairs: int = 4000, sampler: str | None = None,
           ode_steps: int | None = None, seed: int = 0, steps: int | None = None,
           batch_size: int | None = None, lr: float | None = None,
           time_sampler: str | None = None, max_time: str | None = None,
           device: str | torch.device | None = None, progress: bool = True) -> Any:
    """``noisecraft reflow RUN --out OUT``: draw ``pairs`` ODE pairs from RUN (its deterministic
    sampler, ``sampler``/``ode_steps`` or the run's own, ``seed``), then train OUT, a flow run
    (``Schedule.flow`` with RUN's T, ``prediction="flow"``, RUN's network architecture and data
    units, fresh weights) on them. RUN's train settings apply unless ``steps``, ``batch_size``,
    ``lr``, ``time_sampler`` or ``max_time`` (the training budget; the pairs are drawn before it
    starts) are given. Writes OUT/reflow.json (teacher and pairs). Returns the
    :class:`~noisecraft.train.TrainResult`."""
    import dataclasses

    from .data import Preprocess
    from .run import load_run

    teacher = load_run(run, device=device or "cpu")
    cfg = teacher.config
    if cfg.data.num_classes is not None or cfg.condition.kind != "none" or cfg.latent is not None:
        raise ValueError(f"{run}: reflow handles unconditional pixel or vector runs; this run is "
                         f"{cfg.condition.kind}-conditional" if cfg.latent is None
                         else f"{run}: reflow does not handle latent runs")
    sampler = sampler or (cfg.sampling.sampler if cfg.sampling.sampler in DETERMINISTIC else "heun")
    ode_steps = ode_steps or cfg.sampling.steps
    number("pairs", pairs, 1, None)
    p = ode_pairs(teacher.denoiser, pairs, teacher.shape, sampler=sampler, steps=ode_steps,
                  seed=seed, device=teacher.device)
    pre = Preprocess.from_dict(cfg.data.preprocess)
    dataset = PairedDataset(p, info={"kind": cfg.data.kind}, preprocess=pre, source="reflow")
    given = {k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("lr", lr),
                               ("time_sampler", time_sampler), ("max_time", max_time))
             if v is not None}
    config = dataclasses.replace(
        cfg, schedule=Schedule.flow(Schedule.from_dict(cfg.schedule).T).to_dict(),
        prediction="flow", train=dataclasses.replace(cfg.train, **given),
        data=dataclasses.replace(cfg.data, spec=f"reflow:{Path(run).resolve()}"))
    trainer = _trainer_class()(config, out, dataset, device=device, progress=progress)
    record = {"teacher": str(Path(run).resolve()), "teacher_step": teacher.step, "pairs": pairs,
              "sampler": sampler, "ode_steps": ode_steps, "seed": seed}
    # Written first: it marks the run as reflow's, which `train --resume` then refuses.
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out) / MADE_BY_FILE, json.dumps(record, indent=1) + "\n")
    return trainer.fit()
