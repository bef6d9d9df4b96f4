"""One seed mixer for the whole project: a seed from its parts (run seed, stream, step, rank, task, clip id).

A hash, not `hash()` or a running generator, so a seed depends only on its parts: the same in every
process, on every machine and Python version, whatever was drawn before. The data streams of pre-training
and fine-tuning, the rendered episodes of ingestion and the held-out split of the shards all draw on it.
"""

from __future__ import annotations

import hashlib


def mix(*parts: int | str, bits: int = 63) -> int:
    """A `bits`-bit seed (at most 64) from `parts`: sha256 of "p0/p1/...", first 8 bytes little-endian.

    63 bits by default, so the seed fits a signed 64-bit integer (numpy, torch and gymnasium all accept it).
    """
    if not 0 < bits <= 64:
        raise ValueError(f"mix: bits={bits}, must be in 1..64")
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % 2**bits
