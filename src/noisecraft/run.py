"""Run directories for inference: read ``config.json`` and the last committed checkpoint and
rebuild a trained model (:func:`load_run`). Never imports the trainer.

A run directory holds

    config.json            RunConfig (see ``noisecraft.config``): rebuilds net, schedule, data transform
    model.safetensors      the trained weights
    ema.safetensors        their exponential moving average (what sampling uses by default)
    optimizer.safetensors  AdamW's state, flattened to tensors + JSON metadata
    state.json             step, RNG states, LR-schedule and data-order positions
    log.jsonl              one JSON object per logged step
    samples/               sample grids written during training
    .lock                  the writer's lock (``noisecraft.lock``): one trainer at a time

A checkpoint is saved as one transaction of ``noisecraft.io`` with ``state.json`` last (the
commit point). Each safetensors file also records its step and loading checks it against
``state.json``, so a mixed checkpoint can never load silently. Nothing is ever unpickled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import RunConfig
from .devices import check_device  # noqa: F401
from .errors import RunError
from .io import JOURNAL, PREVIOUS, checkpoint_file, read_json, read_safetensors

CONFIG = "config.json"
MODEL = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
LOG = "log.jsonl"
SAMPLES = "samples"


def load_weights(net: nn.Module, path: str | os.PathLike[str]) -> dict[str, str]:
    """Load a weights file into ``net`` (strictly); returns the file's metadata. Weights with a
    NaN or ±Inf are refused: they would sample black pictures and exit 0."""
    tensors, metadata = read_safetensors(path)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise RunError(f"{path}: {len(bad)} of {len(tensors)} tensors hold NaN or Inf values "
                       f"(first: {bad[0]!r}); the run diverged or the file is damaged")
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise RunError(f"{path}: does not fit the network in config.json "
                       f"({str(e).splitlines()[0]})") from None
    return metadata


# --------------------------------------------------------------------------- reading a run
def check_run_dir(run_dir: str | os.PathLike[str]) -> Path:
    path = Path(run_dir)
    if not path.exists():
        raise RunError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise RunError(f"{path} is not a run directory (not a folder)")
    if not (path / CONFIG).is_file():
        raise RunError(f"{path / CONFIG}: missing; {path} is not a noisecraft run directory")
    return path


def read_config(run_dir: str | os.PathLike[str]) -> RunConfig:
    path = check_run_dir(run_dir) / CONFIG
    return RunConfig.from_dict(read_json(path), source=str(path))


def read_state(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = checkpoint_file(run_dir, STATE)
    state = read_json(path)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise RunError(f"{path}: not a noisecraft training state (no integer 'step')")
    return state


def check_step(path: Path, metadata: Mapping[str, str], step: int) -> None:
    """A checkpoint file must belong to the step in state.json (see the module docstring)."""
    if metadata.get("step") != str(step):
        raise RunError(f"{path}: holds step {metadata.get('step')!r} but state.json says step "
                       f"{step}; the checkpoint was interrupted while being saved")


def has_checkpoint(run_dir: str | os.PathLike[str]) -> bool:
    return (Path(run_dir) / STATE).is_file()


# --------------------------------------------------------------------------- load_run
@dataclass
class LoadedRun:
    """A trained run, ready to sample: what :func:`load_run` returns."""

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
        values = [int(k) for k in np.asarray(classes).reshape(-1)]
        bad = [k for k in values if not 0 <= k < self.num_classes]
        if bad:
            raise ValueError(f"{what} {bad[0]} is out of range: {self.run_dir} has classes "
                             f"0..{self.num_classes - 1}")
        return np.asarray(values, dtype=np.int64)

    @torch.no_grad()
    def generate_tensor(self, n: int, sampler: str = "ddim", steps: int = 50, seed: int = 0,
                        batch_size: int = 256, callback: Callable[..., Any] | None = None,
                        labels: np.ndarray | None = None,
                        device: str | torch.device | None = None,
                        prompts: list[str] | None = None,
                        guidance: float | None = None,
                        options: dict[str, Any] | None = None, *,
                        guidance_rescale: float = 0.0,
                        guidance_interval: tuple[float, float] | None = None,
                        autoguide: LoadedRun | None = None,
                        progress: bool = False, offset: int = 0) -> torch.Tensor:
        """``n`` samples in model space, float32 (n, *shape) on the CPU.

        Example i is drawn with the noise stream of index ``offset`` + i under ``seed`` whatever
        the batch size (``offset``: where a shard of a larger draw starts, see
        :mod:`noisecraft.shard`). ``callback(i, t, x_t, x0_hat)`` is called for the first batch
        only.
        ``prompts``: one per example (text runs). ``guidance``: the classifier-free guidance scale
        w (``noisecraft.guidance.Guided``; the empty prompt / label −1 is the unconditional branch),
        with ``guidance_rescale``, ``guidance_interval`` (in t) and ``autoguide`` (another run:
        autoguidance), checked by :func:`noisecraft.guidance.guide_run`.
        ``options`` are the sampler's own (``{"variance": "learned"}`` for ddpm, ``{"eta": 1.0}``
        for ddim). ``progress`` draws a tqdm bar on stderr counting sampler steps over all
        batches, with an ETA.
        """
        from .samplers import sample

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (n,):
                raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
            if self.num_classes is None:
                raise ValueError(f"{self.run_dir} is not class-conditional; labels do not apply")
        encoder = None
        if prompts is not None:
            encoder = self.text_encoder()
            if isinstance(prompts, str) or len(prompts) != n:
                raise ValueError(f"prompts must be a list of {n} strings, one per sample")
        dev = torch.device(device) if device is not None else next(self.net.parameters()).device
        self.net.to(dev)
        denoiser = self.denoiser
        if guidance is not None:
            from .guidance import guide_run

            denoiser = guide_run(self, guidance, rescale=guidance_rescale,
                                 interval=guidance_interval, autoguide=autoguide)
            if autoguide is None and labels is None and prompts is None:
                raise ValueError(f"guidance needs a condition (labels or prompts); {self.run_dir} "
                                 "is sampled unconditionally")
            if autoguide is not None:
                autoguide.net.to(dev)
        bar = _step_bar(-(-n // batch_size), steps) if progress else None
        out = []
        for batch, start in enumerate(range(0, n, batch_size)):
            stop = min(n, start + batch_size)
            cond = {}
            if labels is not None:
                cond["labels"] = torch.as_tensor(labels[start:stop], dtype=torch.long, device=dev)
            if encoder is not None:
                from .conditioning import text_condition

                cond.update(text_condition(encoder, list(prompts[start:stop]), dev))
            x = sample(denoiser, (stop - start, *self.shape), self.schedule, sampler=sampler,
                       steps=steps, options=options,
                       seed=seed, seed_offset=offset + start, device=dev,
                       callback=_with_bar(callback if start == 0 else None, bar), **cond)
            out.append(x.float().cpu())
            if bar is not None:  # in step with the batches even if a sampler reports fewer steps
                bar.update((batch + 1) * steps - bar.n)
        if bar is not None:
            bar.close()
        return torch.cat(out)

    def generate(self, n: int, sampler: str = "ddim", steps: int = 50, seed: int = 0,
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
        parts = [(self.autoencoder.encode(x[i:i + batch_size].to(dev, torch.float32))[0].float().cpu()
                  - lat.shift_factor) * lat.scale_factor for i in range(0, len(x), batch_size)]
        return torch.cat(parts)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Scaled latents (N, C, H', W') → model-space pictures in [−1, 1] on the CPU:
        x = decode(z_s / scale + shift), with the run's recorded scale and shift."""
        lat = self._latent("decode")
        dev = self.autoencoder.device
        parts = [self.autoencoder.decode(z[i:i + batch_size].to(dev, torch.float32)
                                         / lat.scale_factor + lat.shift_factor).float().cpu()
                 for i in range(0, len(z), batch_size)]
        return torch.cat(parts)


