"""The RR22 oblivious key-value store: binned 3-hash garbled cuckoo rows with a binary dense part.

An OKVS encodes key-value pairs ``(k_i, v_i)`` into a vector ``P`` of ``total`` rows such that
``Decode(P, k_i) = v_i``; decoding is GF(2)-linear in ``P``:
``Decode(P, k) = P[c_0(k)] ⊕ P[c_1(k)] ⊕ P[c_2(k)] ⊕ ⊕_{j : bit j of d(k)} P[sparse + j]``.

Layout (Raghuraman–Rindal, CCS 2022, §2–4; "Baxos" in volePSI): keys are hashed into
``bins`` clusters of about 2^14 keys; each bin owns ``cols_per_bin`` consecutive rows of ``P``:
``sparse = ⌈e·capacity⌉`` columns that take the three distinct column indices ``c_0, c_1, c_2``
(weight w = 3) and ``dense`` columns indexed by the bits of a 64-bit mask ``d(k)`` (the *binary*
dense part, so values may live in any GF(2)-vector space; here 512-bit strings).

Parameters (:func:`params_for`; the statistical parameter is 40, failure ≤ 2^-40 per encode):

* ``capacity``: the smallest load that ``bins`` bins exceed with probability ≤ 2^-42 in total
  (exact binomial tail); a set that overflows it is re-hashed with a fresh seed by the caller.
* per bin ``λ_b = 42 + ⌈log2 bins⌉`` (so the union over bins stays below 2^-41);
  ``e = e* + (λ_b + 9.2) / 2^(0.555·log2 cap + 2.336)`` with ``e* = 1.223`` (RR22 eqs. (2)–(3),
  volePSI ``PaxosParam::init`` for w = 3); gap bound ``ĝ = ⌊λ_b / log2(e·cap)⌋``;
  ``dense = λ_b + ĝ`` binary columns: a gap of at most ``ĝ`` rows is solvable with probability
  ≥ 1 − 2^-λ_b.
* a bin whose encoding still fails is re-hashed with the next *retry counter* of that bin
  (the counter goes into the row-hash key; the decoder is told the counters).

Encoding peels in vectorised rounds: every column of degree one is taken at once with its one
remaining row (rows of a round never share a column, so their assignments are independent);
the rows left (the 2-core, ``gap``) only touch free columns, set to zero, and are solved over the
dense columns by Gaussian elimination over GF(2) (masks are 64-bit words); back-substitution
then runs the rounds in reverse order, one vectorised step per round. Values are ``uint64``
arrays ``(n, W)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ..errors import LocalError
from ..ot.aes_hash import derive_key
from .suite import STANDARD, Suite

__all__ = ["Params", "ecb_rows", "params_for", "expansion", "gap_bound", "bin_capacity", "bin_of", "rows_of", "encode", "decode",
           "EncodeFailure", "MAX_RETRIES", "BIN_SIZE", "STAT_BITS"]

BIN_SIZE = 1 << 14
STAT_BITS = 40
MAX_RETRIES = 64
_E_STAR = 1.223  # peeling threshold expansion for w = 3 (RR22)


class EncodeFailure(LocalError):
    """The keys could not be encoded (a bin over capacity: re-seed; every retry failed: the keys
    hold duplicates, or an event of probability ≤ 2^-40)."""


@dataclass(frozen=True)
class Params:
    """Sizes of one OKVS; both parties derive them from the receiver's set size."""

    items: int
    bins: int
    capacity: int
    sparse: int
    dense: int
    stat_bits: int

    @property
    def cols_per_bin(self) -> int:
        return self.sparse + self.dense

    @property
    def total(self) -> int:
        return self.bins * self.cols_per_bin


def expansion(n: int, stat_bits: float) -> float:
    """``e`` for w = 3 at ``n`` keys per table (RR22 eq. (2) with the volePSI slope fit)."""
    w_log = math.log2(3)
    log_slope = 0.555 * math.log2(max(n, 2)) + 0.0930 * w_log**3 - 1.010 * w_log**2 + 2.925 * w_log - 0.133
    return _E_STAR + (stat_bits + 9.2) / 2.0**log_slope


