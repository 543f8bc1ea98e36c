"""``noisecraft train``: train a diffusion model into a run directory (or ``--resume`` one).

Runs unchanged under ``torchrun --nproc_per_node=N -m noisecraft train ...`` (DDP, one process
per GPU, gloo on CPU); ``--batch-size`` is per process.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ._args import add_settings, add_threads, command_parser, given_settings


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import flag_sections

    p = command_parser(sub, "train", __doc__, "train a diffusion model into a run directory",
                       "noisecraft train --data digits --out runs/digits --steps 2000")
    a = p.add_argument
    a("--out", required=True, metavar="RUN_DIR", help="the run directory to write")
    a("--resume", action="store_true", help="continue the run in RUN_DIR up to --steps, restoring "
      "weights, EMA, optimizer, LR schedule, RNG and data order; a flag that would change one of "
      "the run's settings is refused, except " + ", ".join(_resumable_flags()))
    a("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    a("--no-progress", action="store_true", help="no progress bar")
    add_threads(p)
    for _, cls in flag_sections():
        add_settings(p, cls)
    p.set_defaults(func=run)


def _resumable_flags() -> list[str]:
    from ..config import flag_name, flag_sections, settings_of

    return ["--" + flag_name(cls, f) for _, cls in flag_sections() for f in settings_of(cls)
            if f.metadata["resumable"]]


def _check_resume_flags(args: argparse.Namespace, config: Any) -> Any:
    """The run's config with the resumable flags given applied; any other given flag must equal
    the run's own value (0 and False included), else ValueError naming the flag and both values."""
    import dataclasses

    from ..config import flag_name, flag_sections, settings_of, stored_value

    for attr, cls in flag_sections():
        given = given_settings(args, cls)
        updates = {}
        for f in settings_of(cls):
            if f.name not in given:
                continue
            value, saved = given[f.name], stored_value(config, attr, f)
            if f.metadata["resumable"]:
                updates[f.name] = value
            elif value != saved:
                flag = "--" + flag_name(cls, f)
                raise ValueError(f"{flag} {_show(value)} conflicts with the run being resumed "
                                 f"({flag} {_show(saved)}); a resumed run keeps its settings "
                                 f"except {', '.join(_resumable_flags())}")
        if updates:
            config = dataclasses.replace(
                config, **{attr: dataclasses.replace(getattr(config, attr), **updates)})
    return config


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def _new_config(args: argparse.Namespace, build: Any, dataset: Any) -> Any:
    """A new run's config from the given flags and the dataclasses' defaults."""
    import dataclasses

    from ..config import CLASS_COND_LABEL_DROPOUT, ConditionConfig, TrainConfig, flag_sections
    from ..nets import DEFAULT_PRESETS
    from ..train import new_run_config

    default_net = DEFAULT_PRESETS[dataset.info["kind"]]
    overrides = {"learned_variance": True} if build.learned_variance else None
    sections = {attr: given_settings(args, cls) for attr, cls in flag_sections() if attr}
    if build.class_cond or sections.get("condition", {}).get("kind") == "class":
        sections.setdefault("train", {}).setdefault("label_dropout", CLASS_COND_LABEL_DROPOUT)
    config = new_run_config(dataset, build.data, net=build.net or default_net,
                            net_overrides=overrides, schedule=build.schedule, T=build.timesteps,
                            prediction=build.prediction, class_conditional=build.class_cond,
                            train=TrainConfig(**sections.pop("train", {})),
                            condition=ConditionConfig(**sections.pop("condition", {})))
    for attr, given in sections.items():
        if given:
            config = dataclasses.replace(
                config, **{attr: dataclasses.replace(getattr(config, attr), **given)})
    return config


