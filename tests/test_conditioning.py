"""The frozen text encoder and its caption cache (noisecraft.conditioning)."""

import sys

import pytest
import torch

from noisecraft import conditioning
from noisecraft.conditioning import (
    INSTALL_HINT,
    TextEncoderMissing,
    encode_prompts,
    load_text_encoder,
)


def _encoder_missing() -> str | None:
    """Why the default text encoder cannot run here, or None when it can."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "transformers is not installed"
    try:
        conditioning.default_encoder_path()
    except TextEncoderMissing:
        return "the default text encoder package is not installed"
    return None


# Only the tests that run the encoder skip without it; captions, dropout, the null condition and
# the install hint are tested everywhere.
needs_encoder = pytest.mark.skipif(_encoder_missing() is not None,
                                   reason=str(_encoder_missing()))


@pytest.fixture(scope="module")
def encoder():
    missing = _encoder_missing()
    if missing:
        pytest.skip(missing)
    return load_text_encoder()


def test_pooled_is_normalised_mean_of_an_unpadded_forward(encoder):
    # computed another way: each prompt alone (no padding at all), mean over every token, L2 norm
    prompts = ["a handwritten digit seven", "seven", "the number 7 drawn in ink"]
    tokens, mask, pooled = encode_prompts(encoder, prompts, disk=False)
    assert tokens.shape[:2] == mask.shape and tokens.shape[2] == encoder.dim == 384
    for i, p in enumerate(prompts):
        alone = encoder.tokenizer([p], return_tensors="pt")
        with torch.no_grad():
            h = encoder.model(**alone).last_hidden_state[0]
        n = h.shape[0]
        assert mask[i].sum() == n and not mask[i, n:].any()
        # padding changes the float summation order a little: float32 round-off only
        torch.testing.assert_close(tokens[i, :n], h, atol=1e-5, rtol=1e-4)
        assert (tokens[i, n:] == 0).all()
        torch.testing.assert_close(pooled[i], torch.nn.functional.normalize(h.mean(0), dim=0),
                                   atol=1e-6, rtol=1e-5)


def test_empty_prompt_is_the_null_condition(encoder):
    tokens, mask, pooled = encode_prompts(encoder, ["", ""])
    assert tokens.shape == (2, 1, encoder.dim) and not mask.any()
    assert (pooled == 0).all() and (tokens == 0).all()


def test_each_caption_is_encoded_once_then_read_from_disk(encoder, monkeypatch):
    calls = []
    run = encoder.run
    monkeypatch.setattr(encoder, "run", lambda prompts: calls.append(list(prompts)) or run(prompts))
    encoder.memory.clear()
    first = encode_prompts(encoder, ["a red heart", "a red heart", "a blue star"])
    second = encode_prompts(encoder, ["a blue star", "a red heart"])
    assert calls == [["a red heart", "a blue star"]]  # distinct captions, one batch, once
    torch.testing.assert_close(second[2][1], first[2][0], rtol=0, atol=0)
    # a fresh process (empty memory) reads the disk cache and never runs the encoder
    encoder.memory.clear()
    monkeypatch.setattr(encoder, "run", lambda prompts: pytest.fail(f"encoder ran on {prompts}"))
    again = encode_prompts(encoder, ["a red heart", "a blue star"])
    for a, b in zip(again, first, strict=True):
        torch.testing.assert_close(a, b[[0, 2], :a.shape[1]] if a.ndim > 1 else b[[0, 2]],
                                   rtol=0, atol=0)


@needs_encoder
def test_wrong_weights_hash_is_refused():
    with pytest.raises(ValueError, match="sha256 .* trained with 0000"):
        load_text_encoder(sha256="0000")


def test_missing_transformers_gives_one_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(TextEncoderMissing, match="transformers") as info:
        load_text_encoder(str(tmp_path))  # a named folder: the default package is not needed
    assert INSTALL_HINT in str(info.value) and "\n" not in str(info.value)


def test_prompts_must_be_strings(encoder):
    with pytest.raises(ValueError, match="list of strings"):
        encode_prompts(encoder, "a red heart")


# --- captions ---------------------------------------------------------------------------------

def test_templates_name_digits_in_words_and_other_classes_by_their_names():
    from noisecraft.data.captions import DIGIT_NAMES, class_names, render

    assert class_names({"classes": [str(d) for d in range(10)]}) == list(DIGIT_NAMES)
    assert class_names({"classes": None, "num_classes": 10}, "idx") == list(DIGIT_NAMES)  # MNIST
    assert class_names({"classes": ["cat", "dog"]}, "shards") == ["cat", "dog"]
    assert class_names({"classes": None, "num_classes": 10}, "arrays") is None
    assert render("a handwritten digit {name}", [7, 0], DIGIT_NAMES) == [
        "a handwritten digit seven", "a handwritten digit zero"]
    assert render("class {label}: {name}", [1], ["cat", "dog"]) == ["class 1: dog"]


@pytest.mark.parametrize("template, names, match", [
    ("a {colour} digit", DIGITS := [str(d) for d in range(10)], "uses {colour}"),
    ("a digit {name}", None, "no class names"),
    ("  ", DIGITS, "non-empty"),
    ("a {name", DIGITS, "not a format string"),
])
def test_bad_templates_name_the_problem(template, names, match):
    from noisecraft.data.captions import check_template

    with pytest.raises(ValueError, match=match):
        check_template(template, names)


def test_shard_json_member_gives_a_caption_when_there_is_no_txt():
    from noisecraft.data.captions import json_caption

    assert json_caption(b'{"caption": " a red heart ", "text": "x"}', "s") == "a red heart"
    assert json_caption(b'{"class": "cat", "label": 3}', "s") == ""
    with pytest.raises(ValueError, match="s: .json member is not UTF-8 JSON"):
        json_caption(b"{nope", "s")


def test_shards_fill_captions_from_txt_then_json(tmp_path):
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from noisecraft import data

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    members = {"a.png": buf.getvalue(), "a.txt": b"from txt", "a.json": b'{"caption": "no"}',
               "b.png": buf.getvalue(), "b.json": b'{"caption": "from json"}',
               "c.png": buf.getvalue()}
    with tarfile.open(tmp_path / "s-0000.tar", "w") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    items = {ex["key"]: ex["caption"] for ex in data.load(str(tmp_path / "s-0000.tar"), shuffle=False)}
    assert items == {"a": "from txt", "b": "from json", "c": ""}


# --- caption dropout and the null condition ------------------------------------------------------

def test_caption_dropout_replaces_the_expected_fraction_by_the_empty_prompt():
    from noisecraft.conditioning import drop_captions

    captions = [f"caption {i}" for i in range(4000)]
    dropped = drop_captions(captions, 0.1, torch.Generator().manual_seed(0))
    empty = sum(c == "" for c in dropped)
    # Binomial(4000, 0.1): mean 400, sd 19; ±5 sd
    assert abs(empty - 400) < 95
    assert all(d in ("", c) for d, c in zip(dropped, captions, strict=True))
    assert drop_captions(captions, 0.0, torch.Generator()) == captions


def test_guided_null_is_the_empty_prompt_and_the_nets_learned_null():
    from noisecraft import Denoiser, Schedule, nets
    from noisecraft.conditioning import null_condition
    from noisecraft.guidance import Guided

    g = torch.Generator().manual_seed(0)
    net = nets.build("tiny", text_dim=5, base_channels=8, norm_groups=4)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    den = Denoiser(net, Schedule.linear(T=100))
    x, t = torch.randn(3, 1, 8, 8, generator=g), torch.tensor([10.0, 50.0, 90.0])
    cond = {"text": torch.randn(3, 4, 5, generator=g), "text_mask": torch.ones(3, 4, dtype=torch.bool),
            "text_pooled": torch.randn(3, 5, generator=g)}
    unconditional = den(x, t).eps  # no keywords: the net's learned null
    conditional = den(x, t, **cond).eps
    # w = 0 is the unconditional branch alone; w = 3 mixes the two from one batched pass
    torch.testing.assert_close(Guided(den, 0.0, null=null_condition)(x, t, **cond).eps, unconditional)
    w3 = Guided(den, 3.0, null=null_condition)(x, t, **cond).eps
    torch.testing.assert_close(w3, unconditional + 3 * (conditional - unconditional),
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(conditional, unconditional, atol=1e-3)


@needs_encoder
def test_training_feeds_the_net_empty_prompts_at_the_caption_dropout_rate(tmp_path):
    """Fails if caption dropout is switched off: counts the null rows the net is trained on."""
    from noisecraft import data
    from noisecraft.config import ConditionConfig, TrainConfig
    from noisecraft.train import Trainer, new_run_config

    dataset = data.load("digits")
    p, steps, batch = 0.3, 4, 64
    config = new_run_config(
        dataset, "digits", net="tiny", T=50,
        net_overrides={"base_channels": 8, "attention_resolutions": [], "norm_groups": 4},
        train=TrainConfig(steps=steps, batch_size=batch, warmup=1, sample_every=0,
                          checkpoint_every=0, log_every=1),
        condition=ConditionConfig(kind="text", caption_template="a handwritten digit {name}",
                                  caption_dropout=p))
    assert config.net["text_dim"] == 384 and config.condition.text_encoder_sha256
    seen = []
    real_from_config = __import__("noisecraft.nets", fromlist=["from_config"]).from_config

    def recording_from_config(cfg):
        net = real_from_config(cfg)
        net.register_forward_pre_hook(
            lambda m, args, kwargs: seen.append(kwargs["text_mask"].any(1)), with_kwargs=True)
        return net

    import noisecraft.train.trainer as trainer_module

    monkey = pytest.MonkeyPatch()
    monkey.setattr(trainer_module.nets, "from_config", recording_from_config)
    try:
        Trainer(config, tmp_path / "run", dataset, device="cpu", progress=False).fit()
    finally:
        monkey.undo()
    has_text = torch.cat(seen)
    assert has_text.numel() == steps * batch
    # Binomial(256, 0.3) null rows: mean 76.8, sd 7.3; ±5 sd (0 when dropout is off)
    assert abs(int((~has_text).sum()) - p * steps * batch) < 5 * (steps * batch * p * (1 - p)) ** 0.5


def test_any_local_encoder_folder_can_be_named(encoder, tmp_path):
    folder = tmp_path / "my-encoder"
    for path in encoder.path.rglob("*"):
        if path.is_file():
            link = folder / path.relative_to(encoder.path)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    other = load_text_encoder(str(folder))
    assert (other.name, other.sha256, other.dim) == (str(folder), encoder.sha256, encoder.dim)
    torch.testing.assert_close(encode_prompts(other, ["a red heart"], disk=False)[2],
                               encode_prompts(encoder, ["a red heart"], disk=False)[2])
    with pytest.raises(FileNotFoundError, match="not found"):
        load_text_encoder(str(tmp_path / "nowhere"))
