"""A trained run as a representation: inversion, interpolation, SDEdit and inpainting of
pictures, with the run's own conditions (classes or prompts), guidance and latent space — what
``noisecraft encode | interpolate | edit | inpaint`` do, as methods of
:class:`~noisecraft.run.LoadedRun` (this mixin).

Pictures come and go in the model's pixel space, (N, C, H, W) in [−1, 1]
(:meth:`LoadedRun.read_picture`); the mathematics is :mod:`noisecraft.editing`'s. A latent run
works in its autoencoder's latent space: pictures are encoded to the scaled latents (the
inversion's x_0), edits and fills run there and are decoded back. Inpainting a latent run keeps a
latent cell only where every pixel under it is known, and pastes the known pixels back over the
decoded picture (the autoencoder cannot reproduce them exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Callback = Callable[..., Any] | None


@dataclass
class Inversion:
    """What :meth:`RepresentationMixin.invert` returns: x_T (model space), the pictures decoded
    back from it and the round trip's PSNR per picture in dB (pixel space)."""

    x_T: Tensor
    decoded: Tensor
    psnr_db: Tensor
    sampler: str
    steps: int


class RepresentationMixin:
    """Inversion, interpolation, editing and inpainting of a :class:`LoadedRun` (module docstring)."""

    # ------------------------------------------------------------------ plumbing
    def _model_space(self, x: Tensor) -> Tensor:
        """Pictures → what the network models (latents for a latent run), on the run's device."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if self.config.latent is not None:  # type: ignore[attr-defined]
            x = self.encode(x)  # type: ignore[attr-defined]
        return x.to(self.device)  # type: ignore[attr-defined]

    def _pixel_space(self, z: Tensor) -> Tensor:
        """The network's space → pictures on the CPU (decoded for a latent run)."""
        z = z.detach().float().cpu()
        return self.decode(z) if self.config.latent is not None else z  # type: ignore[attr-defined]

    def _cond(self, n: int, classes: Any = None, prompts: Sequence[str] | str | None = None
              ) -> tuple[dict[str, Tensor], np.ndarray | None, list[str] | None]:
        """The condition keywords of ``n`` examples: one class or prompt for all, or one per
        example; (keywords, labels, prompts)."""
        labels = None
        if classes is not None:
            values = np.atleast_1d(np.asarray(classes))
            labels = np.resize(values, n) if values.size == 1 else values
        if isinstance(prompts, str):
            prompts = [prompts] * n
        if labels is not None and len(labels) != n:
            raise ValueError(f"give one class or {n} classes, got {len(labels)}")
        if prompts is not None and len(prompts) != n:
            raise ValueError(f"give one prompt or {n} prompts, got {len(prompts)}")
        cond = self.condition(labels, None if prompts is None else list(prompts))  # type: ignore[attr-defined]
        return cond, (None if labels is None else cond["labels"].cpu().numpy()), \
            (None if prompts is None else list(prompts))

    def _ode_sampler(self, sampler: str | None, steps: int | None) -> tuple[str, int]:
        from .editing import ENCODERS
        from .samplers import check_sampler

        sampler, steps = self.sampler_and_steps(  # type: ignore[attr-defined]
            check_sampler(sampler or "ddim", ENCODERS), steps)
        return sampler, steps

    # ------------------------------------------------------------------ inversion
    def invert(self, x: Tensor, *, sampler: str | None = None, steps: int | None = None,
               classes: Any = None, prompts: Sequence[str] | str | None = None,
               callback: Callback = None) -> Inversion:
        """Pictures x → x_T along the probability-flow ODE (``noisecraft.editing.encode``) on the
        grid of ``sampler`` (ddim, euler, heun, dpmpp-2m; default ddim) with ``steps`` (default:
        the run's), and back (``decode``), under the pictures' class or prompt if given."""
        from .editing import decode, encode
        from .quality import psnr

        sampler, steps = self._ode_sampler(sampler, steps)
        z0 = self._model_space(x)
        cond, _, _ = self._cond(len(z0), classes, prompts)
        den, sched = self.denoiser, self.schedule  # type: ignore[attr-defined]
        x_T = encode(den, z0, sched, steps, sampler, callback=callback, **cond)
        back = self._pixel_space(decode(den, x_T, sched, steps, sampler, callback=callback, **cond))
        return Inversion(x_T=x_T.cpu(), decoded=back,
                         psnr_db=psnr(back, torch.as_tensor(x, dtype=torch.float32).cpu()),
                         sampler=sampler, steps=steps)

    def reconstruct(self, x_T: Tensor, *, sampler: str | None = None, steps: int | None = None,
                    classes: Any = None, prompts: Sequence[str] | str | None = None) -> Tensor:
        """x_T → pictures by the deterministic ``sampler`` (the inverse of :meth:`invert`)."""
        from .editing import decode

        sampler, steps = self._ode_sampler(sampler, steps)
        x_T = torch.as_tensor(x_T).to(self.device)  # type: ignore[attr-defined]
        cond, _, _ = self._cond(len(x_T), classes, prompts)
        return self._pixel_space(decode(self.denoiser, x_T, self.schedule, steps, sampler,  # type: ignore[attr-defined]
                                        **cond))

    # ------------------------------------------------------------------ interpolation
    def interpolate_pictures(self, a: Tensor | int, b: Tensor | int, frames: int = 8, *,
                             sampler: str | None = None, steps: int | None = None,
                             classes: tuple[int, int] | None = None,
                             prompts: tuple[str, str] | None = None,
                             callback: Callback = None) -> Tensor:
        """``frames`` pictures along slerp(x_T(a), x_T(b)): ``a``, ``b`` are pictures (1, C, H, W)
        to invert, or integer seeds whose N(0, I) noise is x_T. ``classes``/``prompts``: the
        condition at each end; the path then also runs from one to the other."""
        from .editing import interpolate, interpolation_weights
        from .noise import ExampleNoise

        sampler, steps = self._ode_sampler(sampler, steps)
        interpolation_weights(frames)  # checks frames >= 2 before any work
        ends_cond = [self._cond(1, None if classes is None else classes[i],
                                None if prompts is None else prompts[i])[0] for i in (0, 1)]
        ends = []
        for end, cond in zip((a, b), ends_cond, strict=True):
            if isinstance(end, int) and not isinstance(end, bool):
                ends.append(ExampleNoise(end, 1).randn(self.shape).to(self.device))  # type: ignore[attr-defined]
            else:
                from .editing import encode

                ends.append(encode(self.denoiser, self._model_space(end), self.schedule, steps,  # type: ignore[attr-defined]
                                   sampler, callback=callback, **cond))
        out = interpolate(self.denoiser, ends[0], ends[1], self.schedule, frames, steps, sampler,  # type: ignore[attr-defined]
                          cond_a=ends_cond[0] or None, cond_b=ends_cond[1] or None)
        return self._pixel_space(out)

    # ------------------------------------------------------------------ SDEdit
    def edit(self, x: Tensor, strength: float = 0.5, n: int = 8, *, sampler: str | None = None,
             steps: int | None = None, seed: int = 0, classes: Any = None,
             prompts: Sequence[str] | str | None = None, guidance: float | None = None,
             callback: Callback = None, **guided: Any) -> tuple[Tensor, np.ndarray | None]:
        """``n`` SDEdits of one picture x (1, C, H, W): noised to t = strength·T and denoised by
        ``sampler`` (default: the run's), as a class or prompt (one, or one per edit) and with
        guidance (``guided``: guidance_rescale, guidance_interval, autoguide). Returns the
        pictures and the labels used."""
        from .editing import check_strength, sdedit

        strength = check_strength(strength)
        sampler, steps = self.sampler_and_steps(sampler, steps)  # type: ignore[attr-defined]
        z = self._model_space(x)
        z = z.expand(n, *z.shape[1:]).contiguous()
        cond, labels, _ = self._cond(n, classes, prompts)
        den = self.sampling_denoiser(guidance, conditional=bool(cond), **guided)  # type: ignore[attr-defined]
        out = sdedit(den, z, self.schedule, strength, steps, sampler, seed=seed,  # type: ignore[attr-defined]
                     callback=callback, **cond)
        return self._pixel_space(out), labels

    # ------------------------------------------------------------------ inpainting
    def latent_mask(self, known: Tensor) -> Tensor:
        """A pixel mask (1 = keep) on the latent grid: a latent cell is kept only if every pixel
        it covers is (the min over the cell, by adaptive pooling to the latent size)."""
        h, w = self.shape[1:]  # type: ignore[attr-defined]
        return -F.adaptive_max_pool2d(-known.float(), (h, w))

    def inpaint(self, x: Tensor, known: Tensor, n: int = 8, *, steps: int | None = None,
                resample: int = 1, jump: int = 1, seed: int = 0, classes: Any = None,
                prompts: Sequence[str] | str | None = None, guidance: float | None = None,
                callback: Callback = None, **guided: Any) -> Tensor:
        """``n`` fills of the region of picture x (1, C, H, W) where ``known`` (1, 1, H, W) is 0,
        by replacement on the ancestral sampler with RePaint resampling (``noisecraft.editing.
        inpaint``), as a class or prompt and with guidance as in :meth:`edit`."""
        from .editing import inpaint

        _, steps = self.sampler_and_steps("ddpm", steps)  # type: ignore[attr-defined]
        z = self._model_space(x)
        z = z.expand(n, *z.shape[1:]).contiguous()
        latent = self.config.latent is not None  # type: ignore[attr-defined]
        mask = (self.latent_mask(known) if latent else known.float()).to(z.device)
        cond, _, _ = self._cond(n, classes, prompts)
        den = self.sampling_denoiser(guidance, conditional=bool(cond), **guided)  # type: ignore[attr-defined]
        out = inpaint(den, z, mask, self.schedule, steps, resample=resample, jump=jump,  # type: ignore[attr-defined]
                      seed=seed, callback=callback, **cond)
        pictures = self._pixel_space(out)
        if latent:  # the known pixels themselves, over the decoded fill
            k = known.float().cpu()
            pictures = k * torch.as_tensor(x, dtype=torch.float32).cpu() + (1 - k) * pictures
        return pictures
