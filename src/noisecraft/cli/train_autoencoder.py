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

from ._args import add_settings, add_threads, command_parser, flat_settings


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


def run(args: argparse.Namespace) -> int:
    from ..train.setup import autoencoder_sections, prepare_autoencoder

    settings = {k: v for _, cls in autoencoder_sections() for k, v in flat_settings(args, cls).items()}
    r = prepare_autoencoder(args.out, resume=args.resume, device=args.device,
                            progress=not args.no_progress, **settings).fit()
    loss = f"{r.loss:.4f}" if r.loss is not None else "n/a (already at --steps)"
    print(f"noisecraft: {args.out}: step {r.step}, loss {loss}, reconstruction PSNR {r.psnr:.2f} dB "
          f"(on {r.reference_images} training images), latent scale factor {r.scale_factor:.5f}, "
          f"{r.wall_time_s:.1f} s of training")
    return 0
