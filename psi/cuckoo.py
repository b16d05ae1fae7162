"""Cuckoo hashing with three hash functions, vectorised with numpy (no stash).

Table size follows the stash-less bound used for KKRT-style PSI: ``e = (σ + log2 n + 256) / 240``
bins per item (σ = 40 statistical security; e ≈ 1.32 at n = 2^20), so a random-walk insertion
fails with probability below 2^-σ. Insertion runs in parallel rounds: every homeless item tries
one of its bins, one claimant per bin wins, the displaced occupants and the losers pick another
of their three bins at random and try again. If the round limit is hit, the caller re-seeds the
hash functions and starts over (:func:`build`), so a failure costs time, never correctness.

Bin indices come from a keyed AES permutation of each item's 128-bit digest: two blocks give
four 64-bit words, three of which are reduced modulo the table size (bias below 2^-40).
"""

from __future__ import annotations

import math
import secrets

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import UsageError

__all__ = ["HASHES", "table_size", "bin_indices", "insert", "build", "CuckooTable"]

HASHES = 3
SIGMA = 40
MAX_ROUNDS = 2000
MAX_ATTEMPTS = 16


def table_size(items: int, sigma: int = SIGMA) -> int:
    """Bins for ``items`` entries: ``ceil(e·n)`` with the stash-less ``e``; at least 8 and n+8."""
    n = max(items, 1)
    factor = (sigma + math.log2(max(n, 2)) + 256) / 240
    return max(8, items + 8, math.ceil(factor * n))


def bin_indices(digests: np.ndarray, seed: bytes, bins: int) -> np.ndarray:
    """``int64 (n, 3)`` bin numbers for ``digests`` (``uint8 (n, 16)``) under ``seed``."""
    if len(seed) != 16:
        raise ValueError("cuckoo seed must be 16 bytes")
    flat = np.ascontiguousarray(digests, dtype=np.uint8).reshape(-1)
    count = flat.size // 16
    words = np.empty((count, 4), dtype=np.uint64)
    scratch = np.empty(flat.size + 16, dtype=np.uint8)
    for k in range(2):
        key = bytes(b ^ (0x5C * (k + 1) & 0xFF) for b in seed)
        cipher = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        cipher.update_into(flat, scratch)
        words[:, 2 * k : 2 * k + 2] = scratch[: flat.size].view(np.uint64).reshape(count, 2)
    return (words[:, :HASHES] % np.uint64(bins)).astype(np.int64)


def insert(indices: np.ndarray, bins: int, rng: np.random.Generator, max_rounds: int = MAX_ROUNDS):
    """Place every item in one of its bins; return ``(table, which)`` or ``None`` on failure.

    ``table[b]`` is the item in bin ``b`` (``-1`` if empty); ``which[i]`` is the hash function
    (0..2) that placed item ``i``.
    """
    count = indices.shape[0]
    table = np.full(bins, -1, dtype=np.int64)
    claims = np.full(bins, -1, dtype=np.int64)  # scratch, all -1 between rounds
    which = rng.integers(0, HASHES, count).astype(np.int64)
    pending = np.arange(count, dtype=np.int64)
    for _ in range(max_rounds):
        if pending.size == 0:
            return table, which
        targets = indices[pending, which[pending]]
        # every claimant writes itself into its bin; whichever write is left wins the bin
        # (a scatter, linear time: np.unique's sort took 2/3 of the insertion at 2^20)
        claims[targets] = pending
        won = claims[targets] == pending
        claims[targets] = -1
        winners, claimed = pending[won], targets[won]
        evicted = table[claimed]
        evicted = evicted[evicted >= 0]
        table[claimed] = winners
        moving = np.concatenate([pending[~won], evicted])
        which[moving] = (which[moving] + rng.integers(1, HASHES, moving.size)) % HASHES
        pending = moving
    return None


class CuckooTable:
    """A successful placement: seed, table size, bin → item and item → hash function."""

    def __init__(self, seed: bytes, bins: int, table: np.ndarray, which: np.ndarray, indices: np.ndarray) -> None:
        self.seed, self.bins, self.table, self.which, self.indices = seed, bins, table, which, indices

    def bin_of(self) -> np.ndarray:
        """The bin each item sits in."""
        return self.indices[np.arange(self.which.size), self.which]


def build(digests: np.ndarray, *, bins: int | None = None, attempts: int = MAX_ATTEMPTS) -> CuckooTable:
    """Hash ``digests`` into a fresh table, re-seeding on failure (raise after ``attempts``)."""
    bins = table_size(digests.shape[0]) if bins is None else bins
    rng = np.random.default_rng(secrets.randbits(128))
    for _ in range(attempts):
        seed = secrets.token_bytes(16)
        indices = bin_indices(digests, seed, bins)
        placed = insert(indices, bins, rng)
        if placed is not None:
            return CuckooTable(seed, bins, placed[0], placed[1], indices)
    raise UsageError(f"cuckoo hashing failed {attempts} times (duplicate items?)")
