"""Data-loading throughput: decoded images per second through a torch DataLoader on CPU.

    .venv/bin/python benchmarks/data_loading.py [--data ../shared/data] [--write]

The headline row is the CIFAR-10 training shards (4 × .tar.gz, 10,000 JPEGs) read by
``noisecraft.data.load`` with 2 DataLoader workers, batch 256, shuffling on: one epoch, worker
start-up included, as the trainer runs it (a fresh DataLoader per epoch). Besides wall-clock
images/s it reports images per CPU-second (this process plus its finished workers, from
getrusage), which moves far less than wall time on a shared machine. A reference row runs the
same shards through webdataset's own tarfile stream and Pillow (the shard path before
noisecraft.data.tar and simplejpeg), under the same load. The component rows split one image's
CPU cost into tar + gzip, JPEG decoding and scaling, old way and new.
``--write`` puts the table, with date, machine and versions, into BENCHMARKS.md between
``<!-- data_loading -->`` markers.

The data-path table (``<!-- data_path -->``; ``--path-only`` runs just that one) follows the
trainer's `BatchStream` over several epochs, each epoch's wall time from the last batch of the
one before, worker start-up included: a fresh DataLoader per epoch (the stream before
persistent workers), persistent workers, and persistent workers over the decoded-picture cache
(built before the first batch, so epoch 1 includes it). Images per CPU-second are over all the
epochs, taken once the workers have exited.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import io
import os
import platform
import random
import resource
import sys
import time
from datetime import date

import numpy as np
import PIL
import torch
import webdataset as wds
from _report import write_section
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, Subset
from webdataset.tariterators import group_by_keys, tar_file_expander

from noisecraft.data import decode, load
from noisecraft.data.datasets import ArrayImageDataset
from noisecraft.data.shards import shard_samples
from noisecraft.data.transforms import Preprocess, pil_to_array, scale_to_unit
from noisecraft.train.batches import BatchStream, _SeededExamples

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have exited (the DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def through_loader(dataset, *, workers: int, batch_size: int = 256) -> tuple[int, float, float]:
    """(images, wall s, CPU s) for one full pass; workers are joined before CPU time is read."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    n = 0
    it = iter(loader)
    for batch in it:
        n += batch["x"].shape[0]
    del it, loader  # shuts the workers down, so RUSAGE_CHILDREN includes them
    return n, time.perf_counter() - wall, cpu_seconds() - cpu


def webdataset_samples(shard: str) -> list[dict]:
    """A shard read by webdataset's tarfile stream (the reference reader)."""
    with open(shard, "rb") as f:
        return list(group_by_keys(tar_file_expander([{"url": shard,
                                                      "stream": gzip.GzipFile(fileobj=f)}])))


def pillow_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return pil_to_array(img)


class ReferenceShards(IterableDataset):
    """The shard path before this package's reader: webdataset's stream, Pillow, float scaling.

    Same shard split over workers and same shuffle buffer as `noisecraft.data.load`; no checks.
    """

    def __init__(self, shards: list[str]) -> None:
        self.shards = shards

    def __iter__(self):
        rng = random.Random(0)
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self.shards), wds.split_by_node, wds.split_by_worker,
            lambda src: (x for s in src for x in webdataset_samples(s["url"])),
            wds.shuffle(2000, initial=500, rng=rng))
        for sample in pipeline:
            x = np.moveaxis(pillow_array(sample["jpg"]), -1, -3).astype(np.float32) / 127.5 - 1
            yield {"x": torch.from_numpy(x), "label": int(sample["cls"]), "caption": "",
                   "key": sample["__key__"]}


