"""The config dataclasses are the one source of `noisecraft train`'s flags, defaults and resume rule."""

import argparse
import dataclasses
import re
import typing

import pytest

from noisecraft import data
from noisecraft.cli import build_parser, main
from noisecraft.cli._args import add_settings, given_settings
from noisecraft.config import (
    BuildConfig,
    SamplingConfig,
    Settings,
    TrainConfig,
    choices_of,
    default_of,
    flag_name,
    flag_sections,
    setting,
    settings_of,
)
from noisecraft.io import atomic_write
from noisecraft.train import new_run_config


def train_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    return sub.choices["train"]


def help_text() -> str:
    # One option per paragraph: argparse wraps long help lines.
    return re.sub(r"\s+", " ", train_parser().format_help())


TEXT_EXAMPLES = {"max_time": "1.5h", "ema_profiles": "0.05,0.1"}


def test_every_train_config_field_is_a_flag_that_reaches_the_config():
    """Each field, given a non-default value on the command line, arrives in TrainConfig."""
    hints = typing.get_type_hints(TrainConfig)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert names == {f.name for f in settings_of(TrainConfig)}
    for f in dataclasses.fields(TrainConfig):
        default = default_of(f)
        flag = flag_name(TrainConfig, f)
        if hints[f.name] is bool:
            argv, want = ["--no-" + flag if default else "--" + flag], not default
        elif choices_of(f):
            want = next(c for c in choices_of(f) if c != default)
            argv = ["--" + flag_name(TrainConfig, f), str(want)]
        elif isinstance(default, tuple):
            want = tuple(v / 2 for v in default)
            argv = ["--" + flag_name(TrainConfig, f), *map(str, want)]
        elif f.name in TEXT_EXAMPLES:  # free-text settings: a valid value of each
            want = TEXT_EXAMPLES[f.name]
            argv = ["--" + flag_name(TrainConfig, f), want]
        else:
            want = (default + 1 if isinstance(default, int) else default / 2 + 0.25
                    if default is not None else 0.25)  # None: resolved later (label_dropout)
            argv = ["--" + flag_name(TrainConfig, f), str(want)]
        args = train_parser().parse_args(["--out", "x", *argv])
        got = TrainConfig(**given_settings(args, TrainConfig))
        assert getattr(got, f.name) == want, f.name
        assert got == dataclasses.replace(TrainConfig(), **{f.name: want})  # nothing else moved


def test_help_shows_the_dataclass_defaults():
    text = help_text().split(" options: ", 1)[1]  # past the usage line
    flags = [(cls, f) for _, cls in flag_sections() for f in settings_of(cls)]
    # Each flag's paragraph runs from its name to the next flag's (help lists them in order).
    starts, pos = [], 0
    for cls, f in flags:
        pos = re.compile(" --" + flag_name(cls, f) + "[ ,]").search(text, pos).start()
        starts.append(pos)
    for (cls, f), lo, hi in zip(flags, starts, [*starts[1:], len(text)], strict=True):
        default = default_of(f)
        if default is None:
            continue
        shown = ("on" if default else "off") if isinstance(default, bool) else (
            " ".join(map(str, default)) if isinstance(default, tuple)
            else f"{default:g}" if isinstance(default, float) else str(default))
        assert f"(default {shown})" in text[lo:hi], (flag_name(cls, f), text[lo:hi])


def test_python_defaults_are_the_cli_defaults(tmp_path):
    """A run made with no flags has exactly TrainConfig()'s and BuildConfig()'s settings, and
    the command's config is the library's (`noisecraft.train.prepare`, which the command calls)."""
    from noisecraft.train.setup import prepare

    args = train_parser().parse_args(["--out", "x", "--data", "moons"])
    assert given_settings(args, TrainConfig) == {}
    assert given_settings(args, BuildConfig) == {"data": "moons"}
    config = prepare(tmp_path / "a", data="moons").config
    # label_dropout is unset (None) in TrainConfig() and resolved per run: 0 without classes
    assert config.train == dataclasses.replace(TrainConfig(), label_dropout=0.0)
    assert config.schedule["kind"] == BuildConfig.schedule
    assert config.schedule["T"] == BuildConfig.timesteps
    assert config.prediction == BuildConfig.prediction
    assert config.net == nets_config_of_default_preset("moons")


def nets_config_of_default_preset(spec):
    from noisecraft import nets

    dataset = data.load(spec)
    return nets.build(nets.DEFAULT_PRESETS[dataset.info["kind"]], in_channels=dataset.info["dim"],
                      image_size=None, T=BuildConfig.timesteps, num_classes=None).config


def test_a_class_conditional_python_run_gets_the_commands_label_dropout(tmp_path):
    """new_run_config (Python) and `train --class-cond` (CLI) agree: a class-conditional run
    defaults to label dropout 0.1, so it can be guided; unconditional runs get 0."""
    from noisecraft.config import CLASS_COND_LABEL_DROPOUT
    from noisecraft.train import new_run_config
    from noisecraft.train.setup import prepare

    digits = data.load("digits")
    assert new_run_config(digits, "digits", class_conditional=True).train.label_dropout == \
        CLASS_COND_LABEL_DROPOUT == 0.1
    assert new_run_config(digits, "digits").train.label_dropout == 0.0
    assert prepare(tmp_path / "c", data="digits", class_cond=True).config.train.label_dropout == 0.1
    with pytest.raises(ValueError, match="needs a class-conditional run"):
        new_run_config(digits, "digits", train=TrainConfig(label_dropout=0.2))


