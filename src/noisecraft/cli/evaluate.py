"""``noisecraft evaluate``: sample a trained run and measure the samples against its data.

Writes metrics.json (into RUN_DIR unless --out says otherwise) with the figures and every
setting that moves them: sample count, EMA or raw weights, sampler, steps, seed, the reference
set (spec, split, count, content sha256) and the feature network's sha256. Metrics:

  fid           Fréchet Inception Distance (or in --features' space)
  kid           Kernel Inception Distance, mean ± std over subsets
  pr            improved precision and recall (k = 3)
  memorization  nearest/second-nearest training image ratio < 1/3 (pixels); worst pairs PNG
  classifier    coverage, confidence and classifier-FID for digits / MNIST

Default: fid,kid,pr,memorization, plus classifier when the data is digits or MNIST. On a CPU
the Inception network manages a few images per second (BENCHMARKS.md): 10 000 samples take about
an hour there, minutes on a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._args import add_run_arguments, add_threads, command_parser, non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from ..metrics.features import FEATURE_SPACES

    p = command_parser(sub, "evaluate", __doc__,
                       "sample a run and write FID/KID/precision-recall/memorisation",
                       "noisecraft evaluate runs/digits --data digits --n 1000")
    add_run_arguments(p)
    a = p.add_argument
    a("--data", required=True, metavar="DATA",
      help="the reference data spec (usually the training data)")
    a("--split", default="train", choices=("train", "test", "all"),
      help="reference split (default train; memorisation always uses the training split)")
    a("--n", "--count", type=positive_int, default=10000,
      help="number of samples (default 10000; --count under torchrun, which claims --n)")
    a("--ref-n", type=positive_int, help="reference images (default: --n, capped at the split size)")
    a("--sampler", help="sampler (default: the run's)")
    a("--steps", type=positive_int, help="sampling steps (default: the run's)")
    a("--seed", type=non_negative_int, default=0, help="noise seed, also KID's subset seed (default 0)")
    a("--metrics", help="comma-separated subset of fid,kid,pr,memorization,classifier")
    a("--features", default="inception", choices=FEATURE_SPACES,
      help="feature space of fid/kid/pr (default inception)")
    a("--weights", metavar="FILE", help="FID Inception TorchScript file (sha256-checked)")
    a("--batch-size", type=positive_int, default=256, help="samples per sampling pass (default 256)")
    a("--feature-batch-size", type=positive_int, default=50, help="images per Inception pass")
    a("--out", metavar="FILE", help="metrics file (default RUN_DIR/metrics.json)")
    a("--no-progress", action="store_true", help="no progress bars (sampling, features)")
    add_threads(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import shard

    ranks = shard.join(args.device)   # under torchrun: each rank draws its share of the samples
    try:
        return _run(args, ranks)
    finally:
        shard.leave(ranks)


def _run(args: argparse.Namespace, ranks: Any) -> int:
    import torch

    from .. import __version__, samplers, shard
    from ..io import atomic_write
    from ..metrics.classifier import prepare_classifier
    from ..metrics.images import load_image_set
    from ..metrics.report import DEFAULT_METRICS, classifier_for, evaluate_samples, parse_metrics
    from ..run import load_run

    metrics = parse_metrics(args.metrics) if args.metrics else None
    out_path = Path(args.out) if args.out else Path(args.run_dir) / "metrics.json"
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"--out {out_path}: folder {out_path.parent} does not exist")
    run_ = load_run(args.run_dir, use_ema=not args.no_ema,
                    device=shard.local_device(args.device, ranks))
    if run_.preprocess.kind != "image":
        raise ValueError(f"{args.run_dir} was trained on {run_.preprocess.kind} data; "
                         "evaluate measures images")
    sampler = args.sampler or run_.config.sampling.sampler
    if sampler not in samplers.SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(samplers.SAMPLERS)}")
    steps = args.steps or run_.config.sampling.steps
    size, channels = run_.preprocess.image_size, run_.preprocess.channels
    train = load_image_set(args.data, split="train", image_size=size, channels=channels)
    reference = train if args.split == "train" else load_image_set(
        args.data, split=args.split, image_size=size, channels=channels)
    reference = reference[:args.ref_n or args.n]
    classifier = classifier_for(args.data, reference)
    if metrics is None:
        metrics = DEFAULT_METRICS + (("classifier",) if classifier else ())
    if classifier is not None and ranks.is_main and (
            "classifier" in metrics or args.features == classifier):
        prepare_classifier(classifier, data=args.data)  # trains once (MNIST: < 1 min), then cached
    samples = shard.generate(run_, args.n, sampler=sampler, steps=steps, seed=args.seed,
                             batch_size=args.batch_size, labels=run_.default_labels(args.n),
                             progress=not args.no_progress, ranks=ranks)
    if samples is None:   # not rank 0: rank 0 measures and writes
        return 0
    figure = out_path.with_name(out_path.stem + "-memorization.png")
    results = evaluate_samples(samples, reference, reference_spec=args.data, reference_split=args.split,
                               metrics=metrics, feature_space=args.features, train_images=train,
                               classifier=classifier, batch_size=args.feature_batch_size,
                               weights=args.weights, figure=figure, seed=args.seed,
                               progress=not args.no_progress,
                               device=shard.local_device(args.device, ranks))
    record = {
        "run_dir": str(run_.run_dir), "step": run_.step, "weights": "raw" if args.no_ema else "ema",
        "sampler": sampler, "steps": steps, "seed": args.seed, "n": args.n,
        "labels": "cycled 0..K-1" if run_.num_classes else None,
        "data": args.data, "split": args.split, "metrics": list(metrics),
        **results,
        "versions": {"noisecraft": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write(out_path, (json.dumps(record, indent=2) + "\n").encode())
    summary = {k: record[k] for k in ("fid", "kid", "precision", "recall") if k in record}
    if "memorization" in record:
        summary["near_copies"] = record["memorization"]["fraction_near_copies"]
    if "classifier" in record:
        summary["classes_covered"] = record["classifier"]["num_classes_covered"]
        summary["classifier_fid"] = record["classifier"]["classifier_fid"]
    print("noisecraft: " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items()) + f" -> {out_path}")
    return 0
