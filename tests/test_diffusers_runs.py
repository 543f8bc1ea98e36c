"""diffusers DDPMPipeline/DDIMPipeline folders read as runs (noisecraft.diffusers_io).

The folders are written here by diffusers' own ``save_pretrained`` from tiny random-weight
UNet2DModels (8×8, 1 channel, ~20k parameters), offline. Every reference answer comes from
diffusers itself — its pipelines, its scheduler's ``alphas_cumprod`` and its UNet loaded by
``from_pretrained`` — never from noisecraft's own code.

Tolerance (float32): both sides compute the same formulas in float32 (noisecraft's schedule
coefficients in float64, diffusers' in float32; diffusers' ``alphas_cumprod`` is a float32
cumulative product whose relative error after T = 100 factors is ≲ 100 · 6e-8 ≈ 6e-6). Through
a 5-step sampler the network (whose outputs are O(1)) sees inputs that differ by that much,
and the U-Net's own float32 arithmetic in two memory layouts (noisecraft runs it channels_last)
differs by ~1e-6. Samples in [0, 1] are compared at atol 2e-4: 100× the worst difference
measured over every prediction × schedule × sampler (1.9e-6, ``benchmarks/diffusers_parity.py``;
the export tests' redrawn weights add the conversion's own float32 rounding), and 20× below the
1/255 = 4e-3 step of an 8-bit picture, while a wrong time offset (t instead of t − 1), grid or
variance moves samples by ≥ 1e-2 (checked by breaking each once).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    UNet2DModel,
)

import noisecraft  # noqa: E402
from noisecraft.cli import main  # noqa: E402
from noisecraft.diffusers_export import EXPORTABLE_PRESETS  # noqa: E402
from noisecraft.diffusers_io import diffusion_timesteps  # noqa: E402
from noisecraft.errors import RunError  # noqa: E402

ATOL = 2e-4
T = 100


def tiny_unet(seed: int = 0, out_channels: int = 1) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=out_channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                       attention_head_dim=8)


def write_folder(path, pipeline: str = "ddpm", **scheduler) -> str:
    """A DDPMPipeline (DDPMScheduler) or DDIMPipeline (DDIMScheduler) folder at ``path``."""
    options = {"num_train_timesteps": T, "beta_start": 1e-3, "beta_end": 0.1, **scheduler}
    if pipeline == "ddpm":
        DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(**options)).save_pretrained(path)
    else:
        DDIMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(**options)).save_pretrained(path)
    return str(path)


def to_unit(x: torch.Tensor) -> np.ndarray:
    """noisecraft's model-space samples as diffusers' ``output_type="np"`` pictures."""
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


SCHEDULES = [dict(beta_schedule="linear"), dict(beta_schedule="squaredcos_cap_v2")]
PREDICTIONS = ["epsilon", "v_prediction"]


# --------------------------------------------------------------------------- conventions
@pytest.mark.parametrize("scheduler", [
    dict(beta_schedule="linear"), dict(beta_schedule="scaled_linear"),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(trained_betas=np.linspace(2e-3, 0.05, T).tolist())])
def test_schedule_is_diffusers_alphas_cumprod(tmp_path, scheduler):
    folder = write_folder(tmp_path, **scheduler)
    run = noisecraft.load_run(folder)
    reference = DDPMScheduler.from_pretrained(folder, subfolder="scheduler").alphas_cumprod
    # ᾱ_t = alphas_cumprod[t − 1]. diffusers works in float32 (unit roundoff u = 6e-8): its
    # cumprod of T factors errs by ≲ T·u relative, and each α = 1 − β by u·β/(1 − β) (the
    # cancellation near β = 1: 6e-5 for the cosine schedule's capped β = 0.999).
    betas = run.schedule.betas
    rtol = 6e-8 * (T + float((betas / (1 - betas)).sum()))
    torch.testing.assert_close(run.schedule.alpha_bars, reference.double(), rtol=rtol, atol=0)


def test_net_is_diffusers_unet_at_index_t_minus_1(tmp_path):
    folder = write_folder(tmp_path, clip_sample=False)  # ε̂ is the raw output (no x̂_0 clamp)
    run = noisecraft.load_run(folder)
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet", use_safetensors=True,
                                       local_files_only=True)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1.0, 37.0, float(T)])
    with torch.no_grad():
        expected = unet(x, t - 1).sample
        other = unet(x, t).sample  # the off-by-one this test must catch
    got = run.denoiser(x, t).eps
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got - other).abs().max() > 1e-3


@pytest.mark.parametrize("spacing,offset,steps,expected", [
    ("leading", 0, 5, [80, 60, 40, 20, 0]), ("leading", 1, 5, [81, 61, 41, 21, 1]),
    ("trailing", 0, 5, [99, 79, 59, 39, 19]), ("linspace", 0, 4, [99, 66, 33, 0])])
def test_timesteps_are_diffusers_set_timesteps(spacing, offset, steps, expected, tmp_path):
    scheduler = DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == expected
    folder = write_folder(tmp_path, timestep_spacing=spacing, steps_offset=offset)
    run = noisecraft.load_run(folder)
    assert diffusion_timesteps(run.mapping, steps) == expected
    assert run.diffusers_grid(steps, "ddpm").tolist() == [k + 1 for k in expected] + [0]


# --------------------------------------------------------------------------- sampling equality
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddim_equals_diffusers_ddim_pipeline(tmp_path, prediction, schedule, clip):
    """Same initial noise: both draw x_T by one torch.randn of the batch shape from generators
    seeded alike (diffusers' randn_tensor with a CPU generator is exactly that).

    With clip_sample, noisecraft's Denoiser clamps x̂_0 and recomputes ε̂ from it: diffusers'
    DDIM does that under ``use_clipped_model_output=True``; by default it pairs the clamped x̂_0
    with the raw ε̂, a mixed reading noisecraft does not have (README, "Models from diffusers")."""
    folder = write_folder(tmp_path, "ddim", prediction_type=prediction, steps_offset=1,
                          clip_sample=clip, **schedule)
    run = noisecraft.load_run(folder)
    pipe = DDIMPipeline.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), eta=0.0,
                    num_inference_steps=5, output_type="np",
                    use_clipped_model_output=True if clip else None).images
    got = noisecraft.sample(run.denoiser, (2, 1, 8, 8), run.schedule, sampler="ddim",
                            grid=run.diffusers_grid(5, "ddim"),
                            generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(to_unit(got), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("prediction", [*PREDICTIONS, "sample"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddpm_equals_diffusers_ddpm_pipeline(tmp_path, prediction, schedule):
    """Same initial and per-step noise: diffusers draws x_T, then one randn of the batch shape
    per step with t > 0 (none on the last step onto ᾱ = 1), from the one generator; noisecraft's
    ddpm draws x_T, then one per step onto s > 0, from its BatchNoise over the same generator:
    the same calls in the same order."""
    folder = write_folder(tmp_path, "ddpm", prediction_type=prediction, **schedule)
    run = noisecraft.load_run(folder)
    pipe = DDPMPipeline.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(4),
                    num_inference_steps=5, output_type="np").images
    got = noisecraft.sample(run.denoiser, (2, 1, 8, 8), run.schedule, sampler="ddpm",
                            grid=run.diffusers_grid(5, "ddpm"),
                            generator=torch.Generator().manual_seed(4))
    np.testing.assert_allclose(to_unit(got), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variance", ["fixed_large", "learned_range"])
def test_ddpm_variance_types_equal_diffusers(tmp_path, variance):
    """fixed_large is the ddpm sampler's variance="beta" (σ²_{t|s} = 1 − ᾱ_t/ᾱ_s, diffusers'
    current β_t); learned_range is the learned interpolation between log β̃ and log β."""
    out_channels = 2 if variance == "learned_range" else 1
    DDPMPipeline(unet=tiny_unet(out_channels=out_channels), scheduler=DDPMScheduler(
        num_train_timesteps=T, beta_start=1e-3, beta_end=0.1, variance_type=variance)
    ).save_pretrained(tmp_path)
    run = noisecraft.load_run(tmp_path)
    assert run.source["mapped"]["ddpm_variance"] == {"fixed_large": "beta"}.get(variance, "learned")
    pipe = DDPMPipeline.from_pretrained(tmp_path, use_safetensors=True, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(6),
                    num_inference_steps=5, output_type="np").images
    got = noisecraft.sample(run.denoiser, (2, 1, 8, 8), run.schedule, sampler="ddpm",
                            grid=run.diffusers_grid(5, "ddpm"),
                            options={"variance": run.source["mapped"]["ddpm_variance"]},
                            generator=torch.Generator().manual_seed(6))
    np.testing.assert_allclose(to_unit(got), expected, atol=ATOL, rtol=0)


def test_trailing_spacing_is_noisecraft_respaced_grid(tmp_path):
    folder = write_folder(tmp_path, "ddim", timestep_spacing="trailing")
    run = noisecraft.load_run(folder)
    pipe = DDIMPipeline.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(5), eta=0.0,
                    num_inference_steps=5, output_type="np", use_clipped_model_output=True).images
    # No grid given: noisecraft's own respaced grid, which is diffusers' "trailing".
    got = noisecraft.sample(run.denoiser, (2, 1, 8, 8), run.schedule, sampler="ddim", steps=5,
                            generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(to_unit(got), expected, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("key,value", [("thresholding", True), ("rescale_betas_zero_snr", True),
                                       ("beta_schedule", "sigmoid")])
def test_unmappable_scheduler_options_are_refused_by_name(tmp_path, key, value):
    folder = write_folder(tmp_path, **{key: value})
    with pytest.raises(RunError, match=key if key != "beta_schedule" else "sigmoid"):
        noisecraft.load_run(folder)


def test_unknown_scheduler_key_is_refused_by_name(tmp_path):
    folder = write_folder(tmp_path)
    path = tmp_path / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["shift_schedule"] = 3.0
    path.write_text(json.dumps(config))
    with pytest.raises(RunError, match="shift_schedule"):
        noisecraft.load_run(folder)


def test_pickled_weights_are_refused_naming_the_file(tmp_path):
    folder = write_folder(tmp_path)
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(tmp_path / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(RunError, match=r"diffusion_pytorch_model\.bin"):
        noisecraft.load_run(folder)


def test_ddim_grid_refused_where_diffusers_skips_its_own_timesteps(tmp_path):
    folder = write_folder(tmp_path, "ddim", timestep_spacing="trailing")
    run = noisecraft.load_run(folder)
    with pytest.raises(ValueError, match="no noisecraft grid"):
        run.diffusers_grid(3, "ddim")  # 100 / 3: diffusers steps 66 → 33 but visits 32


# --------------------------------------------------------------------------- commands
def test_sample_and_nll_commands_on_a_folder(tmp_path, capsys, shared_data):
    folder = write_folder(tmp_path / "f")
    out = tmp_path / "s"
    assert main(["sample", folder, "--n", "2", "--steps", "5", "--out", str(out),
                 "--no-progress"]) == 0
    with np.load(f"{out}.npz") as f:
        assert f["images"].shape == (2, 8, 8, 1)
    capsys.readouterr()
    # digits hold 17 levels (0..16), not 8-bit pixels: scored as continuous values.
    assert main(["nll", folder, "--data", "digits", "--n", "2", "--method", "vlb", "--json",
                 "--continuous", "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert np.isfinite(record["mean"])
    source = record["source"]
    assert source["kind"] == "diffusers" and source["mapped"]["beta_schedule"] == "linear"
    assert len(source["sha256"]["unet/diffusion_pytorch_model.safetensors"]) == 64
    assert main(["evaluate", folder, "--data", "digits", "--n", "8", "--steps", "3",
                 "--features", "digits", "--metrics", "fid", "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert metrics["source"] == source and np.isfinite(metrics["fid"])
    # explain: a folder records no training data, so it names the data it explains with
    capsys.readouterr()
    assert main(["explain", folder, "--out", str(tmp_path / "r.html")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["explain", folder, "--data", "digits", "--out", str(tmp_path / "r.html"),
                 "--samples", "8", "--held-out", "8", "--steps", "3",
                 "--sections", "schedule", "forward", "loss", "--no-progress"]) == 0
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") >= 3


# --------------------------------------------------------------------------- export
def trained_run(run_dir, **build):
    """A 1-step digits run of the tiny preset with T = 1000 (what export needs)."""
    from noisecraft import data
    from noisecraft.train import TrainConfig, Trainer, new_run_config

    dataset = data.load("digits")
    train = TrainConfig(steps=1, batch_size=8, warmup=0, log_every=1, sample_every=0,
                        checkpoint_every=0)
    config = new_run_config(dataset, "digits", net="tiny", T=1000, train=train, **build)
    Trainer(config, run_dir, dataset, device="cpu", progress=False).fit()
    return str(run_dir)


def randomized(run):
    """The run with every weight redrawn: a trained-for-one-step net is mostly its zero-initialised
    output convolutions, which would hide a wrong mapping of everything before them."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in run.net.parameters():
            p.normal_(0, 0.1)
    return run


