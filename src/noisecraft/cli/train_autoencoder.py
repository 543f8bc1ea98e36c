"""``noisecraft train-autoencoder``: train the KL autoencoder that latent diffusion runs in.

Writes AE_DIR like a diffusion run: config.json, model.safetensors (with the measured latent
scale factor), optimizer.safetensors, state.json, log.jsonl and samples/recon_<step>.png
(originals above reconstructions). Then train a diffusion model in its latent space with
``noisecraft train --data DATA --autoencoder AE_DIR``. Loss: L1 (or L2) reconstruction plus a
small KL weight, optionally a patch-adversarial term (--adversarial-weight; its discriminator is
saved beside the model); no perceptual term (see noisecraft.train.autoencoder).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from ._args import add_settings, add_threads, command_parser, given_settings


def register(sub: argparse._SubParsersAction) -> None:
    from ..autoencoders import AutoencoderBuildConfig, AutoencoderTrainConfig

    p = command_parser(sub, "train-autoencoder", __doc__,
                       "train a KL autoencoder for latent diffusion",
                       "noisecraft train-autoencoder --data ../shared/data/mnist --out runs/ae "
                       "--steps 1500 --factor 4 --latent-channels 4")
    a = p.add_argument
    a("--out", required=True, metavar="AE_DIR", help="the autoencoder run directory to write")
    a("--resume", action="store_true", help="continue the run in AE_DIR up to --steps; other "
      "flags must repeat the run's settings, except --steps, --log-every, --sample-every, "
      "--checkpoint-every and --num-workers")
    a("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    a("--no-progress", action="store_true", help="no progress bar")
    add_threads(p)
    add_settings(p, AutoencoderBuildConfig)
    add_settings(p, AutoencoderTrainConfig)
    p.set_defaults(func=run)


def _check_resume_flags(args: argparse.Namespace, config: Any) -> Any:
    """The run's config with the resumable flags applied; any other given flag must equal the
    run's own value, else ValueError naming the flag and both values."""
    from ..autoencoders import AutoencoderBuildConfig, AutoencoderTrainConfig
    from ..config import flag_name, settings_of

    updates = {}
    for cls in (AutoencoderBuildConfig, AutoencoderTrainConfig):
        given = given_settings(args, cls)
        for f in settings_of(cls):
            if f.name not in given:
                continue
            stored = f.metadata.get("stored")
            saved = stored(config) if stored else getattr(config.train, f.name)
            if f.metadata["resumable"]:
                updates[f.name] = given[f.name]
            elif given[f.name] != saved:
                flag = "--" + flag_name(cls, f)
                raise ValueError(f"{flag} {given[f.name]} conflicts with the run being resumed "
                                 f"({flag} {saved})")
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **updates))


def run(args: argparse.Namespace) -> int:
    from .. import data as nc_data
    from ..autoencoders import (
        AutoencoderBuildConfig,
        AutoencoderTrainConfig,
        read_autoencoder_config,
    )
    from ..run import check_device
    from ..train.autoencoder import AutoencoderTrainer, new_autoencoder_config

    if args.device is not None:
        check_device(args.device)
    out = args.out
    if args.resume:
        config = _check_resume_flags(args, read_autoencoder_config(out))
        d = config.data
        dataset = nc_data.load(d.spec, image_size=d.image_size, channels=d.channels,
                               flip=bool((d.preprocess or {}).get("flip")))
        if dataset.preprocess.to_dict() != d.preprocess:
            raise ValueError(f"{d.spec!r} now loads with preprocessing {dataset.preprocess.to_dict()}, "
                             f"but the autoencoder was trained with {d.preprocess}")
    else:
        build = AutoencoderBuildConfig(**given_settings(args, AutoencoderBuildConfig))
        if build.data is None:
            raise ValueError("--data is required (unless --resume)")
        foreign = not os.path.isfile(os.path.join(out, "config.json"))
        if os.path.isdir(out) and os.listdir(out) and foreign:
            raise ValueError(f"--out {out} is a non-empty folder that is not a run directory; "
                             "choose a new or empty folder")
        dataset = nc_data.load(build.data, image_size=build.image_size, channels=build.channels,
                               flip=build.flip)
        train = AutoencoderTrainConfig(**given_settings(args, AutoencoderTrainConfig))
        config = new_autoencoder_config(dataset, build.data, preset=build.preset,
                                        latent_channels=build.latent_channels, factor=build.factor,
                                        train=train)
    trainer = AutoencoderTrainer(config, out, dataset, resume=args.resume, device=args.device,
                                 progress=not args.no_progress)
    r = trainer.fit()
    loss = f"{r.loss:.4f}" if r.loss is not None else "n/a (already at --steps)"
    print(f"noisecraft: {out}: step {r.step}, loss {loss}, reconstruction PSNR {r.psnr:.2f} dB "
          f"(on {r.reference_images} training images), latent scale factor {r.scale_factor:.5f}, "
          f"{r.wall_time_s:.1f} s of training")
    return 0
