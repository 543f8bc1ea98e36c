import hashlib

from noisecraft.noise import example_seed
from noisecraft.seeding import derive_seed


def blake(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def test_derive_seed_is_blake2b_of_the_joined_parts():
    assert derive_seed("noisecraft", 3, 17) == blake("noisecraft/3/17")
    assert derive_seed("noisecraft-data", 0, 2, "train_0001") == blake("noisecraft-data/0/2/train_0001")
    assert all(0 <= derive_seed("x", i) < 2**63 for i in range(100))


def test_neighbouring_seeds_do_not_share_streams():
    # seed + index arithmetic would make these equal.
    assert example_seed(1, 1) != example_seed(2, 0)
    assert len({example_seed(s, i) for s in range(20) for i in range(20)}) == 400
