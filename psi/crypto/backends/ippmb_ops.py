"""Batching for the multi-buffer library's P-256, SM2 and RSA functions (see :mod:`.ippmb`).

Each function takes the C function (a ctypes function or any callable with its signature; the
tests pass C-callable fakes) and whole batches as packed bytes. Inputs are packed once with
numpy into the layout the library reads, one 8-pointer row per call is built for every
argument at once (base address + stride * lane), and the Python loop only makes the calls.
A short last call is padded with a valid value (the curve's generator, or 2 for RSA) and its
padding lanes' results are dropped. Every real lane's 4-bit status is checked.

Signatures (Intel ``crypto_mb`` headers ``ec_nistp256.h``, ``ec_sm2.h``, ``rsa.h``)::

    mbx_status mbx_nistp256_ecdh_mb8(int8u* shared[8], const int64u* skey[8],
        const int64u* x[8], const int64u* y[8], const int64u* z[8], int8u* buffer)
    mbx_status mbx_sm2_ecdh_mb8(...same...)
    mbx_status mbx_rsa_private_crt_mb8(const int8u* from[8], int8u* to[8],
        const int64u* p[8], q[8], dp[8], dq[8], iq[8], int bits, const mbx_RSA_Method* m, int8u* buffer)
    mbx_status mbx_rsa_public_mb8(const int8u* from[8], int8u* to[8], const int64u* n[8],
        int bits, const mbx_RSA_Method* m, int8u* buffer)

Formats: ``int64u*`` numbers are little-endian 64-bit words (least significant first);
``int8u*`` numbers (shared x, RSA inputs and outputs) are big-endian byte strings of the field
or modulus size. EC points are passed in Jacobian coordinates with Z = 1 (i.e. affine); the
shared key is the affine x of ``skey * P``. A NULL method picks the library's default for the
size; a NULL buffer makes it allocate its scratch space.
"""

from __future__ import annotations

import ctypes
from typing import Callable, Sequence

import numpy as np

__all__ = ["LANES", "CURVES", "RSA_BITS", "ec_x_many", "rsa_private_crt_many", "rsa_public_many", "lane_codes"]

LANES = 8
STATUS_MISMATCH = 1  # MBX_STATUS_MISMATCH_PARAM_ERR: a point not on the curve, a zero key
RSA_BITS = (1024, 2048, 3072, 4096)
#: The generator of each curve (affine x, y), used to pad a short last call.
CURVES = {
    "p256": (
        0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
        0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    ),
    "sm2": (
        0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
        0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0,
    ),
}

EcMb8 = Callable[[int, int, int, int, int, int | None], int]
RsaCrtMb8 = Callable[..., int]
RsaPubMb8 = Callable[..., int]


