"""``noisecraft train-autoencoder``: train the KL autoencoder that latent diffusion runs in.

Writes AE_DIR like a diffusion run: config.json, model.safetensors (with the measured latent
scale factor), optimizer.safetensors, state.json, log.jsonl and samples/recon_<step>.png
(originals above reconstructions). Then train a diffusion model in its latent space with
``noisecraft train --data DATA --autoencoder AE_DIR``. Loss: L1 (or L2) reconstruction plus a
small KL weight; no perceptual or adversarial term (see noisecraft.train.autoencoder).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from ._args import (
    add_threads,
    command_parser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

# Flags a resumed run may change; any other flag must repeat the run's own setting.
RESUMABLE = {"steps", "sample_every", "checkpoint_every", "log_every", "num_workers", "device",
             "no_progress", "threads"}


def register(sub: argparse._SubParsersAction) -> None:
    from ..autoencoders import RECONSTRUCTION_LOSSES, AutoencoderTrainConfig
    from ..nets.autoencoder import AUTOENCODER_PRESETS, FACTORS

    d = AutoencoderTrainConfig()
    p = command_parser(sub, "train-autoencoder", __doc__,
                       "train a KL autoencoder for latent diffusion",
                       "noisecraft train-autoencoder --data ../shared/data/mnist --out runs/ae "
                       "--steps 1500 --factor 4 --latent-channels 4")
    a = p.add_argument
    a("--data", help="image dataset spec (default with --resume: the run's own)")
    a("--out", required=True, metavar="AE_DIR", help="the autoencoder run directory to write")
    a("--resume", action="store_true", help="continue the run in AE_DIR up to --steps")
    a("--preset", choices=tuple(AUTOENCODER_PRESETS),
      help="network size: ae32 (28/32 px) or ae64 (64 px) (default: by image size)")
    a("--latent-channels", type=positive_int, help="latent channels C (default 4)")
    a("--factor", type=int, choices=FACTORS, help="downsampling factor f (default 4)")
    a("--steps", type=positive_int, help=f"optimizer steps (default {d.steps})")
    a("--batch-size", type=positive_int, help=f"examples per step (default {d.batch_size})")
    a("--lr", type=positive_float, help=f"AdamW learning rate (default {d.lr:g})")
    a("--warmup", type=non_negative_int, help=f"linear LR warm-up steps (default {d.warmup})")
    a("--kl-weight", type=non_negative_float, help=f"weight of the KL term (default {d.kl_weight:g})")
    a("--reconstruction", choices=RECONSTRUCTION_LOSSES,
      help=f"reconstruction loss (default {d.reconstruction})")
    a("--image-size", type=positive_int, help="resize + centre-crop images to this size")
    a("--channels", type=int, choices=(1, 3, 4), help="convert images to 1, 3 or 4 channels")
    a("--flip", action="store_true", help="random left-right flips")
    a("--seed", type=non_negative_int, help=f"seed (default {d.seed})")
    a("--sample-every", type=non_negative_int,
      help=f"write a reconstruction grid every N steps and at the end (default {d.sample_every})")
    a("--checkpoint-every", type=non_negative_int,
      help=f"save a checkpoint every N steps (default {d.checkpoint_every}; 0 = only at the end)")
    a("--log-every", type=positive_int, help=f"log the loss every N steps (default {d.log_every})")
    a("--num-workers", type=non_negative_int, help="DataLoader workers (default 0)")
    a("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    a("--no-progress", action="store_true", help="no progress bar")
    add_threads(p)
    p.set_defaults(func=run)


TRAIN_FLAGS = ("steps", "batch_size", "lr", "warmup", "kl_weight", "reconstruction", "seed",
               "sample_every", "checkpoint_every", "log_every", "num_workers")


def _given(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"func", "command", "out", "resume"}
    return {k: v for k, v in vars(args).items() if k not in skip and v not in (None, False)}


def _check_resume_flags(args: argparse.Namespace, config: Any) -> None:
    """A resumed run keeps its settings: a flag that would change them is an error, not ignored."""
    t, d, n = config.train, config.data, config.net
    saved = {"data": d.spec, "latent_channels": n["latent_channels"], "factor": n["factor"],
             "image_size": d.image_size, "channels": d.channels,
             "flip": bool((d.preprocess or {}).get("flip")),
             **{k: getattr(t, k) for k in TRAIN_FLAGS}}
    for name, value in _given(args).items():
        if name not in RESUMABLE and saved.get(name, object()) != value:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} {value} conflicts with the run being resumed "
                             f"({saved.get(name, 'set at creation')})")


def run(args: argparse.Namespace) -> int:
    from .. import data as nc_data
    from ..autoencoders import AutoencoderTrainConfig, read_autoencoder_config
    from ..run import check_device
    from ..train.autoencoder import AutoencoderTrainer, new_autoencoder_config

    if args.device is not None:
        check_device(args.device)
    out = args.out
    if args.resume:
        config = read_autoencoder_config(out)
        _check_resume_flags(args, config)
        updates = {k: getattr(args, k) for k in ("steps", "sample_every", "checkpoint_every",
                                                 "log_every", "num_workers")
                   if getattr(args, k) is not None}
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, **updates))
        d = config.data
        dataset = nc_data.load(d.spec, image_size=d.image_size, channels=d.channels,
                               flip=bool((d.preprocess or {}).get("flip")))
        if dataset.preprocess.to_dict() != d.preprocess:
            raise ValueError(f"{d.spec!r} now loads with preprocessing {dataset.preprocess.to_dict()}, "
                             f"but the autoencoder was trained with {d.preprocess}")
    else:
        if args.data is None:
            raise ValueError("--data is required (unless --resume)")
        foreign = not os.path.isfile(os.path.join(out, "config.json"))
        if os.path.isdir(out) and os.listdir(out) and foreign:
            raise ValueError(f"--out {out} is a non-empty folder that is not a run directory; "
                             "choose a new or empty folder")
        dataset = nc_data.load(args.data, image_size=args.image_size, channels=args.channels,
                               flip=args.flip)
        train = AutoencoderTrainConfig(**{k: getattr(args, k) for k in TRAIN_FLAGS
                                          if getattr(args, k) is not None})
        config = new_autoencoder_config(dataset, args.data, preset=args.preset,
                                        latent_channels=args.latent_channels or 4,
                                        factor=args.factor or 4, train=train)
    trainer = AutoencoderTrainer(config, out, dataset, resume=args.resume, device=args.device,
                                 progress=not args.no_progress)
    r = trainer.fit()
    loss = f"{r.loss:.4f}" if r.loss is not None else "n/a (already at --steps)"
    print(f"noisecraft: {out}: step {r.step}, loss {loss}, reconstruction PSNR {r.psnr:.2f} dB "
          f"(reference training images), latent scale factor {r.scale_factor:.5f}, "
          f"{r.wall_time_s:.1f} s of training")
    return 0
