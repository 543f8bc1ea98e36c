"""The training data path: persistent workers, the decoded-picture cache, exact resume with both.

References are computed another way: a fresh DataLoader per epoch (the loader the stream used
to build), or the stream with the feature switched off; equality is bit for bit.
"""

import io
import os
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from noisecraft import DataError
from noisecraft.data import cache as shard_cache
from noisecraft.data import load, shards
from noisecraft.train.batches import BatchStream

N_SHARDS, PER_SHARD, SIDE = 4, 10, 8


def picture(i):
    """An asymmetric 8x8 RGB picture per index, so a flip changes it."""
    return np.random.default_rng(i).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


def png(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def make_shards(folder, bad=()):
    """N_SHARDS gzip shards of PER_SHARD samples; the indices in ``bad`` get a broken image."""
    for s in range(N_SHARDS):
        with tarfile.open(os.path.join(folder, f"train-{s:04d}.tar.gz"), "w:gz") as tar:
            for j in range(PER_SHARD):
                i = s * PER_SHARD + j
                members = {"png": b"not a png" if i in bad else png(picture(i)),
                           "cls": str(i % 3).encode(), "txt": f"picture {i}".encode()}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"train_{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder)


def take(stream, k):
    return [next(stream) for _ in range(k)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["key"] == y["key"] and x["caption"] == y["caption"]
        assert torch.equal(x["label"], y["label"])
        assert torch.equal(x["x"], y["x"])  # bit for bit, flips included


def count_calls(monkeypatch, module, name: str) -> list[int]:
    """Replaces ``module.name`` by a wrapper that counts its calls in this process: [count]."""
    count = [0]
    real = getattr(module, name)

    def counting(*args):
        count[0] += 1
        return real(*args)

    monkeypatch.setattr(module, name, counting)
    return count


@pytest.fixture
def decodes(monkeypatch):
    """Counts the images decoded in this process."""
    return count_calls(monkeypatch, shards, "decode_image")


def test_cache_gives_the_same_batches_bit_for_bit_and_decodes_once(tmp_path, decodes):
    # Random flips on, one broken sample skipped: three epochs with and without the cache.
    folder = make_shards(tmp_path, bad={13})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped sample's warning, every epoch
        plain = BatchStream(load(folder, flip=True, skip_bad=True, seed=4), 4, seed=4, cache=False)
        expected = take(plain, 27)  # 39 good samples: 9 batches an epoch
        assert plain.state() == {"epoch": 2, "position": 9}
        held = BatchStream(load(folder, flip=True, skip_bad=True, seed=4), 4, seed=4)
        decodes[0] = 0
        got = take(held, 27)
        decoded = decodes[0]
        straight = take(BatchStream(load(folder, skip_bad=True, seed=4), 4, seed=4, cache=False),
                        9)
    assert held.dataset.cache is not None and held.dataset.cache.nbytes == 40 * SIDE * SIDE * 3
    assert decoded == 40  # each picture once, the broken one included (it fails each time)
    assert_same(expected, got)
    # The flips are real: the same epoch without flips differs, by mirroring only.
    mirrored = [not torch.equal(u, f) for a, b in zip(straight, got[:9], strict=True)
                for u, f in zip(a["x"], b["x"], strict=True)]
    assert any(mirrored) and not all(mirrored)


def test_cache_raises_the_readers_error_without_skip_bad(tmp_path):
    folder = make_shards(tmp_path, bad={13})
    stream = BatchStream(load(folder, seed=4), 4, seed=4)
    with pytest.raises(DataError, match="train_0013.*not a readable image"):
        next(stream)


def test_cache_skips_a_dataset_over_the_limit_without_decoding_it(tmp_path, decodes,
                                                                  monkeypatch):
    folder = make_shards(tmp_path)
    ds = load(folder)
    size = N_SHARDS * PER_SHARD * SIDE * SIDE * 3
    # The first shard's count (10) scaled by file sizes; gzip shards of random pictures differ
    # slightly in size, so the estimate is close but not exact.
    assert abs(shard_cache.estimate_bytes(ds) - size) < 0.05 * size
    decodes[0] = 0
    assert shard_cache.build_shard_cache(ds, limit=size // 2) is None
    assert decodes[0] == 0  # refused from the estimate: nothing decoded, nothing allocated
    assert shard_cache.cached(ds, limit=size // 2) is ds
    assert shard_cache.build_shard_cache(ds, limit=size).nbytes == size
    # An estimate that falls short: the build stops at the shard that crosses the limit.
    monkeypatch.setattr(shard_cache, "estimate_bytes", lambda dataset: 0)
    decodes[0] = 0
    assert shard_cache.build_shard_cache(ds, limit=2 * size // N_SHARDS) is None
    assert decodes[0] == 3 * PER_SHARD
    # A stream over such data still runs, from the shards.
    monkeypatch.setattr(shard_cache, "cache_limit", lambda: size // 2)
    stream = BatchStream(ds, 4)
    next(stream)
    assert stream.dataset is ds and ds.cache is None


def test_cache_limit_is_shared_by_the_processes_of_a_node(monkeypatch):
    monkeypatch.setattr(shard_cache, "physical_memory", lambda: 8 << 30)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert shard_cache.cache_limit() == 2 << 30  # a quarter of 8 GiB, and at most 2 GiB
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert shard_cache.cache_limit() == 512 << 20  # 2 GiB over 4 ranks
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "four")
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE must be a positive integer, got 'four'"):
        shard_cache.cache_limit()


def resized_pictures(flip=True):
    """30 asymmetric 10x10 RGB pictures served at 8x8 grey: each item is resized and converted."""
    from noisecraft.data.datasets import ArrayImageDataset

    images = np.stack([np.random.default_rng(i).integers(0, 256, (10, 10, 3), dtype=np.uint8)
                       for i in range(30)])
    return ArrayImageDataset(images, source="pictures", labels=np.arange(30), channels=1,
                             image_size=8, flip=flip)


@pytest.mark.parametrize("workers", [0, 2])
def test_prepared_pictures_give_the_same_batches_and_resize_once(workers, monkeypatch):
    from noisecraft.data import datasets

    calls = count_calls(monkeypatch, datasets, "prepare_array")
    expected = take(BatchStream(resized_pictures(), 7, seed=3, cache=False), 12)  # 4 an epoch
    assert calls[0] == 12 * 7  # every item resized, every epoch
    calls[0] = 0
    stream = BatchStream(resized_pictures(), 7, seed=3, num_workers=workers)
    got = take(stream, 12)
    assert stream.dataset._as_is and stream.dataset.images.shape == (30, 8, 8, 1)
    assert calls[0] == 0  # the cache resized through transforms.prepare_array, once per picture
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["x"], b["x"])
    over = resized_pictures()
    assert shard_cache.prepared(over, limit=30 * 64 - 1) is None
    assert shard_cache.prepared(over, limit=30 * 64).images.nbytes == 30 * 64


class EpochStream(IterableDataset):
    """Items (epoch, index, worker pid), the indices split over workers; ``set_epoch`` like
    ShardDataset. A worker that kept the epoch it started with would repeat epoch 0."""

    def __init__(self, n):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for i in range(worker, self.n, workers):
            yield {"x": torch.tensor([self.epoch, i]), "pid": os.getpid()}


def fresh_loader_epochs(ds, epochs, **loader):
    """The reference: ``set_epoch`` and a new DataLoader (new workers) for each epoch."""
    out = []
    for e in range(epochs):
        ds.set_epoch(e)
        out.append(list(DataLoader(ds, drop_last=True, **loader)))
    return out


def test_persistent_workers_get_each_epoch_and_match_fresh_loaders():
    ds = EpochStream(14)  # 2 workers × 7 items, batches of 3: 2 per worker, 4 an epoch
    expected = [b for epoch in fresh_loader_epochs(ds, 3, batch_size=3, num_workers=2)
                for b in epoch]
    stream = BatchStream(EpochStream(14), 3, num_workers=2)
    got = take(stream, 12)
    assert [b["x"].tolist() for b in got] == [b["x"].tolist() for b in expected]
    assert [b["x"][0, 0].item() for b in got] == [0] * 4 + [1] * 4 + [2] * 4
    # The same two worker processes served every epoch.
    pids = [set(b["pid"].tolist()) for b in got]
    assert len(set().union(*pids)) == 2 and pids[:4] == pids[4:8] == pids[8:]


def test_persistent_workers_on_shards_match_fresh_loaders(tmp_path):
    folder = make_shards(tmp_path)
    ds = load(folder, flip=True, seed=2)
    expected = [b for epoch in fresh_loader_epochs(ds, 3, batch_size=4, num_workers=2)
                for b in epoch]
    for cache in (False, True):
        got = take(BatchStream(load(folder, flip=True, seed=2), 4, seed=2, num_workers=2,
                               cache=cache), len(expected))
        assert_same(expected, got)


class Pictures(Dataset):
    """Map-style: a picture per index with a random flip from torch's global RNG (as
    ArrayImageDataset draws it), and the pid of the process that loaded it."""

    def __len__(self):
        return 24

    def __getitem__(self, i):
        x = torch.from_numpy(picture(i)).permute(2, 0, 1).float()
        return {"x": x.flip(-1) if torch.rand(()) < 0.5 else x, "label": i, "pid": os.getpid()}


def test_map_style_workers_persist_across_epochs_with_the_same_batches():
    expected = take(BatchStream(Pictures(), 5, seed=9), 12)  # 4 batches an epoch
    stream = BatchStream(Pictures(), 5, seed=9, num_workers=2)
    got = take(stream, 12)
    assert stream.state() == {"epoch": 2, "position": 4}
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["x"], b["x"])
    pids = set().union(*(b["pid"].tolist() for b in got))
    assert len(pids) == 2 and os.getpid() not in pids  # two workers, kept for three epochs
    # Each worker flipped under the epoch its keys carried: a picture's flip changes between
    # epochs for some pictures (the ≥ 16 seen in both epochs all alike by chance: 2^-16).
    by_epoch = [{int(i): x for b in got[4 * e:4 * e + 4]
                 for i, x in zip(b["label"], b["x"], strict=True)} for e in range(2)]
    common = by_epoch[0].keys() & by_epoch[1].keys()
    changed = [not torch.equal(by_epoch[0][i], by_epoch[1][i]) for i in common]
    assert len(common) >= 16 and any(changed) and not all(changed)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_2_with_workers_and_cache_continues_the_same_stream(tmp_path, workers):
    folder = make_shards(tmp_path)
    options = dict(seed=6, num_workers=workers)
    straight = take(BatchStream(load(folder, flip=True, seed=6), 4, **options), 30)
    resumed = BatchStream(load(folder, flip=True, seed=6), 4, **options)
    resumed.seek(2, 3)  # 10 batches an epoch: batch 23 onwards
    got = take(resumed, 7)
    assert resumed.dataset.cache is not None
    assert resumed.state() == {"epoch": 2, "position": 10}
    assert_same(straight[23:], got)
    # Map-style data with flips, resumed mid-epoch 2 with persistent workers.
    ref = take(BatchStream(Pictures(), 5, seed=6), 12)  # 4 batches an epoch
    again = BatchStream(Pictures(), 5, **options)
    again.seek(2, 1)
    for a, b in zip(ref[9:], take(again, 3), strict=True):
        assert torch.equal(a["x"], b["x"])


@pytest.mark.slow
def test_training_on_shards_with_workers_and_cache_resumes_bit_for_bit(tmp_path):
    # The trainer's own stream: 2 persistent workers over the cache, flips on; 4 batches of 8
    # an epoch (each worker: 2 shards, 20 samples, 2 full batches), so 10 steps run into epoch 2
    # and the resume starts in epoch 1, batch 2.
    import safetensors.torch

    from noisecraft.train import TrainConfig, new_run_config
    from train_helpers import train

    folder = make_shards(tmp_path)
    dataset = load(folder, flip=True, seed=1)
    tc = TrainConfig(steps=10, batch_size=8, lr=1e-3, warmup=1, log_every=1, sample_every=0,
                     checkpoint_every=0, ema_decay=0.8, num_workers=2, seed=1)
    # The mnist preset has dropout: a cache build that drew from torch's global RNG (which the
    # trainer checkpoints for dropout) at the first step of each run would shift its masks.
    config = new_run_config(dataset, folder, net="mnist", T=50, train=tc,
                            net_overrides={"base_channels": 8, "norm_groups": 4})
    train(tmp_path / "straight", config, dataset)
    train(tmp_path / "resumed", config, dataset, stop_at=6)
    train(tmp_path / "resumed", config, dataset, resume=True)
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a, b = (safetensors.torch.load_file(tmp_path / run / name) for run in ("straight", "resumed"))
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_batches_from_persistent_workers_are_the_same_batches(tmp_path):
    folder = make_shards(tmp_path)
    expected = take(BatchStream(load(folder, flip=True), 4, num_workers=2), 25)
    pinned = take(BatchStream(load(folder, flip=True), 4, num_workers=2, pin_memory=True), 25)
    assert all(b["x"].is_pinned() for b in pinned)
    assert_same(expected, pinned)