def component_costs(shard: str) -> dict[str, float]:
    """CPU µs per image for each stage of the shard path, old and new, measured in this process."""
    def timed(fn):
        best = float("inf")
        for _ in range(3):  # best of 3: the least disturbed by other processes
            t = time.process_time()
            out = fn()
            best = min(best, time.process_time() - t)
        return out, best

    samples, t_wds = timed(lambda: webdataset_samples(shard))
    _, t_ours = timed(lambda: list(shard_samples(shard)))
    n = len(samples)
    jpgs = [s["jpg"] for s in samples]
    arrays, t_pillow = timed(lambda: [pillow_array(b) for b in jpgs])
    costs = {"tar + gzip: webdataset (tarfile stream)": t_wds,
             "tar + gzip: noisecraft.data.tar": t_ours,
             "JPEG decode: Pillow": t_pillow}
    if decode.simplejpeg is not None:
        costs["JPEG decode: simplejpeg"] = timed(lambda: [decode.decode_image(b, "jpg")
                                                          for b in jpgs])[1]
    pre = Preprocess(channels=3, height=32, width=32)
    costs["scale to [-1, 1]: float arithmetic"] = timed(
        lambda: [torch.from_numpy(np.moveaxis(a, -1, -3).astype(np.float32) / 127.5 - 1)
                 for a in arrays])[1]
    costs["scale to [-1, 1]: uint8 look-up (scale_to_unit)"] = timed(
        lambda: [scale_to_unit(a, pre) for a in arrays])[1]
    return {k: v / n * 1e6 for k, v in costs.items()}


