"""SimplePIR index PIR (Henzinger et al., USENIX Security 2023) in numpy.

Database D: ``rows`` x ``columns`` digits in Z_p, p = 2^log_p; column j is bucket j. Public matrix
A (columns x n) is expanded from a public seed with AES-128-CTR. Modulus q = 2^32 is native
uint32 wrap-around.

    server, once per table version:  H = Dc . A           (Dc = D - p/2, the centred database)
    client, per query for column j:  qu = A.s + e + Delta.u_j      s, e fresh from the OS
    server, per query:               ans = D . qu                  (uncentred D)
    client:                          y = ans - (p/2).sum(qu) - H.s = Delta.Dc[:, j] + Dc.e
                                     digit = round(y / Delta) + p/2 mod p

What the server learns from ``qu``: nothing (LWE with n = 1024, q = 2^32, sigma = 6.4,
128-bit security by the SimplePIR authors' lattice-estimator analysis). What the client learns:
the column it asked for (and H, a linear image of the whole database, which is why every
record is encrypted under an OPRF-derived key one layer up).

Randomness rules: ``s`` comes from ``os.urandom`` directly; ``e`` from a discrete Gaussian
sampled by inversion of a 64-bit cumulative table with uniform words from an AES-256-CTR
stream keyed by a fresh ``os.urandom`` key for every call (a CSPRNG, never the public seed).

Exact products mod 2^32 use float64 BLAS on operands split into 16-bit halves
(:func:`matmul_mod32`); every partial sum stays below 2^53 so the float result is exact.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from psi.crypto.suite import get_suite

__all__ = [
    "LWE_DIMENSION",
    "SIGMA",
    "LweParams",
    "plaintext_bits",
    "failure_bound",
    "expand_a",
    "sample_error",
    "sample_secret",
    "matmul_mod32",
    "compute_hint",
    "make_queries",
    "answer",
    "answer_batch",
    "recover",
]

LWE_DIMENSION = 1024
SIGMA = 6.4
_TAIL = 14 * 7  # support [-98, 98] is ~15 sigma: mass outside is below 2^-160
_SPLIT = 1 << 16
_MAX_COLUMNS = 1 << 21


def plaintext_bits(columns: int) -> int:
    """log2 of the plaintext modulus for ``columns`` columns.

    The largest power of two not above SimplePIR's p for that many columns (991, 833, 701, 589
    up to 2^13..2^16 columns -> 512; 495..294 up to 2^20 -> 256; 247 up to 2^21 -> 128).
    """
    if columns < 1 or columns > _MAX_COLUMNS:
        raise ValueError(f"{columns} columns is outside the supported range 1..{_MAX_COLUMNS}")
    if columns <= 1 << 16:
        return 9
    if columns <= 1 << 20:
        return 8
    return 7


def failure_bound(columns: int, log_p: int, sigma: float = SIGMA) -> float:
    """log2 of the probability that one recovered digit is wrong.

    The noise Dc.e sums ``columns`` terms with |Dc| <= p/2 and e subgaussian with parameter sigma
    (discrete Gaussian, Micciancio-Peikert 2012 Lemma 2.8), so Pr[|noise| >= Delta/2] <=
    2 exp(-q^2 / (2 sigma^2 m p^4)).
    """
    p = 1 << log_p
    exponent = (2.0**64) / (2 * sigma * sigma * columns * p**4)
    return 1 - exponent / math.log(2)


@dataclass(frozen=True)
class LweParams:
    """Shape of one SimplePIR database: rows x columns digits of ``log_p`` bits, public seed."""

    rows: int
    columns: int
    log_p: int
    seed: bytes
    n: int = LWE_DIMENSION
    suite: str = "standard"  # psi.crypto.suite: the PRG expanding A and the errors (AES-CTR or SM4-CTR)

    def __post_init__(self) -> None:
        if self.rows < 1 or self.columns < 1 or len(self.seed) != 16:
            raise ValueError("bad SimplePIR parameters")
        if self.log_p != plaintext_bits(self.columns):
            raise ValueError("plaintext modulus does not fit the number of columns")

    @property
    def p(self) -> int:
        return 1 << self.log_p

    @property
    def delta(self) -> int:
        return 1 << (32 - self.log_p)


def _ctr_stream(key: bytes, offset_blocks: int, nbytes: int, suite: str = "standard") -> bytes:
    """AES-CTR (SM4-CTR under the gm suite) keystream from block ``offset_blocks`` on."""
    return get_suite(suite).ctr(key, offset_blocks.to_bytes(16, "big")).update(bytes(nbytes))


def expand_a(seed: bytes, columns: int, n: int = LWE_DIMENSION, start: int = 0, stop: int | None = None,
             suite: str = "standard") -> np.ndarray:
    """Rows ``start:stop`` of the public matrix A (columns x n uint32), from AES-128-CTR(seed) (SM4-CTR under gm)."""
    stop = columns if stop is None else stop
    row_bytes = 4 * n
    if row_bytes % 16:
        raise ValueError("n must be a multiple of 4")
    blob = _ctr_stream(seed, start * row_bytes // 16, (stop - start) * row_bytes, suite)
    return np.frombuffer(blob, dtype="<u4").reshape(stop - start, n)


def _gaussian_table(sigma: float) -> np.ndarray:
    """Cumulative table of the discrete Gaussian on [-_TAIL, _TAIL], scaled to 2^64 (exactly rounded)."""
    weights = [math.exp(-(x * x) / (2 * sigma * sigma)) for x in range(-_TAIL, _TAIL + 1)]
    # float64 weights have relative error 2^-53: statistical distance below 2^-50 in total.
    total = Fraction(sum(Fraction(w) for w in weights))
    cumulative, acc = [], Fraction(0)
    for w in weights[:-1]:
        acc += Fraction(w)
        cumulative.append(min((1 << 64) - 1, int(acc / total * (1 << 64))))
    return np.array(cumulative, dtype=np.uint64)


@functools.cache
def _cdt() -> np.ndarray:
    return _gaussian_table(SIGMA)


def sample_error(count: int, suite: str = "standard") -> np.ndarray:
    """``count`` independent discrete Gaussian samples (sigma 6.4) as uint32 mod 2^32."""
    key = os.urandom(16 if suite == "gm" else 32)
    words = np.frombuffer(_ctr_stream(key, 0, 8 * count, suite), dtype="<u8")
    values = np.searchsorted(_cdt(), words, side="right").astype(np.int64) - _TAIL
    return values.astype(np.uint32)


def sample_secret(n: int = LWE_DIMENSION, count: int = 1) -> np.ndarray:
    """Uniform secrets in Z_q^n straight from ``os.urandom``: shape (n,) or (n, count)."""
    s = np.frombuffer(os.urandom(4 * n * count), dtype="<u4")
    return s.copy() if count == 1 else s.reshape(n, count).copy()


def _halves(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = x.astype(np.uint32, copy=False)
    return (x & 0xFFFF).astype(np.float64), (x >> 16).astype(np.float64)


def _to_u32(x: np.ndarray) -> np.ndarray:
    return (np.rint(x).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)


def matmul_mod32(x: np.ndarray, y: np.ndarray, *, x_small: bool = False) -> np.ndarray:
    """x . y mod 2^32, exactly, with float64 BLAS.

    ``y`` is uint32 (split into 16-bit halves). ``x`` is uint32 (also split) or, with
    ``x_small``, a small signed/unsigned integer matrix used as is (|x| <= 2^9 here). Exact while
    inner dimension * max|x part| * 2^16 < 2^53.
    """
    y_lo, y_hi = _halves(y)
    if x_small:
        xf = x.astype(np.float64)
        if x.shape[-1] * float(np.abs(xf).max(initial=0)) * _SPLIT >= 2.0**53:
            raise ValueError("operands too large for an exact float64 product")
        return _to_u32(np.fmod(xf @ y_lo, 2.0**32)) + (_to_u32(np.fmod(xf @ y_hi, 2.0**16)) << np.uint32(16))
    if x.shape[-1] * float(_SPLIT) * _SPLIT >= 2.0**53:
        raise ValueError("inner dimension too large for an exact float64 product")
    x_lo, x_hi = _halves(x)
    low = _to_u32(np.fmod(x_lo @ y_lo, 2.0**32))
    mid = _to_u32(np.fmod(x_lo @ y_hi + x_hi @ y_lo, 2.0**16))
    return low + (mid << np.uint32(16))


def compute_hint(digits: np.ndarray, params: LweParams, *, block: int = 4096) -> np.ndarray:
    """H = (D - p/2) . A mod 2^32 (rows x n uint32), A expanded block by block."""
    rows, columns = digits.shape
    if (rows, columns) != (params.rows, params.columns):
        raise ValueError("database shape does not match its parameters")
    half = params.p // 2
    acc_lo = np.zeros((rows, params.n), dtype=np.float64)
    acc_hi = np.zeros((rows, params.n), dtype=np.float64)
    for start in range(0, columns, block):
        stop = min(columns, start + block)
        a_lo, a_hi = _halves(expand_a(params.seed, columns, params.n, start, stop, params.suite))
        centred = digits[:, start:stop].astype(np.float64) - half
        acc_lo += centred @ a_lo  # |sum| <= columns * 2^8 * 2^16 < 2^45: exact
        acc_hi += centred @ a_hi
    low = np.rint(acc_lo).astype(np.int64)
    high = np.rint(acc_hi).astype(np.int64)
    return ((low + (high << 16)) & 0xFFFFFFFF).astype(np.uint32)


@dataclass
class QueryState:
    """What the client keeps to decode one batch of answers: secrets (n x k), query sums, columns."""

    secrets: np.ndarray
    offsets: np.ndarray
    columns: np.ndarray


def make_queries(params: LweParams, columns: list[int], a_matrix: np.ndarray | None = None) -> tuple[np.ndarray, QueryState]:
    """Queries for ``columns`` (k x m uint32, one row per query) and the state to decode them.

    Each query has its own fresh secret and error. ``a_matrix`` may be a cached :func:`expand_a`.
    """
    k, m = len(columns), params.columns
    if k < 1 or any(not 0 <= j < m for j in columns):
        raise ValueError("column index out of range")
    a = expand_a(params.seed, m, params.n, suite=params.suite) if a_matrix is None else a_matrix
    secrets = sample_secret(params.n, k).reshape(params.n, k)
    if k == 1:
        body = np.einsum("ij,j->i", a, secrets[:, 0]).reshape(1, m)
    else:
        body = matmul_mod32(a, secrets).T.copy()
    body += sample_error(k * m, params.suite).reshape(k, m)
    body[np.arange(k), np.asarray(columns)] += np.uint32(params.delta)
    offsets = (body.sum(axis=1, dtype=np.uint64) * np.uint64(params.p // 2)) & np.uint64(0xFFFFFFFF)
    return body, QueryState(secrets, offsets.astype(np.uint32), np.asarray(columns))


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="psiq-pir")
    return _POOL


def answer(database: np.ndarray, query: np.ndarray) -> np.ndarray:
    """D . qu mod 2^32 for one query (uint32 einsum; rows split over threads)."""
    rows = database.shape[0]
    workers = _pool()._max_workers
    if rows * database.shape[1] < 4_000_000 or workers == 1:
        return np.einsum("ij,j->i", database, query)
    cuts = np.linspace(0, rows, workers + 1).astype(int)
    parts = _pool().map(lambda i: np.einsum("ij,j->i", database[cuts[i] : cuts[i + 1]], query), range(workers))
    return np.concatenate(list(parts))


def answer_batch(database: np.ndarray, queries: np.ndarray, *, block_rows: int = 1024) -> np.ndarray:
    """D . Q^T mod 2^32 for k queries (k x m): float64 BLAS on row blocks; returns k x rows."""
    if queries.shape[0] == 1:
        return answer(database, queries[0]).reshape(1, -1)
    q_t = np.ascontiguousarray(queries.T)
    out = [matmul_mod32(database[i : i + block_rows], q_t, x_small=True) for i in range(0, database.shape[0], block_rows)]
    return np.concatenate(out, axis=0).T.copy()


def recover(params: LweParams, hint: np.ndarray, answers: np.ndarray, state: QueryState) -> np.ndarray:
    """Digits of the requested columns (k x rows, values in [0, p)) from the server's answers."""
    k = state.secrets.shape[1]
    if answers.shape != (k, params.rows):
        raise ValueError("answer shape does not match the queries")
    if k == 1:
        hs = np.einsum("ij,j->i", hint, state.secrets[:, 0]).reshape(1, -1)
    else:
        hs = matmul_mod32(hint, state.secrets).T
    noisy = answers - hs - state.offsets.reshape(k, 1)
    shift = np.uint32(32 - params.log_p)
    rounded = (noisy + np.uint32(params.delta // 2)) >> shift
    return ((rounded + np.uint32(params.p // 2)) & np.uint32(params.p - 1)).astype(np.uint32)
