"""Data-loading throughput: decoded images per second through a torch DataLoader on CPU.

    .venv/bin/python benchmarks/data_loading.py [--data ../shared/data] [--write]

The headline row is the CIFAR-10 training shards (4 × .tar.gz, 10,000 JPEGs) read by
``noisecraft.data.load`` with 2 DataLoader workers, batch 256, shuffling on. Besides wall-clock
images/s it reports images per CPU-second (this process plus its finished workers, from
getrusage), which moves far less than wall time on a shared machine. The component rows split
one image's CPU cost into tar reading (webdataset), JPEG decoding (Pillow) and scaling.
``--write`` puts the table, with date, machine and versions, into BENCHMARKS.md between
``<!-- data_loading -->`` markers.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import platform
import resource
import sys
import time
from datetime import date

import numpy as np
import PIL
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Subset
from webdataset.tariterators import group_by_keys, tar_file_expander

from noisecraft.data import load
from noisecraft.data.transforms import Preprocess, pil_to_array, scale_to_unit

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


def component_costs(shard: str) -> dict[str, float]:
    """CPU µs per image for each stage of the shard path, measured in this process."""
    def timed(fn):
        t = time.process_time()
        out = fn()
        return out, time.process_time() - t

    def read():
        with open(shard, "rb") as f:
            return list(group_by_keys(tar_file_expander([{"url": shard,
                                                           "stream": gzip.GzipFile(fileobj=f)}])))

    samples, t_read = timed(read)
    n = len(samples)

    def decode():
        out = []
        for s in samples:
            with Image.open(io.BytesIO(s["jpg"])) as img:
                img.load()
                out.append(pil_to_array(img))
        return out

    arrays, t_decode = timed(decode)
    pre = Preprocess(channels=3, height=32, width=32)
    _, t_scale = timed(lambda: [scale_to_unit(a, pre) for a in arrays])
    return {"tar + gzip (webdataset)": t_read / n * 1e6, "JPEG decode (Pillow)": t_decode / n * 1e6,
            "scale to [-1, 1]": t_scale / n * 1e6}


def table(data: str) -> str:
    cifar = os.path.join(data, "cifar10")
    rows = []

    def add(name: str, dataset, workers: int) -> None:
        n, wall, cpu = through_loader(dataset, workers=workers)
        rows.append(f"| {name} | {workers} | {n:,} | {n / wall:,.0f} | {n / cpu:,.0f} |")
        print(rows[-1], flush=True)

    print("| data | workers | images | images/s | images per CPU-s |\n|---|---:|---:|---:|---:|")
    add("CIFAR-10 train shards (4 × .tar.gz JPEG 32×32)", load(cifar, seed=0), 2)
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


def write_section(text: str, path: str) -> None:
    start, end = "<!-- data_loading -->", "<!-- /data_loading -->"
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{start}\n{text}\n{end}"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(new)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = (f"## Data loading — {date.today()}\n\n{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at start), "
              f"Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__}, "
              f"Pillow {PIL.__version__}, webdataset {wds.__version__}; batch 256.\n"
              f"Command: `.venv/bin/python benchmarks/data_loading.py`\n")
    print(header)
    body = table(args.data)
    if args.write:
        write_section(header + "\n" + body, os.path.join(HERE, "..", "BENCHMARKS.md"))


if __name__ == "__main__":
    main()
