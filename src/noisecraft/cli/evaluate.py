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
from pathlib import Path

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
    from ..io import atomic_write
    from ..run import load_run

    out_path = Path(args.out) if args.out else Path(args.run_dir) / "metrics.json"
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"--out {out_path}: folder {out_path.parent} does not exist")
    with shard.session(args.device) as ranks:  # under torchrun each rank draws its share
        run_ = load_run(args.run_dir, use_ema=not args.no_ema,
                        device=shard.local_device(args.device, ranks))
        record = run_.evaluate(
            args.data, n=args.n, split=args.split, ref_n=args.ref_n, sampler=args.sampler,
            steps=args.steps, seed=args.seed, metrics=args.metrics, features=args.features,
            weights=args.weights, batch_size=args.batch_size,
            feature_batch_size=args.feature_batch_size,
            figure=out_path.with_name(out_path.stem + "-memorization.png"),
            progress=not args.no_progress, ranks=ranks)
    if record is None:   # not rank 0: rank 0 measures and writes
        return 0
    record = {**record, "weights": "raw" if args.no_ema else "ema"}
    atomic_write(out_path, (json.dumps(record, indent=2) + "\n").encode())
    summary = {k: record[k] for k in ("fid", "kid", "precision", "recall") if k in record}
    if "memorization" in record:
        summary["near_copies"] = record["memorization"]["fraction_near_copies"]
    if "classifier" in record:
        summary["classes_covered"] = record["classifier"]["num_classes_covered"]
        summary["classifier_fid"] = record["classifier"]["classifier_fid"]
    print("noisecraft: " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items()) + f" -> {out_path}")
    return 0
