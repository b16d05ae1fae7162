"""The binary [511, 76] BCH code (designed distance 171), padded to 512 bits, with table encoding.

The actively secure 1-out-of-N OT extension (OOS17, :mod:`psi.ot.oos`) needs a *linear* binary
code: its consistency check relies on ``C(a) ⊕ C(b) = C(a ⊕ b)``. libOTe uses the primitive
narrow-sense BCH code of length 511 and dimension 76; this module derives it rather than
shipping it as a constant:

* ``GF(2^9)`` is built from the primitive polynomial ``x^9 + x^4 + 1`` with ``α = x``;
* the generator ``g(x)`` is the product of the distinct minimal polynomials of ``α^1 … α^170``
  (one per cyclotomic coset of 2 modulo 511), so ``g(α^i) = 0`` for ``i = 1..170`` and, by the
  BCH bound, any two distinct code words differ in at least 171 of their 511 bits
  (``deg g = 435``, hence dimension ``511 − 435 = 76``);
* a message ``m`` of 76 bits (bit ``i`` = coefficient of ``x^i``) encodes to ``m(x)·g(x)``, a
  511-bit word; bit 511 is always zero (the padding to four AES blocks).

Distance 171 ≥ κ + s = 128 + 40 is what the OOS17 check needs (see :mod:`psi.ot.oos`).

Encoding is vectorised: the 76 message bits are cut into ten bytes and each byte looks up its
512-bit contribution in a 256-entry table (``uint64``), so a batch costs ten gathers and XORs.
Code words use the bit order of :mod:`psi.ot.bitmatrix` (bit ``k`` = bit ``k % 8`` of byte
``k // 8``).
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["LENGTH", "DIMENSION", "DISTANCE", "WIDTH", "MESSAGE_MASK", "generator_polynomial", "BchCode", "code"]

LENGTH = 511
DIMENSION = 76
DISTANCE = 171
WIDTH = 512  # code word bits on the wire (LENGTH + one zero bit)
FIELD_POLY = 0x211  # x^9 + x^4 + 1, primitive over GF(2)
FIELD_ORDER = 511
MESSAGE_MASK = (1 << DIMENSION) - 1
_CHUNKS = -(-DIMENSION // 8)  # 10 message bytes
_HIGH_MASK = np.uint64((1 << (DIMENSION - 64)) - 1)


def _field_tables() -> tuple[list[int], list[int]]:
    """(exp, log) tables of GF(2^9) for the generator α = x."""
    exp = [0] * (2 * FIELD_ORDER)
    log = [0] * (FIELD_ORDER + 1)
    value = 1
    for i in range(FIELD_ORDER):
        exp[i] = exp[i + FIELD_ORDER] = value
        log[value] = i
        value <<= 1
        if value & 0x200:
            value ^= FIELD_POLY
    if value != 1 or len(set(exp[:FIELD_ORDER])) != FIELD_ORDER:
        raise AssertionError("x^9 + x^4 + 1 is not primitive")  # pragma: no cover - fixed constant
    return exp, log


def _field_mul(a: int, b: int, exp: list[int], log: list[int]) -> int:
    return 0 if a == 0 or b == 0 else exp[log[a] + log[b]]


def _gf2_mul(a: int, b: int) -> int:
    """Carry-less product of two GF(2)[x] polynomials held as int bit masks."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        a <<= 1
        b >>= 1
    return out


def _minimal_polynomial(coset: list[int], exp: list[int], log: list[int]) -> int:
    """``∏ (x − α^j)`` over the coset, as a GF(2)[x] bit mask (coefficients must lie in GF(2))."""
    poly = [1]  # coefficients in GF(2^9), lowest degree first
    for j in coset:
        root = exp[j]
        shifted = [0] + poly  # x·p(x)
        for i, c in enumerate(poly):
            shifted[i] ^= _field_mul(c, root, exp, log)
        poly = shifted
    if any(c not in (0, 1) for c in poly):
        raise AssertionError("minimal polynomial left GF(2)")  # pragma: no cover
    return sum(c << i for i, c in enumerate(poly))


