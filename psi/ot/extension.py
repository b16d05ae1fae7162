"""The OT-extension matrix shared by IKNP (width 128), 1-out-of-N OT and KKRT (width 512).

Roles are those of the extension, the reverse of the base OTs:

* the **extension receiver** ran the base OTs as *sender* and holds ``w`` seed pairs
  ``(k_j^0, k_j^1)``. For a batch of ``m`` rows with code words ``C_r`` (``w`` bits each) it
  expands ``T_j = G(k_j^0)`` and ``U_j = T_j ⊕ G(k_j^1) ⊕ column_j(C)``, sends ``U`` and keeps
  the rows ``t_r`` of ``T`` (after a bit transpose);
* the **extension sender** ran them as *receiver* with choice bits ``s`` and holds
  ``k_j^{s_j}``. From ``U`` it gets ``Q_j = G(k_j^{s_j}) ⊕ s_j·U_j``, i.e. rows
  ``q_r = t_r ⊕ (C_r ∧ s)``.

IKNP uses the repetition code (``C_r`` = all ones when the choice bit is 1, else zeros), so a
row pad is ``H(r, q_r)`` or ``H(r, q_r ⊕ s)``; KK13/KKRT use the linear [511, 76] BCH code of
:mod:`psi.ot.bch`, and ``H(r, q_r ⊕ (C(x) ∧ s))`` is the OPRF of ``x`` at row ``r``. Both
need the consistency check of :mod:`psi.ot.oos` against a receiver that sends non-code words
(the ``columns=`` options return the column form that check works on). Batch row counts are
rounded up to a multiple of 8 (whole bytes); both sides round identically and drop the extra
rows.
"""

from __future__ import annotations

import numpy as np

from ..errors import MalformedMessage
from ..crypto.suite import STANDARD, Suite
from .aes_hash import RowPrg
from .bitmatrix import round_up, transpose

__all__ = ["ExtensionReceiver", "ExtensionSender", "padded_rows"]


def padded_rows(rows: int) -> int:
    """Rows actually expanded for a batch of ``rows`` (a multiple of 8)."""
    return round_up(max(rows, 1), 8)


class ExtensionReceiver:
    """Holds ``w`` base-OT seed pairs; turns code words into corrections (see module doc)."""

    def __init__(self, keys0: np.ndarray, keys1: np.ndarray, offset: int = 0, suite: Suite = STANDARD) -> None:
        """``offset``: bytes of every seed's stream already used (see :class:`RowPrg`)."""
        if keys0.shape != keys1.shape or keys0.shape[0] % 8:
            raise ValueError("seed arrays must match and hold a multiple of 8 seeds")
        self.width = keys0.shape[0]
        self._prg0 = RowPrg(keys0, offset, suite)
        self._prg1 = RowPrg(keys1, offset, suite)

    def _expand(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        length = padded_rows(rows) // 8
        t_cols = self._prg0.fill(np.empty((self.width, length), dtype=np.uint8))
        u_cols = self._prg1.fill(np.empty((self.width, length), dtype=np.uint8))
        np.bitwise_xor(u_cols, t_cols, out=u_cols)
        return t_cols, u_cols

    def extend_choices(self, choice_bits: np.ndarray, *, columns: bool = False):
        """Repetition code: ``choice_bits`` (0/1, one per row) → (``t`` rows, wire ``U``)
        [, ``T`` columns with ``columns=True``]."""
        rows = choice_bits.size
        t_cols, u_cols = self._expand(rows)
        packed = np.packbits(choice_bits.astype(np.uint8), bitorder="little")
        u_cols[:, : packed.size] ^= packed[None, :]
        if columns:
            return transpose(t_cols)[:rows], u_cols.tobytes(), t_cols
        return transpose(t_cols)[:rows], u_cols.tobytes()

    def extend_codewords(self, codewords: np.ndarray, *, columns: bool = False):
        """General code: ``codewords`` ``uint8 (rows, w/8)`` → (``t`` rows, wire ``U``).

        With ``columns=True`` also the ``T`` columns ``uint8 (w, padded/8)`` (for the OOS17
        check of :mod:`psi.ot.oos`) as a third element.
        """
        rows = codewords.shape[0]
        if codewords.shape[1] * 8 != self.width:
            raise ValueError("code word width does not match the extension width")
        t_cols, u_cols = self._expand(rows)
        padded = np.zeros((padded_rows(rows), self.width // 8), dtype=np.uint8)
        padded[:rows] = codewords
        np.bitwise_xor(u_cols, transpose(padded), out=u_cols)
        if columns:
            return transpose(t_cols)[:rows], u_cols.tobytes(), t_cols
        return transpose(t_cols)[:rows], u_cols.tobytes()


class ExtensionSender:
    """Holds ``k_j^{s_j}`` and ``s``; turns the receiver's ``U`` into rows ``q``."""

    def __init__(self, keys: np.ndarray, secret_bits: np.ndarray, offset: int = 0, suite: Suite = STANDARD) -> None:
        self.width = keys.shape[0]
        if self.width % 8 or secret_bits.size != self.width:
            raise ValueError("secret must have one bit per seed (a multiple of 8)")
        self._prg = RowPrg(keys, offset, suite)
        self._mask = secret_bits.astype(bool)
        self.secret = np.packbits(secret_bits.astype(np.uint8), bitorder="little")  # (w/8,)

    def wire_size(self, rows: int) -> int:
        return self.width * padded_rows(rows) // 8

    def extend(self, rows: int, wire: bytes) -> np.ndarray:
        """Rows ``q`` (``uint8 (rows, w/8)``) from the receiver's correction message."""
        return transpose(self.extend_columns(rows, wire))[:rows]

    def extend_columns(self, rows: int, wire: bytes) -> np.ndarray:
        """The ``Q`` columns ``uint8 (w, padded/8)`` (padding rows included) of a batch."""
        if len(wire) != self.wire_size(rows):
            raise MalformedMessage("OT extension correction has the wrong length")
        length = padded_rows(rows) // 8
        u_cols = np.frombuffer(wire, dtype=np.uint8).reshape(self.width, length)
        q_cols = self._prg.fill(np.empty((self.width, length), dtype=np.uint8))
        q_cols[self._mask] ^= u_cols[self._mask]
        return q_cols
