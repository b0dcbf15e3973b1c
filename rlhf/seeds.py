"""Per-request sampling seeds derived by hashing, so no two requests share a stream.

Arithmetic schemes (seed * 1e6 + step + 7919 * engine + n * i + j) collide: step s+1's
prompt i reuses step s's prompt i seeds shifted by one slot. A hash of the whole key
gives every (run seed, stream, step, engine, prompt, sample) its own 63-bit seed.
"""
from __future__ import annotations

import hashlib


def derive_seed(*key: int | str) -> int:
    """A seed in [0, 2**63) from a key of ints and strings; equal keys give equal seeds.

    >>> derive_seed(1, "train", 0) == derive_seed(1, "train", 0) != derive_seed(1, "train", 1)
    True
    """
    text = "\x1f".join(f"{type(part).__name__}:{part}" for part in key)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
