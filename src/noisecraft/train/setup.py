"""One call from settings to a Trainer: what ``noisecraft train`` does, as a library function.

    trainer = nc.train.prepare("runs/digits", data="digits", class_cond=True, steps=2000)
    trainer.fit()                      # or nc.train.train(...), which does both

Settings are named as the command's flags with ``_`` for ``-`` (``class_cond``, ``batch_size``,
``condition="text"``, ``caption_template=...``); each is declared once in :mod:`noisecraft.config`
with its default, choices and range. A new run loads its data (encoding it once for a latent run)
and builds its config with :func:`noisecraft.train.new_run_config`; ``resume=True`` reloads the
run's own config and data and refuses a setting that would change the run (all but the
resumable ones: :func:`resumable_settings`). The run directory's own checks (a file, a foreign
folder, a run already trained or nothing to resume) are the :class:`Trainer`'s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..config import BuildConfig, RunConfig, flag_name, flag_sections, settings_of, stored_value

Sections = list[tuple[str | None, type]]


def _sections(sections: Sections | None = None) -> dict[str, tuple[str | None, type, dataclasses.Field]]:
    """Flag-style name → (config attribute, settings class, field) for every setting of
    ``sections`` (default: ``noisecraft train``'s, :func:`noisecraft.config.flag_sections`)."""
    out: dict[str, tuple[str | None, type, dataclasses.Field]] = {}
    for attr, cls in sections or flag_sections():
        for f in settings_of(cls):
            name = flag_name(cls, f).replace("-", "_")
            assert name not in out, f"two train settings are named {name}"
            out[name] = (attr, cls, f)
    return out


def split_settings(settings: dict[str, Any], sections: Sections | None = None
                   ) -> dict[str | None, dict[str, Any]]:
    """Flat settings (``class_cond=True, steps=100``) → {section attribute: {field: value}};
    an unknown name is a ValueError naming it. None values count as not given."""
    table = _sections(sections)
    out: dict[str | None, dict[str, Any]] = {attr: {} for attr, _ in sections or flag_sections()}
    for name, value in settings.items():
        if name not in table:
            raise ValueError(f"unknown train setting {name!r}; valid: {', '.join(sorted(table))}")
        if value is None:
            continue
        attr, _, f = table[name]
        out[attr][f.name] = tuple(value) if isinstance(value, list) else value
    return out


def resumable_settings(sections: Sections | None = None) -> list[str]:
    """The settings a resumed run may change (``steps``, cadences, workers, compile)."""
    return [name for name, (_, _, f) in _sections(sections).items() if f.metadata["resumable"]]


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def resume_config(config: Any, settings: dict[str, Any], sections: Sections | None = None) -> Any:
    """``config`` with the resumable settings given applied; any other given setting must equal
    the run's own value (0 and False included), else ValueError naming it and both values."""
    table = _sections(sections)
    updates: dict[str | None, dict[str, Any]] = {}
    for name, value in settings.items():
        if value is None:
            continue
        if name not in table:
            raise ValueError(f"unknown train setting {name!r}; valid: {', '.join(sorted(table))}")
        attr, cls, f = table[name]
        value = tuple(value) if isinstance(value, list) else value
        saved = stored_value(config, attr, f)
        if f.metadata["resumable"]:
            updates.setdefault(attr or "train", {})[f.name] = value
        elif value != saved:
            flag = "--" + flag_name(cls, f)
            raise ValueError(f"{flag} {_show(value)} conflicts with the run being resumed "
                             f"({flag} {_show(saved)}); a resumed run keeps its settings except "
                             + ", ".join("--" + n.replace("_", "-")
                                         for n in resumable_settings(sections)))
    for attr, values in updates.items():
        config = dataclasses.replace(config, **{attr: dataclasses.replace(getattr(config, attr),
                                                                           **values)})
    return config


def _device(device: str | torch.device | None) -> torch.device:
    from ..run import check_device

    return check_device(device) if device else torch.device("cuda" if torch.cuda.is_available()
                                                            else "cpu")


def latent_data(spec: str, *, image_size: int | None, channels: int | None, flip: bool,
                posterior: str, autoencoder: str | None = None, config: RunConfig | None = None,
                source: Path | None = None, device: str | torch.device | None = None,
                progress: bool = True) -> Any:
    """The latent dataset of ``spec`` (encoded once, cached): a new run measures the scale factor,
    a resumed one (``config``) reuses its recorded scale and checks its autoencoder is unchanged."""
    from .. import data as nc_data
    from ..autoencoders import load_autoencoder
    from ..latent import latent_dataset
    from ..run import load_latent_autoencoder

    dev = _device(device)
    ae = (load_latent_autoencoder(config, source, dev) if config is not None
          else load_autoencoder(autoencoder, device=dev))
    pixels = nc_data.load(spec, image_size=image_size, channels=channels, shuffle=False)
    dataset = latent_dataset(pixels, ae, posterior=posterior, flip=flip,
                             scale_factor=config.latent.scale_factor if config is not None else None,
                             progress=progress)
    print(f"noisecraft: latents {'from the cache' if dataset.from_cache else 'encoded and cached'} "
          f"({len(dataset)} × {dataset.latent.shape}, scale factor {dataset.latent.scale_factor:.5f})")
    return dataset


def _resumed(out: str | Path, settings: dict[str, Any], device: Any, progress: bool
             ) -> tuple[RunConfig, Any]:
    from .. import data as nc_data
    from ..run import read_config
    from .trainer import Trainer

    for marker, command in MADE_BY.items():
        if (Path(out) / marker).is_file():
            raise ValueError(f"{out} was made by `noisecraft {command}` (its {marker}): its loss is "
                             f"not `train`'s, so `train --resume` would train it wrongly; run "
                             f"`noisecraft {command}` again instead")
    config = resume_config(read_config(out), settings)
    Trainer.check_run_dir(out, resume=True)   # before loading (or encoding) any data
    d = config.data
    flip = bool((d.preprocess or {}).get("flip"))
    if config.latent is not None:
        dataset = latent_data(d.spec, image_size=d.image_size, channels=d.channels, flip=flip,
                              posterior=config.latent.posterior, config=config,
                              source=Path(out) / "config.json", device=device, progress=progress)
    else:
        options = ({"image_size": d.image_size, "channels": d.channels, "flip": flip}
                   if d.kind == "image" else dict((d.preprocess or {}).get("audio", {})))
        if d.skip_bad:
            options["skip_bad"] = True
        dataset = nc_data.load(d.spec, **options)
    if d.preprocess is not None and dataset.preprocess.to_dict() != d.preprocess:
        raise ValueError(f"{d.spec!r} now loads with preprocessing {dataset.preprocess.to_dict()}, "
                         f"but the run was trained with {d.preprocess}")
    return config, dataset


# Runs another command trains with its own loss, marked by the file it writes first.
MADE_BY = {"reflow.json": "reflow", "distill.json": "distill"}


def _new(settings: dict[str, Any], device: Any, progress: bool) -> tuple[RunConfig, Any]:
    from .. import data as nc_data
    from ..config import ConditionConfig, TrainConfig
    from .trainer import new_run_config

    sections = split_settings(settings)
    build = BuildConfig(**sections.pop(None))
    if build.prediction == "consistency":
        raise ValueError("prediction 'consistency' is trained by `noisecraft distill` from a teacher "
                         "run, not by `train`")
    if build.data is None:
        raise ValueError("data is required for a new run (--data; or resume an existing run)")
    if "latent_posterior" in settings and settings["latent_posterior"] is not None \
            and build.autoencoder is None:
        raise ValueError("latent_posterior (--latent-posterior) needs an autoencoder (--autoencoder)")
    from ..data.audio import FEATURE_SETTINGS, feature_options

    audio = feature_options(**{name: getattr(build, name) for name in FEATURE_SETTINGS})
    if audio and build.autoencoder is not None:
        given = ["--" + flag_name(BuildConfig, f) for f in dataclasses.fields(BuildConfig)
                 if f.name in FEATURE_SETTINGS and getattr(build, f.name) is not None]
        raise ValueError(f"{', '.join(given)} set spectrogram features, but a latent run "
                         "(--autoencoder) encodes pictures")
    if build.autoencoder is not None:
        dataset = latent_data(build.data, image_size=build.image_size, channels=build.channels,
                              flip=build.flip, posterior=build.latent_posterior,
                              autoencoder=str(Path(build.autoencoder).resolve()), device=device,
                              progress=progress)
    else:
        options = {k: v for k, v in (("image_size", build.image_size),
                                     ("channels", build.channels), ("flip", build.flip),
                                     ("skip_bad", build.skip_bad)) if v}
        dataset = nc_data.load(build.data, **options, **audio)
    config = new_run_config(dataset, build.data, net=build.net,
                            net_overrides={"learned_variance": True} if build.learned_variance
                            else None, schedule=build.schedule, T=build.timesteps,
                            prediction=build.prediction, class_conditional=build.class_cond,
                            sigma_data=build.sigma_data,
                            train=TrainConfig(**sections.pop("train")),
                            condition=ConditionConfig(**sections.pop("condition")))
    if build.experts > 1 or build.experts_shared_init:
        config = dataclasses.replace(config, net=_experts(config.net, build.experts,
                                                          build.experts_shared_init))
    if build.skip_bad:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, skip_bad=True))
    for attr, given in sections.items():
        if given:
            config = dataclasses.replace(
                config, **{attr: dataclasses.replace(getattr(config, attr), **given)})
    return config, dataset


