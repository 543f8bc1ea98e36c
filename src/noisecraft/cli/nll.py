"""``noisecraft nll``: negative log-likelihood of data under a trained run, in bits/dim.

  noisecraft nll RUN_DIR --data DATA     mean ± standard error over a split (default test)
  noisecraft nll RUN_DIR --image FILE    one image, and its percentile among the split's NLLs

Units: 8-bit image data (a 0..255 source range) gives −log₂ P(k)/D for the 256 levels per value
— the number papers report — by the bound's discretised decoder (--method vlb) or by uniform
dequantisation (--method ode, which adds log₂ 127.5 per dimension to the density's bits). Other
data (digits' 0..16, vectors) is treated as continuous: −log₂ p(x)/D of the density in the model's
[−1, 1] units; --continuous forces that for 8-bit data too. The model is read without the x̂_0
clipping used for sampling (clipping is a sampler's choice, not part of the density).

The percentile of --image is the share of the reference examples (the first --n of the split,
default 1000) whose NLL is at or below the image's: near 50 is typical, near 100 means less
likely than almost all of them. A
class-conditional run scores --data with the data's labels, and --image (and its reference
split) with the null label, since the picture's class is unknown.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from ._args import (
    add_run_arguments,
    add_threads,
    command_parser,
    non_negative_int,
    positive_float,
    positive_int,
)

# --image ranks one picture among this many of the split's examples unless --n says otherwise:
# enough for a percentile to ±1.6 points (binomial standard error at 50 %), minutes not hours.
IMAGE_REFERENCE_N = 1000


def register(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "nll", __doc__, "bits/dim of data under a trained run (bound or ODE)",
                       "noisecraft nll runs/mnist --data mnist/ --method ode --n 1000")
    add_run_arguments(p)
    a = p.add_argument
    a("--data", metavar="DATA", help="data spec to score (with --image: the reference data; "
      "default the run's own training spec)")
    a("--image", metavar="FILE", help="score this one picture and rank it among --data's split")
    a("--split", default="test", choices=("train", "test", "all"), help="split (default test)")
    a("--n", "--count", type=positive_int,
      help="score the first N examples of the split (default: all; "
      f"with --image, the reference set for its percentile, default {IMAGE_REFERENCE_N}; "
      "spell it --count under torchrun, whose own parser claims --n)")
    a("--method", default="ode", choices=("ode", "vlb"),
      help="ode: probability-flow ODE; vlb: the T-term variational bound (default ode)")
    a("--divergence", default="rademacher", choices=("rademacher", "gaussian", "exact"),
      help="ode: Hutchinson probes or the exact divergence (default rademacher)")
    a("--probes", type=positive_int, default=1, help="ode: Hutchinson probes per example (default 1)")
    a("--rtol", type=positive_float, default=1e-5, help="ode: relative tolerance (default 1e-5)")
    a("--atol", type=positive_float, default=1e-5, help="ode: absolute tolerance (default 1e-5)")
    from ..process import VARIANCES

    a("--variance", choices=VARIANCES,
      help="vlb: reverse-step variance (default: learned if the net has it, else beta_tilde)")
    a("--continuous", action="store_true", help="treat 8-bit data as continuous values")
    a("--seed", type=non_negative_int, default=0,
      help="seed of the probes, dequantisation and x_t draws (default 0)")
    a("--batch-size", type=positive_int, default=64, help="examples per batch (default 64)")
    a("--json", action="store_true", help="print one JSON record instead of text")
    a("--no-progress", action="store_true", help="no progress bar")
    add_threads(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import shard

    ranks = shard.join(args.device)   # under torchrun: each rank scores its share of the batches
    try:
        return _run(args, ranks)
    finally:
        shard.leave(ranks)


def _run(args: argparse.Namespace, ranks: Any) -> int:
    import torch

    from .. import shard
    from ..denoiser import Denoiser
    from ..run import load_run
    from ..seeding import derive_seed

    if args.image is None and args.data is None:
        raise ValueError("give --data DATA (score a split) or --image FILE (score one picture)")
    if args.method == "ode" and args.variance is not None:
        raise ValueError("--variance applies to --method vlb only")
    args.device = shard.local_device(args.device, ranks)
    run_ = load_run(args.run_dir, use_ema=not args.no_ema, device=args.device)
    pre = run_.preprocess
    eight_bit = pre.kind == "image" and tuple(pre.value_range) == (0.0, 255.0)
    latent = run_.config.latent is not None  # scored in the autoencoder's latent space
    discrete = eight_bit and not args.continuous and not latent
    den = run_.denoiser
    denoiser = Denoiser(den.net, run_.schedule, den.prediction, clip=None,
                        learned_variance=den.learned_variance)
    spec = args.data or run_.config.data.spec

    def score(x: Any, labels: Any, start: int | str) -> Any:
        """Bits/dim of the batch whose first example is ``start``: its noise (probes,
        dequantisation, x_t) comes from a generator of (--seed, start) alone, so the figures do
        not depend on how many ranks share the work."""
        from ..likelihood import nll

        generator = torch.Generator().manual_seed(derive_seed("noisecraft-nll", args.seed, start))
        cond = {} if labels is None else {"labels": labels.to(args.device)}
        if latent:
            x = run_.encode(x)
        kw: dict[str, Any] = {"discrete": discrete, "generator": generator,
                              "batch_size": args.batch_size}
        if args.method == "ode":
            kw.update(divergence=args.divergence, probes=args.probes, rtol=args.rtol, atol=args.atol)
        else:
            kw.update(variance=args.variance)
        return nll(denoiser, x.to(args.device), run_.schedule, args.method, **kw, **cond).cpu()

    record: dict[str, Any] = {
        "run_dir": str(run_.run_dir), "step": run_.step, "weights": "raw" if args.no_ema else "EMA",
        "method": args.method, "units": "latent bits/dim" if latent else "bits/dim",
        "convention": ("8-bit: -log2 P(k)/D, " + ("uniform dequantisation" if args.method == "ode"
                                                  else "discretised decoder")) if discrete
        else "latent: -log2 p(z)/D of the scaled posterior mean z, D latent values per example; "
        "not comparable with pixel bits/dim" if latent
        else "continuous: -log2 p(x)/D in the model's [-1, 1] units",
        "seed": args.seed,
    }
    if args.method == "ode":
        record.update(divergence=args.divergence, probes=args.probes, rtol=args.rtol, atol=args.atol)
    else:
        from ..process import resolve_variance

        record.update(variance=resolve_variance(args.variance, den.learned_variance))

    split_bits = _score_split(run_, spec, args, score, ranks)
    if split_bits is None:   # not rank 0: rank 0 reports
        return 0
    record.update(data=spec, split=args.split, n=len(split_bits),
                  mean=float(split_bits.mean()),
                  standard_error=float(split_bits.std(unbiased=True) / math.sqrt(len(split_bits)))
                  if len(split_bits) > 1 else float("nan"))
    if args.image is not None:
        x = _read_image(args.image, pre)
        labels = None
        if run_.num_classes is not None:   # the null label, as for the split: class unknown
            labels = torch.full((1,), -1, dtype=torch.long)
        bits = float(score(x, labels, "image")[0])
        record.update(image=args.image, image_bits_per_dim=bits,
                      percentile=float(100 * (split_bits <= bits).double().mean()))
    _report(record, args.json)
    return 0


def _score_split(run_: Any, spec: str, args: argparse.Namespace, score: Any, ranks: Any) -> Any:
    """Bits/dim of the first --n examples of the split, in data order (on rank 0; None on the
    others). Every rank reads the split; each scores its share of the batches."""
    import torch

    from .. import data, shard
    from ..errors import DataError

    pre = run_.preprocess
    options: dict[str, Any] = {"split": args.split, "shuffle": False}
    if pre.kind == "image":
        options.update(image_size=pre.image_size, channels=pre.channels)
    elif pre.kind == "audio":
        options.update(pre.audio)  # the run's own features
    dataset = data.load(spec, **options)
    n = args.n if args.n is not None or args.image is None else IMAGE_REFERENCE_N
    size = len(dataset) if hasattr(dataset, "__len__") else None  # shards: unknown
    total = n if size is None else size if n is None else min(n, size)
    if args.image is not None:  # said up front: scoring the reference set is the long part
        print(f"noisecraft: ranking {args.image} among the first {total} examples of {spec} "
              f"[{args.split}] (--n {n})", file=sys.stderr)
    bar = None
    if not args.no_progress and ranks.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="nll", unit="example", file=sys.stderr, dynamic_ncols=True)
    shape = tuple(pre.shape)  # the data's shape (a latent run encodes it in score())
    conditional = run_.num_classes is not None
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
            yield x, (int(item.get("label", -1)) if args.image is None else -1)

    parts = {}
    for start, chunk in shard.iter_batches(examples(), args.batch_size, ranks):
        lab = torch.tensor([y for _, y in chunk], dtype=torch.long) if conditional else None
        parts[start] = score(torch.stack([x for x, _ in chunk]), lab, start).numpy()
        if bar is not None:
            bar.update(len(chunk) * ranks.world_size)
    if bar is not None:
        bar.close()
    if count == 0:
        raise DataError(f"{spec}: the {args.split} split is empty")
    bits = shard.gather(parts, count, ranks)
    return None if bits is None else torch.from_numpy(bits)


def _read_image(path: str, pre: Any) -> Any:
    """One picture through the run's own preprocessing: (1, C, H, W) in [−1, 1]."""
    import dataclasses
    import os

    from ..data.folder import decode_image
    from ..data.transforms import prepare_array, scale_to_unit

    if pre.kind != "image":
        raise ValueError(f"--image needs an image run, but this run models {pre.kind} data")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--image {path}: no such file")
    a = prepare_array(decode_image(path), pre)
    # A picture file holds 0..255 whatever the training data's source range (digits: 0..16).
    x = scale_to_unit(a, dataclasses.replace(pre, value_range=(0.0, 255.0)))[None]
    if tuple(x.shape[1:]) != tuple(pre.shape):
        raise ValueError(f"--image {path}: gives a {tuple(x.shape[1:])} picture after the run's "
                         f"preprocessing, but the model takes {tuple(pre.shape)} (pass a picture "
                         "of that size)")
    return x


def _report(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record, indent=2))
        return
    method = record["method"]
    detail = (f"{record['divergence']} divergence, {record['probes']} probe(s), rtol {record['rtol']:g}"
              if method == "ode" else f"variance {record['variance']}")
    print(f"noisecraft: {method} ({detail}), {record['weights']} weights of step {record['step']}; "
          f"{record['convention']}")
    print(f"{record['data']} [{record['split']}], n = {record['n']}: {record['mean']:.4f} ± "
          f"{record['standard_error']:.4f} {record['units']} (mean ± standard error)")
    if "image" in record:
        print(f"{record['image']}: {record['image_bits_per_dim']:.4f} {record['units']}, percentile "
              f"{record['percentile']:.1f} among the {record['n']} examples above "
              "(share with NLL at or below it; ~50 is typical, ~100 unusually unlikely)")
