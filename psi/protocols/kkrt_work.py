"""The work of KKRT PSI (:mod:`psi.protocols.kkrt`) that runs on the executor: pre-hashing,
correction batches, the server's OPRF values, value lookup and the shared match order.

Top-level functions so the executor can run them in worker processes; each gives the same
bytes whether it runs on one piece or on several.
"""

from __future__ import annotations

import mmap
import os
from multiprocessing import shared_memory
from typing import Sequence

import numpy as np

from .. import cuckoo
from ..crypto.suite import STANDARD, Suite
from ..ot import bch, oos
from ..ot.aes_hash import RowPrg, TweakHash, derive_key
from ..ot.extension import ExtensionReceiver, padded_rows

__all__ = ["DOMAIN", "digest_piece", "digest_key", "client_batch", "client_check", "server_rows", "server_values", "release_shm",
           "lookup_block", "lookup", "value_order"]

DOMAIN = 0x4B  # hash-tweak domain byte for KKRT OPRF outputs (block 0: value, block 1: evidence)


def digest_piece(items: Sequence[bytes], key: bytes, suite: Suite = STANDARD) -> np.ndarray:
    """BLAKE2b-192 (SM3 under gm) of each item keyed with ``key``: ``uint8 (len(items), 24)``."""
    size = cuckoo.DIGEST_BYTES
    joined = suite.keyed_digests(items, key, size)
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(items), size)


def digest_key(session: bytes, suite: Suite = STANDARD) -> bytes:
    return derive_key(b"kkrt-item-digest", session, size=32, suite=suite)


def digests_of(items: Sequence[bytes], session: bytes, suite: Suite = STANDARD) -> np.ndarray:
    return digest_piece(items, digest_key(session, suite), suite)


def client_batch(
    inputs: np.ndarray, *, keys0: np.ndarray, keys1: np.ndarray, offset: int, session: bytes, start: int, out_bytes: int,
    suite: Suite = STANDARD,
) -> tuple[np.ndarray, bytes]:
    """One correction batch from scratch (``inputs``: its bins' code inputs, then the check
    rows'): (hashes of its bins, wire ``U``)."""
    ext = ExtensionReceiver(keys0, keys1, offset, suite)
    t_rows, wire = ext.extend_codewords(bch.code().encode(inputs))
    rows = inputs.shape[0] - oos.S
    return TweakHash(session, suite).hash_rows(t_rows[:rows], start, out_bytes=out_bytes, domain=DOMAIN), wire


