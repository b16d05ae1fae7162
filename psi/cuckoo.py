"""Cuckoo hashing with three hash functions, vectorised with numpy (no stash).

Table size follows the stash-less bound used for KKRT-style PSI: ``e = (σ + log2 n + 256) / 240``
bins per item (σ = 40 statistical security; e ≈ 1.32 at n = 2^20), so a random-walk insertion
fails with probability below 2^-σ. Insertion runs in parallel rounds: every homeless item tries
one of its bins, one claimant per bin wins, the displaced occupants and the losers pick another
of their three bins at random and try again. If the round limit is hit, the caller re-seeds the
hash functions and starts over (:func:`build`), so a failure costs time, never correctness.

Bins come from permutation-based hashing ("phasing", as in Pinkas–Schneider–Zohner and
RR17): an item's 192-bit digest ``d`` is split into ``d_L`` (its first 64-bit word modulo the
table size ``m``) and ``d_R`` (74 further bits); hash function ``h`` puts the item in bin
``(f_h(d_R) + d_L) mod m``, where ``f_0, f_1, f_2`` are three 64-bit words of a keyed AES
permutation of ``d_R`` reduced modulo ``m``. The OT code input is then only ``d_R ‖ h``
(76 bits, the BCH code's dimension; :func:`code_inputs`): in a given bin, ``f_h(d_R)`` and
the bin fix ``d_L``, so two items with the same bin, hash function and ``d_R`` have the same
digest. Distinct items therefore share a code input in a bin only with probability
``1/(m·2^74)`` per pair (the digest is a PRF of the item under the session key).
"""

from __future__ import annotations

import math
import secrets

import numpy as np

from .crypto.suite import STANDARD, Suite
from .errors import UsageError

__all__ = [
    "HASHES", "DIGEST_BYTES", "PHASE_BITS", "table_size", "bin_indices", "code_inputs", "insert", "build", "CuckooTable",
]

HASHES = 3
SIGMA = 40
MAX_ROUNDS = 2000
MAX_ATTEMPTS = 16
DIGEST_BYTES = 24  # d_L word, then d_R (64 + 10 bits), 6 unused bits
PHASE_BITS = 74
_HIGH = np.uint64((1 << (PHASE_BITS - 64)) - 1)


def table_size(items: int, sigma: int = SIGMA) -> int:
    """Bins for ``items`` entries: ``ceil(e·n)`` with the stash-less ``e``; at least 8 and n+8."""
    n = max(items, 1)
    factor = (sigma + math.log2(max(n, 2)) + 256) / 240
    return max(8, items + 8, math.ceil(factor * n))


def _split(digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``d_L`` words ``uint64 (n,)``, ``d_R`` ``uint64 (n, 2)``) of ``uint8 (n, 24)`` digests."""
    words = np.ascontiguousarray(digests, dtype=np.uint8).reshape(-1, DIGEST_BYTES).view(np.uint64)
    right = words[:, 1:3].copy()
    right[:, 1] &= _HIGH
    return words[:, 0], right


def bin_indices(digests: np.ndarray, seed: bytes, bins: int, suite: "Suite | None" = None) -> np.ndarray:
    """``int64 (n, 3)`` bin numbers for ``digests`` (``uint8 (n, 24)``) under ``seed`` (AES; SM4 under gm)."""
    if len(seed) != 16:
        raise ValueError("cuckoo seed must be 16 bytes")
    left, right = _split(digests)
    count = left.size
    flat = right.view(np.uint8).reshape(-1)
    words = np.empty((count, 4), dtype=np.uint64)
    scratch = np.empty(flat.size + 16, dtype=np.uint8)
    for k in range(2):
        key = bytes(b ^ (0x5C * (k + 1) & 0xFF) for b in seed)
        cipher = (suite or STANDARD).ecb(key)
        cipher.update_into(flat, scratch)
        words[:, 2 * k : 2 * k + 2] = scratch[: flat.size].view(np.uint64).reshape(count, 2)
    m = np.uint64(bins)
    out = (words[:, :HASHES] % m).astype(np.int64)
    out += (left % m).astype(np.int64)[:, None]
    out[out >= bins] -= bins  # (f_h + d_L) mod m, both already below m
    return out


def code_inputs(digests: np.ndarray, hash_index: np.ndarray | int) -> np.ndarray:
    """``d_R ‖ h`` as 76-bit code inputs ``uint64 (n, 2)`` (``h`` in bits 74–75)."""
    _, right = _split(digests)
    right[:, 1] |= np.asarray(hash_index, dtype=np.uint64) << np.uint64(PHASE_BITS - 64)
    return right


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


def build(digests: np.ndarray, *, bins: int | None = None, attempts: int = MAX_ATTEMPTS, suite: "Suite | None" = None) -> CuckooTable:
    """Hash ``digests`` (``uint8 (n, 24)``) into a fresh table, re-seeding on failure (raise
    after ``attempts``). The insertion walk's coin flips (numpy, seeded from the OS) only
    decide which of its bins an item takes; they never leave the client."""
    bins = table_size(digests.shape[0]) if bins is None else bins
    rng = np.random.default_rng(secrets.randbits(128))
    for _ in range(attempts):
        seed = secrets.token_bytes(16)
        indices = bin_indices(digests, seed, bins, suite)
        placed = insert(indices, bins, rng)
        if placed is not None:
            return CuckooTable(seed, bins, placed[0], placed[1], indices)
    raise UsageError(f"cuckoo hashing failed {attempts} times (duplicate items?)")
