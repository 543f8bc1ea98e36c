"""Text prompts from the CLI: `train --condition text`, `sample --prompt ... --guidance`."""

import json
import shutil
import sys

import numpy as np
import pytest

from noisecraft.cli import main
from noisecraft.conditioning import INSTALL_HINT, TextEncoderMissing, default_encoder_path

pytest.importorskip("transformers")
try:
    default_encoder_path()
except TextEncoderMissing:
    pytest.skip("the default text encoder package is not installed", allow_module_level=True)

TEMPLATE = "a handwritten digit {name}"


def train_args(out, *extra):
    return ["train", "--data", "digits", "--out", str(out), "--condition", "text", "--steps", "2",
            "--batch-size", "8", "--timesteps", "50", "--sample-every", "0", "--no-progress",
            *map(str, extra)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "run"
    assert main(train_args(path, "--caption-template", TEMPLATE)) == 0
    return path


def test_config_records_the_condition_and_the_encoder(run_dir):
    from noisecraft.conditioning import load_text_encoder

    config = json.loads((run_dir / "config.json").read_text())
    c = config["condition"]
    assert c["kind"] == "text" and c["text_encoder"] == "all-MiniLM-L6-v2"
    assert c["text_encoder_sha256"] == load_text_encoder().sha256
    assert (c["caption_source"], c["caption_template"], c["caption_dropout"]) == (
        "template", TEMPLATE, 0.1)
    assert c["class_names"][7] == "seven"
    assert config["net"]["text_dim"] == 384


def test_sample_draws_n_per_prompt_as_the_library_does(run_dir, tmp_path):
    from noisecraft.run import load_run

    out = tmp_path / "p"
    assert main(["sample", str(run_dir), "--out", str(out), "--prompt", "seven", "--prompt",
                 "the number 3", "--n", "3", "--steps", "3", "--guidance", "2"]) == 0
    with np.load(out.with_suffix(".npz")) as f:
        images, prompts = f["images"], f["prompts"]
    assert images.shape == (6, 8, 8, 1)
    assert prompts.tolist() == ["seven"] * 3 + ["the number 3"] * 3
    expected = load_run(run_dir).generate(6, "ddim", 3, seed=0, prompts=prompts.tolist(),
                                          guidance=2.0)
    np.testing.assert_array_equal(images, expected)
    # batch-size free: prompts of other token lengths pad a batch differently, and the mask
    # hides the padding (equal up to float32 round-off in the attention sums)
    run = load_run(run_dir)
    whole = run.generate_tensor(6, "ddim", 3, seed=0, prompts=prompts.tolist(), guidance=2.0)
    split = run.generate_tensor(6, "ddim", 3, seed=0, prompts=prompts.tolist(), guidance=2.0,
                                batch_size=2)
    np.testing.assert_allclose(split.numpy(), whole.numpy(), atol=1e-5)
    # without --prompt, a templated run cycles its template over the classes
    assert main(["sample", str(run_dir), "--out", str(tmp_path / "d"), "--n", "11",
                 "--steps", "2"]) == 0
    with np.load(tmp_path / "d.npz") as f:
        assert f["prompts"].tolist()[::10] == ["a handwritten digit zero", "a handwritten digit zero"]


def test_user_errors_are_one_line(run_dir, tmp_path, capsys):
    def error(argv):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("noisecraft: error: ") and err.count("\n") == 1
        return err

    assert "applies only to text" in error(["train", "--data", "digits", "--out",
                                            str(tmp_path / "x"), "--caption-template", TEMPLATE])
    assert "{colour}" in error(train_args(tmp_path / "y", "--caption-template", "a {colour} one"))
    assert "no captions" in error(train_args(tmp_path / "z"))
    assert "--caption-dropout" in error(["train", "--out", str(run_dir), "--resume",
                                         "--caption-dropout", "0.3"])
    no_dropout = tmp_path / "no-dropout"
    shutil.copytree(run_dir, no_dropout)
    config = json.loads((no_dropout / "config.json").read_text())
    config["condition"]["caption_dropout"] = 0.0
    (no_dropout / "config.json").write_text(json.dumps(config))
    assert "caption dropout" in error(["sample", str(no_dropout), "--out", str(tmp_path / "s"),
                                       "--prompt", "seven", "--guidance", "3"])


def test_prompt_on_a_run_without_text_is_refused(tmp_path, capsys):
    from noisecraft.cli import main as cli

    plain = tmp_path / "plain"
    assert cli(["train", "--data", "digits", "--out", str(plain), "--steps", "1", "--batch-size",
                "4", "--timesteps", "20", "--sample-every", "0", "--no-progress"]) == 0
    capsys.readouterr()
    assert cli(["sample", str(plain), "--out", str(tmp_path / "s"), "--prompt", "seven"]) == 2
    assert "need a text-conditional run" in capsys.readouterr().err


def test_missing_text_extra_is_one_error_saying_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if `pip install noisecraft` only
    assert main(train_args(tmp_path / "r", "--caption-template", TEMPLATE)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and INSTALL_HINT in err
