"""Exponential moving average of a network's weights.

After every optimizer step each floating-point parameter and buffer θ̄ of the shadow network moves
towards the trained one θ:

    θ̄ ← d θ̄ + (1 − d) θ,   d = min(decay, (1 + n) / (10 + n)) with ``warmup``, else ``decay``,

where n counts the updates made so far. The warm-up keeps the average from being dominated by
the random initial weights in short runs (the demo trains for a few hundred steps, where a plain
d = 0.999 would still remember the initialisation with weight 0.999^500 ≈ 0.6).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A shadow copy of ``net`` whose weights are the exponential moving average of ``net``'s.

    ``update(net)`` must be called after every optimizer step; ``num_updates`` counts the calls
    so a test (and :mod:`noisecraft.train.checkpoint`) can tell an average that never moved.
    """

    def __init__(self, net: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.net = copy.deepcopy(net).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The d used by the next :meth:`update`."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        d = self.current_decay()
        shadow = self.net.state_dict()
        averaged, live = [], []
        for name, value in net.state_dict().items():
            avg = shadow[name]
            if avg.dtype.is_floating_point:
                averaged.append(avg)
                live.append(value.detach().to(avg.dtype))
            else:  # integer buffers (e.g. counters) are copied, not averaged
                avg.copy_(value)
        # One multi-tensor lerp for all floating-point tensors: a few kernel launches per step
        # instead of one per tensor (a U-Net has hundreds). Same arithmetic as avg.lerp_(θ, 1 − d).
        for group in _by_device_and_dtype(averaged, live):
            torch._foreach_lerp_(group[0], group[1], 1.0 - d)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.net.load_state_dict(state)
        self.num_updates = int(num_updates)


def _by_device_and_dtype(averaged: list[torch.Tensor], live: list[torch.Tensor]
                         ) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Pairs grouped so that each foreach call sees one device and one dtype."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
    for avg, value in zip(averaged, live, strict=True):
        a, v = groups.setdefault((avg.device, avg.dtype), ([], []))
        a.append(avg)
        v.append(value.to(avg.device))
    return list(groups.values())
