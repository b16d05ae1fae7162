"""The OOS17 consistency check for 1-out-of-N OT extension with a linear code (per batch).

Setting (see :mod:`psi.ot.extension`): the sender holds ``Δ`` (512 bits) and, for every row
``j`` of a batch, ``q_j``; an honest receiver holds ``t_j`` and a 76-bit word ``w_j`` with
``q_j = t_j ⊕ (C(w_j) ∧ Δ)`` for the BCH code ``C`` of :mod:`psi.ot.bch`. A cheating receiver
sends corrections for arbitrary 512-bit strings ``c_j`` instead of code words; if ``c_j`` is not
a code word, the sender's values for other words would leak bits of ``Δ`` (the attack of issue
10: one flipped byte per bin, 256 guesses per byte).

The check, as libOTe realises Orrù–Orsini–Scholl (``OosNcoOt``), run once per batch:

1. the receiver appends ``S = 40`` rows to the batch, for uniformly random words ``w*_l``;
2. only after the whole batch (check rows included) has arrived, the sender draws a fresh
   16-byte seed and sends it; both sides expand it (AES-CTR keyed by session, batch number and
   seed) into a 40-bit word ``r_j`` per real row — bit ``l`` of ``r_j`` is the coefficient of
   row ``j`` in check ``l`` — and check row ``l`` enters check ``l`` alone;
3. the receiver answers ``t̃_l = ⊕_j r_j[l]·t_j`` and ``w̃_l = ⊕_j r_j[l]·w_j`` (64 + 10 bytes
   each, ``S`` of them);
4. the sender computes ``q̃_l`` the same way from its rows and accepts only if
   ``t̃_l ⊕ q̃_l = C(w̃_l) ∧ Δ`` for every ``l`` (one constant-time comparison); otherwise it
   raises :class:`CheatingDetected` before releasing anything computed from ``Δ``.

Soundness (our reading of the argument; OOS17 §4 gives the proof): write ``c_j = C(w_j) ⊕ e_j``.
If the errors ``e_j`` do not all lie in the code, each check's random combination
``⊕ r_j[l]·e_j`` falls outside the code with probability ≥ 1/2, independently for the 40
checks, so all combinations are code words with probability ≤ 2^-40. A combination outside
the code passes only if the receiver guesses the bits of ``Δ`` where it differs from the
nearest code word: passing with probability ``2^-c`` teaches it ``c`` bits of ``Δ``. Every pair
of code words differs in ≥ 171 positions, so after a passing check at least ``171 − c`` unknown
bits of ``Δ`` separate any value it did not choose; with ``c ≤ 43`` that is ≥ 128, and ``c > 43``
passes with probability < 2^-43. Hence the statistical parameter ``S = 40`` with
``d = 171 ≥ κ + S``. An honest receiver's answer reveals nothing: ``w*_l`` is uniform, so
``w̃_l`` is, and ``t̃_l`` is fixed by ``w̃_l`` and the sender's own rows.

Cost per batch: ``S`` extra OT rows (40 × 512 bits), a 16-byte challenge and a
``S × 74``-byte answer; on each side one pass over the batch's bit columns (a 256-entry table
of challenge combinations per 8 rows, one gather per column byte).
"""

from __future__ import annotations

import hmac
import secrets

import numpy as np

from ..crypto.suite import STANDARD, Suite
from ..errors import MalformedMessage
from .aes_hash import derive_key
from .bch import BchCode, DIMENSION
from .bitmatrix import round_up, transpose

__all__ = [
    "S",
    "SEED_BYTES",
    "WORD_BYTES",
    "RESPONSE_BYTES",
    "CheatingDetected",
    "challenge_words",
    "combine_columns",
    "random_words",
    "receiver_response",
    "sender_expected",
    "verify",
    "verify_sums",
    "repetition_response",
    "repetition_verify",
    "REPETITION_RESPONSE_BYTES",
]

S = 40  # statistical security of the check (40 binary combinations per batch)
SEED_BYTES = 16
WORD_BYTES = 10  # a 76-bit code input on the wire (the top 4 bits must be zero)
ROW_BYTES = 64
RESPONSE_BYTES = S * (ROW_BYTES + WORD_BYTES)
REPETITION_RESPONSE_BYTES = S * (16 + 1)  # IKNP: t̃ (128 bits) and the combined choice bit
_MASK = np.uint64((1 << S) - 1)
_SPAN = 256  # column bytes (8-row groups) per gather pass: tables stay in L1/L2


