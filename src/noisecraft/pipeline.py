"""The whole chain in one object: ``Pipeline.from_run(RUN)(prompts, ...)``.

For a text run: prompt → tokens → text embedding (the run's frozen encoder, its sha256 checked)
→ guided sampling of x_T ~ N(0, I) down to x_0 (classifier-free guidance, the empty prompt as the
unconditional branch) → for a latent run the autoencoder's decoder, x = D(z_0 / scale + shift)
→ uint8 pictures of the data's own shape. Class-conditional runs take ``labels`` instead of
prompts; unconditional runs neither. Pixel runs skip the decoder. Nothing here is new
mathematics: it strings together ``LoadedRun.generate_tensor`` (conditions, ``Guided``, the
sampler) and ``LoadedRun.to_output`` (decoder, inverse preprocessing), with a progress bar and
the stage picture of :meth:`Pipeline.explain`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .run import LoadedRun, load_run

LATENT_DISPLAY_RANGE = 3.0  # latents are ~unit-variance: ±3σ maps to black…white in the figure


@dataclass
class PipelineOutput:
    """What a pipeline call returns: ``images`` uint8 (N, H, W, C), the model-space ``samples``
    (latents for a latent run) and the condition of each example."""

    images: np.ndarray
    samples: torch.Tensor
    prompts: list[str] | None
    labels: np.ndarray | None


@dataclass
class Stages:
    """The reverse process of one example, recorded for :meth:`Pipeline.explain`: the times ``ts``
    and, at each, x_t and x̂_0 in model space (latents for a latent run), plus the final x_0."""

    ts: list[float]
    x_t: torch.Tensor
    x0_hat: torch.Tensor
    final: torch.Tensor


class Pipeline:
    """Text-to-image (or label-to-image) generation from a trained run (module docstring)."""

    def __init__(self, run: LoadedRun):
        self.run = run

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str], device: str | torch.device = "cpu",
                 use_ema: bool = True) -> Pipeline:
        """Load ``run_dir`` (its autoencoder and text encoder come from its config.json)."""
        return cls(load_run(run_dir, use_ema=use_ema, device=device))

    # ------------------------------------------------------------------ conditions
    def conditions(self, n: int, prompts: str | Sequence[str] | None = None,
                   labels: int | Sequence[int] | None = None
                   ) -> tuple[list[str] | None, np.ndarray | None]:
        """One (prompt, label) per image: :meth:`LoadedRun.conditions`, the rule every command
        follows (``n`` of each prompt or label given, or the run's defaults)."""
        if isinstance(labels, int | np.integer):
            labels = [int(labels)]
        return self.run.conditions(n, prompts, labels)

    # ------------------------------------------------------------------ generation
    def __call__(self, prompts: str | Sequence[str] | None = None, *, n: int = 1,
                 labels: int | Sequence[int] | None = None, guidance: float | None = None,
                 steps: int | None = None, sampler: str | None = None, seed: int = 0,
                 progress: bool = True, record: bool = False,
                 negative_prompt: str | None = None) -> PipelineOutput:
        """``n`` images for each prompt (or label); see :meth:`generate_with_stages` for ``record``.
        ``negative_prompt`` (with ``guidance``): the unconditional branch's prompt instead of ""."""
        extra = {} if negative_prompt is None else {"negative_prompt": negative_prompt}
        out, _ = self.generate_with_stages(prompts, n=n, labels=labels, guidance=guidance,
                                           steps=steps, sampler=sampler, seed=seed,
                                           progress=progress, record=record, **extra)
        return out

    def generate_with_stages(self, prompts: str | Sequence[str] | None = None, *, n: int = 1,
                             labels: int | Sequence[int] | None = None,
                             guidance: float | None = None, steps: int | None = None,
                             sampler: str | None = None, seed: int = 0, progress: bool = True,
                             record: bool = False, **guidance_options: Any
                             ) -> tuple[PipelineOutput, Stages | None]:
        """The images, and with ``record`` the reverse process of the first example (:class:`Stages`).

        All images are drawn in one batch so that the progress bar counts sampler steps; image i
        uses the noise stream of index i under ``seed``, as ``noisecraft sample`` does.
        ``guidance_options``: ``guidance_rescale``, ``guidance_interval``, ``autoguide``,
        ``negative_prompt`` of
        :meth:`LoadedRun.generate_tensor` (checked there by :meth:`LoadedRun.guided`).
        """
        from .progress import Bar

        run = self.run
        sampler, steps = run.sampler_and_steps(sampler, steps)
        prompt_list, label_arr = self.conditions(n, prompts, labels)
        total = len(prompt_list) if prompt_list is not None else (
            len(label_arr) if label_arr is not None else n)
        trace: dict[str, list[Any]] = {"t": [], "x_t": [], "x0": []}
        bar = Bar(steps, "sample", enabled=progress)

        def callback(i: int, t: Any, x_t: torch.Tensor, x0_hat: torch.Tensor) -> None:
            bar.update(1)
            if record:
                trace["t"].append(float(torch.as_tensor(t).reshape(-1)[0]))
                trace["x_t"].append(x_t[0].detach().float().cpu())
                trace["x0"].append(x0_hat[0].detach().float().cpu())

        try:
            samples = run.generate_tensor(total, sampler=sampler, steps=steps, seed=seed,
                                          batch_size=total, callback=callback, labels=label_arr,
                                          prompts=prompt_list, guidance=guidance,
                                          **guidance_options)
        finally:
            bar.close()
        images = run.to_output(samples)
        output = PipelineOutput(images=images, samples=samples, prompts=prompt_list, labels=label_arr)
        stages = None
        if record and trace["t"]:
            stages = Stages(ts=trace["t"], x_t=torch.stack(trace["x_t"]),
                            x0_hat=torch.stack(trace["x0"]), final=samples[0])
        return output, stages

    # ------------------------------------------------------------------ the stage picture
    def explain(self, stages: Stages, columns: int = 6) -> Image.Image:
        """The stages side by side for one example: per latent channel a row of x_t (grey, ±3σ),
        a row of the decoded x̂_0 = D(x̂_0 / scale + shift), at ``columns`` times from t = T to 0,
        and the final image in the last column."""
        from . import viz

        k = min(columns, len(stages.ts))
        pick = np.unique(np.linspace(0, len(stages.ts) - 1, k).round().astype(int))
        ts = [stages.ts[i] for i in pick]
        x_t = torch.cat([stages.x_t[pick], stages.final[None]])
        x0 = torch.cat([stages.x0_hat[pick], stages.final[None]])
        decoded = self.run.to_output(x0)  # (K+1, H, W, C) pictures
        h, w = decoded.shape[1:3]
        rows, names = [], []
        if self.run.config.latent is not None:
            for c in range(x_t.shape[1]):
                rows.append(_grey(x_t[:, c], h, w))
                names.append(f"z_t ch{c}")
        else:
            rows.append(self.run.to_output(x_t))
            names.append("x_t")
        rows.append(decoded)
        names.append("decoded pred x_0" if self.run.config.latent is not None else "pred x_0")
        captions = [f"t={t:.0f}" if t == int(t) else f"t={t:.1f}" for t in ts] + ["final"]
        return viz.labelled_rows(rows, captions, names)


def _grey(z: torch.Tensor, h: int, w: int) -> np.ndarray:
    """(K, h', w') latent channels → (K, h, w, 1) uint8, ±LATENT_DISPLAY_RANGE → 0…255, enlarged
    by nearest neighbour to the pictures' size so the columns line up."""
    v = ((z.clamp(-LATENT_DISPLAY_RANGE, LATENT_DISPLAY_RANGE) / LATENT_DISPLAY_RANGE + 1) * 127.5)
    v = v.round().to(torch.uint8).numpy()
    out = [np.asarray(Image.fromarray(a, mode="L").resize((w, h), Image.Resampling.NEAREST))
           for a in v]
    return np.stack(out)[..., None]
