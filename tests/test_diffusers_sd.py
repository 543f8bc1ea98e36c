"""A StableDiffusionPipeline folder read as a text-conditional latent run (noisecraft.diffusers_io).

The folder is written here, offline, by diffusers' and transformers' own ``save_pretrained``: a
tiny random-weight UNet2DConditionModel (8×8 latents, 4 channels), AutoencoderKL (16×16 RGB,
factor 2), CLIPTextModel (2 layers, width 16) and a CLIPTokenizer over a 60-token vocabulary
written below (byte-pair merges for "red" and "cat"; no download). Every reference answer comes
from diffusers' ``StableDiffusionPipeline`` loaded by its own ``from_pretrained``.

Tolerance. Both sides run the same float32 modules on the same inputs; they differ only in
(i) the schedule coefficients (noisecraft's in float64, diffusers' ``alphas_cumprod`` a float32
product of T = 100 factors, relative error ≲ 100 · 6e-8 = 6e-6), (ii) the guidance mix,
ε̂_c + (w − 1)(ε̂_c − ε̂_u) against diffusers' ε̂_u + w(ε̂_c − ε̂_u) (a few float32 ulps of
w·|ε̂_c − ε̂_u|), (iii) the batch order of the two branches. Over 5 and 10 DDIM steps, with and
without a negative prompt, the worst difference measured is 1.3e-6 of the latents' scale
(2.7e-5 on latents of max |z| ≈ 21: random weights under w = 7.5 give large latents), so latents
are compared at 1e-4 of their max magnitude (75× margin), and the decoded pictures in [0, 1]
(1.0e-6 measured) at 1e-4; a wrong time offset (t instead of t − 1) moves them by > 1e-2 of it,
and the empty prompt in place of the negative one by more (both checked by breaking the code
once). The CLIP embeddings are the same module on the same token ids: equal to 1e-6 (0 measured).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

import noisecraft  # noqa: E402
from noisecraft.cli import main  # noqa: E402
from noisecraft.errors import RunError  # noqa: E402
from noisecraft.noise import ExampleNoise  # noqa: E402

T = 100
REL = 1e-4
LENGTH = 12  # the tokenizer's model_max_length (SD's is 77)


def tiny_tokenizer(folder) -> CLIPTokenizer:
    """A CLIPTokenizer over a-z (each with its end-of-word form) and merges for "red" and "cat"."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    for m in ("re", "red</w>", "ca", "cat</w>"):
        vocab[m] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\nc a\nca t</w>\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=LENGTH, pad_token="<|endoftext|>")


def write_sd_folder(path, scheduler: str = "ddim") -> str:
    tok = tiny_tokenizer(path.parent / f"{path.name}-vocab")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                        norm_num_groups=4, sample_size=16)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=LENGTH, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    # Stable Diffusion's scaled_linear schedule (β ×10 for T = 100 instead of 1000)
    options = dict(num_train_timesteps=T, beta_start=0.0085, beta_end=0.12,
                   beta_schedule="scaled_linear", steps_offset=1)
    sched = {"ddim": lambda: DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **options),
             "pndm": lambda: PNDMScheduler(skip_prk_steps=True, **options),
             "euler": lambda: EulerDiscreteScheduler(**options)}[scheduler]()
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return write_sd_folder(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def pipe(sd_folder):
    p = StableDiffusionPipeline.from_pretrained(sd_folder, local_files_only=True,
                                                use_safetensors=True)
    p.set_progress_bar_config(disable=True)
    return p


def test_clip_embeddings_equal_encode_prompt(sd_folder, pipe):
    run = noisecraft.load_run(sd_folder)
    prompts, negatives = ["a red cat", "cat cat red"], ["", "blue"]
    cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=negatives)
    ours = run.condition(prompts=prompts + negatives)
    assert ours["text"].shape == (4, LENGTH, 16) and bool(ours["text_mask"].all())
    np.testing.assert_allclose(ours["text"][:2].numpy(), cond.detach().numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours["text"][2:].numpy(), uncond.detach().numpy(), atol=1e-6, rtol=0)
    # the unconditional branch without a negative prompt is the encoded "" (not zeros)
    null = run.text_encoder().null_condition(**ours)
    np.testing.assert_allclose(null["text"][0].numpy(), uncond[0].detach().numpy(), atol=1e-6)


def test_latents_are_the_vae_posterior_mean_times_scaling_factor(sd_folder, pipe):
    """run.encode is what SD's img2img/training feed the UNet: vae.encode(x).latent_dist.mean ·
    scaling_factor (the same module on the same input: equal to float32 roundoff)."""
    run = noisecraft.load_run(sd_folder)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    torch.testing.assert_close(run.encode(x), expected.detach(), rtol=0, atol=1e-6)
    assert run.shape == (4, 8, 8) and run.preprocess.shape == (3, 16, 16)


