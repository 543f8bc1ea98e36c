"""Inference runs the network in channels_last (run.INFERENCE_MEMORY_FORMAT) and nobody can tell.

The layout changes only the order in which oneDNN sums a convolution's products, so outputs agree
with the contiguous network to float32 rounding: each of the ~40 layers adds relative errors of a
few ×1e-7, so 1e-5 of the output scale is a bound with room, while a wrong layout handling (a
permuted channel, a transposed image) would differ at the output's own scale.
"""

import sys
from pathlib import Path

import torch

from noisecraft import nets
from noisecraft.run import INFERENCE_MEMORY_FORMAT, load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_helpers import image_config, train  # noqa: E402


def _randomised(net: torch.nn.Module) -> torch.nn.Module:
    """Non-zero weights everywhere (presets start their last convs at zero, hiding any error)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net.eval()


def test_channels_last_unet_matches_contiguous_and_returns_the_input_layout():
    contiguous = _randomised(nets.build("tiny", in_channels=3))
    fast = _randomised(nets.build("tiny", in_channels=3)).to(memory_format=INFERENCE_MEMORY_FORMAT)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1.0, 10.0, 100.0, 999.0])
    with torch.no_grad():
        want, got = contiguous(x, t), fast(x, t)
        got_nhwc = fast(x.contiguous(memory_format=torch.channels_last), t)
    assert got.is_contiguous()                       # back in the caller's layout
    assert got_nhwc.is_contiguous(memory_format=torch.channels_last)
    scale = want.abs().max()
    assert scale > 1e-2
    assert (got - want).abs().max() <= 1e-5 * scale
    assert (got_nhwc - want).abs().max() <= 1e-5 * scale


def test_load_run_holds_the_network_in_the_inference_layout(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, *image_config(steps=2))
    run = load_run(run_dir)
    convs = [m.weight for m in run.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=INFERENCE_MEMORY_FORMAT) for w in convs)
    images = run.generate_tensor(4, steps=3, seed=0)
    assert images.is_contiguous()
    contiguous = run.net.to(memory_format=torch.contiguous_format)
    assert contiguous is run.net
    again = run.generate_tensor(4, steps=3, seed=0)
    assert (images - again).abs().max() <= 1e-5 * again.abs().max()
