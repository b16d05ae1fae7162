"""Numbering distinct byte-string keys in order of first appearance, in batches, with numpy.

:class:`KeyIndex` answers what a ``dict`` from key to number answered for the file readers
(``psi.records._Collector``), at a fraction of the time and memory for millions of keys: each
key's 64-bit ``hash()`` is looked up in a few sorted arrays (16 bytes per distinct key instead
of a dict entry and its table; arrays of similar size are merged, so there are O(log n) of them
and each key is copied O(log n) times). A hash match is only a candidate: the keys themselves are compared
before a row is called a duplicate, so the numbering is exactly the dict's. On the first pair of
distinct keys with equal hashes (about 2^-24 for a file of 2^20 keys) the index turns into the
plain dict for the rest of the read, so results never depend on hash values.

Promises (``tests/test_keyindex.py`` checks them against a dict, also with a hash function that
collides on purpose): :meth:`KeyIndex.assign` numbers a batch as feeding its keys one by one to a
dict would; :meth:`KeyIndex.find` / :meth:`KeyIndex.add` do the same for single keys, and
batches and single keys mix freely.
"""

from __future__ import annotations

from operator import eq
from typing import Callable, Sequence

import numpy as np

__all__ = ["KeyIndex"]


class KeyIndex:
    """Key -> number of the key, numbers given in order of first appearance (see the module doc).

    ``known`` (passed to each call) is the caller's list of keys by number: the index stores no
    keys of its own, only hashes and numbers."""

    def __init__(self, hash_fn: Callable[[bytes], int] = hash) -> None:
        self._hash = hash_fn
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted hashes, key number of each)
        self._singles: dict[bytes, int] = {}        # keys added one at a time (small, exact)
        self._exact: dict[bytes, int] | None = None  # every key, once two hashes collided

    @property
    def exact(self) -> bool:
        """True once the index fell back to a plain dict (a hash collision was seen)."""
        return self._exact is not None

    def _to_dict(self, known: Sequence[bytes]) -> dict[bytes, int]:
        self._exact = {key: number for number, key in enumerate(known)}
        self._runs = []
        self._singles = {}
        return self._exact

    # -- one key ----------------------------------------------------------------------------
    def find(self, key: bytes, known: Sequence[bytes]) -> int | None:
        """The number of ``key`` if it was seen, else None."""
        if self._exact is not None:
            return self._exact.get(key)
        number = self._singles.get(key)
        if number is not None or not self._runs:
            return number
        h = self._hash(key)
        for hashes, ids in self._runs:
            at = int(np.searchsorted(hashes, h))
            if at < len(hashes) and hashes[at] == h:
                number = int(ids[at])  # stored hashes are distinct (a collision ends the runs)
                if known[number] == key:
                    return number
                return self._to_dict(known).get(key)  # a collision: exact from now on
        return None

    def add(self, key: bytes, number: int) -> None:
        """Record a new key (one :meth:`find` just did not find) under ``number``."""
        if self._exact is not None:
            self._exact[key] = number
        else:
            self._singles[key] = number

    # -- a batch ----------------------------------------------------------------------------
    def assign(self, keys: list[bytes], known: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Number the rows ``keys`` as one-by-one dict insertion would; ``known`` are the keys
        numbered so far (numbers ``0..len(known)-1``). Returns (number of each row, positions of
        the rows whose key is new, ascending); new keys get ``len(known), len(known)+1, ...`` in
        row order. The caller appends ``[keys[i] for i in new]`` to ``known``."""
        count = len(keys)
        before = len(known)
        if self._exact is not None:
            return self._assign_exact(keys, before)
        numbers = np.full(count, -1, dtype=np.int64)
        hashes = np.fromiter(map(self._hash, keys), dtype=np.int64, count=count)
        order = np.argsort(hashes, kind="stable")  # by hash, equal hashes in row order
        ordered = hashes[order]
        if self._singles:
            numbers[:] = [-1 if n is None else n for n in map(self._singles.get, keys)]
            order = order[numbers[order] < 0]
            ordered = hashes[order]
        for run, ids in self._runs:  # sorted queries: searchsorted walks the run once
            at = np.searchsorted(run, ordered)
            np.minimum(at, len(run) - 1, out=at)
            hit = run[at] == ordered
            if hit.any():
                rows, candidates = order[hit], ids[at[hit]]
                if not all(map(eq, map(keys.__getitem__, rows.tolist()), map(known.__getitem__, candidates.tolist()))):
                    self._to_dict(known)
                    return self._assign_exact(keys, before)
                numbers[rows] = candidates
                order, ordered = order[~hit], ordered[~hit]
        # rows whose key is new to the index, by hash: the first of each run of equal hashes is new
        starts = np.empty(len(order), dtype=bool)
        starts[:1] = True
        np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
        firsts = order[starts]
        fresh = np.zeros(count, dtype=bool)
        fresh[firsts] = True
        new = np.flatnonzero(fresh)  # row order
        rank = np.cumsum(fresh) - 1 + before  # the number a new key at each row gets
        if not starts.all():  # equal hashes among new rows: the same key (checked), or a collision
            first_of = firsts[np.cumsum(starts) - 1]
            again = ~starts
            if not all(map(eq, map(keys.__getitem__, order[again].tolist()),
                           map(keys.__getitem__, first_of[again].tolist()))):
                self._to_dict(known)
                return self._assign_exact(keys, before)
            numbers[order] = rank[first_of]
        else:
            numbers[order] = rank[order]
        if len(firsts):
            self._push(ordered[starts], rank[firsts])
        return numbers, new

    def _push(self, hashes: np.ndarray, ids: np.ndarray) -> None:
        """Add a sorted run; merge the last two runs while the newer is at least half the older."""
        runs = self._runs
        runs.append((hashes, ids))
        while len(runs) > 1 and 2 * len(runs[-1][0]) >= len(runs[-2][0]):
            (h2, i2), (h1, i1) = runs.pop(), runs.pop()
            at = np.searchsorted(h1, h2)
            runs.append((np.insert(h1, at, h2), np.insert(i1, at, i2)))

    def _assign_exact(self, keys: list[bytes], before: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._exact
        assert index is not None
        numbers = np.empty(len(keys), dtype=np.int64)
        new_rows: list[int] = []
        for i, key in enumerate(keys):
            number = index.get(key)
            if number is None:
                number = index[key] = before + len(new_rows)
                new_rows.append(i)
            numbers[i] = number
        return numbers, np.asarray(new_rows, dtype=np.int64)