def client_check(inputs: np.ndarray, *, keys0: np.ndarray, offset: int, session: bytes, batch: int, seed: bytes,
                 suite: Suite = STANDARD) -> bytes:
    """The client's OOS17 answer for one batch, its ``T`` columns expanded again from the seeds."""
    rows = inputs.shape[0] - oos.S
    t_cols = RowPrg(keys0, offset, suite).fill(np.empty((keys0.shape[0], padded_rows(inputs.shape[0]) // 8), dtype=np.uint8))
    return oos.receiver_response(t_cols, inputs, oos.challenge_words(session, batch, seed, rows, suite))


def server_rows(q: np.ndarray, masked: bch.BchCode, digests: np.ndarray, bins: np.ndarray, hash_index: np.ndarray | int) -> np.ndarray:
    """``q_b ⊕ (C(d_R‖h) ∧ Δ)`` for items with these digests, bins and hash functions."""
    rows = masked.encode(cuckoo.code_inputs(digests, hash_index))
    rows ^= q[bins]
    return rows


def server_values(
    digests: np.ndarray,
    *,
    q: "np.ndarray | tuple[str, tuple[int, int]]",
    cuckoo_seed: bytes,
    bins: int,
    masked_tables: np.ndarray,
    session: bytes,
    width: int,
    step: int,
    suite: Suite = STANDARD,
) -> np.ndarray:
    """``uint8 (HASHES, len(digests), width)``: the server's OPRF values of these items.

    ``q`` is the extension matrix, or (name, shape) of a shared-memory block holding it;
    ``masked_tables`` encode ``C(·) ∧ Δ`` (:meth:`psi.ot.bch.BchCode.masked`).
    """
    shm = None
    if isinstance(q, tuple):
        shm = _attach(q[0], q[1][0] * q[1][1])
        q = np.frombuffer(shm, dtype=np.uint8, count=q[1][0] * q[1][1]).reshape(q[1])
    try:
        n = digests.shape[0]
        indices = cuckoo.bin_indices(digests, cuckoo_seed, bins, suite)
        masked = bch.BchCode.from_tables(masked_tables)
        hasher = TweakHash(session, suite)
        values = np.empty((cuckoo.HASHES, n, width), dtype=np.uint8)
        # C is linear: C(d_R‖h) ∧ Δ = (C(d_R‖0) ∧ Δ) ⊕ (C(0‖h) ∧ Δ), so encode each item once
        offsets = masked.encode(cuckoo.code_inputs(np.zeros((cuckoo.HASHES, cuckoo.DIGEST_BYTES), dtype=np.uint8), np.arange(cuckoo.HASHES)))
        for start in range(0, n, step):
            stop = min(start + step, n)
            base = masked.encode(cuckoo.code_inputs(digests[start:stop], 0))
            for h in range(cuckoo.HASHES):
                idx = indices[start:stop, h]
                rows = q[idx]
                rows ^= base
                rows ^= offsets[h]
                values[h, start:stop] = hasher.hash_rows(rows, 0, out_bytes=width, domain=DOMAIN, indices=idx)
        return values
    finally:
        if shm is not None:
            del q
            shm.close()


def _attach(name: str, size: int) -> "mmap.mmap":
    """Map the parent's shared block read-only, without registering it with a resource tracker
    (``SharedMemory(name=...)`` does in 3.11, and a worker's tracker then reports a leak)."""
    import _posixshmem

    fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, mode=0o600)
    try:
        return mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def release_shm(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.unlink()
    except FileNotFoundError:  # pragma: no cover - already gone
        pass
    try:
        shm.close()
    except BufferError:  # pragma: no cover - a view is still alive; the mapping goes at exit
        pass




def lookup_block(
    query_ids: np.ndarray, queries: np.ndarray, table: np.ndarray, table_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Worker entry point: (item ids, wire positions) of the queries found among ``table``
    (``table_ids``: each table row's position on the wire)."""
    q_idx, s_idx = lookup(queries, table)
    return query_ids[q_idx], table_ids[s_idx]


def lookup(queries: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (query row, table row) of equal byte rows; table rows are unique w.h.p."""
    if queries.shape[0] == 0 or table.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    width = table.shape[1]
    head = min(width, 8)

    def key(rows: np.ndarray) -> np.ndarray:
        padded = np.zeros((rows.shape[0], 8), dtype=np.uint8)
        padded[:, :head] = rows[:, :head]
        return padded.view(np.uint64).reshape(-1)

    table_keys = key(table)
    order = np.argsort(table_keys, kind="stable")
    sorted_keys = table_keys[order]
    query_keys = key(queries)
    left = np.searchsorted(sorted_keys, query_keys, "left")
    right = np.searchsorted(sorted_keys, query_keys, "right")
    hit = np.nonzero(right > left)[0]
    q_out: list[int] = []
    s_out: list[int] = []
    single = hit[right[hit] - left[hit] == 1]
    candidates = order[left[single]]
    same = (queries[single] == table[candidates]).all(axis=1)
    for q in hit[right[hit] - left[hit] > 1].tolist():  # 64-bit prefix collisions: rare
        for s in order[left[q] : right[q]].tolist():
            if bytes(queries[q]) == bytes(table[s]):
                q_out.append(q)
                s_out.append(s)
    return (
        np.concatenate([single[same], np.asarray(q_out, dtype=np.int64)]),
        np.concatenate([candidates[same], np.asarray(s_out, dtype=np.int64)]),
    )


def value_order(values: np.ndarray) -> np.ndarray:
    """Order of rows sorted lexicographically by their bytes."""
    if values.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.lexsort(values.T[::-1])
