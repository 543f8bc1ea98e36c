"""An endless stream of training batches in a reproducible, resumable order.

Map-style data is dealt to the ranks by ``DistributedSampler`` (shuffled with the run's seed,
reshuffled each epoch, the tail that does not fill a batch on every rank dropped), so the order
is a function of (seed, epoch) alone. The stream counts the batches it has handed out in the
current epoch; ``seek(epoch, position)`` puts it back there without loading the skipped
examples, which is how ``--resume`` continues the data order exactly. Each example is also
loaded under a torch seed of its own, a function of (seed, epoch, index), so its random
augmentation (flips) is the same whichever worker loads it and wherever a resumed run starts.

Iterable data (WebDataset shards) splits itself over ranks and workers; its position is
restored by drawing and discarding the batches already consumed in the epoch.

With DataLoader workers the stream keeps one loader, and its workers, for the whole run:
- map-style: one endless batch sampler deals epoch after epoch, so the workers' prefetch runs on
  across epoch ends; each key (epoch, i) carries its epoch to whichever worker loads it;
- iterable data with ``set_epoch``: ``persistent_workers`` restart their pass at each epoch and
  read its number from a tensor in shared memory that the main process sets before the pass
  begins (a worker's copy of the dataset is taken once, at worker start, so it cannot carry it).
Batches are pinned (``pin_memory``) for a CUDA device. Before the first batch, WebDataset shards
whose decoded pictures fit in memory are decoded once, and in-memory pictures that each item
would resize or convert are prepared once (`noisecraft.data.cache`); the batches are
bit-identical to those made without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset
from torch.utils.data import default_collate as collate

from ..checks import integer
from ..data.cache import cached
from ..errors import DataError
from ..seeding import derive_seed

# Batches each worker keeps ready (torch's default). Map-style data keeps the queue full across
# epoch ends; a deeper one would only smooth uneven load times, at workers × batches of memory.
PREFETCH_FACTOR = 2


class _SeededExamples(Dataset):
    """``dataset[(epoch, i)]`` is ``dataset[i]`` loaded under torch seed (seed, epoch, i).

    DataLoader workers draw from RNG streams that restart whenever a loader is built, so a
    resumed run would flip different pictures than an uninterrupted one; seeding per example
    makes every draw a function of the run's config. The CPU generator's state is put back
    afterwards, so the caller's stream (with no workers, the trainer's own checkpointed global
    RNG) is untouched. ``torch.default_generator.manual_seed`` costs ~5 µs, where
    ``torch.manual_seed``/``fork_rng`` (which also visit every accelerator) cost ~150 µs.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        outer = torch.get_rng_state()
        try:
            torch.default_generator.manual_seed(derive_seed("noisecraft-data", self.seed, epoch,
                                                            index))
            return self.dataset[index]
        finally:
            torch.set_rng_state(outer)


class _EpochBatches:
    """Batches of keys (epoch, i) for a map-style dataset: from batch ``position`` of ``epoch``
    to the end of that epoch, then every batch of each later epoch, endlessly."""

    def __init__(self, batches_of: Any, epoch: int, position: int):
        self.batches_of, self.epoch, self.position = batches_of, epoch, position

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, position = self.epoch, self.position
        while True:
            yield from self.batches_of(epoch)[position:]
            epoch, position = epoch + 1, 0


class _EpochFromMain(IterableDataset):
    """``dataset``'s pass for the epoch in ``epoch``, a one-element tensor in shared memory: the
    main process writes it before it starts each pass of its persistent workers."""

    def __init__(self, dataset: IterableDataset, epoch: torch.Tensor):
        self.dataset, self.epoch = dataset, epoch

    def __iter__(self) -> Iterator[Any]:
        self.dataset.set_epoch(int(self.epoch))  # type: ignore[attr-defined]
        return iter(self.dataset)