@pytest.mark.parametrize("build", [
    dict(), dict(net_overrides={"time_conditioning": "add"}, prediction="v", schedule="cosine")])
def test_export_samples_equal_noisecraft_and_round_trip(tmp_path, build):
    from noisecraft import nets
    from noisecraft.diffusers_export import export_diffusers
    from noisecraft.diffusers_io import load_pipeline_folder

    run = randomized(noisecraft.load_run(trained_run(tmp_path / "run", **build)))
    out = export_diffusers(run, tmp_path / "out")
    shape = (2, *run.shape)

    def ours(r, sampler):  # noisecraft's own default grid: respaced = diffusers' "trailing"
        return noisecraft.sample(r.denoiser, shape, r.schedule, sampler=sampler, steps=5,
                                 generator=torch.Generator().manual_seed(7))

    ddpm = DDPMPipeline.from_pretrained(out, use_safetensors=True, local_files_only=True)
    ddpm.set_progress_bar_config(disable=True)
    expected = ddpm(batch_size=2, generator=torch.Generator().manual_seed(7),
                    num_inference_steps=5, output_type="np").images
    np.testing.assert_allclose(to_unit(ours(run, "ddpm")), expected, atol=ATOL, rtol=0)
    ddim = DDIMPipeline.from_pretrained(out, use_safetensors=True, local_files_only=True)
    ddim.set_progress_bar_config(disable=True)
    expected = ddim(batch_size=2, generator=torch.Generator().manual_seed(7), eta=0.0,
                    num_inference_steps=5, output_type="np", use_clipped_model_output=True).images
    np.testing.assert_allclose(to_unit(ours(run, "ddim")), expected, atol=ATOL, rtol=0)
    # What `noisecraft sample --seed 0` draws (run.generate_tensor: example i from its own stream,
    # seeded example_seed(0, i)) is what DDPMPipeline draws from one generator per example so
    # seeded: diffusers' randn_tensor with a list of generators draws each example from its own.
    from noisecraft.noise import example_seed

    streams = [torch.Generator().manual_seed(example_seed(0, i)) for i in range(2)]
    expected = ddpm(batch_size=2, generator=streams, num_inference_steps=5, output_type="np").images
    command = run.generate_tensor(2, sampler="ddpm", steps=5, seed=0)
    np.testing.assert_allclose(to_unit(command), expected, atol=ATOL, rtol=0)
    back = noisecraft.load_run(out)  # the round trip: the exported folder read as a run
    assert isinstance(back.net, nets.UNet) and back.config.net == run.config.net  # converted
    wrapped = load_pipeline_folder(out, native=False)  # and through diffusers' own UNet2DModel
    np.testing.assert_allclose(to_unit(ours(wrapped, "ddpm")), to_unit(ours(run, "ddpm")),
                               atol=ATOL, rtol=0)
    assert back.schedule == run.schedule or torch.allclose(back.schedule.alpha_bars,
                                                           run.schedule.alpha_bars, rtol=1e-12)
    assert back.config.prediction == run.config.prediction
    assert back.config.sampling.clip == run.config.sampling.clip
    for sampler in ("ddpm", "ddim"):
        np.testing.assert_allclose(to_unit(ours(back, sampler)), to_unit(ours(run, sampler)),
                                   atol=ATOL, rtol=0)


