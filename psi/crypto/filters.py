"""Compact encodings of the server's encrypted set, with a false-positive budget.

The PSI server sends its encrypted set once; the client only needs to test membership, so the
set travels as a filter over 16-byte *keys* (uniform hashes of the group elements, see
:func:`fingerprint`). Every filter is sized so that the expected number of false matches over
all ``n_query`` client lookups is at most ``2^-fpr_bits``; a false negative never happens.

Kinds (``n`` = set size, ``T = ceil(fpr_bits + log2(n * n_query))`` bits):

``raw``
    The keys truncated to ``ceil(T / 8)`` bytes, sorted. Simplest and fastest.
``bloom``
    A Bloom filter with ``k = ceil(fpr_bits + log2(n_query))`` hash functions and
    ``m = max(1024, ceil(n * k / ln 2))`` bits; indices by enhanced double hashing of the two
    key halves (Dillinger–Manolios), computed with numpy. pybloom-live was measured first and is pure
    Python per element: 7.7 µs per insert and 7.4 µs per lookup at k = 57 (≈ 25 % of an X25519
    multiplication), against ≈ 0.5 µs per element with numpy; its file format also has no
    strict decoder. Hence the numpy filter, with the same sizing formulas (measured at
10^5 x 10^5, 2^-40: 1.2 µs per insert, 0.8 µs per lookup including decoding).
``gcs``
    A Golomb-coded set. Each key's first 64 bits are mapped into the hash range
    ``R = n * n_query * 2^fpr_bits`` (plus a 2^-15 margin; ``R`` need not be a power of two),
    the sorted values' gaps are Golomb-coded with divisor ``M = floor(ln 2 * R / n)``: the
    quotient in unary, the remainder in truncated binary. About ``log2(R / n) + 1.47`` bits per
    element, within a few hundredths of a bit of the entropy of the set. When ``R`` exceeds
    2^48 its low bits are taken verbatim from the key's second half, so the coded part stays
    exact in 64-bit arithmetic. Four bit sections (verbatim low bits, fixed-width remainders,
    the one extra remainder bit of long codes, unary quotients) keep encoding and decoding fully
    vectorised.

:func:`choose_filter` picks the kind with the fewest bytes on the wire. Measured sizes for
10^5 server and 10^5 client elements at 2^-40 (bench/bench_groups.py)::

    raw    10.00 bytes/element     bloom  10.28 bytes/element     gcs   7.26 bytes/element

(encode / decode+lookup per element: raw 0.08 / 0.42 µs, gcs 0.20 / 0.34 µs).

Decoding is strict: the header's parameters must equal what the receiver computes from the
agreed ``fpr_bits``, its own set size and the announced count, and every length is checked
before anything is allocated.

A filter must also be one that an honest server *could* have built for the announced count,
because a server that knows its key can put any candidate's key in it: raw and gcs filters
hold exactly ``count`` entries (each matches a fixed ``2^-bits`` share of keys, whatever its
value), so crafted values only choose *which* ``count`` candidates are covered, as choosing
the set would. A Bloom filter has no entry count: its bits are checked against
:func:`bloom_max_popcount` (an all-ones filter matches every key). :attr:`SetFilter.match_rate`
is the per-lookup false-match probability of the filter actually received, which the ECDH
client uses to refuse an impossible number of matches (:func:`max_false_matches`).
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import MalformedMessage, UsageError
from .suite import Suite

__all__ = [
    "KEY_SIZE",
    "FILTER_KINDS",
    "fingerprint",
    "required_bits",
    "encode_filter",
    "decode_filter",
    "encoded_size",
    "max_encoded_size",
    "choose_filter",
    "encode_gcs_range",
    "bloom_max_popcount",
    "max_false_matches",
    "SECURITY_BITS",
    "SetFilter",
]

KEY_SIZE = 16
FILTER_KINDS = ("raw", "bloom", "gcs")
_KIND_CODE = {"raw": 1, "bloom": 2, "gcs": 3}
_CODE_KIND = {v: k for k, v in _KIND_CODE.items()}
_HEADER = struct.Struct(">BBI")  # kind, parameter byte, count
_GCS_CODED_BITS = 48  # the Golomb-coded part of each value lies in [0, 2^48)
_LN2_NUM, _LN2_DEN = 693147180559945309, 10**18  # ln 2, in integers so both sides agree exactly
_M32 = np.uint64(0xFFFFFFFF)
_CHUNK = 1 << 16
_PERSON = b"psiq-filter-key"
SECURITY_BITS = 40  # an honest peer fails a statistical check with probability at most 2^-40
_SECURITY_LN = SECURITY_BITS * math.log(2)


def fingerprint(elements: Sequence[bytes], suite: "Suite | None" = None) -> bytes:
    """16-byte filter keys (BLAKE2b, personalised; under ``suite`` gm SM3) of ``elements``, back to back."""
    if suite is not None and suite.is_gm:
        return suite.keyed_digests(elements, _PERSON, KEY_SIZE)
    blake = hashlib.blake2b
    return b"".join(blake(e, digest_size=KEY_SIZE, person=_PERSON).digest() for e in elements)


def required_bits(n_set: int, n_query: int, fpr_bits: int) -> int:
    """T such that ``n_set * n_query * 2^-T <= 2^-fpr_bits``."""
    return max(1, math.ceil(fpr_bits + math.log2(max(1, n_set) * max(1, n_query))))


def _query_bits(n_query: int, fpr_bits: int) -> int:
    return max(1, math.ceil(fpr_bits + math.log2(max(1, n_query))))


def _check_args(n_query: int, fpr_bits: int) -> None:
    if not isinstance(fpr_bits, int) or not 1 <= fpr_bits <= 96:
        raise UsageError("fpr_bits must be an integer in [1, 96]")
    if not isinstance(n_query, int) or n_query < 0:
        raise UsageError("n_query must be a non-negative integer")


def _split_keys(keys: bytes) -> tuple[np.ndarray, np.ndarray]:
    if len(keys) % KEY_SIZE:
        raise ValueError("key buffer is not a whole number of 16-byte keys")
    pairs = np.frombuffer(keys, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _member(set_a: np.ndarray, set_b: np.ndarray, q_a: np.ndarray, q_b: np.ndarray) -> np.ndarray:
    """Vectorised test of (q_a, q_b) pairs against the (set_a, set_b) pairs."""
    ns, nq = len(set_a), len(q_a)
    if nq == 0 or ns == 0:
        return np.zeros(nq, dtype=bool)
    a = np.concatenate([set_a, q_a])
    b = np.concatenate([set_b, q_b])
    tag = np.concatenate([np.zeros(ns, np.uint8), np.ones(nq, np.uint8)])
    order = np.lexsort((tag, b, a))  # within equal values the set entry comes first
    a, b, tag = a[order], b[order], tag[order]
    start = np.ones(len(a), dtype=bool)
    start[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    first = np.maximum.accumulate(np.where(start, np.arange(len(a)), 0))
    hit_sorted = tag[first] == 0
    out = np.empty(nq, dtype=bool)
    is_query = tag == 1
    out[order[is_query] - ns] = hit_sorted[is_query]
    return out


# -- parameters -------------------------------------------------------------------------------
def _raw_width(n: int, n_query: int, fpr_bits: int) -> int:
    width = -(-required_bits(n, n_query, fpr_bits) // 8)
    if width > KEY_SIZE:
        raise UsageError("raw filter would need more than 128-bit keys; lower fpr_bits")
    return width


def _bloom_params(n: int, n_query: int, fpr_bits: int) -> tuple[int, int]:
    k = _query_bits(n_query, fpr_bits)
    if k > 255:
        raise UsageError("bloom filter would need more than 255 hash functions")
    m = max(1024, math.ceil(max(n, 1) * k / math.log(2)))
    if m >= 2**40:
        raise UsageError("bloom filter would exceed 2^40 bits")
    return k, m


def bloom_max_popcount(n: int, k: int, m: int) -> int:
    """Most bits an honest Bloom filter of ``n`` keys (``k`` indices each, ``m`` bits) sets,
    except with probability at most ``2^-SECURITY_BITS``.

    Each key's indices are ``a + i b + (i^3 - i)/6 mod m`` with ``a`` uniform, so every bit is
    hit by one key with probability ``q <= k/m`` (times ``1 + m/2^64`` for the reduction of a
    64-bit value mod ``m``), independently across keys: the expected popcount is at most
    ``mu = m (1 - (1 - q)^n)``. With independent uniform indices the bin occupancy indicators
    are negatively associated, so Bernstein's inequality applies to their sum with variance at
    most ``m p (1 - p)``, ``p = mu/m``: ``P(popcount >= mu + t) <= exp(-t^2 / (2 (var + t/3)))``.
    Double-hashed indices are not fully independent within a key, so the model is checked on
    real filters: their measured spread is below the model's (tests/test_ecdh_cheats.py), and
    the bound sits about 13 standard deviations above the mean. At ``m = 8.2 * 10^6`` bits
    (10^5 keys, 2^-40) the slack is 0.13 % of ``m``.
    """
    if n <= 0:
        return 0
    q = min(1.0, k / m * (1 + m / 2**64))
    mu = -m * math.expm1(n * math.log1p(-q)) if q < 1 else float(m)
    p = mu / m
    variance = m * p * (1 - p)
    slack = _SECURITY_LN / 3 + math.sqrt((_SECURITY_LN / 3) ** 2 + 2 * _SECURITY_LN * variance)
    return min(m, math.ceil(mu + slack))


def max_false_matches(expected: float, lookups: int) -> int:
    """Largest number of false matches an honest filter gives over ``lookups`` independent
    lookups with ``expected`` false matches in all, except with probability ``<= 2^-SECURITY_BITS``.

    Uses ``P(X >= t) <= C(lookups, t) r^t <= expected^t / t!`` (``X`` binomial): the result is
    the smallest ``t`` with ``expected^(t+1) / (t+1)! <= 2^-SECURITY_BITS``. At the default
    2^-40 budget it is 0: one match more than the server's set size is already a cheat.
    """
    if lookups <= 0 or expected <= 0:
        return 0
    if expected >= lookups:
        return lookups
    log_expected = math.log(expected)
    t = 0
    while t < lookups and (t + 1) * log_expected - math.lgamma(t + 2) > -_SECURITY_LN:
        t += 1
    return t


@dataclass(frozen=True)
class _GcsLayout:
    """Golomb-coded set parameters, all derived from the entry count and the hash range."""

    low_bits: int  # verbatim low bits per value (from the key's second half)
    coded_range: int  # the coded part of each value lies in [0, coded_range), < 2^48
    divisor: int  # Golomb divisor M
    width: int  # remainders below ``short`` take ``width`` bits, the others ``width + 1``
    short: int


def _gcs_range(n: int, n_query: int, fpr_bits: int) -> int:
    """``n * n_query * 2^fpr_bits`` plus a 2^-15 margin, which covers the reduction of 64-bit
    key prefixes into a range that is not a power of two (no value gets more than ``1 + 2^-16``
    times its fair share of prefixes when the range is below 2^48)."""
    target = (max(1, n) * max(1, n_query)) << fpr_bits
    return target + -(-target >> 15)


def _gcs_layout(n: int, hash_range: int) -> _GcsLayout:
    if hash_range < 1:
        raise UsageError("gcs hash range must be positive")
    low_bits = max(0, hash_range.bit_length() - _GCS_CODED_BITS)
    if low_bits > 64:
        raise UsageError("gcs filter cannot reach this false-positive rate for these sizes")
    coded_range = -(-hash_range >> low_bits)
    divisor = max(1, coded_range * _LN2_NUM // (max(n, 1) * _LN2_DEN))
    if divisor == 1:
        return _GcsLayout(low_bits, coded_range, 1, 0, 1)
    b = (divisor - 1).bit_length()
    return _GcsLayout(low_bits, coded_range, divisor, b - 1, (1 << b) - divisor)


def _gcs_size(n: int, lay: _GcsLayout, *, bound: bool) -> int:
    """Bytes of a GCS encoding: the largest valid one if ``bound``, else the expected one."""
    if n == 0:
        return _HEADER.size
    long_codes = n if bound else n * (lay.divisor - lay.short) // lay.divisor
    # sum of quotients: at most (coded_range - 1) // M; about one per entry when M = ln 2 * R / n
    quotients = (lay.coded_range - 1) // lay.divisor if bound else n
    return (
        _HEADER.size
        + -(-(n * lay.low_bits) // 8)
        + -(-(n * lay.width) // 8)
        + -(-long_codes // 8)
        + -(-(n + quotients) // 8)
    )


def encoded_size(kind: str, n_set: int, n_query: int, fpr_bits: int) -> int:
    """Bytes on the wire for ``kind`` (exact for raw and bloom, expected for gcs)."""
    _check_args(n_query, fpr_bits)
    if kind == "raw":
        return _HEADER.size + n_set * _raw_width(n_set, n_query, fpr_bits)
    if kind == "bloom":
        return _HEADER.size + -(-_bloom_params(n_set, n_query, fpr_bits)[1] // 8)
    if kind == "gcs":
        return _gcs_size(n_set, _gcs_layout(n_set, _gcs_range(n_set, n_query, fpr_bits)), bound=False)
    raise UsageError(f"unknown filter kind {kind!r}; choose one of {', '.join(FILTER_KINDS)}")


def max_encoded_size(kind: str, n_set: int, n_query: int, fpr_bits: int) -> int:
    """Largest valid encoding of ``kind`` for these sizes (bounds what a receiver accepts)."""
    if kind == "gcs":
        _check_args(n_query, fpr_bits)
        return _gcs_size(n_set, _gcs_layout(n_set, _gcs_range(n_set, n_query, fpr_bits)), bound=True)
    return encoded_size(kind, n_set, n_query, fpr_bits)


def choose_filter(n_set: int, n_query: int, fpr_bits: int) -> str:
    """The kind with the fewest bytes on the wire (ties go to the simpler kind)."""
    sizes = []
    for kind in FILTER_KINDS:
        try:
            sizes.append((encoded_size(kind, n_set, n_query, fpr_bits), kind))
        except UsageError:
            continue
    if not sizes:
        raise UsageError("no filter can meet this false-positive rate for these sizes")
    return min(sizes, key=lambda s: (s[0], FILTER_KINDS.index(s[1])))[1]


# -- encoding ---------------------------------------------------------------------------------
def _bloom_indices(hi: np.ndarray, lo: np.ndarray, k: int, m: int) -> np.ndarray:
    """Enhanced double hashing: (a + i*b + (i^3 - i)/6) mod m, exact in int64 (m < 2^40)."""
    i = np.arange(k, dtype=np.int64)
    a = (lo % np.uint64(m)).astype(np.int64)
    b = (hi % np.uint64(m - 1)).astype(np.int64) + 1
    offsets = (i**3 - i) // 6 % m
    return (a[:, None] + i[None, :] * b[:, None] + offsets[None, :]) % m


def encode_filter(kind: str, keys: bytes, *, n_query: int, fpr_bits: int) -> bytes:
    """Encode the set of 16-byte ``keys`` (distinct) as a ``kind`` filter."""
    _check_args(n_query, fpr_bits)
    hi, lo = _split_keys(keys)
    n = len(hi)
    if kind not in _KIND_CODE:
        raise UsageError(f"unknown filter kind {kind!r}; choose one of {', '.join(FILTER_KINDS)}")
    if n >= 2**32:
        raise UsageError("set too large for one filter")
    if kind == "raw":
        width = _raw_width(n, n_query, fpr_bits)
        rows = np.frombuffer(keys, dtype=np.uint8).reshape(n, KEY_SIZE)[:, :width]
        order = np.lexsort(rows.T[::-1]) if n else np.zeros(0, dtype=np.intp)
        return _HEADER.pack(1, width, n) + rows[order].tobytes()
    if kind == "bloom":
        k, m = _bloom_params(n, n_query, fpr_bits)
        bits = np.zeros(m, dtype=np.uint8)
        for s in range(0, n, _CHUNK):
            bits[_bloom_indices(hi[s : s + _CHUNK], lo[s : s + _CHUNK], k, m).ravel()] = 1
        return _HEADER.pack(2, k, n) + np.packbits(bits).tobytes()
    return _encode_gcs(hi, lo, _gcs_layout(n, _gcs_range(n, n_query, fpr_bits)))


def encode_gcs_range(keys: bytes, hash_range: int) -> bytes:
    """A Golomb-coded set of the 16-byte ``keys`` over an explicit ``hash_range``.

    Sessions use :func:`encode_filter`, which derives the range from the false-positive budget;
    this entry point exists to size psiq's encoding at another library's range (benchmarks).
    """
    hi, lo = _split_keys(keys)
    return _encode_gcs(hi, lo, _gcs_layout(len(hi), hash_range))


def _mulhi(a: np.ndarray, b: int) -> np.ndarray:
    """``floor(a * b / 2^64)`` for uint64 ``a`` and ``0 <= b < 2^64``, exact."""
    a0, a1 = a & _M32, a >> np.uint64(32)
    b0, b1 = np.uint64(b & 0xFFFFFFFF), np.uint64(b >> 32)
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> np.uint64(32)) + (p01 & _M32) + (p10 & _M32)
    return p11 + (p01 >> np.uint64(32)) + (p10 >> np.uint64(32)) + (mid >> np.uint64(32))


def _gcs_values(hi: np.ndarray, lo: np.ndarray, lay: _GcsLayout) -> tuple[np.ndarray, np.ndarray]:
    coded = _mulhi(hi, lay.coded_range)
    if lay.low_bits == 0:
        return coded, np.zeros(hi.shape, dtype=np.uint64)
    return coded, lo >> np.uint64(64 - lay.low_bits)


def _pack_fixed(values: np.ndarray, width: int) -> bytes:
    if width == 0 or len(values) == 0:
        return b""
    bits = np.unpackbits(values.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)[:, 64 - width :]
    return np.packbits(bits.ravel()).tobytes()


def _unpack_fixed(section: np.ndarray, n: int, width: int) -> np.ndarray:
    """Inverse of :func:`_pack_fixed`; the padding bits must be zero."""
    if width == 0:
        return np.zeros(n, dtype=np.uint64)
    bits = np.unpackbits(section)
    if bits[n * width :].any():
        raise MalformedMessage("gcs filter has padding bits set")
    padded = np.zeros((n, 64), dtype=np.uint8)
    padded[:, 64 - width :] = bits[: n * width].reshape(n, width)
    return np.packbits(padded, axis=1).view(">u8").ravel().astype(np.uint64)


def _encode_gcs(hi: np.ndarray, lo: np.ndarray, lay: _GcsLayout) -> bytes:
    n = len(hi)
    header = _HEADER.pack(3, lay.low_bits, n)
    if n == 0:
        return header
    coded, low = _gcs_values(hi, lo, lay)
    order = np.lexsort((low, coded))
    coded, low = coded[order], low[order]
    gaps = np.diff(coded, prepend=np.uint64(0))
    divisor, short = np.uint64(lay.divisor), np.uint64(lay.short)
    quotient = gaps // divisor
    remainder = gaps - quotient * divisor
    long = remainder >= short
    shifted = remainder + short
    fixed = np.where(long, shifted >> np.uint64(1), remainder)
    extra = (shifted[long] & np.uint64(1)).astype(np.uint8)
    ends = np.cumsum(quotient) + np.arange(n, dtype=np.uint64)  # each quotient: zeros, then a one
    unary = np.zeros(int(ends[-1]) + 1, dtype=np.uint8)
    unary[ends.astype(np.int64)] = 1
    return (
        header
        + _pack_fixed(low, lay.low_bits)
        + _pack_fixed(fixed, lay.width)
        + np.packbits(extra).tobytes()
        + np.packbits(unary).tobytes()
    )


class SetFilter:
    """A decoded filter; :meth:`contains` answers membership for a batch of keys."""

    def __init__(self, kind: str, count: int, test, match_rate: float) -> None:  # noqa: ANN001 - private factory
        self.kind = kind
        self.count = count
        #: probability that one lookup of a key *not* in the set matches (an upper bound, for
        #: the filter as received: a Bloom filter's from its popcount)
        self.match_rate = match_rate
        self._test = test

    def contains(self, keys: bytes) -> np.ndarray:
        """Boolean array: may each 16-byte key be in the set (never False for a member)."""
        hi, lo = _split_keys(keys)
        return self._test(hi, lo)

    def __repr__(self) -> str:
        return f"SetFilter(kind={self.kind!r}, count={self.count})"


def decode_filter(data: bytes, *, n_query: int, fpr_bits: int, max_count: int) -> SetFilter:
    """Strictly decode a filter; raises :class:`MalformedMessage` on anything unexpected.

    ``max_count`` bounds the announced set size (the peer's announced size); the parameters
    in the header must be exactly those this side derives for ``n_query`` and ``fpr_bits``.
    """
    _check_args(n_query, fpr_bits)
    if len(data) < _HEADER.size:
        raise MalformedMessage("filter truncated")
    code, param, n = _HEADER.unpack_from(data, 0)
    kind = _CODE_KIND.get(code)
    if kind is None:
        raise MalformedMessage(f"unknown filter kind code {code}")
    if n > max_count:
        raise MalformedMessage(f"filter holds {n} entries, more than the {max_count} announced")
    body = memoryview(data)[_HEADER.size :]
    if kind == "raw":
        width = _raw_width(n, n_query, fpr_bits)
        if param != width or len(body) != n * width:
            raise MalformedMessage("raw filter width or length does not match")
        rows = np.frombuffer(body, dtype=np.uint8).reshape(n, width)
        full = np.zeros((n, KEY_SIZE), dtype=np.uint8)
        full[:, :width] = rows
        s_hi, s_lo = _split_keys(full.tobytes())
        if n > 1 and not ((s_hi[1:] > s_hi[:-1]) | ((s_hi[1:] == s_hi[:-1]) & (s_lo[1:] >= s_lo[:-1]))).all():
            raise MalformedMessage("raw filter entries are not sorted")  # as every honest encoder sends them
        mask_hi, mask_lo = _truncation_masks(width)

        def test_raw(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
            return _member(s_hi, s_lo, hi & mask_hi, lo & mask_lo)

        return SetFilter(kind, n, test_raw, min(1.0, n * 2.0 ** (-8 * width)))
    if kind == "bloom":
        k, m = _bloom_params(n, n_query, fpr_bits)
        if param != k or len(body) != -(-m // 8):
            raise MalformedMessage("bloom filter parameters or length do not match")
        packed = np.frombuffer(body, dtype=np.uint8)
        if m % 8 and int(packed[-1]) & ((1 << (8 - m % 8)) - 1):
            raise MalformedMessage("bloom filter has padding bits set")
        popcount = int(np.bitwise_count(packed).sum(dtype=np.int64))
        limit = bloom_max_popcount(n, k, m)
        if popcount > limit:
            raise MalformedMessage(
                f"bloom filter has {popcount} of {m} bits set; {n} keys set at most {limit}"
                " (a filter that matches keys the server does not hold)"
            )
        shifts = np.uint8(7) - np.arange(8, dtype=np.uint8)

        def test_bloom(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
            out = np.empty(len(hi), dtype=bool)
            for s in range(0, len(hi), _CHUNK):
                idx = _bloom_indices(hi[s : s + _CHUNK], lo[s : s + _CHUNK], k, m)
                bits = (packed[idx >> 3] >> shifts[idx & 7]) & np.uint8(1)
                out[s : s + _CHUNK] = bits.all(axis=1)
            return out

        return SetFilter(kind, n, test_bloom, (popcount / m) ** k)
    return _decode_gcs(body, param, n, _gcs_layout(n, _gcs_range(n, n_query, fpr_bits)))


def _truncation_masks(width: int) -> tuple[np.uint64, np.uint64]:
    bits = 8 * width
    full = (1 << 64) - 1
    mask_hi = full if bits >= 64 else (full << (64 - bits)) & full
    mask_lo = 0 if bits <= 64 else (full << (128 - bits)) & full
    return np.uint64(mask_hi), np.uint64(mask_lo)


def _decode_gcs(body: memoryview, param: int, n: int, lay: _GcsLayout) -> SetFilter:
    if param != lay.low_bits:
        raise MalformedMessage("gcs filter parameters do not match")
    if n == 0:
        if len(body):
            raise MalformedMessage("gcs filter length does not match its header")
        return SetFilter("gcs", 0, lambda hi, lo: np.zeros(len(hi), dtype=bool), 0.0)
    low_bytes, fixed_bytes = -(-(n * lay.low_bits) // 8), -(-(n * lay.width) // 8)
    max_unary_bytes = -(-(n + (lay.coded_range - 1) // lay.divisor) // 8)
    if not low_bytes + fixed_bytes < len(body) <= low_bytes + fixed_bytes + -(-n // 8) + max_unary_bytes:
        raise MalformedMessage("gcs filter length does not match its header")
    raw = np.frombuffer(body, dtype=np.uint8)
    low = _unpack_fixed(raw[:low_bytes], n, lay.low_bits)
    fixed = _unpack_fixed(raw[low_bytes : low_bytes + fixed_bytes], n, lay.width)
    long = fixed >= np.uint64(lay.short)
    n_long = int(np.count_nonzero(long))
    start = low_bytes + fixed_bytes
    extra_bits = np.unpackbits(raw[start : start + -(-n_long // 8)])
    if len(extra_bits) != -(-n_long // 8) * 8 or extra_bits[n_long:].any():
        raise MalformedMessage("gcs filter remainder section is malformed")
    remainder = fixed.copy()
    remainder[long] = (fixed[long] << np.uint64(1)) + extra_bits[:n_long] - np.uint64(lay.short)
    unary_section = raw[start + -(-n_long // 8) :]
    if len(unary_section) > max_unary_bytes:
        raise MalformedMessage("gcs filter quotient section is too long")
    ones = np.flatnonzero(np.unpackbits(unary_section))
    if len(ones) != n or len(unary_section) != -(-(int(ones[-1]) + 1) // 8):
        raise MalformedMessage("gcs filter quotient section is malformed")
    quotient = np.diff(ones, prepend=-1).astype(np.uint64) - np.uint64(1)
    # the quotient bound above keeps every partial sum below 2 * coded_range: no overflow
    coded = np.cumsum(quotient * np.uint64(lay.divisor) + remainder)
    if int(coded[-1]) >= lay.coded_range:
        raise MalformedMessage("gcs filter value is outside the hash range")

    def test_gcs(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        q_coded, q_low = _gcs_values(hi, lo, lay)
        return _member(coded, low, q_coded, q_low)

    # a query's coded value hits a given value with probability <= 1/coded_range + 2^-64
    rate = n * (1 / lay.coded_range + 2.0**-64) * 2.0 ** -lay.low_bits
    return SetFilter("gcs", n, test_gcs, min(1.0, rate))
