import json

import pytest

from noisecraft import RunError, Schedule
from noisecraft.config import CONFIG_VERSION, DataConfig, RunConfig, SamplingConfig, TrainConfig


def make_config(**train) -> RunConfig:
    return RunConfig(net={"arch": "mlp", "in_channels": 2}, schedule=Schedule.linear(10).to_dict(),
                     prediction="v", data=DataConfig(spec="moons", kind="vector", shape=[2]),
                     train=TrainConfig(**train), sampling=SamplingConfig(clip=(-1.0, 1.0)))


def test_json_round_trip_is_exact():
    cfg = make_config(steps=7, lr=3e-4, adam_betas=(0.8, 0.95), lr_schedule="cosine")
    text = cfg.to_json()
    d = json.loads(text)
    assert d["version"] == CONFIG_VERSION
    back = RunConfig.from_dict(d)
    assert back == cfg
    assert back.train.adam_betas == (0.8, 0.95)  # tuples come back as tuples, not lists
    assert back.sampling.clip == (-1.0, 1.0)


@pytest.mark.parametrize("path", [("bogus",), ("train", "lr_shedule"), ("data", "extra")])
def test_unknown_key_is_an_error_naming_it(path):
    d = make_config().to_dict()
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = 1
    with pytest.raises(RunError, match=".".join(path)):
        RunConfig.from_dict(d, source="x/config.json")


def test_missing_key_and_version_are_errors():
    d = make_config().to_dict()
    del d["prediction"]
    with pytest.raises(RunError, match="missing key 'prediction'"):
        RunConfig.from_dict(d)
    d = make_config().to_dict()
    del d["version"]
    with pytest.raises(RunError, match="version"):
        RunConfig.from_dict(d)
    d["version"] = CONFIG_VERSION + 1
    with pytest.raises(RunError, match="not supported"):
        RunConfig.from_dict(d)


def test_bad_values_in_a_file_name_the_file_and_field():
    d = make_config().to_dict()
    d["train"]["lr"] = -1
    with pytest.raises(RunError, match=r"run/config.json: train: lr must be"):
        RunConfig.from_dict(d, source="run/config.json")


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"), ({"lr_schedule": "linear"}, "lr_schedule"),
    ({"ema_decay": 1.0}, "ema_decay"), ({"accum": 0}, "accum"), ({"grad_clip": -1.0}, "grad_clip"),
    ({"adam_betas": (0.9,)}, "adam_betas"), ({"label_dropout": 1.0}, "label_dropout"),
])
def test_bad_train_values_raise_valueerror_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_unknown_prediction_rejected():
    with pytest.raises(ValueError, match="prediction"):
        RunConfig(net={}, schedule={}, prediction="score", data=DataConfig(spec="x"))
