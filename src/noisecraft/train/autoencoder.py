"""Training the first stage of latent diffusion: a KL autoencoder (``nets.autoencoder``).

Per example, with x̂ = decode(z), z = mean + exp(½ logvar) ⊙ ε, ε ~ N(0, I):

    loss = [Σ_pixels rec(x, x̂) + w · Σ_latent ½ (mean² + exp(logvar) − 1 − logvar)] / #pixel values

rec = |x − x̂| (l1, LDM's choice) or (x − x̂)², w = ``kl_weight``: a small KL keeps the latent
space smooth enough to diffuse in without costing reconstruction. No perceptual (LPIPS) term:
it needs pretrained VGG weights we cannot fetch offline.

The optional patch-adversarial term (``adversarial_weight`` = a > 0) is LDM's
``LPIPSWithDiscriminator`` without LPIPS. After ``adversarial_start`` optimizer steps a PatchGAN
D (``nets.discriminator``, its own AdamW at the autoencoder's lr) is trained on the hinge loss

    L_D = ½ [mean relu(1 − D(x)) + mean relu(1 + D(x̂))]      (x̂ detached)

and the autoencoder's batch loss L (the mean of the above) becomes L + a · λ · L_adv with
L_adv = −mean D(x̂) and taming's adaptive weight

    λ = ‖∇_w L‖ / (‖∇_w L_adv‖ + 10⁻⁴), clamped to [0, 10⁴] and detached,

w the weight of the decoder's last convolution: the adversarial gradient reaching the output
layer is a times as large as the reconstruction's, whatever the scale of either loss. Both
updates use the same x̂ (one autoencoder forward per step). log.jsonl's ``loss`` stays L; its
``g_adv``, ``d_loss`` and ``adaptive_weight`` are the means of L_adv, L_D and λ over the logged
steps (null before the start). With a = 0 no D is built and the run is the plain one above.

The network, the discriminator and the batches are channels_last (MEMORY_FORMAT): the
convolutions of this small net run faster so on a CPU (``benchmarks/autoencoder_adversarial.py``);
the values agree with contiguous ones to float rounding.

The run directory has the layout of a diffusion run: ``config.json`` (AutoencoderRunConfig),
``model.safetensors`` (metadata: step and the measured ``scale_factor``), ``optimizer.safetensors``,
``state.json`` (commit point), ``log.jsonl`` and ``samples/recon_<step>.png`` (originals above their
reconstructions); with the adversarial term also ``discriminator.safetensors`` and
``discriminator_optimizer.safetensors``. Checkpoints are one ``atomic_write_many`` transaction;
N steps and N/2 + resume give identical weights (the RNG streams and data order are stored).
One process (no DDP).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset

from ..autoencoders import (
    CONFIG,
    NOISECRAFT_WEIGHTS,
    AutoencoderRunConfig,
    AutoencoderTrainConfig,
)
from ..config import DataConfig
from ..errors import RunError
from ..io import atomic_write, atomic_write_many, checkpoint_file, recover, tensors_to_bytes
from ..lock import RunLock
from ..nets.autoencoder import AUTOENCODER_PRESETS, KLAutoencoder, autoencoder_from_config
from ..nets.discriminator import PatchDiscriminator, discriminator_for, hinge_d_loss
from ..quality import psnr
from ..run import LOG, OPTIMIZER, SAMPLES, STATE, check_step, load_weights, read_state
from . import checkpoint as ckpt
from .batches import BatchStream
from .trainer import rank_seed

STATE_VERSION = 1
REFERENCE_SIZE = 512  # examples the scale factor and the reconstruction grid are measured on
DISCRIMINATOR = "discriminator.safetensors"
DISCRIMINATOR_OPTIMIZER = "discriminator_optimizer.safetensors"
MEMORY_FORMAT = torch.channels_last  # of the net, the discriminator and the batches (docstring)
# LDM's Adam betas for its GAN stage: a short gradient memory suits a moving target
DISCRIMINATOR_BETAS = (0.5, 0.9)
ADAPTIVE_EPS, ADAPTIVE_MAX = 1e-4, 1e4  # taming's calculate_adaptive_weight


def new_autoencoder_config(dataset: Dataset | IterableDataset, spec: str, *, preset: str | None = None,
                           latent_channels: int = 4, factor: int = 4,
                           train: AutoencoderTrainConfig | None = None,
                           net_overrides: dict[str, Any] | None = None) -> AutoencoderRunConfig:
    """An autoencoder sized to ``dataset``: preset ``ae64`` for images ≥ 64 px, else ``ae32``
    (``net_overrides``: any other KLAutoencoder argument, e.g. base_channels)."""
    info, pre = dataset.info, dataset.preprocess  # type: ignore[union-attr]
    if info["kind"] != "image":
        raise ValueError(f"{spec!r} is {info['kind']} data; an autoencoder needs images")
    if pre.height != pre.width:
        raise ValueError(f"{spec!r} has {pre.height}×{pre.width} images; the autoencoder needs square "
                         "ones (use --image-size)")
    preset = preset or ("ae64" if pre.height >= 64 else "ae32")
    if preset not in AUTOENCODER_PRESETS:
        raise ValueError(f"unknown autoencoder preset {preset!r}; "
                         f"valid: {', '.join(AUTOENCODER_PRESETS)}")
    net = autoencoder_from_config({**AUTOENCODER_PRESETS[preset], "in_channels": pre.channels,
                                   "image_size": pre.height, "latent_channels": latent_channels,
                                   "factor": factor, **(net_overrides or {})})
    data = DataConfig(spec=spec, kind="image", shape=list(pre.shape),
                      num_classes=info.get("num_classes"), image_size=pre.image_size,
                      channels=pre.channels, preprocess=pre.to_dict())
    return AutoencoderRunConfig(net=net.config, data=data, train=train or AutoencoderTrainConfig(),
                                preset=preset)


def ae_losses(net: KLAutoencoder, x: Tensor, kl_weight: float, reconstruction: str,
              generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-example (loss, reconstruction error per pixel value, KL per latent value); see the
    module docstring for the equation."""
    x_hat, mean, logvar = net(x, generator=generator)
    return ae_loss_terms(x, x_hat, mean, logvar, kl_weight, reconstruction)


