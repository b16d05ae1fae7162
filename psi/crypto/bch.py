"""The primitive binary BCH code [511, 76, ≥171], padded to 512 bits, as a linear map on numpy rows.

A linear code is what makes the OT-extension consistency check of Orrù–Orsini–Scholl (OOS17)
possible: ``Σ x_j·C(w_j) = C(Σ x_j·w_j)``. libOTe's OOS uses the same code (its ``bch511.txt``
header reads "76 511"); here the generator polynomial is computed from first principles:

* GF(2^9) with the primitive polynomial ``x^9 + x^4 + 1``;
* ``g(x)`` = product of the distinct minimal polynomials of ``α^1 … α^170`` (designed distance
  ``2·85 + 1 = 171``); its degree is ``511 − 76 = 435``;
* the codeword of a 76-bit message ``m`` is ``m(x)·g(x)`` (non-systematic; any two distinct
  messages give codewords at Hamming distance ≥ 171, the BCH bound).

Bit ``c`` of a codeword is bit ``c % 8`` of byte ``c // 8`` (the bit-matrix order of
:mod:`psi.ot.bitmatrix`); bit 511 is always zero.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["MESSAGE_BITS", "LENGTH", "DESIGNED_DISTANCE", "generator_polynomial", "generator_rows", "encode"]

MESSAGE_BITS = 76
LENGTH = 511
DESIGNED_DISTANCE = 171
_FIELD_BITS = 9
_PRIMITIVE = (1 << 9) | (1 << 4) | 1


def _poly_mul(a: int, b: int) -> int:
    """Product of two GF(2)[x] polynomials held as ints (bit i = coefficient of x^i)."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        a <<= 1
        b >>= 1
    return out


@functools.lru_cache(maxsize=1)
def generator_polynomial() -> int:
    """``g(x)`` of the [511, 76] BCH code, as an int of degree 435."""
    order = (1 << _FIELD_BITS) - 1
    exp = [0] * (2 * order)
    value = 1
    for i in range(order):
        exp[i] = exp[i + order] = value
        value <<= 1
        if value >> _FIELD_BITS:
            value ^= _PRIMITIVE
    log = {exp[i]: i for i in range(order)}

    def gf_mul(a: int, b: int) -> int:
        return 0 if a == 0 or b == 0 else exp[log[a] + log[b]]

    g, seen = 1, set()
    for i in range(1, DESIGNED_DISTANCE):
        if i in seen:
            continue
        coset, j = [], i
        while j not in coset:
            coset.append(j)
            j = 2 * j % order
        seen.update(coset)
        minimal = [1]  # coefficients in GF(2^9), lowest degree first: Π (x + α^j)
        for j in coset:
            root = exp[j]
            shifted = [0] + minimal
            for k in range(len(minimal)):
                shifted[k] ^= gf_mul(minimal[k], root)
            minimal = shifted
        if any(c not in (0, 1) for c in minimal):  # pragma: no cover - field arithmetic bug
            raise ArithmeticError("minimal polynomial is not binary")
        g = _poly_mul(g, sum(c << k for k, c in enumerate(minimal)))
    if g.bit_length() - 1 != LENGTH - MESSAGE_BITS:  # pragma: no cover
        raise ArithmeticError("BCH generator has the wrong degree")
    return g


@functools.lru_cache(maxsize=1)
def generator_rows() -> np.ndarray:
    """``uint8 (76, 64)``: row ``i`` is the codeword of the message with only bit ``i`` set."""
    g = generator_polynomial()
    rows = [(g << i).to_bytes(64, "little") for i in range(MESSAGE_BITS)]
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(MESSAGE_BITS, 64).copy()


@functools.lru_cache(maxsize=1)
def _tables() -> np.ndarray:
    """``uint64 (10, 256, 8)``: XOR of the generator rows picked by each message byte."""
    rows = np.zeros((80, 64), dtype=np.uint8)
    rows[:MESSAGE_BITS] = generator_rows()
    words = rows.view(np.uint64).reshape(10, 8, 8)
    tables = np.zeros((10, 256, 8), dtype=np.uint64)
    for bit in range(8):
        tables[:, 1 << bit : 2 << bit] = tables[:, : 1 << bit] ^ words[:, bit, None, :]
    return tables


def encode(messages: np.ndarray) -> np.ndarray:
    """Codewords ``uint64 (n, 8)`` (512 bits) of messages ``uint64 (n, 2)`` (76 bits: the low
    64 in word 0, the next 12 in word 1; higher bits must be zero)."""
    messages = np.ascontiguousarray(messages, dtype=np.uint64)
    flat = _tables().reshape(-1, 8)
    data = messages.view(np.uint8).reshape(-1, 16)[:, :10].astype(np.int64)
    out = flat[data[:, 0]]
    for b in range(1, 10):
        np.bitwise_xor(out, flat[b * 256 + data[:, b]], out=out)
    return out