def table(data: str) -> str:
    cifar = os.path.join(data, "cifar10")
    rows = []

    def add(name: str, dataset, workers: int) -> None:
        n, wall, cpu = through_loader(dataset, workers=workers)
        rows.append(f"| {name} | {workers} | {n:,} | {n / wall:,.0f} | {n / cpu:,.0f} |")
        print(rows[-1], flush=True)

    print("| data | workers | images | images/s | images per CPU-s |\n|---|---:|---:|---:|---:|")
    add("CIFAR-10 train shards (4 × .tar.gz JPEG 32×32)", load(cifar, seed=0), 2)
    shards = [os.path.join(cifar, f"train-{i:04d}.tar.gz") for i in range(4)]
    add("CIFAR-10 train shards, reference: webdataset + Pillow", ReferenceShards(shards), 2)
    add("CIFAR-10 train shards", load(cifar, seed=0), 0)
    add("CIFAR-10 train shards, image_size=64 + flip", load(cifar, image_size=64, flip=True), 2)
    mnist = load(os.path.join(data, "mnist"))
    add("MNIST IDX (first 20,000 train, map-style)", Subset(mnist, range(20_000)), 2)
    add("digits (1,618 train, map-style)", load("digits"), 0)

    costs = component_costs(os.path.join(cifar, "train-0000.tar.gz"))
    lines = ["| data | workers | images | images/s | images per CPU-s |", "|---|---:|---:|---:|---:|",
             *rows, "", "| CIFAR-10 shard path, one image | CPU µs |", "|---|---:|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in costs.items()]
    print("\n".join(lines[-len(costs) - 3:]))
    return "\n".join(lines)


def epoch_times(batches, epoch_of, epochs: int) -> list[tuple[int, float]]:
    """(images, wall s) of each epoch: from the end of the one before (or the start) to its last
    batch; the first batch of epoch ``epochs`` ends the run."""
    out, n, start = [], 0, time.perf_counter()
    last = start
    for batch in batches:
        e = epoch_of()
        if e > len(out):
            out.append((n, last - start))
            n, start = 0, last
            if len(out) == epochs:
                break
        n += batch["x"].shape[0]
        last = time.perf_counter()
    return out


def fresh_loaders(dataset, *, workers: int, batch_size: int, epochs: int):
    """The stream as it was: a new DataLoader, and new workers, for every epoch."""
    state = {"epoch": 0}
    stream = BatchStream(dataset, batch_size, num_workers=workers, cache=False)

    def batches():
        for e in range(epochs + 1):
            state["epoch"] = e
            if stream.map_style:
                loader = DataLoader(_SeededExamples(dataset, 0), batch_sampler=stream._batches(e),
                                    num_workers=workers)
            else:
                dataset.set_epoch(e)
                loader = DataLoader(dataset, batch_size=batch_size, drop_last=True,
                                    num_workers=workers)
            yield from loader
    return batches(), lambda: state["epoch"]


def path_table(data: str, epochs: int = 3) -> str:
    cifar, mnist = os.path.join(data, "cifar10"), os.path.join(data, "mnist")
    lines = [f"| data | path | workers | {' | '.join(f'epoch {e + 1} images/s' for e in range(epochs))}"
             " | images per CPU-s |", "|---|---|---:|" + "---:|" * (epochs + 1)]
    print("\n".join(lines), flush=True)

    def add(name: str, path: str, make, workers: int) -> None:
        cpu = cpu_seconds()
        if path == "fresh DataLoader per epoch":
            batches, epoch_of = fresh_loaders(make(), workers=workers, batch_size=256,
                                              epochs=epochs)
            times = epoch_times(batches, epoch_of, epochs)
            batches.close()
        else:
            stream = BatchStream(make(), 256, num_workers=workers, cache="cache" in path)
            times = epoch_times(stream, lambda: stream.state()["epoch"], epochs)
            stream.close()
        gc.collect()  # the workers exit, so RUSAGE_CHILDREN holds their time
        cpu = cpu_seconds() - cpu
        total = sum(n for n, _ in times)
        rates = " | ".join(f"{n / wall:,.0f}" for n, wall in times)
        lines.append(f"| {name} | {path} | {workers} | {rates} | {total / cpu:,.0f} |")
        print(lines[-1], flush=True)

    shards = "CIFAR-10 train shards (10,000 JPEG)"
    for workers in (2, 0):
        paths = ["fresh DataLoader per epoch", "persistent workers", "persistent workers + cache"]
        for path in paths if workers else ["in process", "in process + cache"]:
            add(shards, path, lambda: load(cifar, seed=0), workers)
    first = lambda: Subset(load(mnist), range(20_000))  # noqa: E731
    for path in ("fresh DataLoader per epoch", "persistent workers"):
        add("MNIST IDX (first 20,000, map-style)", path, first, 2)
    for path in ("fresh DataLoader per epoch", "persistent workers",
                 "persistent workers + cache"):
        add("MNIST IDX (first 20,000) resized to 32×32", path, lambda: first_resized(mnist), 2)
    lines.append(f"\nLoad average {os.getloadavg()[0]:.1f} at the end. Epoch 1 of a cache row "
                 "includes building the cache. On a shared machine the wall rates move with the "
                 "other processes' load; images per CPU-s moves less.")
    print(lines[-1])
    return "\n".join(lines)


def first_resized(mnist: str, n: int = 20_000) -> ArrayImageDataset:
    """The first ``n`` MNIST training digits served at 32×32 (each item resized by Pillow)."""
    full = load(mnist)
    return ArrayImageDataset(full.images[:n], source=mnist, labels=full.labels[:n], image_size=32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--path-only", action="store_true", help="only the data-path table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = (f"## Data loading — {date.today()}\n\n{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at start), "
              f"Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__}, "
              f"Pillow {PIL.__version__}, webdataset {wds.__version__}, "
              f"simplejpeg {getattr(decode.simplejpeg, '__version__', 'not installed')}; batch 256.\n"
              f"Command: `.venv/bin/python benchmarks/data_loading.py`\n")
    print(header)
    if not args.path_only:
        body = table(args.data)
        if args.write:
            write_section("data_loading", header + "\n" + body)
    path_header = header.replace("## Data loading", "## Data path: persistent workers and the "
                                 "decoded-picture cache").replace(
        "data_loading.py`", "data_loading.py --path-only`")
    path = path_table(args.data)
    if args.write:
        write_section("data_path", path_header + "\n" + path)


if __name__ == "__main__":
    main()