def ae_loss_terms(x: Tensor, x_hat: Tensor, mean: Tensor, logvar: Tensor, kl_weight: float,
                  reconstruction: str) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`ae_losses` from the forward pass's (x̂, mean, logvar)."""
    diff = x_hat - x
    rec = diff.abs() if reconstruction == "l1" else diff.square()
    rec = rec.flatten(1).sum(1)
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)
    per_value = x[0].numel()
    return (rec + kl_weight * kl) / per_value, rec / per_value, kl / mean[0].numel()


def adaptive_weight(loss: Tensor, adv_loss: Tensor, last_layer: Tensor) -> Tensor:
    """λ = ‖∇_w loss‖ / (‖∇_w adv_loss‖ + 10⁻⁴) clamped to [0, 10⁴], detached (taming's
    ``calculate_adaptive_weight``); ``last_layer`` is w. Keeps both graphs for the backward pass."""
    g_rec = torch.autograd.grad(loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + ADAPTIVE_EPS)).clamp(0.0, ADAPTIVE_MAX).detach()


def generator_objective(loss: Tensor, x_hat: Tensor, disc: nn.Module, last_layer: Tensor,
                        weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """(loss + weight · λ · L_adv, L_adv, λ) with L_adv = −mean D(x̂) (module docstring). D's
    parameters are left out of the graph: only the discriminator's own step moves them."""
    disc.requires_grad_(False)
    try:
        adv_loss = -disc(x_hat).mean()
    finally:
        disc.requires_grad_(True)
    lam = adaptive_weight(loss, adv_loss, last_layer)
    return loss + weight * lam * adv_loss, adv_loss, lam


@dataclass
class Adversary:
    """The discriminator and its AdamW (``adversarial_weight`` > 0)."""

    net: PatchDiscriminator
    opt: torch.optim.Optimizer


def discriminator_step(adv: Adversary, x: Tensor, x_hat: Tensor, lr: float, clip: float) -> Tensor:
    """One AdamW step of D on the hinge loss of real ``x`` against detached ``x_hat``; returns the
    loss before the step. One forward on both halves: GroupNorm is per example, so it equals two."""
    for group in adv.opt.param_groups:
        group["lr"] = lr
    real, fake = adv.net(torch.cat([x, x_hat.detach()])).chunk(2)
    d_loss = hinge_d_loss(real, fake)
    d_loss.backward()
    torch.nn.utils.clip_grad_norm_(adv.net.parameters(), clip)
    adv.opt.step()
    adv.opt.zero_grad(set_to_none=True)
    return d_loss.detach()


def build_adversary(config: AutoencoderRunConfig, device: torch.device) -> Adversary | None:
    """The discriminator for ``config``'s autoencoder, or None when the term is off."""
    tc = config.train
    if tc.adversarial_weight <= 0:
        return None
    disc = PatchDiscriminator(**discriminator_for(config.net)).to(device, memory_format=MEMORY_FORMAT)
    opt = torch.optim.AdamW(disc.parameters(), lr=tc.lr, betas=DISCRIMINATOR_BETAS, weight_decay=0.0)
    return Adversary(disc, opt)


@torch.no_grad()
def measure_scale(net: KLAutoencoder, x: Tensor, batch_size: int = 256) -> float:
    """1 / std of the posterior means of ``x``: the factor that makes latents unit-variance."""
    means = torch.cat([net.encode(x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)])
    std = float(means.double().std())
    if not std > 0 or not math.isfinite(std):
        raise ValueError(f"the latents have standard deviation {std}; cannot scale them")
    return 1.0 / std


@torch.no_grad()
def reconstruction_psnr(net: KLAutoencoder, x: Tensor, batch_size: int = 256) -> float:
    """Mean PSNR of the posterior-mean reconstructions of ``x``, in batches (bounded memory)."""
    # clamped: the decoder's overshoot past [−1, 1] is cut off when a picture is saved
    values = [psnr(net.decode(net.encode(x[i:i + batch_size])[0]), x[i:i + batch_size],
                   data_range=2.0, clamp=(-1.0, 1.0))
              for i in range(0, len(x), batch_size)]
    return float(torch.cat(values).mean())


@dataclass
class AutoencoderResult:
    run_dir: Path
    step: int
    loss: float | None
    psnr: float | None
    scale_factor: float
    wall_time_s: float
    reference_images: int = 0   # the training examples psnr and scale_factor are measured on


class AutoencoderTrainer:
    """Trains ``config``'s autoencoder on ``dataset`` into ``run_dir`` (module docstring)."""

    def __init__(self, config: AutoencoderRunConfig, run_dir: str | Path,
                 dataset: Dataset | IterableDataset, *, resume: bool = False,
                 device: str | torch.device | None = None, progress: bool = True):
        self.config, self.run_dir, self.dataset = config, Path(run_dir), dataset
        self.resume, self.progress = resume, progress
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        has = (self.run_dir / STATE).is_file()
        if resume and not has:
            raise RunError(f"{self.run_dir / STATE}: missing; nothing to resume in {self.run_dir}")
        if not resume and has:
            raise ValueError(f"{self.run_dir} already holds a trained run; pass --resume to continue "
                             "it or choose another --out")
        self.net: KLAutoencoder | None = None
        self.adversary: Adversary | None = None
        self._saved_scale: dict[int, float] = {}  # {step: scale factor} of the last save

    def fit(self, stop_at: int | None = None) -> AutoencoderResult:
        # One writer per run directory (noisecraft.lock), held for the whole fit.
        with RunLock(self.run_dir):
            if self.resume != (self.run_dir / STATE).is_file():  # another writer got here first
                raise RunError(f"{self.run_dir}: its checkpoint changed since this trainer was "
                               "made (another writer?); start again")
            return self._fit(stop_at)

    def _fit(self, stop_at: int | None) -> AutoencoderResult:
        cfg, tc, dev = self.config, self.config.train, self.device
        self.run_dir.mkdir(parents=True, exist_ok=True)
        recover(self.run_dir)
        (self.run_dir / SAMPLES).mkdir(exist_ok=True)
        atomic_write(self.run_dir / CONFIG, cfg.to_json())
        torch.manual_seed(tc.seed)
        net = autoencoder_from_config(cfg.net).to(dev, memory_format=MEMORY_FORMAT)
        self.net = net
        opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=0.0)
        adv = self.adversary = build_adversary(cfg, dev)  # before the reseed: a = 0 changes nothing
        gen = torch.Generator(device=dev).manual_seed(rank_seed(tc.seed, 0, "autoencoder"))
        torch.manual_seed(rank_seed(tc.seed, 0, "global"))
        stream = BatchStream(self.dataset, tc.batch_size, seed=tc.seed, num_workers=tc.num_workers,
                             pin_memory=dev.type == "cuda")
        reference = self._reference()
        step, wall = (self._restore(net, opt, adv, gen, stream) if self.resume else (0, 0.0))
        end = tc.steps if stop_at is None else min(stop_at, tc.steps)
        return self._loop(net, opt, adv, gen, stream, reference, step, end, wall)

    # ------------------------------------------------------------------ the loop
    def _loop(self, net: KLAutoencoder, opt: torch.optim.Optimizer, adv: Adversary | None,
              gen: torch.Generator, stream: BatchStream, reference: Tensor, step: int, end: int,
              wall: float) -> AutoencoderResult:
        from ..progress import Bar

        tc, dev = self.config.train, self.device
        bar = Bar(tc.steps, "train-autoencoder", initial=step, enabled=self.progress)
        sums, adv_sums = np.zeros(3), np.zeros(3)  # (loss, rec, kl), (g_adv, d_loss, λ)
        count, adv_count, last = 0, 0, None
        t0 = time.perf_counter()
        clip = tc.grad_clip if tc.grad_clip > 0 else math.inf
        net.train()
        try:
            while step < end:
                lr = tc.lr * min(1.0, (step + 1) / tc.warmup) if tc.warmup else tc.lr
                for group in opt.param_groups:
                    group["lr"] = lr
                x = next(stream)["x"].to(dev, non_blocking=True).contiguous(
                    memory_format=MEMORY_FORMAT)
                x_hat, mean, logvar = net(x, generator=gen)
                loss, rec, kl = ae_loss_terms(x, x_hat, mean, logvar, tc.kl_weight,
                                              tc.reconstruction)
                objective = loss.mean()
                on = adv is not None and step >= tc.adversarial_start
                if on:
                    objective, g_adv, lam = generator_objective(
                        objective, x_hat, adv.net, net.decoder[-1].weight, tc.adversarial_weight)
                objective.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if on:
                    d_loss = discriminator_step(adv, x, x_hat, lr, clip)
                    adv_sums += [float(g_adv.detach()), float(d_loss), float(lam)]
                    adv_count += 1
                sums += [float(v.detach().mean()) for v in (loss, rec, kl)]
                count += 1
                step += 1
                bar.update(1)
                if step % tc.log_every == 0 or step == end:
                    loss_m, rec_m, kl_m = sums / count
                    if not math.isfinite(loss_m):
                        raise ValueError(f"the autoencoder loss became {loss_m} by step {step}; "
                                         "lower --lr")
                    last = {"step": step, "loss": loss_m, "reconstruction": rec_m, "kl": kl_m,
                            "lr": lr, "elapsed_s": wall + time.perf_counter() - t0}
                    if adv is not None:  # null until the term is on
                        means = adv_sums / adv_count if adv_count else [None] * 3
                        last.update(zip(("g_adv", "d_loss", "adaptive_weight"), means, strict=True))
                    with open(self.run_dir / LOG, "a", encoding="utf-8") as f:
                        f.write(json.dumps(last) + "\n")
                    bar.set_postfix(loss=f"{loss_m:.4f}")
                    sums[:], adv_sums[:] = 0, 0
                    count, adv_count = 0, 0
                if tc.sample_every and (step % tc.sample_every == 0 or step == end):
                    self._recon_grid(net, reference, step)
                if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == end:
                    self._save(step, net, opt, adv, gen, stream, reference,
                               wall + time.perf_counter() - t0)
        finally:
            bar.close()
        net.eval()
        mean_psnr = reconstruction_psnr(net, reference)
        # The last step's save measured the scale on these weights; a fit with nothing left to
        # do (resumed at --steps) saved nothing and measures it here.
        scale = self._saved_scale.get(step) or measure_scale(net, reference)
        return AutoencoderResult(self.run_dir, step, last["loss"] if last else None, mean_psnr, scale,
                                 wall + time.perf_counter() - t0, len(reference))

    def _reference(self) -> Tensor:
        """The first REFERENCE_SIZE training examples (unflipped order of the dataset itself)."""
        xs = []
        if isinstance(self.dataset, IterableDataset):
            for item in self.dataset:
                xs.append(item["x"])
                if len(xs) == REFERENCE_SIZE:
                    break
        else:
            n = min(REFERENCE_SIZE, len(self.dataset))  # type: ignore[arg-type]
            stride = max(1, len(self.dataset) // n)  # type: ignore[arg-type]
            xs = [self.dataset[i * stride]["x"] for i in range(n)]
        return torch.stack(xs).to(self.device).contiguous(memory_format=MEMORY_FORMAT)

    @torch.no_grad()
    def _recon_grid(self, net: KLAutoencoder, reference: Tensor, step: int) -> None:
        from .. import viz
        from ..data import Preprocess, to_uint8

        was = net.training
        net.eval()
        x = reference[:16]
        x_hat = net.decode(net.encode(x)[0])
        net.train(was)
        pre = Preprocess.from_dict(self.config.data.preprocess or {})
        pictures = to_uint8(torch.cat([x, x_hat]).cpu(), pre)
        viz.save(viz.image_grid(pictures, nrow=len(x)), self.run_dir / SAMPLES / f"recon_{step:07d}.png")

    # ------------------------------------------------------------------ checkpoints
    def _save(self, step: int, net: KLAutoencoder, opt: torch.optim.Optimizer,
              adv: Adversary | None, gen: torch.Generator, stream: BatchStream, reference: Tensor,
              wall: float) -> None:
        was = net.training
        net.eval()
        scale = measure_scale(net, reference)
        self._saved_scale = {step: scale}
        net.train(was)
        state = {"version": STATE_VERSION, "step": step, "wall_time_s": wall, "scale_factor": scale,
                 "data": stream.state(),
                 "rng": {"train": ckpt.encode_rng(gen.get_state()),
                         "torch": ckpt.encode_rng(torch.get_rng_state())}}
        if self.device.type == "cuda":
            state["rng"]["cuda"] = ckpt.encode_rng(torch.cuda.get_rng_state(self.device))
        meta = {"step": str(step), "scale_factor": repr(scale)}
        files = {NOISECRAFT_WEIGHTS: tensors_to_bytes(net.state_dict(), meta),
                 OPTIMIZER: ckpt.optimizer_to_bytes(opt, step)}
        if adv is not None:
            files[DISCRIMINATOR] = tensors_to_bytes(adv.net.state_dict(), {"step": str(step)})
            files[DISCRIMINATOR_OPTIMIZER] = ckpt.optimizer_to_bytes(adv.opt, step)
        files[STATE] = (json.dumps(state, indent=1) + "\n").encode()  # last: it commits
        atomic_write_many(self.run_dir, files)

    def _restore(self, net: nn.Module, opt: torch.optim.Optimizer, adv: Adversary | None,
                 gen: torch.Generator, stream: BatchStream) -> tuple[int, float]:
        d = self.run_dir
        state = read_state(d)
        step = state["step"]
        model_file, opt_file = checkpoint_file(d, NOISECRAFT_WEIGHTS), checkpoint_file(d, OPTIMIZER)
        check_step(model_file, load_weights(net, model_file), step)
        opt_state, meta = ckpt.optimizer_state_from_file(opt_file)
        check_step(opt_file, meta, step)
        disc_opt_state = self._read_adversary(adv, step) if adv is not None else None
        try:
            opt.load_state_dict(opt_state)
            if adv is not None:
                adv.opt.load_state_dict(disc_opt_state)
            gen.set_state(ckpt.decode_rng(state["rng"]["train"]))
            torch.set_rng_state(ckpt.decode_rng(state["rng"]["torch"]))
            if self.device.type == "cuda" and "cuda" in state["rng"]:
                torch.cuda.set_rng_state(ckpt.decode_rng(state["rng"]["cuda"]), self.device)
            stream.seek(state["data"]["epoch"], state["data"]["position"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise RunError(f"{d / STATE}: corrupt optimizer, RNG or data-order record ({e})") from None
        ckpt.truncate_log(self.run_dir / LOG, step)
        return step, float(state.get("wall_time_s", 0.0))

    def _read_adversary(self, adv: Adversary, step: int) -> dict[str, Any]:
        """Load the discriminator's weights of checkpoint ``step``; return its optimizer state."""
        disc_file = checkpoint_file(self.run_dir, DISCRIMINATOR)
        check_step(disc_file, load_weights(adv.net, disc_file), step)
        opt_file = checkpoint_file(self.run_dir, DISCRIMINATOR_OPTIMIZER)
        opt_state, meta = ckpt.optimizer_state_from_file(opt_file)
        check_step(opt_file, meta, step)
        return opt_state