class CheatingDetected(MalformedMessage):
    """The receiver's OT-extension rows are not consistent with code words (OOS17 check)."""


def random_words(count: int) -> np.ndarray:
    """``count`` uniform 76-bit words from the OS, ``uint64 (count, 2)`` (check rows, dummies)."""
    words = np.frombuffer(secrets.token_bytes(16 * count), dtype=np.uint64).reshape(count, 2).copy()
    words[:, 1] &= np.uint64((1 << (DIMENSION - 64)) - 1)
    return words


def challenge_words(session: bytes, batch: int, seed: bytes, rows: int, suite: Suite = STANDARD) -> np.ndarray:
    """``uint64`` coefficient words for a batch of ``rows`` real rows plus ``S`` check rows.

    Length ``round_up(rows + S, 8)``: 40 random bits per real row, ``1 << l`` for check row
    ``l``, zero for the padding rows.
    """
    if len(seed) != SEED_BYTES:
        raise MalformedMessage("OT check challenge has the wrong length")
    total = round_up(rows + S, 8)
    key = derive_key(b"oos17-challenge", session, batch.to_bytes(8, "big"), seed, suite=suite)
    stream = suite.ctr(key)
    words = np.zeros(total, dtype=np.uint64)
    if rows:
        raw = np.empty(8 * rows + 16, dtype=np.uint8)
        stream.update_into(bytes(8 * rows), raw)
        words[:rows] = raw[: 8 * rows].view(np.uint64) & _MASK
    words[rows : rows + S] = np.uint64(1) << np.arange(S, dtype=np.uint64)
    return words


def combine_columns(columns: np.ndarray, words: np.ndarray) -> np.ndarray:
    """For a bit matrix given by its columns (``uint8 (W, L)``, bit ``j`` of a column = row
    ``j``) and one coefficient word per row (``uint64 (8L,)``), return ``uint8 (S, W/8)``: row
    ``l`` is the XOR of the matrix rows ``j`` whose word has bit ``l`` set.

    Method of the four Russians over the rows: for each 8-row group a table of the 256 XORs of
    its 8 words; each column byte then picks its entry, and a column's result is the XOR of its
    picks (a ``W × S`` bit matrix, transposed at the end).
    """
    width, length = columns.shape
    if words.shape != (8 * length,) or width % 8:
        raise ValueError("coefficient words do not match the matrix")
    per_column = np.zeros(width, dtype=np.uint64)
    grouped = words.reshape(length, 8)
    offsets = (np.arange(_SPAN, dtype=np.intp) * 256)[None, :]
    index = np.empty((width, min(_SPAN, length)), dtype=np.intp)
    for lo in range(0, length, _SPAN):
        hi = min(lo + _SPAN, length)
        table = np.zeros((hi - lo, 256), dtype=np.uint64)
        for bit in range(8):
            size = 1 << bit
            np.bitwise_xor(table[:, :size], grouped[lo:hi, bit : bit + 1], out=table[:, size : 2 * size])
        picks = index[:, : hi - lo]
        np.add(columns[:, lo:hi], offsets[:, : hi - lo], out=picks, casting="unsafe")
        per_column ^= np.bitwise_xor.reduce(np.take(table.reshape(-1), picks, mode="clip"), axis=1)
    # per_column[i] bit l = result row l, bit i  →  transpose the (W × 64) bit matrix
    bits = transpose(per_column.view(np.uint8).reshape(width, 8))  # (64, W/8)
    return bits[:S]


def _message_columns(messages: np.ndarray, padded: int) -> np.ndarray:
    data = np.zeros((padded, 16), dtype=np.uint8)
    data[: messages.shape[0]] = np.ascontiguousarray(messages, dtype=np.uint64).view(np.uint8).reshape(-1, 16)
    return transpose(data[:, :WORD_BYTES].copy())  # (80, padded/8)


def receiver_response(t_columns: np.ndarray, messages: np.ndarray, words: np.ndarray) -> bytes:
    """The receiver's answer ``(t̃_l ‖ w̃_l)`` for ``l < S``.

    ``t_columns``: the batch's ``T`` columns (``uint8 (512, L)``, check rows included);
    ``messages``: its code inputs ``uint64 (rows + S, 2)``; ``words``: :func:`challenge_words`.
    """
    padded = t_columns.shape[1] * 8
    stacked = np.concatenate([t_columns, _message_columns(messages, padded)])
    return combine_columns(stacked, words).tobytes()


