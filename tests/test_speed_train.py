"""The training step's fast paths (train/accel.py): fused AdamW, compile with an eager fallback,
bf16 autocast — each checked against the plain computation."""

import math
import warnings

import pytest
import torch
from torch import nn

from noisecraft import Denoiser, Schedule, losses, nets
from noisecraft.config import TrainConfig
from noisecraft.train import accel

SMALL_UNET = {"base_channels": 8, "norm_groups": 4, "attention_resolutions": [4]}


def test_adamw_is_fused_and_follows_the_adamw_equations():
    """Three fused steps against AdamW written out in float64 (Loshchilov & Hutter, Alg. 2)."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(5, 4))
    opt = accel.optimizer([p], torch.device("cpu"), lr=0.1, betas=(0.9, 0.99), weight_decay=0.01)
    assert opt.defaults["fused"] is True
    theta, m, v = p.detach().double().clone(), 0.0, 0.0
    for step in range(1, 4):
        g = torch.randn(5, 4)
        p.grad = g.clone()
        opt.step()
        g = g.double()
        theta = theta * (1 - 0.1 * 0.01)
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g**2
        theta = theta - 0.1 * (m / (1 - 0.9**step)) / ((v / (1 - 0.99**step)).sqrt() + 1e-8)
    # float32 arithmetic over 3 steps of size ~0.1: a few ulp of |θ| ~ 1.
    torch.testing.assert_close(p.detach().double(), theta, rtol=0, atol=1e-6)


def test_compile_mode_resolution_and_config_check():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not accel.use_compile("auto", cpu) and accel.use_compile("auto", cuda)
    assert accel.use_compile("on", cpu) and not accel.use_compile("off", cuda)
    assert TrainConfig().compile == "auto"
    with pytest.raises(ValueError, match="compile must be one of auto, on, off, got 'yes'"):
        TrainConfig(compile="yes")


def test_channels_last_only_for_image_batches_on_cuda():
    assert accel.memory_format(torch.device("cuda")) is torch.channels_last
    assert accel.memory_format(torch.device("cpu")) is torch.contiguous_format
    x = accel.to_memory_format(torch.randn(2, 3, 4, 4), torch.channels_last)
    assert x.is_contiguous(memory_format=torch.channels_last)
    v = torch.randn(2, 3)
    assert accel.to_memory_format(v, torch.channels_last) is v


def _fixed_batch_loss(net, schedule, autocast=False):
    """The trainer's loss on a fixed (x_0, t, ε)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        per_example = losses.simple(Denoiser(net, schedule, "eps"), x0, generator=g)
    return per_example.float().mean()


def _net():
    """A small U-Net whose zero-initialised layers (the output convolution among them) are made
    random, so that ε̂ ≠ 0 and the precision of the network shows in the loss."""
    torch.manual_seed(0)
    net = nets.build("tiny", T=100, **SMALL_UNET)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return net


def test_bf16_autocast_on_the_cpu_runs_and_stays_near_float32():
    """bf16 keeps 8 significant bits (relative rounding 2⁻⁹ ≈ 0.2 %) in the convolutions and the
    attention matmuls; the loss, the Denoiser's reading and the schedule stay float32/64. The
    output error of such a net is a few × 2⁻⁹ of its size, and the loss (mean of (ε − ε̂)², with
    ε̂ far from ε for an untrained net) moves by about as much: 1 % is that bound with margin,
    while a loss computed in bf16 itself or a broken network would miss it."""
    schedule = Schedule.linear(100)
    net = _net()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(torch.zeros(2, 1, 8, 8), torch.ones(2)).dtype == torch.bfloat16  # really bf16
    fp32, bf16 = _fixed_batch_loss(net, schedule), _fixed_batch_loss(net, schedule, autocast=True)
    assert bf16.dtype == torch.float32 and math.isfinite(bf16.item())
    assert fp32.item() != bf16.item()
    assert abs(bf16.item() - fp32.item()) < 1e-2 * fp32.item()
    bf16.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())


def test_a_compile_failure_falls_back_to_the_eager_module_with_one_warning():
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    net = nn.Linear(3, 2)
    wrapped = accel.CompiledOrEager(net, backend=broken_backend)
    assert [n for n, _ in wrapped.named_parameters()] == ["eager.weight", "eager.bias"]
    x = torch.randn(4, 3)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no compiler here"):
        out = wrapped(x)
    torch.testing.assert_close(out, net(x), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # no second warning, no second attempt
        wrapped(x)


def test_compile_fallback_still_raises_real_model_errors():
    net = nn.Linear(3, 2)
    wrapped = accel.CompiledOrEager(net, backend="eager")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped(torch.randn(4, 5))


@pytest.mark.parametrize("preset", ["tiny", pytest.param("mnist", marks=pytest.mark.slow),
                                    pytest.param("ddpm-cifar10", marks=pytest.mark.slow)])
def test_the_unet_forward_has_no_graph_breaks(preset):
    """Dynamo traces each compiled preset's forward as one graph (tracing only, no codegen)."""
    torch._dynamo.reset()
    net = nets.build(preset, T=1000)
    c, s = net.config["in_channels"], net.config["image_size"]
    explanation = torch._dynamo.explain(net)(torch.randn(2, c, s, s), torch.full((2,), 10.0))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compiled_and_eager_training_steps_agree():
    """Inductor on the CPU (C++ codegen) against eager: the same loss and gradients up to float32
    re-association (fused kernels sum in another order: ~1e-6 relative)."""
    torch._dynamo.reset()
    schedule = Schedule.linear(100)
    eager, compiled_net = _net(), _net()
    compiled = accel.CompiledOrEager(compiled_net)
    loss_e = _fixed_batch_loss(eager, schedule)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # a fallback would make this vacuous
        loss_c = _fixed_batch_loss(compiled, schedule)
    assert compiled.failed is None
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    loss_e.backward()
    loss_c.backward()
    for (name, pe), pc in zip(eager.named_parameters(), compiled_net.parameters(), strict=True):
        torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-4, atol=1e-6, msg=name)
