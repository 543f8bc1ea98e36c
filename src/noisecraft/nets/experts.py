"""Per-noise-level experts (eDiff-I, Balaji et al. 2022): K backbones on disjoint t intervals,
routed by t, so that to the Denoiser, the samplers, guidance, the likelihood, EMA and checkpoints
they are ONE net called as ``net(x_t, t, **cond)``.

Expert k owns t ∈ (T·k/K, T·(k+1)/K] — equal shares of the library's t (t ≤ T/K, t = 0
included, goes to expert 0; t > T to the last). Equal shares of t, not of log-SNR, because t is
what the trainer draws: under the default uniform time sampler each expert gets 1/K of every
batch, so the K nets train for the same compute and the router's cost is one expert's. (A
log-SNR split would give the few high-SNR steps of a linear schedule a whole expert.)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .config import boolean, positive_int
from .layers import expand_time


class Experts(nn.Module):
    """``experts(x_t, t, **cond)``: each example is denoised by the expert owning its t.

    Args:
        expert: one expert's config (``net.config`` of a unet, dit or mlp; its ``T`` sizes the
            intervals).
        experts: K, the number of experts (1 ≤ K ≤ T).
        shared_init: all experts start from the same weights (eDiff-I's shared initialisation);
            otherwise each is initialised by its own draw.
    """

    arch = "experts"
    routed = True  # an example uses one expert's parameters: DDP must expect unused ones

    def __init__(self, expert: Mapping[str, Any], experts: int = 2, shared_init: bool = False):
        super().__init__()
        from .presets import from_config

        if not isinstance(expert, Mapping) or expert.get("arch") in (None, self.arch):
            raise ValueError(f"expert must be one network's config (a dict with an 'arch' other "
                             f"than 'experts'), got {expert!r}")
        experts = positive_int("experts", experts)
        shared_init = boolean("shared_init", shared_init)
        first = from_config(expert)
        if hasattr(first, "fit_closed_form"):
            raise ValueError(f"arch {expert['arch']!r} is solved in closed form, not trained: it "
                             "cannot be split into noise-level experts")
        T = first.config.get("T")
        if not isinstance(T, (int, float)) or isinstance(T, bool):
            raise ValueError(f"arch {expert['arch']!r} has no schedule length T to split")
        if experts > T:
            raise ValueError(f"experts = {experts} is more than T = {T} steps: an expert would "
                             "own no step")
        self.T, self.K = T, experts
        self._config = dict(expert=first.config, experts=experts, shared_init=shared_init)
        # One constructor call per expert draws each one's own initialisation from the global RNG.
        self.experts = nn.ModuleList(
            [first] + [copy.deepcopy(first) if shared_init else from_config(expert)
                       for _ in range(experts - 1)])
        # Upper ends T·k/K of experts 0..K−2 (float64: exact for integer t up to 2^53).
        self.register_buffer("boundaries", torch.arange(1, experts, dtype=torch.float64) * T / experts,
                             persistent=False)

    @property
    def config(self) -> dict[str, Any]:
        """The JSON-able arguments that rebuild this router: ``nets.from_config(config)``."""
        return {"arch": self.arch, **self._config}

    def __getattr__(self, name: str) -> Any:
        # sample_shape, out_shape, num_classes, ...: every expert has the same, expert 0's.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name in ("experts", "boundaries"):
                raise
            return getattr(self._modules["experts"][0], name)

    def expert_of(self, t: Tensor) -> Tensor:
        """The index k of the expert owning each t: T·k/K < t ≤ T·(k+1)/K (clamped to 0..K−1)."""
        return torch.bucketize(t.to(torch.float64), self.boundaries.to(t.device), right=False)

    def forward(self, x: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        t = expand_time(t, x)
        which = self.expert_of(t)
        present = torch.unique(which).tolist()
        if len(present) == 1:  # the samplers' case (one t per call): no gather, no scatter
            return self.experts[present[0]](x, t, **cond)
        out: Tensor | None = None
        for k in present:
            idx = (which == k).nonzero().squeeze(1)
            y = self.experts[k](x[idx], t[idx], **_take(cond, idx, x.shape[0]))
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out[idx] = y
        assert out is not None
        return out


def _take(cond: dict[str, Any], idx: Tensor, batch: int) -> dict[str, Any]:
    """The conditioning of the examples ``idx``: per-example tensors (leading dim ``batch``) are
    indexed, anything else (None, a scalar label, options) is passed as is."""
    return {k: v[idx] if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == batch else v
            for k, v in cond.items()}
