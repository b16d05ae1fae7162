"""AES-based building blocks for OT extension: row PRGs and a tweakable hash.

* :class:`RowPrg` — one AES-128-CTR stream per base-OT seed; :meth:`RowPrg.fill` writes the
  next bytes of every stream into a preallocated matrix with ``update_into`` (no allocation
  per call, so AES runs at memory speed).
* :class:`TweakHash` — a fixed-key AES permutation ``π`` (the key is public and derived from
  the session id) and the tweakable circular correlation-robust hash of Guo, Katz, Wang and Yu
  (2020): ``TCCR(x, i) = π(π(x) ⊕ i) ⊕ π(x)``. Rows wider than one block are hashed as the XOR
  of ``TCCR`` over their 128-bit blocks, each block with its own tweak, and longer outputs
  take one more tweak field (the output block number). Every tweak carries the global OT
  index, the block position, the output block and a domain byte, so no two hash calls in a
  session share a tweak unless they hash the same row for the same purpose.

Both take a :class:`~psi.crypto.suite.Suite`: under ``gm`` the cipher is SM4 (same modes, same
layouts) and :func:`derive_key` is SM3-based; the default ``standard`` suite is AES and BLAKE2b.
"""

from __future__ import annotations

import numpy as np

from ..crypto.suite import STANDARD, Suite

__all__ = ["RowPrg", "TweakHash", "derive_key"]

BLOCK = 16


def derive_key(tag: bytes, *parts: bytes, size: int = 16, suite: Suite = STANDARD) -> bytes:
    """A ``size``-byte key: BLAKE2b (SM3 under gm) over a tag and length-prefixed parts."""
    h = suite.hasher(person=b"psiq-ot-kdf", size=size)
    h.update(len(tag).to_bytes(2, "big") + tag)
    for part in parts:
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()


class RowPrg:
    """``len(seeds)`` independent AES-CTR keystreams, advanced together.

    ``offset`` starts every stream that many bytes in (so a worker can expand one batch of a
    session's streams on its own; the bytes are those the sequential streams would give).
    """

    def __init__(self, seeds: np.ndarray, offset: int = 0, suite: Suite = STANDARD) -> None:
        seeds = np.asarray(seeds, dtype=np.uint8)
        if seeds.ndim != 2 or seeds.shape[1] != BLOCK:
            raise ValueError("seeds must be an (n, 16) uint8 array")
        counter = (offset // BLOCK).to_bytes(BLOCK, "big")
        self._streams = [suite.ctr(bytes(seed), counter) for seed in seeds]
        self._zeros = np.zeros(0, dtype=np.uint8)
        self._scratch = np.zeros(0, dtype=np.uint8)
        if offset % BLOCK:
            self.fill(np.empty((len(self._streams), offset % BLOCK), dtype=np.uint8))

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Write the next ``out.shape[1]`` bytes of stream ``j`` into ``out[j]``; return ``out``."""
        rows, length = out.shape
        if rows != len(self._streams) or out.dtype != np.uint8:
            raise ValueError("output matrix does not match the PRG")
        if self._zeros.size < length:
            self._zeros = np.zeros(length, dtype=np.uint8)
            self._scratch = np.empty(length + BLOCK, dtype=np.uint8)
        zeros, scratch = self._zeros[:length], self._scratch[: length + BLOCK - 1]
        for row, stream in enumerate(self._streams):
            stream.update_into(zeros, scratch)
            out[row] = scratch[:length]
        return out


class TweakHash:
    """Fixed-key AES hash over whole row buffers (see the module docstring)."""

    def __init__(self, session: bytes, suite: Suite = STANDARD) -> None:
        key = derive_key(b"tccr-permutation", session, suite=suite)
        self._perm = suite.ecb(key)

    def permute(self, blocks: np.ndarray) -> np.ndarray:
        """``π`` applied to every 16-byte block of a C-contiguous uint8 array (new array)."""
        flat = np.ascontiguousarray(blocks).reshape(-1)
        out = np.empty(flat.size + BLOCK, dtype=np.uint8)
        self._perm.update_into(flat, out)
        return out[: flat.size].reshape(blocks.shape)

    @staticmethod
    def tweaks(first_index: int, count: int, in_blocks: int, out_blocks: int, domain: int) -> np.ndarray:
        """Tweak blocks shaped ``(count, out_blocks, in_blocks, 16)``.

        Layout (little-endian): bytes 0–7 the OT index, byte 8 the input block, bytes 9–10 the
        output block, byte 11 the domain, bytes 12–15 zero.
        """
        tw = np.zeros((count, out_blocks, in_blocks, 2), dtype=np.uint64)
        tw[..., 0] = np.arange(first_index, first_index + count, dtype=np.uint64)[:, None, None]
        high = (
            np.arange(in_blocks, dtype=np.uint64)[None, :]
            | (np.arange(out_blocks, dtype=np.uint64)[:, None] << np.uint64(8))
            | np.uint64((domain & 0xFF) << 24)
        )
        tw[..., 1] = high[None, :, :]
        return tw.view(np.uint8).reshape(count, out_blocks, in_blocks, BLOCK)

    def hash_rows(
        self,
        rows: np.ndarray,
        first_index: int,
        *,
        out_bytes: int = BLOCK,
        domain: int = 0,
        indices: np.ndarray | None = None,
    ) -> np.ndarray:
        """Hash each row (``uint8 (n, 16·k)``) with its OT index into ``out_bytes`` bytes.

        Row ``r`` uses index ``first_index + r``, or ``indices[r]`` when given.
        """
        count, width = rows.shape
        if width % BLOCK:
            raise ValueError("row width must be a multiple of 16 bytes")
        in_blocks = width // BLOCK
        out_blocks = max(1, -(-out_bytes // BLOCK))
        if count == 0:
            return np.zeros((0, out_bytes), dtype=np.uint8)
        if indices is None:
            tw = self.tweaks(first_index, count, in_blocks, out_blocks, domain)
        else:
            tw = self.tweaks(0, count, in_blocks, out_blocks, domain)
            tw.view(np.uint64)[..., 0] = np.asarray(indices, dtype=np.uint64)[:, None, None]
        first = self.permute(rows.reshape(count, 1, in_blocks, BLOCK))
        mixed = tw
        np.bitwise_xor(mixed, first, out=mixed)  # π(x) ⊕ tweak, broadcast over output blocks
        second = self.permute(mixed)
        np.bitwise_xor(second, first, out=second)  # TCCR per (row, out block, in block)
        if in_blocks > 1:
            words = second.view(np.uint64)
            combined = np.bitwise_xor.reduce(words, axis=2)
            out = combined.view(np.uint8).reshape(count, out_blocks * BLOCK)
        else:
            out = second.reshape(count, out_blocks * BLOCK)
        return out[:, :out_bytes] if out_bytes != out_blocks * BLOCK else out