def _latent_data(spec: str, image_size: int | None, channels: int | None, flip: bool,
                 posterior: str, *, ae_dir: str | None = None, config: Any = None,
                 source: Path | None = None, device: str | None = None,
                 progress: bool = True) -> Any:
    """The latent dataset of ``spec`` (encoded once, cached): a new run measures the scale factor,
    a resumed one (``config``) reuses its recorded scale and checks its autoencoder is unchanged."""
    import torch

    from .. import data as nc_data
    from ..autoencoders import load_autoencoder
    from ..latent import latent_dataset
    from ..run import check_device, load_latent_autoencoder

    dev = (check_device(device) if device
           else torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if config is not None:
        ae = load_latent_autoencoder(config, source, dev)
    else:
        ae = load_autoencoder(ae_dir, device=dev)
    pixels = nc_data.load(spec, image_size=image_size, channels=channels, shuffle=False)
    dataset = latent_dataset(pixels, ae, posterior=posterior, flip=flip,
                             scale_factor=config.latent.scale_factor if config is not None else None,
                             progress=progress)
    print(f"noisecraft: latents {'from the cache' if dataset.from_cache else 'encoded and cached'} "
          f"({len(dataset)} × {dataset.latent.shape}, scale factor {dataset.latent.scale_factor:.5f})")
    return dataset


def run(args: argparse.Namespace) -> int:
    from .. import data as nc_data
    from ..config import BuildConfig
    from ..run import read_config
    from ..train import Trainer

    out = args.out
    if args.autoencoder is not None:  # the run records the resolved folder
        args.autoencoder = str(Path(args.autoencoder).resolve())
    if args.resume:
        config = _check_resume_flags(args, read_config(out))
        d = config.data
        flip = bool((d.preprocess or {}).get("flip"))
        if config.latent is not None:
            dataset = _latent_data(d.spec, d.image_size, d.channels, flip, config.latent.posterior,
                                   config=config, source=Path(out) / "config.json",
                                   device=args.device, progress=not args.no_progress)
        else:
            options = ({"image_size": d.image_size, "channels": d.channels, "flip": flip}
                       if d.kind == "image" else (d.preprocess or {}).get("audio", {}))
            dataset = nc_data.load(d.spec, **options)
        if d.preprocess is not None and dataset.preprocess.to_dict() != d.preprocess:
            raise ValueError(f"{d.spec!r} now loads with preprocessing {dataset.preprocess.to_dict()}, "
                             f"but the run was trained with {d.preprocess}")
    else:
        build = BuildConfig(**given_settings(args, BuildConfig))
        if build.data is None:
            raise ValueError("--data is required (unless --resume)")
        if args.label_dropout and not (build.class_cond or args.condition == "class"):
            raise ValueError("--label-dropout needs --class-cond")
        if args.latent_posterior and build.autoencoder is None:
            raise ValueError("--latent-posterior needs --autoencoder")
        foreign = not os.path.isfile(os.path.join(out, "config.json"))
        if os.path.isdir(out) and os.listdir(out) and foreign:
            raise ValueError(f"--out {out} is a non-empty folder that is not a run directory; "
                             "choose a new or empty folder")
        image_opts = {k: v for k, v in (("image_size", build.image_size),
                                        ("channels", build.channels), ("flip", build.flip)) if v}
        if build.autoencoder is not None:
            dataset = _latent_data(build.data, build.image_size, build.channels, build.flip,
                                   build.latent_posterior, ae_dir=build.autoencoder,
                                   device=args.device, progress=not args.no_progress)
        else:
            dataset = nc_data.load(build.data, **image_opts)
        config = _new_config(args, build, dataset)
    trainer = Trainer(config, out, dataset, resume=args.resume, device=args.device,
                      progress=not args.no_progress)
    result = trainer.fit()
    if int(os.environ.get("RANK", "0")) == 0:
        loss = f"{result.loss:.4f}" if result.loss is not None else "n/a (already at --steps)"
        print(f"noisecraft: {out}: step {result.step}, loss {loss}, "
              f"{result.wall_time_s:.1f} s of training")
    return 0