def test_choices_come_from_the_library_registries():
    from noisecraft import losses, nets, samplers, schedule
    from noisecraft.denoiser import PREDICTIONS

    field = {f.name: f for cls in (BuildConfig, TrainConfig, SamplingConfig) for f in settings_of(cls)}
    assert choices_of(field["sampler"]) == tuple(samplers.SAMPLERS)
    assert choices_of(field["loss"]) == tuple(losses.LOSSES)
    assert choices_of(field["time_sampler"]) == tuple(losses.TIME_SAMPLERS)
    assert choices_of(field["prediction"]) == PREDICTIONS
    assert choices_of(field["net"]) == tuple(nets.PRESETS)
    assert choices_of(field["schedule"]) == schedule.SCHEDULES
    for name in schedule.SCHEDULES:
        schedule.Schedule.from_name(name, T=10)


def test_a_new_settings_section_gets_flags_and_checks_with_no_cli_code():
    """What another config (conditioning, latents) gets for free by subclassing Settings."""

    @dataclasses.dataclass
    class ExtraConfig(Settings):
        flag_prefix: typing.ClassVar[str | None] = "extra-"
        scale: float = setting(1.5, "a made-up scale", range="[0, 10]")

    with pytest.raises(ValueError, match=r"scale must be a number in \[0, 10\], got 11"):
        ExtraConfig(scale=11)
    p = argparse.ArgumentParser()
    add_settings(p, ExtraConfig)
    assert p.parse_args(["--extra-scale", "2"]).extra_scale == 2.0
    assert "(default 1.5)" in p.format_help()


@pytest.fixture
def saved_run(tmp_path):
    """A run directory holding only config.json (seed 3, warm-up 7): enough for the resume check,
    which runs before any data is read or any weights are loaded."""
    dataset = data.load("moons")
    config = new_run_config(dataset, "moons", net="mlp", T=50,
                            train=TrainConfig(seed=3, warmup=7, ema_warmup=True, steps=10))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    atomic_write(run_dir / "config.json", config.to_json())
    return run_dir


@pytest.mark.parametrize("argv, message", [
    (["--seed", "0"], "--seed 0 conflicts with the run being resumed (--seed 3)"),
    (["--warmup", "0"], "--warmup 0 conflicts with the run being resumed (--warmup 7)"),
    (["--no-ema-warmup"], "--ema-warmup False conflicts with the run being resumed (--ema-warmup True)"),
    (["--timesteps", "1000"], "--timesteps 1000 conflicts with the run being resumed (--timesteps 50)"),
    (["--loss", "vlb"], "--loss vlb conflicts"),
    (["--data", "digits"], "--data digits conflicts with the run being resumed (--data moons)"),
    (["--learned-variance"], "--learned-variance True conflicts"),
])
def test_resume_refuses_every_given_flag_that_differs_zero_and_false_included(saved_run, capsys, argv,
                                                                               message):
    assert main(["train", "--out", str(saved_run), "--resume", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("noisecraft: error: " + message) and err.count("\n") == 1, err


def test_resume_accepts_flags_equal_to_the_runs_own(saved_run, monkeypatch):
    """Repeating the run's settings is not a conflict; resumable flags update the config."""
    from noisecraft.run import read_config
    from noisecraft.train.setup import resume_config

    config = read_config(saved_run)
    resumed = resume_config(config, dict(seed=3, warmup=7, ema_warmup=True, data="moons", net="mlp",
                                         timesteps=50, learned_variance=False, steps=20,
                                         sample_every=0))
    assert resumed.train == dataclasses.replace(config.train, steps=20, sample_every=0)


def test_bad_values_name_the_flag_in_one_line(capsys):
    for argv, message in [
            (["--ema-decay", "1"], "argument --ema-decay: '1' must be a number in [0, 1)"),
            (["--min-snr-gamma", "0"], "argument --min-snr-gamma: '0' must be a number > 0"),
            (["--loss", "l1"], "argument --loss: invalid choice: 'l1'"),
            (["--adam-betas", "0.9"], "argument --adam-betas: expected 2 arguments")]:
        with pytest.raises(SystemExit) as e:
            main(["train", "--out", "x", "--data", "moons", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("noisecraft: error: " + message) and err.count("\n") == 1, err


def test_objective_and_learned_variance_must_fit_together():
    from noisecraft.config import DataConfig, RunConfig

    def make(loss, learned):
        return RunConfig(net={"arch": "mlp", "learned_variance": learned}, schedule={}, prediction="eps",
                         data=DataConfig(spec="moons", kind="vector"), train=TrainConfig(loss=loss))

    with pytest.raises(ValueError, match="hybrid.*needs a net with learned_variance"):
        make("hybrid", False)
    with pytest.raises(ValueError, match="learned_variance needs loss 'hybrid' or 'vlb'"):
        make("simple", True)
    make("hybrid", True)
    make("vlb", True)
    make("min-snr", False)
