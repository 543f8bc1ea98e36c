"""`noisecraft sample --class/--guidance/--autoguide` end to end on runs trained for a few steps.

The mathematics of guidance is tested exactly in tests/test_guidance.py; here the CLI must draw
exactly what the library draws with the same settings, and refuse bad requests in one line."""

import os
import sys

import numpy as np
import pytest

from noisecraft import load_run
from noisecraft.cli import main

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from train_helpers import SMALL_UNET, image_config, train  # noqa: E402


def _class_run(path, label_dropout=0.1, T=50, steps=2):
    from noisecraft import data
    from noisecraft.train import TrainConfig, new_run_config

    dataset = data.load("digits")
    config = new_run_config(dataset, "digits", net="tiny", T=T, class_conditional=True,
                            net_overrides=SMALL_UNET,
                            train=TrainConfig(steps=steps, batch_size=8, lr=1e-2, warmup=1,
                                              label_dropout=label_dropout, sample_every=0,
                                              checkpoint_every=0))
    train(path, config, dataset)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("guided")
    return {"cond": _class_run(root / "cond"),
            "weak": _class_run(root / "weak", steps=1),
            "nodrop": _class_run(root / "nodrop", label_dropout=0.0),
            "other_T": _class_run(root / "other_T", T=20, steps=1),
            "uncond": train(root / "uncond", *image_config(steps=1)).run_dir}


def sample(run_dir, out, *extra):
    return main(["sample", str(run_dir), "--out", str(out), "--steps", "3", *map(str, extra)])


def npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_class_and_guidance_draw_what_the_library_draws(runs, tmp_path):
    assert sample(runs["cond"], tmp_path / "g", "--n", 6, "--class", 3, "--guidance", 3.0) == 0
    assert sample(runs["cond"], tmp_path / "one", "--n", 6, "--class", 3, "--guidance", 1) == 0
    assert sample(runs["cond"], tmp_path / "plain", "--n", 6, "--class", 3) == 0
    g, one, plain = npz(tmp_path / "g.npz"), npz(tmp_path / "one.npz"), npz(tmp_path / "plain.npz")
    assert g["labels"].tolist() == [3] * 6
    run = load_run(runs["cond"])
    want = run.generate(6, steps=3, labels=np.full(6, 3), guidance=3.0)
    np.testing.assert_array_equal(g["images"], want)
    np.testing.assert_array_equal(one["images"], plain["images"])   # w = 1: the conditional model
    assert not np.array_equal(g["images"], plain["images"])


def test_class_lists_cycle_and_rescale_and_interval_reach_the_sampler(runs, tmp_path):
    assert sample(runs["cond"], tmp_path / "a", "--n", 2, "--class", "1,4,7", "--guidance", 2,
                  "--guidance-rescale", 0.7, "--guidance-interval", 10, 40) == 0
    a = npz(tmp_path / "a.npz")
    assert a["labels"].tolist() == [1, 1, 4, 4, 7, 7]   # --n of each class, as --prompt does
    run = load_run(runs["cond"])
    want = run.generate(6, steps=3, labels=a["labels"], guidance=2.0, guidance_rescale=0.7,
                        guidance_interval=(10.0, 40.0))
    np.testing.assert_array_equal(a["images"], want)
    plain = run.generate(6, steps=3, labels=a["labels"], guidance=2.0)
    assert not np.array_equal(a["images"], plain)


def test_autoguide_uses_the_other_run(runs, tmp_path):
    assert sample(runs["cond"], tmp_path / "a", "--n", 4, "--guidance", 2,
                  "--autoguide", runs["weak"]) == 0
    run, weak = load_run(runs["cond"]), load_run(runs["weak"])
    labels = run.default_labels(4)
    want = run.generate(4, steps=3, labels=labels, guidance=2.0, autoguide=weak)
    np.testing.assert_array_equal(npz(tmp_path / "a.npz")["images"], want)
    # Autoguidance also guides a run trained without label dropout.
    assert sample(runs["nodrop"], tmp_path / "b", "--n", 2, "--guidance", 2,
                  "--autoguide", runs["weak"]) == 0


