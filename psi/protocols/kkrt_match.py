"""Matching helpers of KKRT PSI (:mod:`psi.protocols.kkrt`): value lookup and shared order.

Top-level functions so the executor can run them in worker processes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lookup_block", "lookup", "value_order"]


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
