"""One way to derive independent seeds: ``derive_seed("noisecraft", seed, index)``.

A cryptographic hash of the parts joined by "/", rather than arithmetic such as seed + index, so
neighbouring seeds never share streams (seed 1's example 1 would otherwise be seed 2's example 0).
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed (fits torch's ``manual_seed``): BLAKE2b-64 of ``"/".join(parts)``, halved."""
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1
