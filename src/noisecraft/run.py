"""Inference on a trained run: :func:`load_run` rebuilds the model from its run directory (the
format lives in :mod:`noisecraft.rundir`) and :class:`LoadedRun` does with it everything the
commands do — sample, generate, score, encode, edit — with the run's own defaults, conditions,
guidance and latent decoding, so Python and the command line give the same numbers. Never
imports the trainer.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checks import positive_int
from .config import RunConfig
from .devices import check_device  # noqa: F401
from .errors import RunError
from .io import checkpoint_file
from .run_editing import RepresentationMixin
from .rundir import (  # noqa: F401  (the run-directory format, re-exported for its importers)
    CONFIG,
    EMA_WEIGHTS,
    LOG,
    MODEL,
    OPTIMIZER,
    READ_ATTEMPTS,
    SAMPLES,
    STATE,
    check_run_dir,
    check_step,
    has_checkpoint,
    load_weights,
    read_committed,
    read_config,
    read_state,
)


# --------------------------------------------------------------------------- load_run
@dataclass
class LoadedRun(RepresentationMixin):
    """A trained run, ready to sample, score and edit: what :func:`load_run` returns."""

    run_dir: Path
    config: RunConfig
    net: nn.Module
    denoiser: Any  # noisecraft.Denoiser
    schedule: Any  # noisecraft.Schedule
    preprocess: Any  # noisecraft.data.Preprocess
    step: int
    autoencoder: Any = None  # noisecraft.autoencoders.LoadedAutoencoder, for latent runs

    @property
    def num_classes(self) -> int | None:
        return self.config.data.num_classes

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's shape in model space: (C, H, W) or (D,); a latent run's latent shape."""
        if self.config.latent is not None:
            return tuple(self.config.latent.shape)
        return tuple(self.preprocess.shape)

    @property
    def text_conditional(self) -> bool:
        return self.config.condition.kind == "text"

    def text_encoder(self) -> Any:
        """The run's frozen text encoder (loaded once, its sha256 checked against config.json)."""
        from .conditioning import load_text_encoder

        if not self.text_conditional:
            raise ValueError(f"{self.run_dir} is not text-conditional; prompts do not apply")
        c = self.config.condition
        return load_text_encoder(c.text_encoder, sha256=c.text_encoder_sha256)

    def default_prompts(self, n: int) -> list[str] | None:
        """A text run's prompts when none are given: its caption template over the classes
        0, 1, …, K−1, 0, … (templated runs), else the empty prompt (unconditional samples);
        None for runs without text."""
        if not self.text_conditional:
            return None
        c = self.config.condition
        if c.caption_template is None or not c.class_names:
            return [""] * n
        from .data.captions import render

        return render(c.caption_template, [i % len(c.class_names) for i in range(n)], c.class_names)

    def default_labels(self, n: int) -> np.ndarray | None:
        """Labels 0, 1, …, K−1, 0, 1, … for a class-conditional run; None otherwise."""
        if self.num_classes is None:
            return None
        return np.arange(n, dtype=np.int64) % self.num_classes

    def check_classes(self, classes: Any, what: str = "class") -> np.ndarray:
        """``classes`` as int64, each one of this run's classes 0..K−1; else one error naming
        the first bad value as ``what`` (the CLI passes "--class"). The run must be
        class-conditional (callers word that error for their own arguments)."""
        assert self.num_classes is not None, "check_classes needs a class-conditional run"
        raw = np.asarray(classes).reshape(-1)
        if raw.dtype.kind not in "iu" and not (raw.dtype.kind == "f" and np.all(raw == np.round(raw))):
            raise ValueError(f"{what} values must be integers, got {raw.tolist()!r}")
        values = [int(k) for k in raw]
        bad = [k for k in values if not 0 <= k < self.num_classes]
        if bad:
            raise ValueError(f"{what} {bad[0]} is out of range: {self.run_dir} has classes "
                             f"0..{self.num_classes - 1}")
        return np.asarray(values, dtype=np.int64)

    # ------------------------------------------------------------------ conditions
    def conditions(self, n: int, prompts: str | list[str] | None = None,
                   classes: Any = None) -> tuple[list[str] | None, np.ndarray | None]:
        """One (prompt, label) per example — the one rule of every command and of ``Pipeline``:
        ``n`` examples of each given prompt or class in turn (grouped, so a grid's rows follow
        the conditions), or without either the run's defaults for ``n`` examples (its caption
        template or its classes cycled 0, 1, …, K−1, 0, …; None for an unconditional run)."""
        positive_int("n", n)
        kind = self.config.condition.kind
        if prompts is not None and classes is not None:
            raise ValueError("give prompts or classes, not both")
        if isinstance(prompts, str):
            prompts = [prompts]
        if prompts is not None:
            if not self.text_conditional:
                raise ValueError(f"prompts need a text-conditional run; {self.run_dir} is "
                                 f"conditioned on {kind!r}")
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
            return [p for p in prompts for _ in range(n)], None
        if classes is not None:
            if self.num_classes is None:
                raise ValueError(f"{self.run_dir} is not class-conditional: classes do not apply")
            return None, np.repeat(self.check_classes(classes), n)
        return self.default_prompts(n), self.default_labels(n)

    def condition(self, labels: Any = None, prompts: list[str] | None = None,
                  device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
        """The network's condition keywords for one batch: ``labels`` (checked against the run's
        classes) and/or ``prompts`` through the run's frozen text encoder."""
        dev = torch.device(device) if device is not None else self.device
        cond: dict[str, torch.Tensor] = {}
        if labels is not None:
            if self.num_classes is None:
                raise ValueError(f"{self.run_dir} is not class-conditional; labels do not apply")
            cond["labels"] = torch.as_tensor(self.check_classes(labels), device=dev)
        if prompts is not None:
            from .conditioning import text_condition

            cond.update(text_condition(self.text_encoder(), list(prompts), dev))
        return cond

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def guided(self, scale: float, *, rescale: float = 0.0,
               interval: tuple[float, float] | None = None, autoguide: LoadedRun | None = None
               ) -> Any:
        """The run's Denoiser under classifier-free guidance (or autoguidance), checked.

        Classifier-free guidance needs a class-conditional run trained with label dropout, or a
        text run trained with caption dropout (else its null condition was never learned and
        w ≠ 1 mixes in an untrained branch); text runs use the empty prompt
        (``conditioning.null_condition``). ``autoguide``, a second LoadedRun (a smaller or
        earlier model of the same data), replaces the null branch and must share the data shape,
        schedule and classes; it also guides unconditional runs.
        """
        from .guidance import Guided

        name, condition = self.run_dir, self.config.condition
        if autoguide is None and condition.kind == "text":
            if scale != 1 and not condition.caption_dropout:
                raise ValueError(f"{name} was trained without caption dropout, so it has no "
                                 f"unconditional branch to guide with: guidance {scale:g} needs a "
                                 "run trained with --caption-dropout > 0 (or an --autoguide model)")
            from .conditioning import null_for

            return Guided(self.denoiser, scale, rescale=rescale, interval=interval,
                          null=null_for(self.text_encoder()))
        if autoguide is None:
            if self.num_classes is None:
                raise ValueError(f"{name} is not class-conditional: classifier-free guidance needs "
                                 "a run trained with --class-cond or --condition text (or an "
                                 "--autoguide model)")
            if scale != 1 and self.config.train.label_dropout == 0:
                raise ValueError(f"{name} was trained without label dropout, so it has no "
                                 f"unconditional branch to guide with: guidance {scale:g} needs a "
                                 "run trained with --label-dropout > 0 (or an --autoguide model)")
            return Guided(self.denoiser, scale, rescale=rescale, interval=interval)
        other = autoguide.run_dir
        for what, mine, theirs in (("data shape", self.shape, autoguide.shape),
                                   ("schedule", self.config.schedule, autoguide.config.schedule),
                                   ("classes", self.num_classes, autoguide.num_classes)):
            if mine != theirs:
                raise ValueError(f"autoguide run {other} has {what} {theirs}, but {name} has "
                                 f"{mine}; autoguidance needs a weaker model of the same task")
        return Guided(self.denoiser, scale, rescale=rescale, interval=interval,
                      unconditional=autoguide.denoiser)

    def sampling_denoiser(self, guidance: float | None = None, *, guidance_rescale: float = 0.0,
                          guidance_interval: tuple[float, float] | None = None,
                          autoguide: LoadedRun | None = None, conditional: bool = True) -> Any:
        """The Denoiser sampling uses: the run's own, or :meth:`guided` when ``guidance`` is
        given (``conditional``: whether the examples carry a condition to guide towards)."""
        if guidance is None:
            for what, value in (("guidance_rescale", guidance_rescale),
                                ("guidance_interval", guidance_interval),
                                ("autoguide", autoguide)):
                if value:
                    raise ValueError(f"{what} needs a guidance scale (--guidance W)")
            return self.denoiser
        guided = self.guided(guidance, rescale=guidance_rescale, interval=guidance_interval,
                             autoguide=autoguide)
        if autoguide is None and not conditional:
            raise ValueError(f"guidance needs a condition (labels or prompts); {self.run_dir} "
                             "is sampled unconditionally")
        if autoguide is not None:
            autoguide.net.to(self.device)
        return guided

    def sampler_and_steps(self, sampler: str | None = None, steps: int | None = None
                          ) -> tuple[str, int]:
        """``sampler`` and ``steps``, or the run's own sampling settings (config.json's
        ``sampling``), checked — the steps against the sampler's grid — before any work."""
        from . import grids
        from .samplers import SAMPLERS, check_sampler

        sampler = check_sampler(sampler or self.config.sampling.sampler)
        if steps is None:  # the run's own; never more than a respaced grid of T can take
            steps = min(self.config.sampling.steps, self.schedule.T)
        positive_int("steps", steps)
        grids.make(SAMPLERS[sampler].default_grid, self.schedule, steps)  # raises for steps > T
        return sampler, steps

    def grid(self, sampler: str, steps: int) -> torch.Tensor | None:
        """The time grid ``sampler`` walks with ``steps`` steps: None, the sampler's own default
        grid, for noisecraft runs; a diffusers folder returns its scheduler's own timesteps."""
        return None

    @torch.no_grad()
    def generate_tensor(self, n: int, sampler: str | None = None, steps: int | None = None,
                        seed: int = 0,
                        batch_size: int = 256, callback: Callable[..., Any] | None = None,
                        labels: np.ndarray | None = None,
                        device: str | torch.device | None = None,
                        prompts: list[str] | None = None,
                        guidance: float | None = None,
                        options: dict[str, Any] | None = None, *,
                        guidance_rescale: float = 0.0,
                        guidance_interval: tuple[float, float] | None = None,
                        autoguide: LoadedRun | None = None, negative_prompt: str | None = None,
                        progress: bool = False, offset: int = 0) -> torch.Tensor:
        """``n`` samples in model space, float32 (n, *shape) on the CPU.

        Example i is drawn with the noise stream of index ``offset`` + i under ``seed`` whatever
        the batch size (``offset``: where a shard of a larger draw starts, see
        :mod:`noisecraft.shard`). ``callback(i, t, x_t, x0_hat)`` is called for the first batch
        only.
        ``prompts``: one per example (text runs). ``guidance``: the classifier-free guidance scale
        w (``noisecraft.guidance.Guided``; the empty prompt / label −1 is the unconditional branch),
        with ``guidance_rescale``, ``guidance_interval`` (in t) and ``autoguide`` (another run:
        autoguidance), checked by :meth:`guided`. ``negative_prompt``: with ``guidance`` on a
        text run, this prompt's embedding replaces the empty prompt's as the unconditional
        branch of every example (as diffusers' ``negative_prompt``). ``sampler``/``steps`` None:
        the run's own (:meth:`sampler_and_steps`, config.json's ``sampling``). ``options`` are the
        sampler's own (``{"variance": "learned"}`` for ddpm, ``{"eta": 1.0}`` for ddim).
        ``progress`` draws a tqdm bar on stderr counting sampler steps over all batches, with an
        ETA.
        """
        from .samplers import check_options, sample

        positive_int("n", n)
        positive_int("batch_size", batch_size)
        sampler, steps = self.sampler_and_steps(sampler, steps)
        options = check_options(sampler, options)  # before any bar or batch
        if labels is not None:
            labels = self.check_classes(labels) if self.num_classes is not None else labels
            if np.asarray(labels).shape != (n,):
                raise ValueError(f"labels must have shape ({n},), got {np.asarray(labels).shape}")
            if self.num_classes is None:
                raise ValueError(f"{self.run_dir} is not class-conditional; labels do not apply")
        if prompts is not None:
            self.text_encoder()
            if isinstance(prompts, str) or len(prompts) != n:
                raise ValueError(f"prompts must be a list of {n} strings, one per sample")
        dev = torch.device(device) if device is not None else self.device
        self.net.to(dev)
        denoiser = self.sampling_denoiser(guidance, guidance_rescale=guidance_rescale,
                                          guidance_interval=guidance_interval, autoguide=autoguide,
                                          conditional=labels is not None or prompts is not None)
        if negative_prompt is not None and (guidance is None or autoguide is not None
                                            or prompts is None or not isinstance(negative_prompt, str)):
            raise ValueError(f"negative prompt {negative_prompt!r} needs prompts, a guidance scale "
                             "and no autoguide: it replaces the empty prompt as the unconditional "
                             "branch of classifier-free guidance")
        from .progress import Bar, counting

        grid = self.grid(sampler, steps)
        bar = Bar(-(-n // batch_size) * steps, "sample") if progress else None
        out = []
        for batch, start in enumerate(range(0, n, batch_size)):
            stop = min(n, start + batch_size)
            guided = denoiser
            if negative_prompt is None:
                cond = self.condition(None if labels is None else labels[start:stop],
                                      None if prompts is None else prompts[start:stop], dev)
            else:  # prompts and negatives encoded (padded) together, then split
                both = self.condition(prompts=[*prompts[start:stop]]
                                      + [negative_prompt] * (stop - start), device=dev)
                cond = {k: v[:stop - start] for k, v in both.items()}
                guided = denoiser.with_null({k: v[stop - start:] for k, v in both.items()})
            x = sample(guided, (stop - start, *self.shape), self.schedule, sampler=sampler,
                       steps=steps if grid is None else None, grid=grid, options=options,
                       seed=seed, seed_offset=offset + start, device=dev,
                       callback=counting(callback if start == 0 else None, bar), **cond)
            out.append(x.float().cpu())
            if bar is not None:  # in step with the batches even if a sampler reports fewer steps
                bar.update((batch + 1) * steps - bar.n)
        if bar is not None:
            bar.close()
        return torch.cat(out)

    def generate(self, n: int, sampler: str | None = None, steps: int | None = None, seed: int = 0,
                 batch_size: int = 256, callback: Callable[..., Any] | None = None,
                 labels: np.ndarray | None = None, prompts: list[str] | None = None,
                 guidance: float | None = None,
                 options: dict[str, Any] | None = None, progress: bool = False,
                 **guided: Any) -> np.ndarray:
        """``n`` samples as the data's own kind: uint8 (N, H, W, C) pictures for image runs,
        float32 (N, 1, n_mels, frames) log-mel spectrograms in [−1, 1] for audio runs (waveforms:
        :meth:`to_audio`), float32 (N, D) vectors in data units for vector runs. See
        :meth:`generate_tensor` (``guided``: its guidance_rescale, guidance_interval and
        autoguide keywords)."""
        x = self.generate_tensor(n, sampler, steps, seed, batch_size, callback, labels,
                                 prompts=prompts, guidance=guidance, options=options,
                                 progress=progress, **guided)
        return self.to_output(x)

    def to_output(self, x: torch.Tensor) -> np.ndarray:
        """Model-space samples → uint8 pictures (images), float32 spectrograms (audio, the
        model's own [−1, 1] log-mel units, which :meth:`to_audio` inverts) or float32 vectors; a
        latent run's latents are decoded first (:meth:`decode`)."""
        from .data import denormalize, to_uint8

        if self.config.latent is not None:
            x = self.decode(x)
        if self.preprocess.kind == "image":
            return to_uint8(x, self.preprocess)
        if self.preprocess.kind == "audio":
            return torch.as_tensor(x).detach().cpu().float().clamp(-1, 1).numpy()
        return denormalize(x, self.preprocess).numpy().astype(np.float32)

    # ------------------------------------------------------------------ sample (the command)
    def sample(self, n: int = 64, *, prompts: str | list[str] | None = None, classes: Any = None,
               sampler: str | None = None, steps: int | None = None, seed: int = 0,
               batch_size: int = 256, guidance: float | None = None,
               options: dict[str, Any] | None = None, progress: bool = False,
               ranks: Any = None, **guided: Any) -> Samples | None:
        """What ``noisecraft sample`` draws: ``n`` samples per prompt or class given (or ``n``
        with the run's default conditions, :meth:`conditions`), by ``sampler`` with ``steps``
        (default: the run's), as the data's own kind (:meth:`generate`). ``ranks`` (a
        :class:`noisecraft.shard.Ranks`): shard the batches over torchrun's processes; rank 0
        gets every sample, the others None."""
        from . import shard

        prompt_list, labels = self.conditions(n, prompts, classes)
        sampler, steps = self.sampler_and_steps(sampler, steps)
        total = len(prompt_list) if prompt_list is not None else (
            len(labels) if labels is not None else n)
        check_memory(total, self.shape)
        out = shard.generate(self, total, sampler=sampler, steps=steps, seed=seed,
                             batch_size=batch_size, labels=labels, prompts=prompt_list,
                             guidance=guidance, options=options, progress=progress,
                             ranks=ranks or shard.Ranks(), **guided)
        if out is None:
            return None
        return Samples(output=out, labels=labels, prompts=prompt_list, sampler=sampler, steps=steps,
                       seed=seed)

    # ------------------------------------------------------------------ likelihood (nll)
    def nll(self, x: torch.Tensor, labels: torch.Tensor | None = None, **options: Any
            ) -> torch.Tensor:
        """Bits/dim per example of data ``x`` in model space (pictures in [−1, 1]; a latent run
        encodes them), by the unclipped network, the units by the data (:mod:`noisecraft.scoring`;
        ``options``: its :class:`~noisecraft.scoring.NllOptions`)."""
        from .scoring import NllOptions, bits_per_dim

        return bits_per_dim(self, x, labels, NllOptions(**options))

    def score(self, data: str | None = None, *, image: str | None = None, split: str = "test",
              n: int | None = None, progress: bool = False, ranks: Any = None,
              **options: Any) -> dict[str, Any] | None:
        """What ``noisecraft nll`` reports (:func:`noisecraft.scoring.score`)."""
        from .scoring import NllOptions, score

        return score(self, data, image=image, split=split, n=n, options=NllOptions(**options),
                     progress=progress, ranks=ranks)

    def evaluate(self, data: str, **options: Any) -> dict[str, Any] | None:
        """What ``noisecraft evaluate`` records (:func:`noisecraft.evaluation.evaluate_run`)."""
        from .evaluation import evaluate_run

        return evaluate_run(self, data, **options)

    # ------------------------------------------------------------------ pictures in
    def read_picture(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """One picture file through the run's preprocessing: (1, C, H, W) in [−1, 1]."""
        from .data.pictures import read_picture

        return read_picture(path, self.preprocess)[0]

    def read_mask(self, path: str | os.PathLike[str], picture: str | os.PathLike[str]
                  ) -> torch.Tensor:
        """The inpainting mask file (white = fill) of ``picture``: (1, 1, H, W), 1 = keep."""
        from .data.pictures import read_mask, read_picture

        return read_mask(path, read_picture(picture, self.preprocess)[1], self.preprocess)

    @property
    def audio_config(self) -> Any:
        """The run's :class:`noisecraft.data.audio.AudioConfig` (sample rate, mels, hop, frames,
        dB range), rebuilt from config.json; ValueError for runs that are not audio."""
        from .data.audio import AudioConfig

        if self.preprocess.kind != "audio":
            raise ValueError(f"{self.run_dir} models {self.preprocess.kind} data, not audio")
        return AudioConfig.from_dict(self.preprocess.audio)

    def to_audio(self, spectrograms: np.ndarray | torch.Tensor, n_iter: int | None = None
                 ) -> np.ndarray:
        """Spectrograms from :meth:`generate` → float32 waveforms (N, (frames − 1) · hop) at
        ``audio_config.sample_rate``: inverse mel (non-negative least squares) + fast
        Griffin-Lim (``noisecraft.data.audio.spectrogram_to_audio``; ``n_iter`` None: its
        default), initial phases seed 0."""
        from .data.audio import GRIFFIN_LIM_ITERS, spectrogram_to_audio

        x = torch.as_tensor(np.asarray(spectrograms), dtype=torch.float32)
        return spectrogram_to_audio(x, self.audio_config, n_iter=n_iter or GRIFFIN_LIM_ITERS).numpy()

    def _latent(self, action: str) -> Any:
        """The run's ``latent`` record, after checking that there is one and an autoencoder."""
        if self.config.latent is None:
            raise ValueError(f"{self.run_dir} is not a latent run; there is nothing to {action}")
        if self.autoencoder is None:
            raise RunError(f"{self.run_dir}: a latent run loaded without its autoencoder")
        return self.config.latent

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Model-space pictures → the scaled posterior means z_s = (mean − shift) · scale a latent
        run's network models (the inverse direction of :meth:`decode`), on the CPU."""
        lat = self._latent("encode")
        dev = self.autoencoder.device
        parts = [lat.to_model(self.autoencoder.encode(x[i:i + batch_size].to(dev, torch.float32))[0]
                              .float().cpu()) for i in range(0, len(x), batch_size)]
        return torch.cat(parts)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Scaled latents (N, C, H', W') → model-space pictures in [−1, 1] on the CPU:
        x = decode(z_s / scale + shift), with the run's recorded scale and shift."""
        lat = self._latent("decode")
        dev = self.autoencoder.device
        parts = [self.autoencoder.decode(lat.from_model(z[i:i + batch_size].to(dev, torch.float32)))
                 .float().cpu()
                 for i in range(0, len(z), batch_size)]
        return torch.cat(parts)


@dataclass
class Samples:
    """What :meth:`LoadedRun.sample` returns: the samples as the data's own kind, the label and
    prompt of each (None where the run has none) and how they were drawn."""

    output: np.ndarray
    labels: np.ndarray | None
    prompts: list[str] | None
    sampler: str
    steps: int
    seed: int


def check_memory(n: int, shape: tuple[int, ...]) -> None:
    """All n samples are held at once (float32, then the uint8/float output, the .npz and the
    grid): refuse before sampling when that cannot fit in this machine's memory."""
    import math

    from .data.limits import human, physical_memory

    need = n * math.prod(shape) * (4 + 4 + 4)  # model space, output array, .npz buffer
    memory = physical_memory()
    if memory is not None and need > memory // 2:
        raise ValueError(f"{n} samples of shape {tuple(shape)} need about {human(need)} of "
                         f"memory, over half of this machine's {human(memory)}; draw them in "
                         "several runs with different seeds")


def load_latent_autoencoder(config: RunConfig, source: Path, device: str | torch.device) -> Any:
    """The autoencoder a latent run names, refused when it is no longer the one trained with."""
    from .autoencoders import load_autoencoder

    lat = config.latent
    assert lat is not None
    ae = load_autoencoder(lat.autoencoder, device=device)
    if ae.sha256 != lat.sha256:
        raise RunError(f"{lat.autoencoder}: the autoencoder changed since {source} was trained "
                       f"(sha256 {ae.sha256[:12]}…, the run recorded {lat.sha256[:12]}…)")
    return ae


# Sampling, evaluation and likelihoods run the network without gradients, and there oneDNN's
# and cuDNN's convolutions are faster in NHWC: the ddpm-cifar10 U-Net's no-grad forward at batch
# 8 on one CPU thread takes 1.61 CPU-s in channels_last against 1.86 contiguous (medians of 5;
# benchmarks/throughput.py measures it in context). Training on the CPU stays contiguous (its
# forward + backward is ~3% slower in channels_last; train/accel.memory_format). ``Module.to``
# applies the format to 4-D weights only, so MLPs are untouched, and the U-Net returns its
# output in its input's layout, so callers never see the difference.
INFERENCE_MEMORY_FORMAT = torch.channels_last


def build_denoiser(net: nn.Module, config: RunConfig) -> tuple[Any, Any]:
    """(Denoiser, Schedule) as config.json describes them."""
    from .denoiser import Denoiser
    from .schedule import Schedule

    schedule = Schedule.from_dict(config.schedule)
    clip = tuple(config.sampling.clip) if config.sampling.clip is not None else None
    return Denoiser(net, schedule, config.prediction, clip=clip,
                    learned_variance=bool(config.net.get("learned_variance", False)),
                    sigma_data=config.sigma_data), schedule


def load_run(run_dir: str | os.PathLike[str], use_ema: bool = True,
             device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild a trained model from its run directory (no pickle, no code execution).

    ``use_ema`` picks ``ema.safetensors`` (the default, what samples look best with) over
    ``model.safetensors``. A missing or foreign directory, or a corrupt file, raises
    :class:`RunError` naming the file. While a trainer saves into the run, the last committed
    checkpoint is read (:func:`read_committed`). A diffusers pipeline folder (``model_index.json``)
    is read by :func:`noisecraft.diffusers_io.load_pipeline_folder`.
    """
    if (Path(run_dir) / "model_index.json").is_file():
        from .diffusers_io import load_pipeline_folder

        if not use_ema:  # nothing a user asked for is silently dropped
            raise ValueError(f"{run_dir} is a diffusers folder with one set of weights; raw "
                             "(--no-ema) weights do not apply")
        return load_pipeline_folder(run_dir, device=device)
    return read_committed(run_dir, lambda: _load_run(run_dir, use_ema, device))


def _load_run(run_dir: str | os.PathLike[str], use_ema: bool,
              device: str | torch.device) -> LoadedRun:
    from . import nets
    from .data import Preprocess
    from .threads import apply_default_threads

    apply_default_threads()  # the CLI's CPU-thread default, once (see noisecraft.threads)
    device = check_device(device)
    path = check_run_dir(run_dir)
    config = read_config(path)
    state = read_state(path)
    try:
        net = nets.from_config(config.net)
    except (ValueError, TypeError) as e:
        raise RunError(f"{path / CONFIG}: bad 'net' entry ({e})") from None
    if config.data.preprocess is None:
        raise RunError(f"{path / CONFIG}: no data.preprocess record")
    try:
        preprocess = Preprocess.from_dict(config.data.preprocess)
        denoiser, schedule = build_denoiser(net, config)
    except (ValueError, TypeError) as e:
        raise RunError(f"{path / CONFIG}: {e}") from None
    weights = checkpoint_file(path, EMA_WEIGHTS if use_ema else MODEL)
    check_step(weights, load_weights(net, weights), state["step"])
    net.to(device, memory_format=INFERENCE_MEMORY_FORMAT).eval().requires_grad_(False)
    autoencoder = (load_latent_autoencoder(config, path / CONFIG, device)
                   if config.latent is not None else None)
    return LoadedRun(run_dir=path, config=config, net=net, denoiser=denoiser, schedule=schedule,
                     preprocess=preprocess, step=state["step"], autoencoder=autoencoder)