class BatchStream:
    """``next(stream)`` is the next batch: ``{"x": (B, …), "label": (B,), "caption": [...], …}``.

    ``cache``: decode shards (or resize in-memory pictures) once, when they fit in memory
    (`noisecraft.data.cache`); it changes no batch, only the time an epoch takes.
    """

    def __init__(self, dataset: Dataset | IterableDataset, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, num_workers: int = 0,
                 pin_memory: bool = False, cache: bool = True):
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.cache = cache
        self.map_style = not isinstance(dataset, IterableDataset)
        if self.map_style:
            n = len(dataset)  # type: ignore[arg-type]
            per_rank = n // world_size
            if per_rank < batch_size:
                name = getattr(dataset, "source", type(dataset).__name__)
                raise DataError(f"{name}: {n} examples give {per_rank} per process, fewer than one "
                                f"batch of {batch_size}; lower --batch-size")
            self.per_epoch = len(self._sampler(0)) // batch_size
        # Persistent workers need the epoch from outside: only a dataset that takes it gets them.
        self.persistent = (not self.map_style and num_workers > 0
                           and callable(getattr(dataset, "set_epoch", None)))
        self._shared_epoch = (torch.zeros((), dtype=torch.int64).share_memory_()
                              if self.persistent else None)
        self._persistent_loader: DataLoader | None = None
        self._cache_tried = False
        self.epoch = 0
        self.position = 0
        self._it: Iterator[dict[str, Any]] | None = None

    def state(self) -> dict[str, int]:
        """Where the stream is: the epoch and the batches already handed out in it."""
        return {"epoch": self.epoch, "position": self.position}

    def seek(self, epoch: int, position: int) -> None:
        for name, value in (("epoch", epoch), ("position", position)):
            integer(f"data {name}", value, minimum=0)
        self.close()
        self.epoch, self.position = epoch, position

    def close(self) -> None:
        """Stop the workers (the next batch starts them again)."""
        self._it, self._persistent_loader = None, None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, Any]:
        fresh = False
        while True:
            if self._it is None:
                self._it, fresh = self._open(), True
            if self.map_style and self.position == self.per_epoch:
                # The endless sampler goes straight on into the next epoch.
                self.epoch, self.position = self.epoch + 1, 0
            try:
                batch = next(self._it)
            except StopIteration:  # iterable data only: its epoch ended
                if fresh and self.position == 0:
                    raise DataError("the training data yielded no complete batch in an epoch") from None
                self.epoch, self.position, self._it = self.epoch + 1, 0, None
                continue
            self.position += 1
            return batch

    def _sampler(self, epoch: int) -> DistributedSampler:
        sampler = DistributedSampler(self.dataset, num_replicas=self.world_size, rank=self.rank,
                                     shuffle=True, seed=self.seed, drop_last=True)
        sampler.set_epoch(epoch)
        return sampler

    def _batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """Epoch ``epoch``'s batches of this rank: DistributedSampler's order, the tail dropped."""
        keys = [(epoch, i) for i in self._sampler(epoch)]
        bs = self.batch_size
        return [keys[i:i + bs] for i in range(0, len(keys) - bs + 1, bs)]

    def _loader(self, dataset: Dataset | IterableDataset, **kwargs: Any) -> DataLoader:
        # Each iterator draws its workers' base seed from ``generator``; without one it draws from
        # torch's global RNG, which the trainer checkpoints for dropout: a loader built at resume
        # would then shift every later dropout mask. A generator of its own keeps the global
        # stream untouched (what a worker draws is seeded per example, not by the base seed).
        gen = torch.Generator().manual_seed(derive_seed("noisecraft-loader", self.seed, self.rank,
                                                        self.epoch))
        if self.num_workers > 0:
            kwargs["prefetch_factor"] = PREFETCH_FACTOR
        return DataLoader(dataset, num_workers=self.num_workers, collate_fn=collate,
                          pin_memory=self.pin_memory, generator=gen, **kwargs)

    def _open(self) -> Iterator[dict[str, Any]]:
        """The batch iterator from (epoch, position) on; the first call decodes the cache."""
        if self.cache and not self._cache_tried:
            self._cache_tried = True
            self.dataset = cached(self.dataset, num_workers=self.num_workers)
        if self.map_style:
            if self.position > self.per_epoch:
                raise DataError(f"cannot resume the data order: epoch {self.epoch} has "
                                f"{self.per_epoch} batches, but {self.position} were consumed "
                                "before (the data changed, or state.json is corrupt?)")
            seeded = _SeededExamples(self.dataset, self.seed)  # type: ignore[arg-type]
            sampler = _EpochBatches(self._batches, self.epoch, self.position)
            return iter(self._loader(seeded, batch_sampler=sampler))
        it = self._open_pass()
        for skipped in range(self.position):
            try:
                next(it)
            except StopIteration:
                raise DataError(f"cannot resume the data order: epoch {self.epoch} now has "
                                f"{skipped} batches, but {self.position} were consumed before "
                                "(the data changed?)") from None
        return it

    def _open_pass(self) -> Iterator[dict[str, Any]]:
        """A pass of iterable data over epoch ``self.epoch``, from its start."""
        batching = {"batch_size": self.batch_size, "drop_last": True}
        if self.persistent:
            if self._persistent_loader is None:
                self._persistent_loader = self._loader(
                    _EpochFromMain(self.dataset, self._shared_epoch),  # type: ignore[arg-type]
                    persistent_workers=True, **batching)
            assert self._shared_epoch is not None
            self._shared_epoch.fill_(self.epoch)  # before iter(): it sends the workers on
            return iter(self._persistent_loader)
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)
        return iter(self._loader(self.dataset, **batching))