@pytest.mark.parametrize("preset", EXPORTABLE_PRESETS)
def test_every_preset_said_to_export_is_a_unet2dmodel(preset):
    """The presets the refusal names: each converts to a UNet2DModel that computes the same
    function (random weights, so no zero-initialised layer hides a wrong mapping; diffusers'
    index t − 1 is noisecraft's t), to float32 rounding."""
    from noisecraft import nets
    from noisecraft.diffusers_export import check_exportable, to_unet2d

    net = nets.build(preset).eval()   # dropout off: the same function both ways
    check_exportable(net.config, 1000)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    unet = to_unet2d(net).eval()
    c, size = net.config["in_channels"], net.config["image_size"]
    x, t = torch.randn(2, c, size, size), torch.tensor([10.0, 700.0])
    with torch.no_grad():
        ours, theirs = net(x, t), unet(x, t - 1).sample
    assert (ours - theirs).abs().max() <= 1e-5 * ours.abs().max()


def test_a_net_whose_group_norms_vary_is_refused_naming_the_width():
    """The `mnist` preset (widths 48, 96, 96 with norm_groups 32) normalises 48 channels in 24
    groups, which UNet2DModel's single norm_num_groups cannot say: refused, not exported wrongly."""
    from noisecraft import nets
    from noisecraft.diffusers_export import check_exportable

    assert "mnist" not in EXPORTABLE_PRESETS
    with pytest.raises(ValueError, match="norm_groups 32 does not divide the channel width 48"):
        check_exportable(nets.build("mnist").config, 1000)


