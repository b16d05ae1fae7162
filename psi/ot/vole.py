"""The VOLE rr22 runs on: OT extension with a linear code, batch by batch, for worker processes.

Setting (as in :mod:`psi.ot.extension`; roles reversed in the base OTs): the receiver holds
``w`` seed pairs ``(k_j^0, k_j^1)``, the sender the seeds ``k_j^{s_j}`` and the secret
``s ∈ {0,1}^w``. For a batch of rows with code words ``c_r`` (``w`` bits each) the receiver
computes the columns ``T_j = G_b(k_j^0)`` and sends ``U_j = T_j ⊕ G_b(k_j^1) ⊕ column_j(c)``;
the sender computes ``Q_j = G_b(k_j^{s_j}) ⊕ s_j·U_j``, so that row by row
``q_r = t_r ⊕ (c_r ∧ s)``: a VOLE over GF(2)^w whose ``a`` values are code words.

What differs from :class:`psi.ot.extension.ExtensionReceiver` is only how ``G`` is run, so
that a worker can compute any batch on its own at full speed:

* batch ``b``'s stream of seed ``k`` is AES-128 (SM4 under ``--suite gm``) under ``k`` of the counter blocks
  ``(b, 0), (b, 1), …`` (two big-endian 64-bit halves): every batch starts its own stream at a
  block boundary, no offset to skip to;
* each process keeps the seeds' AES-ECB contexts (:func:`_encryptors`, a few recent seed
  sets), so a batch costs one ``update_into`` per seed over a shared counter array, written
  straight into its row of the column matrix — no key schedule per batch and no copy.

Distinct ``(seed, batch, block)`` triples give distinct AES inputs under each key, so every
stream block is a fresh PRF output (the PRG argument of IKNP). Both sides must use the same
batch numbers; :mod:`psi.protocols.rr22` numbers its correction batches from 0.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from ..crypto.suite import STANDARD, Suite

from ..errors import MalformedMessage
from .bitmatrix import round_up, transpose

__all__ = ["prg_columns", "receiver_batch", "receiver_columns", "sender_columns", "padded_rows", "wire_size"]

_CACHED_SEED_SETS = 4
_cache: "OrderedDict[bytes, list]" = OrderedDict()


def padded_rows(rows: int) -> int:
    """Rows a batch of ``rows`` expands to (a multiple of 8: whole column bytes)."""
    return round_up(max(rows, 1), 8)


def wire_size(width: int, rows: int) -> int:
    """Bytes of the correction ``U`` for a batch of ``rows`` rows."""
    return width * padded_rows(rows) // 8


def _encryptors(seeds: np.ndarray, suite: Suite = STANDARD) -> list:
    """ECB contexts (AES, or SM4 under ``--suite gm``) of ``seeds`` (``uint8 (w, 16)``), kept per
    process for reuse."""
    tag = suite.name.encode() + b"/" + seeds.tobytes()
    found = _cache.get(tag)
    if found is None:
        found = [suite.ecb(bytes(seed)) for seed in seeds]
        _cache[tag] = found
        while len(_cache) > _CACHED_SEED_SETS:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(tag)
    return found


def prg_columns(seeds: np.ndarray, batch: int, length: int, suite: Suite = STANDARD) -> np.ndarray:
    """``uint8 (w, length)``: row ``j`` is the first ``length`` bytes of seed ``j``'s stream for
    ``batch`` (see the module docstring)."""
    seeds = np.ascontiguousarray(seeds, dtype=np.uint8)
    if seeds.ndim != 2 or seeds.shape[1] != 16 or not 0 <= batch < 1 << 64:
        raise ValueError("seeds must be (w, 16) bytes and the batch number 64 bits")
    width = seeds.shape[0]
    blocks = -(-length // 16)
    counters = np.zeros((blocks, 2), dtype=">u8")
    counters[:, 0] = batch
    counters[:, 1] = np.arange(blocks, dtype=np.uint64)
    data = counters.view(np.uint8).reshape(-1)
    # Row j is written in place with whole blocks plus update_into's slack (block size − 1):
    # the overhang lands on row j+1, which is written next, or on the spare tail.
    flat = np.empty(max(width - 1, 0) * length + 16 * blocks + 15, dtype=np.uint8)
    for j, encryptor in enumerate(_encryptors(seeds, suite)):
        encryptor.update_into(data, flat[j * length : j * length + 16 * blocks + 15])
    return flat[: width * length].reshape(width, length)


def receiver_batch(keys0: np.ndarray, keys1: np.ndarray, batch: int, codewords: np.ndarray,
                   suite: Suite = STANDARD) -> tuple[np.ndarray, bytes]:
    """Receiver: ``codewords`` ``uint8 (rows, w/8)`` → (rows ``t`` ``uint8 (rows, w/8)``, wire ``U``)."""
    rows, row_bytes = codewords.shape
    width = keys0.shape[0]
    if row_bytes * 8 != width or keys1.shape != keys0.shape:
        raise ValueError("code word width does not match the seeds")
    length = padded_rows(rows) // 8
    t_cols = prg_columns(keys0, batch, length, suite)
    u_cols = prg_columns(keys1, batch, length, suite)
    np.bitwise_xor(u_cols, t_cols, out=u_cols)
    padded = np.zeros((padded_rows(rows), row_bytes), dtype=np.uint8)
    padded[:rows] = codewords
    np.bitwise_xor(u_cols, transpose(padded), out=u_cols)
    return transpose(t_cols)[:rows], u_cols.tobytes()


def receiver_columns(keys0: np.ndarray, batch: int, rows: int, suite: Suite = STANDARD) -> np.ndarray:
    """Receiver: the columns of ``T`` for a batch of ``rows`` (``uint8 (w, padded/8)``), e.g. for
    the consistency check of :mod:`psi.ot.oos` — regenerated, nothing kept from the batch."""
    return prg_columns(keys0, batch, padded_rows(rows) // 8, suite)


def sender_columns(keys: np.ndarray, secret: np.ndarray, batch: int, rows: int, wire: bytes,
                   suite: Suite = STANDARD) -> np.ndarray:
    """Sender: the columns of ``Q`` (``uint8 (w, padded/8)``) from the receiver's ``U``.

    ``keys``: ``k_j^{s_j}`` (``uint8 (w, 16)``); ``secret``: the bits ``s_j`` (0/1, ``w``).
    Refuses (:class:`MalformedMessage`) a ``wire`` of the wrong length.
    """
    width = keys.shape[0]
    if len(wire) != wire_size(width, rows):
        raise MalformedMessage("OT extension correction has the wrong length")
    length = padded_rows(rows) // 8
    u_cols = np.frombuffer(wire, dtype=np.uint8).reshape(width, length)
    q_cols = prg_columns(keys, batch, length, suite)
    np.bitwise_xor(q_cols, u_cols, out=q_cols, where=np.asarray(secret, dtype=bool).reshape(width, 1))
    return q_cols
