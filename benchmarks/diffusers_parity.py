"""How close noisecraft's samplers come to diffusers' own pipelines on diffusers folders.

    PYTHONPATH=src python benchmarks/diffusers_parity.py

For tiny random-weight UNet2DModel folders (8×8, 1 channel, T = 100) written by diffusers'
``save_pretrained``, prints the largest |Δ| between diffusers' ``DDIMPipeline``/``DDPMPipeline``
pictures (``output_type="np"``, [0, 1]) and noisecraft's on the folder's own timesteps
(``run.diffusers_grid``), drawn from the same torch generator, for each prediction type and
schedule; and, on the 35.7M-parameter ddpm-cifar10 preset with random weights, the largest
|Δ| between noisecraft's U-Net and the UNet2DModel export writes (called at t − 1). Prints only
(the figures are in the report that introduced it); a minute on one CPU core.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch


def tiny_unet(out_channels: int = 1):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=out_channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                       attention_head_dim=8)


def pictures(x: torch.Tensor) -> np.ndarray:
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def parity(kind: str, prediction: str, schedule: str) -> float:
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

    import noisecraft

    pipe_cls, sched_cls = ((DDIMPipeline, DDIMScheduler) if kind == "ddim"
                           else (DDPMPipeline, DDPMScheduler))
    with tempfile.TemporaryDirectory() as folder:
        pipe_cls(unet=tiny_unet(), scheduler=sched_cls(
            num_train_timesteps=100, beta_start=1e-3, beta_end=0.1, beta_schedule=schedule,
            prediction_type=prediction)).save_pretrained(folder)
        run = noisecraft.load_run(folder)
        pipe = pipe_cls.from_pretrained(folder, use_safetensors=True, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        extra = {"eta": 0.0, "use_clipped_model_output": True} if kind == "ddim" else {}
        theirs = pipe(batch_size=4, generator=torch.Generator().manual_seed(0),
                      num_inference_steps=10, output_type="np", **extra).images
        ours = noisecraft.sample(run.denoiser, (4, 1, 8, 8), run.schedule, sampler=kind,
                                 grid=run.diffusers_grid(10, kind),
                                 generator=torch.Generator().manual_seed(0))
        return float(np.abs(pictures(ours) - theirs).max())


def export_parity() -> float:
    from noisecraft import nets
    from noisecraft.diffusers_export import to_unet2d

    torch.manual_seed(0)
    net = nets.build("ddpm-cifar10").eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)
        unet = to_unet2d(net)
        x = torch.randn(2, 3, 32, 32)
        t = torch.tensor([1.0, 700.0])
        return float((net(x, t) - unet(x, t - 1).sample).abs().max())


def main() -> None:
    print("sampler  prediction     schedule            max |Δ| (pictures in [0, 1], 10 steps)")
    for kind in ("ddim", "ddpm"):
        for prediction in ("epsilon", "v_prediction", "sample"):
            for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"):
                print(f"{kind:8} {prediction:14} {schedule:19} "
                      f"{parity(kind, prediction, schedule):.2e}")
    print(f"ddpm-cifar10 net vs exported UNet2DModel at t - 1: max |Δ| {export_parity():.2e}")


if __name__ == "__main__":
    main()