def test_ddpm_cifar10_preset_is_unet2dmodel_sized():
    from noisecraft import nets
    from noisecraft.diffusers_export import to_unet2d

    net = nets.build("ddpm-cifar10")
    unet = to_unet2d(net)
    assert sum(p.numel() for p in unet.parameters()) == 35_746_307 == sum(
        p.numel() for p in net.parameters())


def test_export_command_and_its_refusal(tmp_path, capsys):
    run_dir = trained_run(tmp_path / "run")
    out = tmp_path / "out"
    assert main(["export", run_dir, str(out), "--format", "diffusers"]) == 0
    pipe = DDPMPipeline.from_pretrained(out, use_safetensors=True, local_files_only=True)
    assert pipe.unet.config.sample_size == 8
    assert main(["export", run_dir, str(out)]) == 2  # exists: refused, not overwritten
    capsys.readouterr()
    from train_helpers import train, vector_config

    config, dataset = vector_config(steps=1)
    train(tmp_path / "mlp", config, dataset)
    assert main(["export", str(tmp_path / "mlp"), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "no diffusers counterpart" in err and "ddpm-cifar10" in err
    assert not (tmp_path / "out2").exists()
    # a flow run's U-Net would export, but its reading has no diffusers scheduler: one line
    flow = trained_run(tmp_path / "flow", schedule="flow", prediction="flow")
    assert main(["export", flow, str(tmp_path / "out3")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("noisecraft: error: prediction 'flow' has no diffusers scheduler") \
        and err.count("\n") == 1
    assert not (tmp_path / "out3").exists()


@pytest.mark.parametrize("cls", ["DDPMScheduler", "DDIMScheduler"])
def test_scheduler_defaults_are_the_installed_diffusers(cls):
    import inspect

    import diffusers

    from noisecraft.diffusers_io import SCHEDULER_DEFAULTS

    params = inspect.signature(getattr(diffusers, cls).__init__).parameters
    assert SCHEDULER_DEFAULTS[cls] == {k: p.default for k, p in params.items()
                                       if p.default is not inspect.Parameter.empty}


def test_default_unet2dmodel_is_wrapped_and_an_exported_one_converted(tmp_path, monkeypatch):
    import sys

    from noisecraft import nets
    from noisecraft.diffusers_export import export_diffusers
    from noisecraft.diffusers_io import DiffusersUNet

    wrapped = noisecraft.load_run(write_folder(tmp_path / "a", num_train_timesteps=1000))
    assert isinstance(wrapped.net, DiffusersUNet)  # flip_sin_to_cos=True: no noisecraft twin
    assert wrapped.source["net"].startswith("diffusers")
    out = export_diffusers(noisecraft.load_run(trained_run(tmp_path / "run")), tmp_path / "out")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # any import of diffusers now fails
    native = noisecraft.load_run(out)
    assert isinstance(native.net, nets.UNet) and native.source["net"].startswith("converted")


def test_other_pipelines_are_refused_naming_them(tmp_path):
    folder = write_folder(tmp_path)
    index = tmp_path / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()),
                                 "_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(RunError, match="StableDiffusionXLPipeline"):
        noisecraft.load_run(folder)


@pytest.mark.parametrize("pipeline", ["ddpm", "ddim"])
def test_the_command_walks_the_folders_own_timesteps(tmp_path, pipeline):
    """`noisecraft sample FOLDER` (run.generate_tensor) is the folder's pipeline on its own
    default "leading" spacing with steps_offset 1 — not noisecraft's respaced grid — given the
    per-example noise streams the command draws (one generator per example, seeded alike)."""
    from noisecraft.noise import example_seed

    folder = write_folder(tmp_path, pipeline, steps_offset=1)
    run = noisecraft.load_run(folder)
    cls = DDPMPipeline if pipeline == "ddpm" else DDIMPipeline
    pipe = cls.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    streams = [torch.Generator().manual_seed(example_seed(0, i)) for i in range(2)]
    # DDIMScheduler clips x̂_0 by default: its reading with the clamped x̂_0 is ours (see above)
    kw = {"eta": 0.0, "use_clipped_model_output": True} if pipeline == "ddim" else {}
    expected = pipe(batch_size=2, generator=streams, num_inference_steps=5, output_type="np",
                    **kw).images
    got = run.generate_tensor(2, sampler=pipeline, steps=5, seed=0)
    np.testing.assert_allclose(to_unit(got), expected, atol=ATOL, rtol=0)


def test_no_ema_on_a_folder_is_refused_not_ignored(tmp_path, capsys):
    folder = write_folder(tmp_path / "f", "ddpm")
    with pytest.raises(ValueError, match="one set of weights"):
        noisecraft.load_run(folder, use_ema=False)
    assert main(["sample", folder, "--n", "1", "--steps", "2", "--no-ema",
                 "--out", str(tmp_path / "s")]) == 2
    assert "--no-ema" in capsys.readouterr().err
    assert main(["sample", folder, "--n", "1", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    assert f"the weights of {folder}" in capsys.readouterr().out