@functools.lru_cache(maxsize=1)
def generator_polynomial() -> int:
    """``g(x)`` of the [511, 76] BCH code as an int (bit ``i`` = coefficient of ``x^i``)."""
    exp, log = _field_tables()
    seen: set[int] = set()
    g = 1
    for i in range(1, DISTANCE):
        if i in seen:
            continue
        coset, j = [], i
        while j not in coset:
            coset.append(j)
            j = 2 * j % FIELD_ORDER
        seen.update(coset)
        g = _gf2_mul(g, _minimal_polynomial(coset, exp, log))
    if g.bit_length() - 1 != LENGTH - DIMENSION:
        raise AssertionError("BCH generator has the wrong degree")  # pragma: no cover
    return g


def evaluate(poly: int, power: int) -> int:
    """``poly(α^power)`` in GF(2^9) (for tests: the roots of ``g``)."""
    exp, log = _field_tables()
    value, i = 0, 0
    while poly >> i:
        if (poly >> i) & 1:
            value ^= exp[(i * power) % FIELD_ORDER]
        i += 1
    return value


def _word_to_bytes(word: int) -> np.ndarray:
    return np.frombuffer(word.to_bytes(WIDTH // 8, "little"), dtype=np.uint8)


class BchCode:
    """Encoder of the padded [511, 76] BCH code; inputs are ``uint64 (n, 2)`` (low, high word).

    A message is a 76-bit integer: word 0 holds bits 0–63, word 1 bits 64–75 (its upper 52 bits
    must be zero). :meth:`encode` returns code words ``uint8 (n, 64)``.
    """

    def __init__(self) -> None:
        g = generator_polynomial()
        tables = np.zeros((_CHUNKS, 256, WIDTH // 64), dtype=np.uint64)
        basis = [_word_to_bytes(_gf2_mul(g, 1 << i)).view(np.uint64) for i in range(DIMENSION)]
        for chunk in range(_CHUNKS):
            for bit in range(8):
                i = chunk * 8 + bit
                if i >= DIMENSION:
                    break
                size = 1 << bit
                tables[chunk, size : 2 * size] = tables[chunk, :size] ^ basis[i]
        tables.setflags(write=False)
        self.tables = tables

    def masked(self, mask: np.ndarray) -> "BchCode":
        """An encoder of ``C(m) ∧ mask`` (``mask``: 64 bytes), still linear in ``m``."""
        return BchCode.from_tables(self.tables & np.frombuffer(np.ascontiguousarray(mask, dtype=np.uint8).tobytes(), dtype=np.uint64))

    @classmethod
    def from_tables(cls, tables: np.ndarray) -> "BchCode":
        """An encoder over given tables (e.g. masked ones shipped to a worker)."""
        if tables.shape != (_CHUNKS, 256, WIDTH // 64) or tables.dtype != np.uint64:
            raise ValueError("BCH tables have the wrong shape")
        other = object.__new__(cls)
        other.tables = np.array(tables, copy=True)
        other.tables.setflags(write=False)
        return other

    def encode(self, messages: np.ndarray, chunk: int = 1 << 14) -> np.ndarray:
        """Code words ``uint8 (n, 64)`` of ``messages`` (``uint64 (n, 2)``, checked to be < 2^76)."""
        messages = np.ascontiguousarray(messages, dtype=np.uint64).reshape(-1, 2)
        if messages.size and (messages[:, 1] & ~_HIGH_MASK).any():
            raise ValueError("BCH message longer than 76 bits")
        count = messages.shape[0]
        out = np.empty((count, WIDTH // 64), dtype=np.uint64)
        data = messages.view(np.uint8).reshape(count, 16)
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            block = out[start:stop]
            np.take(self.tables[0], data[start:stop, 0], axis=0, out=block)
            for k in range(1, _CHUNKS):
                block ^= np.take(self.tables[k], data[start:stop, k], axis=0)
        return out.view(np.uint8).reshape(count, WIDTH // 8)


@functools.lru_cache(maxsize=1)
def code() -> BchCode:
    """The shared encoder (tables built once per process)."""
    return BchCode()
