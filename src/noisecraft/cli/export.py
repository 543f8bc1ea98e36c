"""``noisecraft export``: write a trained run in another library's format.

  noisecraft export RUN_DIR OUT --format diffusers

writes OUT as a diffusers ``DDPMPipeline`` folder (``model_index.json``, ``unet/`` with
``config.json`` + ``diffusion_pytorch_model.safetensors``, ``scheduler/scheduler_config.json``)
that ``DiffusionPipeline.from_pretrained(OUT)`` loads and samples, and that ``noisecraft`` reads
back as a run. Unconditional U-Net runs with T = 1000 export (presets tiny, mnist-cpu,
ddpm-cifar10, audio; ε, v or x_0 prediction); the layout mapping and the conventions are in
:mod:`noisecraft.diffusers_export`.
Needs the ``[latent]`` extra (diffusers).
"""

from __future__ import annotations

import argparse

from ._args import add_run_arguments, add_threads, command_parser

FORMATS = ("diffusers",)


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "export", __doc__, "write a run as a diffusers pipeline folder",
                       "noisecraft export runs/cifar10 exported/ --format diffusers")
    add_run_arguments(p)
    p.add_argument("out", metavar="OUT", help="the folder to write (must not exist)")
    p.add_argument("--format", default="diffusers", choices=FORMATS,
                   help="diffusers: a DDPMPipeline folder (default)")
    add_threads(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..diffusers_export import export_diffusers
    from ..run import load_run

    loaded = load_run(args.run_dir, use_ema=not args.no_ema, device="cpu")
    out = export_diffusers(loaded, args.out)
    print(f"wrote {out} (DDPMPipeline: model_index.json, unet/, scheduler/)")
    return 0
