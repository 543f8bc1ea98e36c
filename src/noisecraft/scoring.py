"""Likelihood of data under a trained run, in bits/dim: what ``noisecraft nll`` reports.

Units: 8-bit image data (a 0..255 source range) gives −log₂ P(k)/D for the 256 levels per value
— the number papers report — by the bound's discretised decoder (``method="vlb"``) or by uniform
dequantisation (``method="ode"``, which adds log₂ 127.5 per dimension to the density's bits).
Other data (digits' 0..16, vectors) is treated as continuous: −log₂ p(x)/D of the density in the
model's [−1, 1] units; ``continuous=True`` forces that for 8-bit data too. A latent run scores the
scaled posterior mean z of each picture: latent bits/dim, not comparable with pixel bits/dim.
The model is read without the x̂_0 clipping used for sampling (clipping is a sampler's choice,
not part of the density): :func:`likelihood_denoiser`.

Every batch's noise (probes, dequantisation, x_t) comes from a generator of (seed, the batch's
first example) alone, so the figures do not depend on how many ranks share the work. A
class-conditional run scores data with the data's labels, and a single picture (and its
reference split) with the null label, since the picture's class is unknown.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# A picture is ranked among this many of the split's examples unless n says otherwise: enough
# for a percentile to ±1.6 points (binomial standard error at 50 %), minutes not hours.
IMAGE_REFERENCE_N = 1000
METHODS = ("ode", "vlb")
DIVERGENCES = ("rademacher", "gaussian", "exact")


@dataclass(frozen=True)
class NllOptions:
    """How bits/dim are estimated (the defaults of ``noisecraft nll``)."""

    method: str = "ode"
    divergence: str = "rademacher"
    probes: int = 1
    rtol: float = 1e-5
    atol: float = 1e-5
    variance: str | None = None
    continuous: bool = False
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method == "ode" and self.variance is not None:
            raise ValueError("variance (--variance) applies to --method vlb only")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {self.divergence!r}; choose one of "
                             f"{', '.join(DIVERGENCES)}")


def likelihood_denoiser(run: Any) -> Any:
    """The run's Denoiser without x̂_0 clipping: the density the network defines."""
    return run.denoiser.unclipped()


def is_discrete(run: Any, continuous: bool = False) -> bool:
    """Whether the run's data is scored as 8-bit levels (pixels of a 0..255 source, not latents)."""
    pre = run.preprocess
    eight_bit = pre.kind == "image" and tuple(pre.value_range) == (0.0, 255.0)
    return eight_bit and not continuous and run.config.latent is None


def bits_per_dim(run: Any, x: Tensor, labels: Tensor | None = None,
                 options: NllOptions | None = None, start: int | str = 0) -> Tensor:
    """Bits/dim of a batch of data ``x`` in model space ([−1, 1] pictures for a latent run too,
    which are encoded here), per example, float64 on the CPU. ``start``: the batch's place in
    the scored set, which (with the seed) fixes its noise."""
    from .likelihood import nll
    from .seeding import derive_seed

    o = options or NllOptions()
    generator = torch.Generator().manual_seed(derive_seed("noisecraft-nll", o.seed, start))
    dev = run.device
    cond = {} if labels is None else {"labels": labels.to(dev)}
    if run.config.latent is not None:
        x = run.encode(x)
    kw: dict[str, Any] = {"discrete": is_discrete(run, o.continuous), "generator": generator,
                          "batch_size": o.batch_size}
    if o.method == "ode":
        kw.update(divergence=o.divergence, probes=o.probes, rtol=o.rtol, atol=o.atol)
    else:
        kw.update(variance=o.variance)
    return nll(likelihood_denoiser(run), x.to(dev), run.schedule, o.method, **kw, **cond).cpu()


def describe(run: Any, options: NllOptions) -> dict[str, Any]:
    """The settings that make the number, for the record written beside it."""
    from .process import resolve_variance

    latent = run.config.latent is not None
    discrete = is_discrete(run, options.continuous)
    record: dict[str, Any] = {
        "run_dir": str(run.run_dir), "step": run.step, "method": options.method,
        "units": "latent bits/dim" if latent else "bits/dim",
        "convention": ("8-bit: -log2 P(k)/D, " + ("uniform dequantisation"
                                                  if options.method == "ode"
                                                  else "discretised decoder")) if discrete
        else "latent: -log2 p(z)/D of the scaled posterior mean z, D latent values per example; "
        "not comparable with pixel bits/dim" if latent
        else "continuous: -log2 p(x)/D in the model's [-1, 1] units",
        "seed": options.seed,
    }
    if options.method == "ode":
        record.update(divergence=options.divergence, probes=options.probes, rtol=options.rtol,
                      atol=options.atol)
    else:
        record.update(variance=resolve_variance(options.variance, run.denoiser.learned_variance))
    if getattr(run, "source", None):  # where a run read from elsewhere came from (diffusers_io)
        record["source"] = run.source
    return record