@pytest.mark.parametrize("negative", [None, "blue"])
def test_guided_ddim_equals_stable_diffusion_pipeline(sd_folder, pipe, negative):
    """noisecraft's DDIM through LoadedRun.generate_tensor (its grid: the folder's own
    timesteps) from the x_T it draws for seed 0, against the pipeline given those latents."""
    run = noisecraft.load_run(sd_folder)
    prompts = ["a red cat", "cat"]
    got = run.generate_tensor(2, sampler="ddim", steps=5, seed=0, prompts=prompts, guidance=7.5,
                              negative_prompt=negative)
    x_T = ExampleNoise(0, 2).randn((4, 8, 8))
    kwargs = {} if negative is None else {"negative_prompt": [negative] * 2}
    expected = pipe(prompts, num_inference_steps=5, guidance_scale=7.5, latents=x_T.clone(),
                    eta=0.0, output_type="latent", **kwargs).images
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= REL * scale
    # decoded as the pipeline decodes: vae.decode(z / scaling_factor), (x/2 + 1/2) clamped
    images = pipe(prompts, num_inference_steps=5, guidance_scale=7.5, latents=x_T.clone(),
                  eta=0.0, output_type="np", **kwargs).images
    ours = (run.decode(got) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, images, atol=1e-4, rtol=0)


def test_empty_negative_prompt_is_the_default_null(sd_folder):
    run = noisecraft.load_run(sd_folder)
    kwargs = dict(sampler="ddim", steps=3, seed=1, prompts=["cat"], guidance=4.0)
    torch.testing.assert_close(run.generate_tensor(1, negative_prompt="", **kwargs),
                               run.generate_tensor(1, **kwargs), rtol=0, atol=1e-6)


def test_negative_prompt_needs_guidance_and_prompts(sd_folder):
    run = noisecraft.load_run(sd_folder)
    with pytest.raises(ValueError, match="negative prompt 'blue'"):
        run.generate_tensor(1, steps=2, prompts=["cat"], negative_prompt="blue")


def test_generate_and_sample_commands(sd_folder, tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["generate", sd_folder, "--prompt", "a red cat", "--negative-prompt", "blue",
                 "--guidance", "7.5", "--steps", "3", "--n", "2", "--out", str(out),
                 "--no-progress"]) == 0
    images = np.load(out.with_suffix(".npz"))["images"]
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert out.with_suffix(".png").is_file()
    assert main(["sample", sd_folder, "--prompt", "cat", "--negative-prompt", "red",
                 "--guidance", "3", "--steps", "2", "--n", "1", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    assert np.load(tmp_path / "s.npz")["images"].shape == (1, 16, 16, 3)
    # the pipeline object gives what the command wrote
    pipe_ = noisecraft.Pipeline.from_run(sd_folder)
    again = pipe_("a red cat", n=2, guidance=7.5, steps=3, negative_prompt="blue", progress=False)
    np.testing.assert_array_equal(again.images, images)


def test_editing_commands_on_a_folder(sd_folder, tmp_path):
    from PIL import Image

    picture = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(picture)
    mask = tmp_path / "m.png"
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    Image.fromarray(m).save(mask)
    common = ["--steps", "2", "--no-progress"]
    assert main(["encode", sd_folder, "--image", str(picture), "--prompt", "cat",
                 "--out", str(tmp_path / "e"), *common]) == 0
    assert main(["edit", sd_folder, "--image", str(picture), "--prompt", "red", "--n", "1",
                 "--guidance", "3",
                 "--out", str(tmp_path / "ed"), *common]) == 0
    assert main(["inpaint", sd_folder, "--image", str(picture), "--mask", str(mask),
                 "--prompt", "cat", "--n", "1", "--out", str(tmp_path / "in"), *common]) == 0
    assert main(["interpolate", sd_folder, "--seeds", "0", "1", "--prompts", "cat", "red",
                 "--frames", "3", "--out", str(tmp_path / "i"), *common]) == 0
    for name in ("e", "ed", "in", "i"):
        assert (tmp_path / f"{name}.png").is_file()


def test_safety_checker_and_feature_extractor_are_ignored_and_recorded(sd_folder, tmp_path):
    import shutil

    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"])
    (folder / "model_index.json").write_text(json.dumps(index))
    run = noisecraft.load_run(folder)
    assert run.source["ignored"] == ["safety_checker", "feature_extractor"]
    assert "tokenizer/tokenizer_config.json" in run.source["sha256"]
    index["controlnet"] = ["diffusers", "ControlNetModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(RunError, match="'controlnet'"):
        noisecraft.load_run(folder)


def test_pickled_unet_weights_are_refused(sd_folder, tmp_path):
    import shutil

    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(RunError, match="pickled"):
        noisecraft.load_run(folder)


SCHEDULER_CLASSES = {"pndm": PNDMScheduler, "euler": EulerDiscreteScheduler}


@pytest.mark.parametrize("scheduler", ["pndm", "euler"])
def test_pndm_and_euler_folders_map_their_schedule(tmp_path, scheduler):
    """PNDMScheduler (Stable Diffusion's usual one) and EulerDiscreteScheduler folders: the
    schedule is diffusers' own alphas_cumprod; noisecraft's samplers draw (PLMS and diffusers'
    Euler σ grid are not reproduced), euler by default for an Euler folder."""
    folder = write_sd_folder(tmp_path / scheduler, scheduler=scheduler)
    run = noisecraft.load_run(folder)
    cls = SCHEDULER_CLASSES[scheduler]
    ref = cls.from_pretrained(folder, subfolder="scheduler").alphas_cumprod
    # ᾱ_t = alphas_cumprod[t − 1]; diffusers' float32 cumprod of T factors errs by ≲ T · 6e-8
    torch.testing.assert_close(run.schedule.alpha_bars, ref.double(), rtol=6e-8 * 2 * T, atol=0)
    assert run.source["scheduler"] == cls.__name__
    assert run.config.sampling.sampler == ("euler" if scheduler == "euler" else "ddim")
    x = run.generate_tensor(1, steps=2, prompts=["cat"], guidance=2.0)
    assert x.shape == (1, 4, 8, 8) and bool(x.isfinite().all())


def test_continuous_euler_timesteps_are_refused(tmp_path):
    folder = write_sd_folder(tmp_path / "euler", scheduler="euler")
    path = tmp_path / "euler" / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "timestep_type": "continuous"}))
    with pytest.raises(RunError, match="timestep_type='continuous'"):
        noisecraft.load_run(folder)


