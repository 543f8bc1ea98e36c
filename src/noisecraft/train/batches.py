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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset
from torch.utils.data import default_collate as collate

from ..errors import DataError
from ..seeding import derive_seed


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


class BatchStream:
    """``next(stream)`` is the next batch: ``{"x": (B, …), "label": (B,), "caption": [...], …}``."""

    def __init__(self, dataset: Dataset | IterableDataset, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, num_workers: int = 0,
                 pin_memory: bool = False):
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.map_style = not isinstance(dataset, IterableDataset)
        if self.map_style:
            n = len(dataset)  # type: ignore[arg-type]
            per_rank = n // world_size
            if per_rank < batch_size:
                name = getattr(dataset, "source", type(dataset).__name__)
                raise DataError(f"{name}: {n} examples give {per_rank} per process, fewer than one "
                                f"batch of {batch_size}; lower --batch-size")
        self.epoch = 0
        self.position = 0
        self._it: Iterator[dict[str, Any]] | None = None

    def state(self) -> dict[str, int]:
        """Where the stream is: the epoch and the batches already handed out in it."""
        return {"epoch": self.epoch, "position": self.position}

    def seek(self, epoch: int, position: int) -> None:
        for name, value in (("epoch", epoch), ("position", position)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"data {name} must be a non-negative integer, got {value!r}")
        self.epoch, self.position, self._it = epoch, position, None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, Any]:
        fresh = False
        while True:
            if self._it is None:
                self._it, fresh = self._open_epoch(), True
            try:
                batch = next(self._it)
            except StopIteration:
                if fresh and self.position == 0:
                    raise DataError("the training data yielded no complete batch in an epoch") from None
                self.epoch, self.position, self._it = self.epoch + 1, 0, None
                continue
            self.position += 1
            return batch

    def _loader(self, dataset: Dataset | IterableDataset, **kwargs: Any) -> DataLoader:
        # Each iterator draws its workers' base seed from ``generator``; without one it draws from
        # torch's global RNG, which the trainer checkpoints for dropout: a loader built at resume
        # would then shift every later dropout mask. A generator of the epoch's own keeps the
        # global stream untouched and the workers' seeds a function of (seed, rank, epoch).
        gen = torch.Generator().manual_seed(derive_seed("noisecraft-loader", self.seed, self.rank,
                                                        self.epoch))
        return DataLoader(dataset, num_workers=self.num_workers, collate_fn=collate,
                          pin_memory=self.pin_memory, generator=gen, **kwargs)

    def _open_epoch(self) -> Iterator[dict[str, Any]]:
        if self.map_style:
            sampler = DistributedSampler(self.dataset, num_replicas=self.world_size, rank=self.rank,
                                         shuffle=True, seed=self.seed, drop_last=True)
            sampler.set_epoch(self.epoch)
            order = list(sampler)
            bs = self.batch_size
            keys = [(self.epoch, i) for i in order]
            batches = [keys[i:i + bs] for i in range(0, len(keys) - bs + 1, bs)]
            if self.position > len(batches):
                raise DataError(f"cannot resume the data order: epoch {self.epoch} has "
                                f"{len(batches)} batches, but {self.position} were consumed before "
                                "(the data changed, or state.json is corrupt?)")
            seeded = _SeededExamples(self.dataset, self.seed)  # type: ignore[arg-type]
            return iter(self._loader(seeded, batch_sampler=batches[self.position:]))
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)
        it = iter(self._loader(self.dataset, batch_size=self.batch_size, drop_last=True))
        for skipped in range(self.position):
            try:
                next(it)
            except StopIteration:
                raise DataError(f"cannot resume the data order: epoch {self.epoch} now has "
                                f"{skipped} batches, but {self.position} were consumed before "
                                "(the data changed?)") from None
        return it