def score_split(run: Any, spec: str, split: str = "test", n: int | None = None,
                options: NllOptions | None = None, *, null_labels: bool = False,
                progress: bool = False, ranks: Any = None, ranking: str | None = None
                ) -> Tensor | None:
    """Bits/dim of the first ``n`` examples (all when None) of ``spec``'s ``split``, in data
    order, through the run's own preprocessing (on rank 0; None on the other ranks, each of
    which scores its share of the batches). ``null_labels``: score a class-conditional run with
    the null label instead of the data's; ``ranking``: the picture these examples rank (said on
    stderr before the work)."""
    from . import data, shard
    from .conditions import NULL_LABEL
    from .errors import DataError

    o = options or NllOptions()
    ranks = ranks or shard.Ranks()
    pre = run.preprocess
    opts: dict[str, Any] = {"split": split, "shuffle": False}
    if pre.kind == "image":
        opts.update(image_size=pre.image_size, channels=pre.channels)
    elif pre.kind == "audio":
        opts.update(pre.audio)  # the run's own features
    dataset = data.load(spec, **opts)
    size = len(dataset) if hasattr(dataset, "__len__") else None  # shards: unknown
    total = n if size is None else size if n is None else min(n, size)
    if ranking is not None and ranks.is_main:  # said up front: the reference set is the long part
        print(f"noisecraft: ranking {ranking} among the first {total} examples of {spec} "
              f"[{split}] (--n {n})", file=sys.stderr)
    from .progress import Bar

    bar = Bar(total, "nll", "example", enabled=progress and ranks.is_main)
    shape = tuple(pre.shape)  # the data's shape (a latent run encodes it in bits_per_dim)
    conditional = run.num_classes is not None
    count = 0

    def examples() -> Any:
        nonlocal count
        items = (dataset[i] for i in range(len(dataset))) if hasattr(dataset, "__len__") else dataset
        for item in items:
            if n is not None and count >= n:
                return
            x = item["x"]
            if tuple(x.shape) != shape:
                raise DataError(f"{spec}: examples have shape {tuple(x.shape)}, but the run's "
                                f"model takes {shape}")
            count += 1
            label = item.get("label")
            yield x, (NULL_LABEL if null_labels or label is None else int(label))

    parts = {}
    for start, chunk in shard.iter_batches(examples(), o.batch_size, ranks):
        lab = torch.tensor([y for _, y in chunk], dtype=torch.long) if conditional else None
        parts[start] = bits_per_dim(run, torch.stack([x for x, _ in chunk]), lab, o,
                                    start).numpy()
        bar.update(len(chunk) * ranks.world_size)
    bar.close()
    if count == 0:
        raise DataError(f"{spec}: the {split} split is empty")
    bits = shard.gather(parts, count, ranks)
    return None if bits is None else torch.from_numpy(bits)


def score(run: Any, data: str | None = None, *, image: str | None = None, split: str = "test",
          n: int | None = None, options: NllOptions | None = None, progress: bool = False,
          ranks: Any = None) -> dict[str, Any] | None:
    """What ``noisecraft nll`` reports, as a record: the split's mean ± standard error, and with
    ``image`` that picture's bits/dim and percentile among the first ``n`` examples of the split
    (default :data:`IMAGE_REFERENCE_N`). ``data`` defaults to the run's own training spec. None
    on ranks other than 0."""
    from . import shard

    o = options or NllOptions()
    ranks = ranks or shard.Ranks()
    spec = data or run.config.data.spec
    x_image = run.read_picture(image) if image is not None else None
    if image is not None and n is None:
        n = IMAGE_REFERENCE_N
    bits = score_split(run, spec, split, n, o, null_labels=image is not None, progress=progress,
                       ranks=ranks, ranking=image)
    if bits is None:
        return None
    record = describe(run, o)
    record.update(data=spec, split=split, n=len(bits), mean=float(bits.mean()),
                  standard_error=float(bits.std(unbiased=True) / math.sqrt(len(bits)))
                  if len(bits) > 1 else float("nan"))
    if x_image is not None:
        from .conditions import NULL_LABEL

        labels = (torch.full((1,), NULL_LABEL, dtype=torch.long) if run.num_classes is not None
                  else None)
        value = float(bits_per_dim(run, x_image, labels, o, "image")[0])
        record.update(image=image, image_bits_per_dim=value,
                      percentile=float(100 * (bits <= value).double().mean()))
    return record
