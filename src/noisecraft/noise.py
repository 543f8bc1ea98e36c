"""Where samplers get their Gaussian noise: per-example streams, or one plain batched generator.

A noise source has a ``batch`` size and ``randn(event_shape, dtype=..., device=...)`` returning a
standard normal tensor of shape (batch, *event_shape). Samplers draw x_T and every stochastic
step from the source they are given, in a fixed order, and from nothing else.

:class:`ExampleNoise` gives example i its own ``torch.Generator``, seeded by a hash of
(seed, offset + i). Example i's noise therefore depends only on (seed, offset + i): a sample
drawn in a batch of 8 is the same sample drawn alone with ``offset=i``, so a picture does not
change with the batch size (the complaint about k-diffusion's SDE samplers, whose single batched
generator makes each example's noise depend on the whole batch). The draws are made on the CPU,
so they are also identical across devices.

:class:`BatchNoise` is the ordinary batched draw from one ``torch.Generator`` (or the global RNG).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from .checks import integer
from .seeding import derive_seed


class NoiseSource(Protocol):
    """Anything with a batch size and a batched standard-normal draw."""

    batch: int

    def randn(self, event_shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor: ...


def example_seed(seed: int, index: int) -> int:
    """The 63-bit seed of example ``index``'s stream (see :mod:`noisecraft.seeding`)."""
    return derive_seed("noisecraft", seed, index)


def _check_count(name: str, value: int, minimum: int) -> int:
    return integer(name, value, minimum=minimum)


def _draw_dtype(dtype: torch.dtype) -> torch.dtype:
    # Draw in float32 (or float64 when asked), then cast: half-precision draws would differ by
    # platform and carry too few bits for the tails.
    return torch.float64 if dtype == torch.float64 else torch.float32


class ExampleNoise:
    """One noise stream per example: generator i is seeded by ``example_seed(seed, offset + i)``.

    Args:
        seed: any integer.
        batch: the number of examples.
        offset: the global index of the first example (to draw examples offset..offset+batch-1).
    """

    def __init__(self, seed: int, batch: int, offset: int = 0):
        integer("seed", seed)
        self.seed = seed
        self.batch = _check_count("batch", batch, 1)
        self.offset = _check_count("offset", offset, 0)
        self.generators = [torch.Generator().manual_seed(example_seed(seed, offset + i))
                           for i in range(batch)]

    def __repr__(self) -> str:
        return f"ExampleNoise(seed={self.seed}, batch={self.batch}, offset={self.offset})"

    def randn(self, event_shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
        """Stack one draw of shape ``event_shape`` from each example's stream."""
        shape = tuple(event_shape)
        draw = _draw_dtype(dtype)
        out = torch.empty((self.batch, *shape), dtype=draw)
        for row, gen in zip(out, self.generators, strict=True):
            torch.randn(shape, generator=gen, dtype=draw, out=row)
        return out.to(device=device, dtype=dtype)


class BatchNoise:
    """Plain batched noise from one ``torch.Generator`` (``None``: the global RNG)."""

    def __init__(self, batch: int, generator: torch.Generator | None = None):
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.batch = _check_count("batch", batch, 1)
        self.generator = generator

    def __repr__(self) -> str:
        return f"BatchNoise(batch={self.batch}, generator={self.generator!r})"

    def randn(self, event_shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
        """One batched draw of shape (batch, *event_shape) on the generator's device."""
        gen_device = self.generator.device if self.generator is not None else device
        x = torch.randn((self.batch, *event_shape), generator=self.generator,
                        dtype=_draw_dtype(dtype), device=gen_device)
        return x.to(device=device, dtype=dtype)