@pytest.mark.parametrize("cls", ["PNDMScheduler", "EulerDiscreteScheduler"])
def test_scheduler_defaults_are_the_installed_diffusers(cls):
    import inspect

    import diffusers

    from noisecraft.diffusers_io import SCHEDULER_DEFAULTS

    params = inspect.signature(getattr(diffusers, cls).__init__).parameters
    assert SCHEDULER_DEFAULTS[cls] == {k: p.default for k, p in params.items()
                                       if p.default is not inspect.Parameter.empty}


# --------------------------------------------------------------------------- negative prompts
def test_guidance_zero_with_a_negative_prompt_samples_that_prompt(sd_folder):
    """w = 0 is the unconditional branch alone, so with a negative prompt N it must be plain
    (unguided) sampling conditioned on N, from the same noise: the rule checked another way."""
    run = noisecraft.load_run(sd_folder)
    kwargs = dict(sampler="ddim", steps=3, seed=2)
    got = run.generate_tensor(2, prompts=["a red cat"] * 2, guidance=0.0, negative_prompt="blue",
                              **kwargs)
    torch.testing.assert_close(got, run.generate_tensor(2, prompts=["blue"] * 2, **kwargs),
                               rtol=0, atol=1e-5)


def test_negative_prompt_on_a_noisecraft_text_run(tmp_path):
    """The same rule on a trained noisecraft text run (its encoder pads to the longest prompt,
    mask False on padding): prompts and negative prompt of different token lengths are padded
    together; w = 0 then samples the negative prompt, and "" is the run's own null."""
    from noisecraft.conditioning import TextEncoderMissing, default_encoder_path

    try:
        default_encoder_path()
    except TextEncoderMissing:
        pytest.skip("the default text encoder package is not installed")
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(out), "--condition", "text",
                 "--caption-template", "a handwritten digit {name}", "--steps", "2",
                 "--batch-size", "8", "--timesteps", "50", "--sample-every", "0",
                 "--no-progress"]) == 0
    run = noisecraft.load_run(out)
    torch.manual_seed(0)  # redrawn weights: 2 training steps leave the text path near its zero init
    with torch.no_grad():
        for p in run.net.parameters():
            p.normal_(0, 0.1)
    kwargs = dict(sampler="ddim", steps=3, seed=0)
    long_prompt = ["a handwritten digit seven written slowly"]
    got = run.generate_tensor(1, prompts=long_prompt, guidance=0.0, negative_prompt="zero", **kwargs)
    zero = run.generate_tensor(1, prompts=["zero"], **kwargs)
    torch.testing.assert_close(got, zero, rtol=0, atol=1e-5)
    # and the prompts matter: the empty prompt's samples are far from "zero"'s
    assert float((run.generate_tensor(1, prompts=[""], **kwargs) - zero).abs().max()) > 1e-2
    torch.testing.assert_close(
        run.generate_tensor(1, prompts=long_prompt, guidance=3.0, negative_prompt="", **kwargs),
        run.generate_tensor(1, prompts=long_prompt, guidance=3.0, **kwargs), rtol=0, atol=1e-5)