def sender_expected(q_columns: np.ndarray, words: np.ndarray) -> np.ndarray:
    """``q̃`` (``uint8 (S, 64)``) from the sender's ``Q`` columns of the batch."""
    return combine_columns(q_columns, words)


def verify(expected_q: np.ndarray, response: bytes, masked_code: BchCode) -> None:
    """Check ``t̃_l ⊕ q̃_l = C(w̃_l) ∧ Δ`` for every ``l``; raise :class:`CheatingDetected` if not.

    ``masked_code`` encodes ``C(·) ∧ Δ`` (:meth:`BchCode.masked`).
    """
    if len(response) != RESPONSE_BYTES:
        raise MalformedMessage("OT check answer has the wrong length")
    answer = np.frombuffer(response, dtype=np.uint8).reshape(S, ROW_BYTES + WORD_BYTES)
    combined = np.zeros((S, 16), dtype=np.uint8)
    combined[:, :WORD_BYTES] = answer[:, ROW_BYTES:]
    verify_sums(answer[:, :ROW_BYTES], expected_q, combined.view(np.uint64), masked_code, "OT check answer")


def verify_sums(t_sums: np.ndarray, q_sums: np.ndarray, w_sums: np.ndarray, masked_code: BchCode,
                context: str) -> None:
    """The comparison of the check, for any message layout: ``t̃_l ⊕ q̃_l = C(w̃_l) ∧ Δ`` for
    every ``l`` in one constant-time comparison, after refusing a ``w̃_l`` of more than 76 bits.

    ``t_sums`` (the peer's), ``q_sums`` (own): ``uint8 (k, 64)``; ``w_sums``: ``uint64 (k, 2)``;
    ``masked_code`` encodes ``C(·) ∧ Δ``; ``context`` starts the error message. Raises
    :class:`CheatingDetected` (exit 4).
    """
    if (w_sums[:, 1] >> np.uint64(DIMENSION - 64)).any():
        raise CheatingDetected(f"{context}: a combined word is out of range (more than {DIMENSION} bits)")
    lhs = (np.asarray(t_sums, dtype=np.uint8) ^ np.asarray(q_sums, dtype=np.uint8)).tobytes()
    rhs = masked_code.encode(w_sums).tobytes()
    if not hmac.compare_digest(lhs, rhs):
        raise CheatingDetected(f"{context}: OT-extension consistency check failed (OOS17): the peer's rows are not code words")


# -- the same check for IKNP's repetition code (C(b) = b·1^128), as in KOS15 ----------------------


def repetition_response(t_columns: np.ndarray, choices: np.ndarray, words: np.ndarray) -> bytes:
    """IKNP receiver's answer: ``t̃_l`` (16 bytes) and ``x̃_l`` (one byte, 0 or 1) per check.

    ``t_columns``: ``uint8 (128, L)``; ``choices``: the batch's choice bits (check rows included).
    """
    length = t_columns.shape[1]
    choice_columns = np.zeros((8, length), dtype=np.uint8)
    packed = np.packbits(np.asarray(choices, dtype=np.uint8), bitorder="little")
    choice_columns[0, : packed.size] = packed
    return combine_columns(np.concatenate([t_columns, choice_columns]), words).tobytes()


def repetition_verify(expected_q: np.ndarray, response: bytes, delta: np.ndarray) -> None:
    """Check ``t̃_l ⊕ q̃_l = x̃_l·Δ`` for every ``l`` (``delta``: 16 bytes); raise
    :class:`CheatingDetected` if not."""
    if len(response) != REPETITION_RESPONSE_BYTES:
        raise MalformedMessage("OT check answer has the wrong length")
    answer = np.frombuffer(response, dtype=np.uint8).reshape(S, 17)
    bits = answer[:, 16]
    if (bits > 1).any():
        raise CheatingDetected("OT check answer holds a malformed choice bit")
    lhs = (answer[:, :16] ^ expected_q).tobytes()
    rhs = (bits[:, None] * np.asarray(delta, dtype=np.uint8)[None, :]).astype(np.uint8).tobytes()
    if not hmac.compare_digest(lhs, rhs):
        raise CheatingDetected("peer failed the OT-extension consistency check (KOS15): its rows are not consistent")