def _experts(net: dict[str, Any], k: int, shared_init: bool) -> dict[str, Any]:
    """The config of K noise-level experts of ``net`` (:class:`noisecraft.nets.experts.Experts`).
    The run's readers of ``learned_variance`` and ``text_dim`` look at the top of config.net,
    so such nets are refused rather than silently misread."""
    from ..nets import from_config

    if k == 1:
        raise ValueError("--experts-shared-init needs --experts K with K > 1")
    for key in ("learned_variance", "text_dim"):
        if net.get(key):
            raise ValueError(f"--experts {k} is not supported with a net with {key} "
                             f"({net[key]!r}) yet")
    return from_config({"arch": "experts", "expert": net, "experts": k,
                        "shared_init": shared_init}).config


def prepare(out: str | Path, *, resume: bool = False, device: str | torch.device | None = None,
            progress: bool = True, **settings: Any) -> Any:
    """The :class:`~noisecraft.train.Trainer` of run directory ``out`` (module docstring):
    a new run from ``settings``, or with ``resume`` the run in ``out`` continued."""
    from .trainer import Trainer

    if resume:
        config, dataset = _resumed(out, settings, device, progress)
    else:
        Trainer.check_run_dir(out, resume=False)   # before loading (or encoding) any data
        config, dataset = _new(settings, device, progress)
    return Trainer(config, out, dataset, resume=resume, device=device, progress=progress)