def _lanes(count: int) -> int:
    return -(-count // LANES) * LANES


def _rows(array: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(pointer array, address of each call's 8-pointer row) for a (lanes, width) array."""
    lanes, width = array.shape
    ptrs = np.uint64(array.ctypes.data) + np.arange(lanes, dtype=np.uint64) * np.uint64(width * array.itemsize)
    rows = (np.uint64(ptrs.ctypes.data) + np.arange(lanes // LANES, dtype=np.uint64) * np.uint64(8 * LANES)).tolist()
    return ptrs, rows


def _same(array: np.ndarray) -> np.ndarray:
    """One 8-pointer row with every lane pointing at ``array`` (the same key in every lane)."""
    return np.full(LANES, array.ctypes.data, dtype=np.uint64)


def lane_codes(statuses: Sequence[int], count: int) -> list[tuple[int, int]]:
    """``(index, code)`` for every real lane (index < count) whose status is not zero."""
    out = []
    for call, status in enumerate(statuses):
        for lane in range(LANES):
            code = (status >> (4 * lane)) & 0xF
            if code and call * LANES + lane < count:
                out.append((call * LANES + lane, code))
    return out


def _be_to_le_words(blob: bytes, width: int, lanes: int, pad: bytes) -> np.ndarray:
    """Big-endian ``width``-byte numbers -> (lanes, width) little-endian byte rows, padded."""
    count = len(blob) // width
    out = np.empty((lanes, width), dtype=np.uint8)
    out[:count] = np.frombuffer(blob, dtype=np.uint8).reshape(count, width)[:, ::-1]
    out[count:] = np.frombuffer(pad, dtype=np.uint8)[::-1]
    return out


def ec_x_many(fn: EcMb8, curve: str, scalar: bytes, xs: bytes, ys: bytes) -> bytes:
    """x(k * (x, y)) for each affine point, 32-byte big-endian; k = ``scalar`` (32 bytes big-endian).

    Points must be on the curve (the caller validated them). ``ValueError`` if the library
    reports one as not on the curve (or the key as zero), ``RuntimeError`` for any other status.
    """
    if len(xs) != len(ys) or len(xs) % 32 or len(scalar) != 32:
        raise ValueError("EC batch: 32-byte scalar and equal runs of 32-byte coordinates expected")
    count = len(xs) // 32
    if count == 0:
        return b""
    gx, gy = CURVES[curve]
    lanes = _lanes(count)
    x = _be_to_le_words(bytes(xs), 32, lanes, gx.to_bytes(32, "big"))
    y = _be_to_le_words(bytes(ys), 32, lanes, gy.to_bytes(32, "big"))
    z = np.zeros((lanes, 32), dtype=np.uint8)
    z[:, 0] = 1
    key = np.frombuffer(bytes(scalar)[::-1], dtype=np.uint8).copy()
    out = np.zeros((lanes, 32), dtype=np.uint8)
    keep = [_rows(a) for a in (out, x, y, z)]  # the pointer arrays must outlive the calls
    key_row = _same(key)
    (_, out_rows), (_, x_rows), (_, y_rows), (_, z_rows) = keep
    try:
        statuses = [
            fn(o, key_row.ctypes.data, px, py, pz, None) for o, px, py, pz in zip(out_rows, x_rows, y_rows, z_rows)
        ]
    finally:
        key[:] = 0
    bad = lane_codes(statuses, count)
    if bad:
        index, code = bad[0]
        if code == STATUS_MISMATCH:
            raise ValueError(f"{curve} multi-buffer lane {index}: point not on the curve or zero key")
        raise RuntimeError(f"{curve} multi-buffer lane {index}: status {code:#x}")
    return out[:count].tobytes()


def _le_words(value: int, words: int) -> np.ndarray:
    return np.frombuffer(value.to_bytes(8 * words, "little"), dtype=np.uint64).copy()


def rsa_supported(params: Sequence[int]) -> bool:
    """The library's CRT path takes 1024/2048/3072/4096-bit moduli with both primes of half size."""
    n, _e, p, q = params[:4]
    bits = n.bit_length()
    return bits in RSA_BITS and p.bit_length() == bits // 2 and q.bit_length() == bits // 2


def _rsa_inputs(blob: bytes, k_len: int) -> tuple[np.ndarray, int]:
    if len(blob) % k_len:
        raise ValueError("RSA input buffer is not a whole number of kLen-byte values")
    count = len(blob) // k_len
    values = np.empty((_lanes(count), k_len), dtype=np.uint8)
    values[:count] = np.frombuffer(bytes(blob), dtype=np.uint8).reshape(count, k_len)
    values[count:] = 0
    values[count:, -1] = 2  # padding lanes compute 2^d
    return values, count


def _rsa_check(statuses: list[int], count: int, name: str) -> None:
    bad = lane_codes(statuses, count)
    if bad:
        index, code = bad[0]
        raise RuntimeError(f"{name} lane {index}: status {code:#x}")


def rsa_private_crt_many(fn: RsaCrtMb8, params: Sequence[int], blob: bytes) -> bytes:
    """y^d mod n (CRT) for each kLen-byte big-endian y; :func:`rsa_supported` must hold."""
    n, _e, p, q, dp, dq, qinv = params
    bits = n.bit_length()
    k_len = bits // 8
    values, count = _rsa_inputs(blob, k_len)
    if count == 0:
        return b""
    words = bits // 128  # 64-bit words of a half-size number
    key = [_le_words(v, words) for v in (p, q, dp, dq, qinv)]
    out = np.zeros_like(values)
    keep = (_rows(values), _rows(out))  # the pointer arrays must outlive the calls
    (_, in_rows), (_, out_rows) = keep
    key_rows = [_same(part) for part in key]
    try:
        statuses = [
            fn(i, o, *(row.ctypes.data for row in key_rows), bits, None, None) for i, o in zip(in_rows, out_rows)
        ]
    finally:
        for part in key:
            part[:] = 0
        values[:] = 0
    _rsa_check(statuses, count, "mbx_rsa_private_crt_mb8")
    return out[:count].tobytes()


def rsa_public_many(fn: RsaPubMb8, n: int, blob: bytes) -> bytes:
    """y^65537 mod n for each kLen-byte big-endian y (n of 1024/2048/3072/4096 bits)."""
    bits = n.bit_length()
    k_len = bits // 8
    values, count = _rsa_inputs(blob, k_len)
    if count == 0:
        return b""
    modulus = _le_words(n, bits // 64)
    out = np.zeros_like(values)
    keep = (_rows(values), _rows(out))  # the pointer arrays must outlive the calls
    (_, in_rows), (_, out_rows) = keep
    n_row = _same(modulus)
    statuses = [fn(i, o, n_row.ctypes.data, bits, None, None) for i, o in zip(in_rows, out_rows)]
    _rsa_check(statuses, count, "mbx_rsa_public_mb8")
    return out[:count].tobytes()


# ctypes prototypes, shared by the loader and the tests' fakes
EC_PROTO = ctypes.CFUNCTYPE(ctypes.c_uint32, *([ctypes.c_void_p] * 6))
RSA_CRT_PROTO = ctypes.CFUNCTYPE(
    ctypes.c_uint32, *([ctypes.c_void_p] * 7), ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p
)
RSA_PUB_PROTO = ctypes.CFUNCTYPE(ctypes.c_uint32, *([ctypes.c_void_p] * 3), ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
