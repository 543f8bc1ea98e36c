import pytest
import torch
from torch.utils.data import Dataset, IterableDataset

from noisecraft import DataError
from noisecraft.train.batches import BatchStream


class Numbers(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": torch.tensor([float(i)]), "label": i % 3, "caption": "", "key": str(i)}


class NumberStream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(Numbers(self.n)[i] for i in range(self.n))


def take(stream, k):
    return [b["x"].flatten().long().tolist() for b in (next(stream) for _ in range(k))]


def test_ranks_get_disjoint_full_batches_covering_the_epoch():
    # 22 examples, 2 ranks: DistributedSampler deals 11 each; batches of 4 → 2 per rank, tail dropped.
    s0 = BatchStream(Numbers(22), 4, rank=0, world_size=2, seed=3)
    s1 = BatchStream(Numbers(22), 4, rank=1, world_size=2, seed=3)
    a, b = take(s0, 2), take(s1, 2)
    flat_a, flat_b = sum(a, []), sum(b, [])
    assert len(flat_a) == len(flat_b) == 8 and not set(flat_a) & set(flat_b)
    assert s0.state() == {"epoch": 0, "position": 2}
    next(s0)  # the third batch starts epoch 1, reshuffled
    assert s0.state() == {"epoch": 1, "position": 1}


def test_batches_carry_labels_and_keys():
    batch = next(BatchStream(Numbers(8), 4, seed=0))
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (4,)
    assert len(batch["key"]) == 4


def test_seek_continues_the_same_order():
    ref = take(BatchStream(Numbers(10), 3, seed=7), 7)  # 3 batches an epoch: crosses two epochs
    assert sorted(sum(ref[:3], [])) != sum(ref[:3], [])  # shuffled
    assert ref[:3] != ref[3:6]  # reshuffled per epoch
    resumed = BatchStream(Numbers(10), 3, seed=7)
    resumed.seek(1, 1)
    assert take(resumed, 3) == ref[4:7]


def test_iterable_data_resumes_by_skipping():
    ref = take(BatchStream(NumberStream(10), 3), 5)
    resumed = BatchStream(NumberStream(10), 3)
    resumed.seek(1, 1)
    assert take(resumed, 1) == ref[4:5]


def test_too_little_data_is_a_dataerror():
    with pytest.raises(DataError, match="5 examples give 2 per process, fewer than one batch of 3"):
        BatchStream(Numbers(5), 3, world_size=2)
    with pytest.raises(DataError, match="no complete batch"):
        next(BatchStream(NumberStream(2), 3))


def test_random_flips_do_not_depend_on_workers_or_where_a_resume_starts():
    # Digits with random flips: batches 3..5 of epoch 1 must be the same pictures, flipped the
    # same way, whether the stream ran from the start in the main process or was resumed at
    # batch 3 with two DataLoader workers (whose RNG streams restart with every loader).
    from noisecraft import data

    flipping = data.load("digits", flip=True)
    straight = BatchStream(flipping, 16, seed=5)
    straight.seek(1, 0)
    expected = [next(straight)["x"] for _ in range(6)][3:]
    resumed = BatchStream(flipping, 16, seed=5, num_workers=2)
    resumed.seek(1, 3)
    got = [next(resumed)["x"] for _ in range(3)]
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
    # The flips are real: the same batch without flipping differs in some pictures, only by
    # mirroring.
    plain = BatchStream(data.load("digits"), 16, seed=5)
    plain.seek(1, 3)
    unflipped = next(plain)["x"]
    mirrored = [not torch.equal(u, f) for u, f in zip(unflipped, got[0], strict=True)]
    assert any(mirrored) and not all(mirrored)
    for u, f, m in zip(unflipped, got[0], mirrored, strict=True):
        assert torch.equal(u.flip(-1) if m else u, f)
