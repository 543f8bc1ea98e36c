"""The fast paths of a training step, each with a plain fallback.

- :func:`optimizer`: AdamW with its fused kernel (CUDA and CPU: one pass over each parameter's
  memory instead of a dozen; on one CPU thread a ddpm-cifar10 AdamW step takes 0.49 s fused
  against 1.66 s for the default loop and 1.69 s foreach, medians of 5), ``foreach`` elsewhere.
- :func:`use_compile`: whether ``TrainConfig.compile`` (``auto``: on CUDA only; compiling on a
  CPU costs about a minute for the step it saves) switches ``torch.compile`` on.
- :class:`CompiledOrEager`: the network compiled, falling back to the same eager module with one
  warning when compilation itself fails (no compiler, an unsupported op) — real errors in the
  model still raise, from the eager call.
- :func:`memory_format`: channels_last on CUDA, where cuDNN's convolutions and GroupNorm run
  faster in NHWC; contiguous elsewhere.

- :func:`use_bf16`: whether ``TrainConfig.precision`` (``auto``: on CUDA only) autocasts to bf16.

Mixed precision stays where it was decided (``Trainer._loss``): bf16 autocast (:func:`use_bf16`) around
the loss, whose element-wise parts (the Denoiser's reading, the schedule maths in float64, the
MSE) run in float32 because autocast leaves element-wise ops in their inputs' dtype and casts
``mse_loss`` to float32.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
from torch import nn

from ..config import COMPILE_MODES, PRECISIONS


def optimizer(params: Any, device: torch.device, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW, fused on CUDA and CPU, foreach elsewhere (the same update rule)."""
    fused_ok = "fused" in inspect.signature(torch.optim.AdamW).parameters
    if device.type in ("cuda", "cpu") and fused_ok:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    return torch.optim.AdamW(params, foreach=True, **kwargs)


def use_compile(mode: str, device: torch.device) -> bool:
    """``on``/``off`` as given; ``auto`` compiles on CUDA only."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def use_bf16(precision: str, device: torch.device) -> bool:
    """``bf16``/``fp32`` as given; ``auto`` autocasts to bf16 on CUDA only (on a CPU it pays only
    where the CPU has native bf16, which the user knows and asks for with ``bf16``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def memory_format(device: torch.device) -> torch.memory_format:
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def to_memory_format(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """x in ``fmt`` when it is an image batch (4-D); vectors are left alone."""
    return x.contiguous(memory_format=fmt) if x.ndim == 4 else x


class CompiledOrEager(nn.Module):
    """Calls ``torch.compile(module)``; if compiling fails, warns once and calls ``module``.

    ``module`` is kept as the attribute ``eager`` and shares every parameter with the compiled
    wrapper, so optimizers, EMA and checkpoints keep working on ``module`` itself.
    """

    def __init__(self, module: nn.Module, **compile_options: Any):
        super().__init__()
        self.eager = module
        # Not registered as a submodule: the parameters are listed once, under ``eager``.
        object.__setattr__(self, "compiled", torch.compile(module, **compile_options))
        self.failed: str | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 — any compiler failure means: run eagerly
                # If the model itself is wrong, the eager call below raises the real error.
                self.failed = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                warnings.warn(f"torch.compile failed ({self.failed}); training continues eagerly",
                              RuntimeWarning, stacklevel=2)
        return self.eager(*args, **kwargs)

    def no_sync(self) -> Any:   # DDP's context manager, when the eager module is DDP
        return self.eager.no_sync()


def match_layouts(opt: torch.optim.Optimizer) -> None:
    """Give each restored optimizer-state tensor its parameter's memory layout (a checkpoint
    stores contiguous tensors; fused kernels want exp_avg laid out like a channels_last param)."""
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    opt.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
