"""``noisecraft train``: train a diffusion model into a run directory (or ``--resume`` one).

Runs unchanged under ``torchrun --nproc_per_node=N -m noisecraft train ...`` (DDP, one process
per GPU, gloo on CPU); ``--batch-size`` is per process.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ._args import (
    add_threads,
    command_parser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)

SCHEDULES = ("linear", "quadratic", "cosine", "sigmoid")
PREDICTIONS = ("eps", "x0", "v")

# Flags a resumed run may change; any other flag must repeat the run's own setting.
RESUMABLE = {"steps", "sample_every", "checkpoint_every", "log_every", "num_workers", "device",
             "no_progress", "threads"}


def register(sub: argparse._SubParsersAction) -> None:
    from ..nets import PRESETS

    p = command_parser(sub, "train", __doc__, "train a diffusion model into a run directory",
                       "noisecraft train --data digits --out runs/digits --steps 2000")
    a = p.add_argument
    a("--data", help="dataset spec: digits, moons, swissroll, gmm8, checkerboard, a folder, .npz, "
      "IDX folder or shard pattern (default with --resume: the run's own)")
    a("--out", required=True, metavar="RUN_DIR", help="the run directory to write")
    a("--resume", action="store_true", help="continue the run in RUN_DIR up to --steps, restoring "
      "weights, EMA, optimizer, LR schedule, RNG and data order")
    a("--net", metavar="PRESET", help=f"network preset: {', '.join(PRESETS)} "
      "(default: tiny for images, audio for spectrograms, mlp for vectors)")
    a("--steps", type=positive_int, help="total optimizer steps (default 2000)")
    a("--batch-size", type=positive_int, help="examples per process per micro-batch (default 128)")
    a("--lr", type=positive_float, help="peak AdamW learning rate (default 2e-4)")
    a("--lr-schedule", choices=("constant", "cosine"),
      help="after warm-up: constant (default) or cosine decay to 0 at --steps")
    a("--warmup", type=non_negative_int, help="linear LR warm-up steps (default 100)")
    a("--weight-decay", type=non_negative_float, help="AdamW weight decay (default 0)")
    a("--grad-clip", type=non_negative_float, help="clip the gradient norm to this (default 1; 0 = off)")
    a("--accum", type=positive_int, help="micro-batches per optimizer step (default 1)")
    a("--ema-decay", type=probability, help="EMA decay per step (default 0.999)")
    a("--schedule", choices=SCHEDULES, help="noise schedule (default linear)")
    a("--timesteps", type=positive_int, metavar="T", help="diffusion steps T (default 1000)")
    a("--prediction", choices=PREDICTIONS, help="what the net predicts (default eps)")
    a("--class-cond", action="store_true", help="condition on the data's labels")
    a("--label-dropout", type=probability, help="with --class-cond: fraction of labels replaced by "
      "the null label, for classifier-free guidance (default 0)")
    a("--image-size", type=positive_int, help="resize + centre-crop images to this size")
    a("--channels", type=int, choices=(1, 3, 4), help="convert images to 1, 3 or 4 channels")
    a("--flip", action="store_true", help="random left-right flips")
    a("--seed", type=non_negative_int, help="seed for weights, noise and data order (default 0)")
    a("--sample-every", type=non_negative_int,
      help="write a sample grid every N steps and at the end (default 500; 0 = never)")
    a("--checkpoint-every", type=non_negative_int,
      help="save a checkpoint every N steps (default 500; 0 = only at the end)")
    a("--log-every", type=positive_int, help="log the loss every N steps (default 50)")
    a("--num-workers", type=non_negative_int, help="DataLoader workers (default 0)")
    a("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    a("--no-progress", action="store_true", help="no progress bar")
    add_threads(p)
    p.set_defaults(func=run)


DEFAULTS: dict[str, Any] = {"steps": 2000, "batch_size": 128, "lr": 2e-4, "lr_schedule": "constant",
                            "warmup": 100, "weight_decay": 0.0, "grad_clip": 1.0, "accum": 1,
                            "ema_decay": 0.999, "schedule": "linear", "timesteps": 1000,
                            "prediction": "eps", "label_dropout": 0.0, "seed": 0, "sample_every": 500,
                            "checkpoint_every": 500, "log_every": 50, "num_workers": 0}


def _value(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name)
    return DEFAULTS.get(name) if value is None else value


def _train_config(args: argparse.Namespace) -> Any:
    from ..config import TrainConfig

    names = ("steps", "batch_size", "lr", "lr_schedule", "warmup", "weight_decay", "grad_clip",
             "accum", "ema_decay", "label_dropout", "seed", "sample_every", "checkpoint_every",
             "log_every", "num_workers")
    return TrainConfig(**{n: _value(args, n) for n in names})


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The flags the user actually passed (store_true flags count when set)."""
    skip = {"func", "command", "out", "resume"}
    return {k: v for k, v in vars(args).items() if k not in skip and v not in (None, False)}