def train(out: str | Path, *, resume: bool = False, device: str | torch.device | None = None,
          progress: bool = True, **settings: Any) -> Any:
    """:func:`prepare`, then :meth:`Trainer.fit`: returns its :class:`TrainResult`."""
    return prepare(out, resume=resume, device=device, progress=progress, **settings).fit()


# ---------------------------------------------------------------------------- autoencoders
def autoencoder_sections() -> Sections:
    from ..autoencoders import AutoencoderBuildConfig, AutoencoderTrainConfig

    return [(None, AutoencoderBuildConfig), ("train", AutoencoderTrainConfig)]


def prepare_autoencoder(out: str | Path, *, resume: bool = False,
                        device: str | torch.device | None = None, progress: bool = True,
                        **settings: Any) -> Any:
    """The :class:`~noisecraft.train.autoencoder.AutoencoderTrainer` of ``out``: what
    ``noisecraft train-autoencoder`` does (settings named as its flags), with the same run
    directory rules as :func:`prepare`."""
    from .. import data as nc_data
    from ..autoencoders import read_autoencoder_config
    from .autoencoder import AutoencoderTrainer, new_autoencoder_config
    from .trainer import Trainer

    if device is not None:
        _device(device)
    sections = autoencoder_sections()
    if resume:
        config = resume_config(read_autoencoder_config(out), settings, sections)
        Trainer.check_run_dir(out, resume=True)
        d = config.data
        dataset = nc_data.load(d.spec, image_size=d.image_size, channels=d.channels,
                               flip=bool((d.preprocess or {}).get("flip")))
        if dataset.preprocess.to_dict() != d.preprocess:
            raise ValueError(f"{d.spec!r} now loads with preprocessing {dataset.preprocess.to_dict()}, "
                             f"but the autoencoder was trained with {d.preprocess}")
    else:
        Trainer.check_run_dir(out, resume=False)
        given = split_settings(settings, sections)
        build = sections[0][1](**given[None])
        if build.data is None:
            raise ValueError("data is required for a new autoencoder (--data; or --resume)")
        dataset = nc_data.load(build.data, image_size=build.image_size, channels=build.channels,
                               flip=build.flip)
        config = new_autoencoder_config(dataset, build.data, preset=build.preset,
                                        latent_channels=build.latent_channels, factor=build.factor,
                                        train=sections[1][1](**given["train"]))
    return AutoencoderTrainer(config, out, dataset, resume=resume, device=device, progress=progress)
