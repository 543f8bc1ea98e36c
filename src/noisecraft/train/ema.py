"""Exponential moving average of a network's weights.

After every optimizer step each floating-point parameter and buffer θ̄ of the shadow network moves
towards the trained one θ:

    θ̄ ← d θ̄ + (1 − d) θ,   d = min(decay, (1 + n) / (10 + n)) with ``warmup``, else ``decay``,

where n counts the updates made so far. The warm-up keeps the average from being dominated by
the random initial weights in short runs (the demo trains for a few hundred steps, where a plain
d = 0.999 would still remember the initialisation with weight 0.999^500 ≈ 0.6).

:class:`PowerEMA` tracks EDM2's power-function profiles besides it (maths in
:mod:`noisecraft.posthoc`): after step t each profile of exponent γ moves by the weight t^γ / S_t,
S_t = Σ_{τ≤t} τ^γ, so it is exactly Σ_τ (τ^γ / S_t) θ_τ and never holds the initial weights.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..posthoc import sigma_rel_to_gamma


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
        _lerp_towards(self.net, net, 1.0 - self.current_decay())
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.net.load_state_dict(state)
        self.num_updates = int(num_updates)


class PowerEMA:
    """Power-function EMA profiles of ``net``, one per length σ_rel (EDM2); ``update(net)`` after
    every optimizer step. ``sums[k]`` is S_t of profile k, kept in float64 and saved exactly."""

    def __init__(self, net: nn.Module, sigma_rels: Sequence[float]):
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        self.nets = [copy.deepcopy(net).eval().requires_grad_(False) for _ in self.sigma_rels]
        self.sums = [0.0 for _ in self.sigma_rels]
        self.num_updates = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        t = self.num_updates + 1
        for k, gamma in enumerate(self.gammas):
            self.sums[k] += float(t) ** gamma
            # weight 1 at t = 1: the first profile value is θ_1 exactly (lerp's end point)
            _lerp_towards(self.nets[k], net, float(t) ** gamma / self.sums[k])
        self.num_updates = t

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        return [n.state_dict() for n in self.nets]

    def load(self, states: Sequence[dict[str, torch.Tensor]], sums: Sequence[float],
             num_updates: int) -> None:
        for n, state in zip(self.nets, states, strict=True):
            n.load_state_dict(state)
        self.sums, self.num_updates = [float(s) for s in sums], int(num_updates)


def _lerp_towards(shadow_net: nn.Module, net: nn.Module, weight: float) -> None:
    """avg ← avg + weight (θ − avg) for every floating-point tensor; integer buffers copied."""
    shadow = shadow_net.state_dict()
    averaged, live = [], []
    for name, value in net.state_dict().items():
        avg = shadow[name]
        if avg.dtype.is_floating_point:
            averaged.append(avg)
            live.append(value.detach().to(avg.dtype))
        else:  # integer buffers (e.g. counters) are copied, not averaged
            avg.copy_(value)
    # One multi-tensor lerp for all floating-point tensors: a few kernel launches per step
    # instead of one per tensor (a U-Net has hundreds). Same arithmetic as avg.lerp_(θ, weight).
    for group in _by_device_and_dtype(averaged, live):
        torch._foreach_lerp_(group[0], group[1], weight)


def _by_device_and_dtype(averaged: list[torch.Tensor], live: list[torch.Tensor]
                         ) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Pairs grouped so that each foreach call sees one device and one dtype."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
    for avg, value in zip(averaged, live, strict=True):
        a, v = groups.setdefault((avg.device, avg.dtype), ([], []))
        a.append(avg)
        v.append(value.to(avg.device))
    return list(groups.values())