@pytest.mark.parametrize("case, extra, message", [
    ("cond", ["--class", "10"], "class 10 is out of range"),
    ("cond", ["--class", "-1"], "class -1 is out of range"),
    ("cond", ["--class", "x"], "is not a class or a comma list"),
    ("uncond", ["--class", "3"], "is not class-conditional: classes do not apply"),
    ("uncond", ["--guidance", "2"], "is not class-conditional"),
    ("cond", ["--guidance", "-1"], "argument --guidance: '-1' must be a number >= 0"),
    ("nodrop", ["--guidance", "3"], "trained without label dropout"),
    ("nodrop", ["--guidance", "0"], "trained without label dropout"),
    ("cond", ["--guidance-rescale", "0.5"], "--guidance-rescale needs --guidance"),
    ("cond", ["--autoguide", "OTHER_T"], "--autoguide needs --guidance"),
    ("cond", ["--guidance", "2", "--guidance-rescale", "1.5"], "must be a number in [0, 1]"),
    ("cond", ["--guidance", "2", "--guidance-interval", "40", "10"], "interval"),
    ("cond", ["--guidance", "2", "--autoguide", "OTHER_T"], "autoguide run"),
    ("uncond", ["--guidance", "2", "--autoguide", "COND"], "autoguide run"),
])
def test_errors_exit_2_with_one_line(runs, tmp_path, capsys, case, extra, message):
    extra = [str(runs["other_T"]) if e == "OTHER_T" else str(runs["cond"]) if e == "COND" else e
             for e in extra]
    try:
        code = main(["sample", str(runs[case]), "--out", str(tmp_path / "x"), "--steps", "2",
                     *extra])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) in (1, 2)  # argparse adds its usage line above the error
    assert not (tmp_path / "x.npz").exists()


def test_guidance_one_is_allowed_without_label_dropout(runs, tmp_path):
    assert sample(runs["nodrop"], tmp_path / "a", "--n", 2, "--guidance", 1) == 0


def test_class_cond_training_defaults_to_label_dropout(tmp_path):
    from noisecraft.config import CLASS_COND_LABEL_DROPOUT
    from noisecraft.run import read_config

    args = ["train", "--data", "digits", "--class-cond", "--steps", "1", "--batch-size", "4",
            "--net", "linear", "--timesteps", "10", "--sample-every", "0", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert read_config(tmp_path / "a").train.label_dropout == CLASS_COND_LABEL_DROPOUT == 0.1
    assert main([*args, "--label-dropout", "0", "--out", str(tmp_path / "b")]) == 0
    assert read_config(tmp_path / "b").train.label_dropout == 0.0


@pytest.mark.slow  # loads the text encoder
def test_prompts_are_guided_with_the_empty_prompt_as_null(tmp_path, capsys):
    pytest.importorskip("transformers")
    common = ["--data", "digits", "--condition", "text", "--caption-template",
              "a handwritten digit {name}", "--steps", "2", "--batch-size", "8", "--net", "tiny",
              "--timesteps", "20", "--sample-every", "0", "--no-progress"]
    assert main(["train", *common, "--out", str(tmp_path / "text")]) == 0
    assert sample(tmp_path / "text", tmp_path / "a", "--n", 2, "--prompt", "seven",
                  "--guidance", 3, "--guidance-rescale", 0.5) == 0
    want = load_run(tmp_path / "text").generate(2, steps=3, prompts=["seven", "seven"],
                                                guidance=3.0, guidance_rescale=0.5)
    np.testing.assert_array_equal(npz(tmp_path / "a.npz")["images"], want)
    assert main(["train", *common, "--caption-dropout", "0", "--out", str(tmp_path / "nodrop")]) == 0
    capsys.readouterr()
    assert sample(tmp_path / "nodrop", tmp_path / "b", "--prompt", "seven", "--guidance", 3) == 2
    assert "trained without caption dropout" in capsys.readouterr().err


def test_the_python_pipeline_checks_classes_as_the_cli_does(runs):
    """One range check (LoadedRun.check_classes) serves the CLI's --class and Pipeline's labels."""
    from noisecraft import Pipeline

    pipe = Pipeline.from_run(runs["cond"])
    prompts, labels = pipe.conditions(2, labels=[1, 9])
    assert prompts is None and labels.tolist() == [1, 1, 9, 9]
    for bad in (10, -1):
        with pytest.raises(ValueError, match=f"^class {bad} is out of range: .* has classes 0..9$"):
            pipe.conditions(2, labels=[3, bad])
