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

pytest.importorskip("transformers")
try:
    conditioning.default_encoder_path()
except TextEncoderMissing:
    pytest.skip("the default text encoder package is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def encoder():
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


def test_wrong_weights_hash_is_refused():
    with pytest.raises(ValueError, match="sha256 .* trained with 0000"):
        load_text_encoder(sha256="0000")


def test_missing_transformers_gives_one_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(TextEncoderMissing, match="transformers") as info:
        load_text_encoder()
    assert INSTALL_HINT in str(info.value) and "\n" not in str(info.value)


def test_prompts_must_be_strings(encoder):
    with pytest.raises(ValueError, match="list of strings"):
        encode_prompts(encoder, "a red heart")