def _check_resume_flags(args: argparse.Namespace, config: Any) -> None:
    """A resumed run keeps its settings: a flag that would change them is an error, not ignored."""
    t, d = config.train, config.data
    saved = {"data": d.spec, "batch_size": t.batch_size, "lr": t.lr, "lr_schedule": t.lr_schedule,
             "warmup": t.warmup, "weight_decay": t.weight_decay, "grad_clip": t.grad_clip,
             "accum": t.accum, "ema_decay": t.ema_decay, "label_dropout": t.label_dropout,
             "seed": t.seed, "schedule": config.schedule.get("kind"),
             "timesteps": config.schedule.get("T"), "prediction": config.prediction,
             "class_cond": d.num_classes is not None, "image_size": d.image_size,
             "channels": d.channels, "flip": bool((d.preprocess or {}).get("flip")),
             "net": _preset_of(config.net)}
    for name, value in _given(args).items():
        if name in RESUMABLE:
            continue
        if saved.get(name) != value:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} {value} conflicts with the run being resumed "
                             f"({saved.get(name, 'set at creation')}); a resumed run keeps its "
                             "settings except --steps, --sample-every, --checkpoint-every, "
                             "--log-every, --num-workers, --device and --threads")


def _preset_of(net_config: dict[str, Any]) -> str | None:
    """The preset that, sized like this net, gives exactly its config (None: a custom net)."""
    from ..nets import PRESETS, build

    sizing = {k: net_config.get(k) for k in ("in_channels", "image_size", "T", "num_classes")}
    for name, preset in PRESETS.items():
        if preset["arch"] != net_config.get("arch"):
            continue
        try:
            if build(name, **sizing).config == net_config:
                return name
        except ValueError:
            continue
    return None


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from .. import data as nc_data
    from ..run import read_config
    from ..train import Trainer, new_run_config

    out = args.out
    if args.resume:
        config = read_config(out)
        _check_resume_flags(args, config)
        updates = {k: getattr(args, k) for k in ("steps", "sample_every", "checkpoint_every",
                                                 "log_every", "num_workers")
                   if getattr(args, k) is not None}
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, **updates))
        d = config.data
        flip = bool((d.preprocess or {}).get("flip"))
        options = ({"image_size": d.image_size, "channels": d.channels, "flip": flip}
                   if d.kind == "image" else (d.preprocess or {}).get("audio", {}))
        dataset = nc_data.load(d.spec, **options)
        if d.preprocess is not None and dataset.preprocess.to_dict() != d.preprocess:
            raise ValueError(f"{d.spec!r} now loads with preprocessing {dataset.preprocess.to_dict()}, "
                             f"but the run was trained with {d.preprocess}")
    else:
        if args.data is None:
            raise ValueError("--data is required (unless --resume)")
        if args.label_dropout and not args.class_cond:
            raise ValueError("--label-dropout needs --class-cond")
        foreign = not os.path.isfile(os.path.join(out, "config.json"))
        if os.path.isdir(out) and os.listdir(out) and foreign:
            raise ValueError(f"--out {out} is a non-empty folder that is not a run directory; "
                             "choose a new or empty folder")
        image_opts = {k: v for k, v in (("image_size", args.image_size), ("channels", args.channels),
                                        ("flip", args.flip)) if v}
        dataset = nc_data.load(args.data, **image_opts)
        from ..nets import DEFAULT_PRESETS

        config = new_run_config(dataset, args.data,
                                net=args.net or DEFAULT_PRESETS[dataset.info["kind"]],
                                schedule=_value(args, "schedule"), T=_value(args, "timesteps"),
                                prediction=_value(args, "prediction"), class_conditional=args.class_cond,
                                train=_train_config(args))
    trainer = Trainer(config, out, dataset, resume=args.resume, device=args.device,
                      progress=not args.no_progress)
    result = trainer.fit()
    if int(os.environ.get("RANK", "0")) == 0:
        loss = f"{result.loss:.4f}" if result.loss is not None else "n/a (already at --steps)"
        print(f"noisecraft: {out}: step {result.step}, loss {loss}, "
              f"{result.wall_time_s:.1f} s of training")
    return 0
