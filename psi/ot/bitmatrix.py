"""Bit matrices as numpy byte arrays, and their fast transpose.

A bit matrix with ``R`` rows and ``C`` columns is a ``uint8`` array of shape ``(R, C // 8)``;
bit ``c`` of a row is bit ``c % 8`` (least significant first) of byte ``c // 8``, the same
order as ``numpy.unpackbits(..., bitorder="little")``.

The transpose works on 8×8 bit blocks: one byte-level reshuffle gathers the eight bytes of a
block into one ``uint64``, three delta swaps (Hacker's Delight ``transpose8``) transpose the
block in place, and one more byte reshuffle scatters the result. Every step is a whole-array
numpy operation; the bit operations run in cache-sized chunks. 128 × 2^20 bits take about
0.03–0.05 s on the development machine, against 1.5–2 s for ``unpackbits``/``packbits``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["transpose", "pack_bits", "unpack_bits", "round_up"]

_MASKS = (
    (np.uint64(0x00AA00AA00AA00AA), np.uint64(7)),
    (np.uint64(0x0000CCCC0000CCCC), np.uint64(14)),
    (np.uint64(0x00000000F0F0F0F0), np.uint64(28)),
)
_CHUNK = 1 << 15  # uint64 words per bit-operation pass (256 KiB: stays in L2)


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


def _transpose8_inplace(words: np.ndarray) -> None:
    """Transpose each uint64 (an 8×8 bit block, byte k = row k) in place."""
    tmp_all = np.empty(min(words.size, _CHUNK), dtype=np.uint64)
    for start in range(0, words.size, _CHUNK):
        x = words[start : start + _CHUNK]
        tmp = tmp_all[: x.size]
        for mask, shift in _MASKS:
            np.right_shift(x, shift, out=tmp)
            np.bitwise_xor(tmp, x, out=tmp)
            np.bitwise_and(tmp, mask, out=tmp)
            np.bitwise_xor(x, tmp, out=x)
            np.left_shift(tmp, shift, out=tmp)
            np.bitwise_xor(x, tmp, out=x)


def transpose(matrix: np.ndarray) -> np.ndarray:
    """Transpose an ``R × C`` bit matrix (``uint8 (R, C/8)``) into ``uint8 (C, R/8)``.

    ``R`` and ``C`` must be multiples of 8.
    """
    if matrix.dtype != np.uint8 or matrix.ndim != 2:
        raise TypeError("bit matrix must be a 2-D uint8 array")
    rows, col_bytes = matrix.shape
    if rows % 8:
        raise ValueError("bit matrix row count must be a multiple of 8")
    if rows == 0 or col_bytes == 0:
        return np.zeros((col_bytes * 8, rows // 8), dtype=np.uint8)
    # blocks[c, g, k] = matrix[8g + k, c]: the 8 bytes of block (g, c) side by side.
    blocks = matrix.reshape(rows // 8, 8, col_bytes).transpose(2, 0, 1).copy(order="C")  # never aliases
    _transpose8_inplace(blocks.reshape(-1).view(np.uint64))
    # now blocks[c, g, l] is byte g of output row 8c + l.
    return np.ascontiguousarray(blocks.transpose(0, 2, 1)).reshape(col_bytes * 8, rows // 8)


def pack_bits(bits: np.ndarray, length: int | None = None) -> np.ndarray:
    """Pack a 0/1 vector (LSB first) into bytes, zero-padded to ``length`` bits if given."""
    bits = np.asarray(bits, dtype=np.uint8)
    if length is not None and length > bits.size:
        bits = np.concatenate([bits, np.zeros(length - bits.size, dtype=np.uint8)])
    return np.packbits(bits, bitorder="little")


def unpack_bits(data: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``count`` bits as a uint8 0/1 vector."""
    return np.unpackbits(np.asarray(data, dtype=np.uint8), bitorder="little", count=count)
