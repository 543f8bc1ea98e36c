"""Sample a run and measure the samples against data: what ``noisecraft evaluate`` records.

:func:`evaluate_run` draws ``n`` samples (the run's sampler and steps unless given; a
class-conditional run's labels cycled 0..K−1) and scores them with :mod:`noisecraft.metrics`
against the data's ``split``; the record holds every setting that moves the numbers.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def evaluate_run(run: Any, data: str, *, n: int = 10000, split: str = "train",
                 ref_n: int | None = None, sampler: str | None = None, steps: int | None = None,
                 seed: int = 0, metrics: str | list[str] | None = None,
                 features: str = "inception", weights: str | None = None,
                 batch_size: int = 256, feature_batch_size: int = 50,
                 figure: str | Path | None = None, progress: bool = False,
                 ranks: Any = None) -> dict[str, Any] | None:
    """The metrics record of ``n`` samples of ``run`` against ``data`` (module docstring);
    None on ranks other than 0 (each draws its share of the samples under torchrun)."""
    import torch

    from . import __version__, shard
    from .metrics.classifier import prepare_classifier
    from .metrics.images import load_image_set
    from .metrics.report import DEFAULT_METRICS, classifier_for, evaluate_samples, parse_metrics

    ranks = ranks or shard.Ranks()
    chosen = parse_metrics(metrics) if isinstance(metrics, str) else (
        tuple(metrics) if metrics is not None else None)
    if run.preprocess.kind != "image":
        raise ValueError(f"{run.run_dir} was trained on {run.preprocess.kind} data; "
                         "evaluate measures images")
    sampler, steps = run.sampler_and_steps(sampler, steps)
    size, channels = run.preprocess.image_size, run.preprocess.channels
    train = load_image_set(data, split="train", image_size=size, channels=channels)
    reference = train if split == "train" else load_image_set(
        data, split=split, image_size=size, channels=channels)
    reference = reference[:ref_n or n]
    classifier = classifier_for(data, reference)
    if chosen is None:
        chosen = DEFAULT_METRICS + (("classifier",) if classifier else ())
    if classifier is not None and ranks.is_main and (
            "classifier" in chosen or features == classifier):
        prepare_classifier(classifier, data=data)  # trains once (MNIST: < 1 min), then cached
    samples = shard.generate(run, n, sampler=sampler, steps=steps, seed=seed,
                             batch_size=batch_size, labels=run.default_labels(n),
                             progress=progress, ranks=ranks)
    if samples is None:   # not rank 0: rank 0 measures
        return None
    results = evaluate_samples(samples, reference, reference_spec=data, reference_split=split,
                               metrics=chosen, feature_space=features, train_images=train,
                               classifier=classifier, batch_size=feature_batch_size,
                               weights=weights, figure=figure, seed=seed, progress=progress,
                               device=run.device)
    return {
        "run_dir": str(run.run_dir), "step": run.step, "sampler": sampler, "steps": steps,
        "seed": seed, "n": n, "labels": "cycled 0..K-1" if run.num_classes else None,
        "data": data, "split": split, "metrics": list(chosen),
        **({"source": run.source} if getattr(run, "source", None) else {}),  # diffusers_io
        **results,
        "versions": {"noisecraft": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