def gap_bound(n: int, e: float, stat_bits: float) -> int:
    """``ĝ``: rows that may fail to peel (RR22 eq. (3), w = 3), at most ``n``."""
    size = math.log2(max(e * n, 2.0))
    return min(n, int(stat_bits // size))


@functools.lru_cache(maxsize=64)
def bin_capacity(n: int, bins: int, log2_fail: float = -(STAT_BITS + 2)) -> int:
    """Smallest ``c`` with ``bins · P[Binomial(n, 1/bins) > c] ≤ 2^log2_fail``."""
    if bins == 1 or n == 0:
        return n
    p = 1.0 / bins
    log_p, log_q = math.log(p), math.log1p(-p)
    lg_n = math.lgamma(n + 1)

    def log2_tail(c: int) -> float:
        ks = np.arange(c + 1, min(n, c + 4000) + 1, dtype=np.float64)
        if ks.size == 0:
            return -math.inf
        lg = np.array([math.lgamma(k + 1) + math.lgamma(n - k + 1) for k in ks.tolist()])
        terms = lg_n - lg + ks * log_p + (n - ks) * log_q
        top = terms.max()
        return (top + math.log(np.exp(terms - top).sum())) / math.log(2) + math.log2(bins)

    low, high = n // bins, n
    while low < high:  # the tail decreases in c
        mid = (low + high) // 2
        if log2_tail(mid) <= log2_fail:
            high = mid
        else:
            low = mid + 1
    return low


@functools.lru_cache(maxsize=64)
def params_for(n: int, *, bin_size: int = BIN_SIZE, stat_bits: int = STAT_BITS) -> Params:
    """The OKVS sizes for ``n`` keys (see the module docstring)."""
    if n < 0:
        raise ValueError("negative set size")
    bins = max(1, -(-n // bin_size))
    capacity = bin_capacity(n, bins, -(stat_bits + 2))
    lam = stat_bits + 2 + math.ceil(math.log2(bins))
    cap = max(capacity, 1)
    e = expansion(cap, lam)
    dense = min(64, lam + gap_bound(cap, e, lam))
    cols = -(-(max(math.ceil(e * cap), 3) + dense) // 8) * 8  # whole bytes of OT-extension rows
    return Params(n, bins, capacity, cols - dense, dense, stat_bits)


# -- hashing keys to rows --------------------------------------------------------------------


def ecb_rows(key: bytes, blocks: np.ndarray, suite: Suite = STANDARD) -> np.ndarray:
    """AES-128-ECB (SM4 under gm) of every 16-byte row of ``blocks`` (``uint8 (n, 16)``)."""
    flat = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1)
    out = np.empty(flat.size + 16, dtype=np.uint8)
    suite.ecb(key).update_into(flat, out)
    return out[: flat.size].reshape(-1, 16)


def bin_of(digests: np.ndarray, seed: bytes, bins: int, suite: Suite = STANDARD) -> np.ndarray:
    """The bin of every key (``digests``: ``uint8 (n, 16)`` key hashes), ``int64 (n,)``."""
    if bins == 1 or digests.shape[0] == 0:
        return np.zeros(digests.shape[0], dtype=np.int64)
    word = ecb_rows(derive_key(b"rr22-okvs-bin", seed, suite=suite), digests, suite).view(np.uint64)[:, 0]
    return ((word >> np.uint64(32)) * np.uint64(bins) >> np.uint64(32)).astype(np.int64)


def _rows_one(digests: np.ndarray, seed: bytes, counter: int, params: Params,
              suite: Suite = STANDARD) -> tuple[np.ndarray, np.ndarray]:
    a = ecb_rows(derive_key(b"rr22-okvs-row", seed, bytes([counter, 0]), suite=suite), digests, suite).view(np.uint64)
    b = ecb_rows(derive_key(b"rr22-okvs-row", seed, bytes([counter, 1]), suite=suite), digests, suite).view(np.uint64)
    m = params.sparse
    low32 = np.uint64(0xFFFFFFFF)
    c0 = ((a[:, 0] & low32) % np.uint64(m)).astype(np.int64)
    c1 = ((a[:, 0] >> np.uint64(32)) % np.uint64(m - 1)).astype(np.int64)
    c1 += c1 >= c0
    c2 = ((a[:, 1] & low32) % np.uint64(m - 2)).astype(np.int64)
    lo, hi = np.minimum(c0, c1), np.maximum(c0, c1)
    c2 += c2 >= lo
    c2 += c2 >= hi
    mask = b[:, 0] if params.dense == 64 else b[:, 0] & np.uint64((1 << params.dense) - 1)
    return np.stack([c0, c1, c2], axis=1), mask


def rows_of(digests: np.ndarray, bins: np.ndarray, seed: bytes, counters: np.ndarray, params: Params,
            suite: Suite = STANDARD) -> tuple[np.ndarray, np.ndarray]:
    """Each key's three sparse columns (within its bin) and dense mask.

    ``bins``: each key's bin relative to ``counters`` (the retry counter of every bin in play).
    """
    cols, masks = _rows_one(digests, seed, 0, params, suite)
    if digests.shape[0] and counters.size and counters.max() > 0:
        key_counters = counters[bins]
        for counter in np.unique(key_counters[key_counters > 0]).tolist():
            sel = np.flatnonzero(key_counters == counter)
            cols[sel], masks[sel] = _rows_one(digests[sel], seed, int(counter), params, suite)
    return cols, masks


# -- the dense part ----------------------------------------------------------------------------


def _dense_product(masks: np.ndarray, bins: np.ndarray, dense_rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``⊕_j bit_j(mask) · dense_rows[bin, j]`` per key, by byte-indexed tables per bin (one
    256-entry table per mask byte in use); XORed into ``out`` when given."""
    nb, d, width = dense_rows.shape
    nbytes = max(1, -(-d // 8))
    padded = np.zeros((nb, 8 * nbytes, width), dtype=np.uint64)
    padded[:, :d] = dense_rows
    tables = np.empty((nb, nbytes, 256, width), dtype=np.uint64)
    tables[:, :, 0] = 0
    by_byte = padded.reshape(nb, nbytes, 8, width)
    for bit in range(8):
        np.bitwise_xor(tables[:, :, : 1 << bit], by_byte[:, :, bit, None, :], out=tables[:, :, 1 << bit : 2 << bit])
    flat = tables.reshape(-1, width)
    mask_bytes = masks.view(np.uint8).reshape(-1, 8)
    index = bins.astype(np.intp) * (nbytes * 256)
    index += mask_bytes[:, 0]
    if out is None:
        out = flat[index]
    else:
        out ^= flat[index]
    for j in range(1, nbytes):
        index += 256 - mask_bytes[:, j - 1].astype(np.intp) + mask_bytes[:, j]
        out ^= flat[index]
    return out


# -- encode / decode -------------------------------------------------------------------------


def _peel(cols: np.ndarray, columns: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Peeling rounds [(rows, pivot columns)] over all bins at once, and the rows left over."""
    k = cols.shape[0]
    flat = cols.reshape(-1)
    degree = np.bincount(flat, minlength=columns).astype(np.int64)
    row_sum = np.bincount(flat, weights=np.repeat(np.arange(k, dtype=np.float64), 3), minlength=columns).astype(np.int64)
    active = np.ones(k, dtype=bool)
    claim = np.full(k, -1, dtype=np.int64)  # the pivot column a row takes in its round
    slot = np.zeros(columns, dtype=np.int64)
    rounds: list[tuple[np.ndarray, np.ndarray]] = []
    candidates = np.flatnonzero(degree == 1)
    while candidates.size:
        rows = row_sum[candidates]
        claim[rows] = candidates  # one winner per row (columns are distinct)
        won = claim[rows] == candidates
        rows, pivots = rows[won], candidates[won]
        rounds.append((rows, pivots))
        active[rows] = False
        touched = cols[rows].reshape(-1)
        np.subtract.at(degree, touched, 1)
        np.subtract.at(row_sum, touched, np.repeat(rows, 3))
        touched = touched[degree[touched] == 1]
        order = np.arange(touched.size)
        slot[touched] = order  # de-duplicate without sorting: keep one occurrence per column
        candidates = touched[slot[touched] == order]
    return rounds, np.flatnonzero(active)


def _solve_gap(masks: list[int], values: np.ndarray, dense: int) -> np.ndarray | None:
    """Dense rows ``D`` (``dense × W``) with ``mask_i · D = values_i``; None if inconsistent."""
    width = values.shape[1]
    pivots: list[tuple[int, int, np.ndarray]] = []  # (pivot bit, mask, value), each reduced by earlier ones
    for mask, value in zip(masks, values):
        value = value.copy()
        for bit, pmask, pvalue in pivots:
            if mask >> bit & 1:
                mask ^= pmask
                value ^= pvalue
        if mask == 0:
            if value.any():
                return None
            continue
        pivots.append(((mask & -mask).bit_length() - 1, mask, value))
    solution = np.zeros((dense, width), dtype=np.uint64)
    for bit, mask, value in reversed(pivots):
        rest = mask & ~(1 << bit)
        acc = value.copy()
        while rest:
            low = (rest & -rest).bit_length() - 1
            acc ^= solution[low]
            rest &= rest - 1
        solution[bit] = acc
    return solution


def _encode_bins(cols: np.ndarray, masks: np.ndarray, bins: np.ndarray, values: np.ndarray, nb: int,
                 params: Params) -> tuple[np.ndarray, np.ndarray]:
    """One attempt for keys in bins ``0..nb-1``: (``P`` as ``(nb, cols_per_bin, W)``, failed bins)."""
    m, d, width = params.sparse, params.dense, values.shape[1]
    out = np.zeros((nb, params.cols_per_bin, width), dtype=np.uint64)
    failed = np.zeros(nb, dtype=bool)
    if cols.shape[0] == 0:
        return out, failed
    global_cols = cols + (bins * m)[:, None]
    rounds, gap = _peel(global_cols, nb * m)
    rhs = values.copy()
    if gap.size:
        gap_bins = bins[gap]
        for b in np.unique(gap_bins).tolist():
            rows = gap[gap_bins == b]
            solution = _solve_gap([int(x) for x in masks[rows].tolist()], values[rows], d)
            if solution is None:
                failed[b] = True
            else:
                out[b, m:] = solution
        dirty = np.zeros(nb, dtype=bool)
        dirty[np.unique(gap_bins)] = True
        dirty &= ~failed
        sel = np.flatnonzero(dirty[bins])
        if sel.size:
            rhs[sel] ^= _dense_product(masks[sel], bins[sel], out[:, m:])
    sparse = np.zeros((nb * m, width), dtype=np.uint64)
    for rows, pivots in reversed(rounds):
        c = global_cols[rows]
        acc = rhs[rows]
        acc ^= sparse[c[:, 0]]
        acc ^= sparse[c[:, 1]]
        acc ^= sparse[c[:, 2]]
        sparse[pivots] = acc
    out[:, :m] = sparse.reshape(nb, m, width)
    return out, failed


def encode(digests: np.ndarray, bins: np.ndarray, values: np.ndarray, nb: int, seed: bytes,
           params: Params, suite: Suite = STANDARD) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Encode keys spread over ``nb`` consecutive bins (``bins``: each key's bin, ``0..nb-1``).

    ``values``: ``uint64 (n, W)``. Returns ``(P, counters, cols, masks)``: ``P`` as
    ``uint64 (nb, cols_per_bin, W)``, each bin's retry counter (``uint8 (nb,)``), and every key's
    row (for decoding at the same keys). Raises :class:`EncodeFailure` after
    :data:`MAX_RETRIES` failed attempts on one bin (or a bin over capacity).
    """
    if bins.size and np.bincount(bins, minlength=nb).max() > params.capacity:
        raise EncodeFailure("a bin is over capacity")
    counters = np.zeros(nb, dtype=np.uint8)
    cols, masks = rows_of(digests, bins, seed, counters, params, suite)
    out, failed = _encode_bins(cols, masks, bins, values, nb, params)
    while failed.any():
        redo = np.flatnonzero(failed)
        counters[redo] += 1
        if counters.max() >= MAX_RETRIES:
            raise EncodeFailure("OKVS encoding failed on every retry (duplicate keys?)")
        remap = np.full(nb, -1, dtype=np.int64)
        remap[redo] = np.arange(redo.size)
        sel = np.flatnonzero(failed[bins])
        sub_bins = remap[bins[sel]]
        sub_cols, sub_masks = rows_of(digests[sel], sub_bins, seed, counters[redo], params, suite)
        cols[sel], masks[sel] = sub_cols, sub_masks
        sub_out, sub_failed = _encode_bins(sub_cols, sub_masks, sub_bins, values[sel], redo.size, params)
        out[redo] = sub_out
        failed = np.zeros(nb, dtype=bool)
        failed[redo[sub_failed]] = True
    return out, counters, cols, masks


def decode(table: np.ndarray, bins: np.ndarray, cols: np.ndarray, masks: np.ndarray, params: Params) -> np.ndarray:
    """``Decode`` at keys with rows ``(cols, masks)`` in bins ``bins`` of ``table``
    (``uint64 (nb, cols_per_bin, W)``, the bins in play): ``uint64 (n, W)``."""
    nb, cpb, width = table.shape
    if cpb != params.cols_per_bin:
        raise ValueError("table does not match the parameters")
    flat = table.reshape(nb * cpb, width)
    base = bins.astype(np.intp) * cpb
    out = flat[base + cols[:, 0]]
    out ^= flat[base + cols[:, 1]]
    out ^= flat[base + cols[:, 2]]
    if cols.shape[0]:
        _dense_product(masks, bins, table[:, params.sparse :], out)
    return out