def _step_bar(batches: int, steps: int) -> Any:
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=batches * steps, desc="sample", unit="step", file=sys.stderr,
                dynamic_ncols=True)


def _with_bar(callback: Callable[..., Any] | None, bar: Any) -> Callable[..., Any] | None:
    """``callback`` that also advances ``bar`` by one sampler step (either may be None)."""
    if bar is None:
        return callback

    def step(*args: Any) -> None:
        bar.update(1)
        if callback is not None:
            callback(*args)

    return step


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
                    learned_variance=bool(config.net.get("learned_variance", False))), schedule


# A reader racing a writer that saves every step retries this often before it gives up.
READ_ATTEMPTS = 40


def _commit_signature(path: Path) -> tuple[Any, ...]:
    """What a save changes when it starts (``.previous/``) and commits (``state.json``'s inode)."""
    try:
        st = os.stat(path / STATE)
        state: Any = (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        state = None
    return state, (path / PREVIOUS).exists(), (path / PREVIOUS / JOURNAL).exists()


def read_committed(run_dir: str | os.PathLike[str], read: Callable[[], Any]) -> Any:
    """``read()`` of one committed checkpoint while a writer may be saving the next.

    Readers take no lock (they may not be allowed to write the directory). ``read`` checks
    every file it takes against ``state.json``'s step, so a mix of two checkpoints raises; a
    RunError raised while a save started or committed, or while the writer lock is held, is
    such a race and the read is retried (bounded). Otherwise the error is real and raised.
    """
    from .lock import writer_active

    path = Path(run_dir)
    for attempt in range(READ_ATTEMPTS):
        before = _commit_signature(path)
        try:
            return read()
        except RunError:
            raced = _commit_signature(path) != before or writer_active(path)
            if not raced or attempt == READ_ATTEMPTS - 1:
                raise
        time.sleep(min(0.005 * (attempt + 1), 0.1))
    raise AssertionError("unreachable")


def load_run(run_dir: str | os.PathLike[str], use_ema: bool = True,
             device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild a trained model from its run directory (no pickle, no code execution).

    ``use_ema`` picks ``ema.safetensors`` (the default, what samples look best with) over
    ``model.safetensors``. A missing or foreign directory, or a corrupt file, raises
    :class:`RunError` naming the file. While a trainer saves into the run, the last committed
    checkpoint is read (:func:`read_committed`).
    """
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
