"""Aligned output after a both-reveal PSI run: SQL-style joins written row for row.

After a PSI run in ``both`` mode each party holds ``PsiOutcome.indices``: positions of its
unique keys in the intersection, in an order both share. :class:`AlignmentExchange` is a small
sans-IO party pair, run with the same driver right after the PSI protocol, that swaps the few
numbers a join needs; its result is the row order to hand to :func:`psi.records.write_rows`.
Row ``i`` of the client's output and row ``i`` of the server's output carry the same key (or
one of them is an empty row, for outer joins).

Join types (``inner``, ``left``, ``right``, ``full``; SecretFlow's ``advanced_join_type``)
name one party the *left* side, explicitly ``client`` or ``server``. Output order:

1. matched keys, in the shared order. With ``--dedup keep-all`` a key with ``a`` rows on the
   left and ``b`` rows on the right gives ``a*b`` rows on both sides (SQL semantics), in
   left-major order: pair ``j`` of the block is left row ``j // b`` and right row ``j % b``,
   each side's rows of one key taken in file order;
2. ``left`` and ``full``: the left side's unmatched rows in its file order; the right side
   writes as many empty rows;
3. ``right`` and ``full``: the right side's unmatched rows in its file order; the left side
   writes as many empty rows.

Message flow (both sides send at once, then read the peer's)::

    align.info    JSON {join, left, matched, multi, unmatched}
    align.counts  u32 list, one row count per matched key, in the shared order
                  (only when "multi": this side keeps several rows for some matched key)

What each side learns beyond the PSI result itself:

* ``multi`` / ``align.counts``: how many rows the peer holds for each *matched* key — only
  when the peer runs ``keep-all`` and really has duplicates among matched keys;
* ``unmatched``: the peer's number of unmatched rows, sent only when this side must write
  that many empty rows (right side of ``left``, left side of ``right``, both for ``full``).
  It is the peer's row count minus the matched rows, which the sizes exchanged in the
  handshake already give away when the peer has no duplicates;
* nothing about the peer's unmatched *keys* or row contents, in any join type.

Every received value is checked: exact JSON fields, join settings equal to ours, the matched
count equal to ours, counts in ``1..2^32-1`` and exactly one per matched key, and the
resulting output size under ``max_output_rows`` so a peer cannot make us write an unbounded
file. See ``docs/ALIGNMENT.md`` for the table and other platforms' option names.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import MalformedMessage, ParameterMismatch, PolicyError, ProtocolStateError, UsageError
from .messages import Message, pack_json, unpack_json
from .protocols.base import Party, PsiOutcome, Role
from .records import KeyTable

__all__ = ["JOIN_TYPES", "Alignment", "AlignmentExchange", "check_output_cap", "compute_row_order", "sends_unmatched"]

JOIN_TYPES = ("inner", "left", "right", "full")
INFO_KIND = "align.info"
COUNTS_KIND = "align.counts"
_U32_MAX = 2**32 - 1
_INFO_FIELDS = {"join", "left", "matched", "multi", "unmatched"}
DEFAULT_MAX_OUTPUT_ROWS = 2_000_000_000


@dataclass(frozen=True)
class Alignment:
    """One side's aligned output: ``rows`` (int64, ``-1`` = empty row) for ``write_rows``."""

    rows: np.ndarray
    join: str
    left: Role
    matched_rows: int
    own_unmatched_rows: int
    empty_rows: int

    def row_order(self) -> list[int | None]:
        """``rows`` as a list with ``None`` for empty rows."""
        return [None if r < 0 else r for r in self.rows.tolist()]

    def summary(self) -> dict[str, Any]:
        return {
            "join": self.join,
            "left": self.left.value,
            "output_rows": int(len(self.rows)),
            "matched_rows": self.matched_rows,
            "own_unmatched_rows": self.own_unmatched_rows,
            "empty_rows": self.empty_rows,
        }


def _check_join(join: str, left: Role | str) -> tuple[str, Role]:
    if join not in JOIN_TYPES:
        raise UsageError(f"unknown join type {join!r} (known: {', '.join(JOIN_TYPES)})")
    try:
        return join, Role(left)
    except ValueError:
        raise UsageError(f"the left side must be 'client' or 'server', not {left!r}") from None


def _check_indices(indices: Any, table: KeyTable) -> np.ndarray:
    if indices is None:
        raise UsageError("aligned output needs the intersection on both sides (--reveal both)")
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= table.unique_keys):
        raise UsageError("PSI outcome indices are out of range for this key table")
    ordered = np.sort(idx)  # not np.unique: a hash table in numpy 2.4, ~50x slower at 2^20
    if ordered.size > 1 and not (ordered[1:] != ordered[:-1]).all():
        raise UsageError("PSI outcome indices repeat")
    return idx


def sends_unmatched(is_left: bool, join: str) -> bool:
    """Whether the side (left or right of the join) writes its unmatched rows."""
    return join == "full" or (join == "left" and is_left) or (join == "right" and not is_left)


def check_output_cap(matched: float, own_tail: int, peer_tail: int, cap: int) -> None:
    """:class:`PolicyError` if the aligned output would exceed ``cap`` rows."""
    if matched + own_tail + peer_tail > cap:
        raise PolicyError(f"aligned output would have {int(matched) + own_tail + peer_tail} rows, more than the cap of {cap}")


def compute_row_order(
    table: KeyTable,
    indices: Any,
    peer_counts: np.ndarray | None,
    *,
    is_left: bool,
    join: str,
    peer_unmatched: int = 0,
    max_output_rows: int = DEFAULT_MAX_OUTPUT_ROWS,
) -> tuple[np.ndarray, int, int, int]:
    """The row order for one side; returns (rows, matched rows, own unmatched, empty rows).

    ``peer_counts[i]`` is the peer's row count for the ``i``-th matched key (``None`` = all 1);
    ``peer_unmatched`` the peer's unmatched rows (used for outer joins only). Pure function:
    the exchange calls it once it has the peer's numbers.
    """
    idx = _check_indices(indices, table)
    offsets, grouped = table.groups()
    own = offsets[idx + 1] - offsets[idx]
    peer = np.ones(len(idx), dtype=np.int64) if peer_counts is None else np.asarray(peer_counts, dtype=np.int64)
    if len(peer) != len(idx):
        raise MalformedMessage("peer row counts do not match the intersection size")
    right = peer if is_left else own
    block = own * peer
    matched = float(block.astype(np.float64).sum())
    mask = np.zeros(table.unique_keys, dtype=bool)
    mask[idx] = True
    unmatched_rows = table.row_numbers[~mask[table.row_keys]]
    own_tail = len(unmatched_rows) if sends_unmatched(is_left, join) else 0
    peer_tail = peer_unmatched if sends_unmatched(not is_left, join) else 0
    check_output_cap(matched, own_tail, peer_tail, max_output_rows)
    total = int(block.sum())
    key_of = np.repeat(np.arange(len(idx), dtype=np.int64), block)
    block_start = np.cumsum(block) - block
    pair = np.arange(total, dtype=np.int64) - block_start[key_of]
    own_position = pair // right[key_of] if is_left else pair % right[key_of]
    rows = grouped[offsets[idx][key_of] + own_position]
    parts = [rows]
    empty = 0
    for side_is_left in (True, False):
        if not sends_unmatched(side_is_left, join):
            continue
        if side_is_left == is_left:
            parts.append(unmatched_rows)
        else:
            parts.append(np.full(peer_unmatched, -1, dtype=np.int64))
            empty += peer_unmatched
    return np.concatenate(parts).astype(np.int64, copy=False), total, own_tail, empty


class _State(enum.Enum):
    """``SEND`` -> ``WAIT_INFO`` -> (``WAIT_COUNTS`` when the peer is multi) -> ``DONE``."""

    SEND = "send"
    WAIT_INFO = "wait-info"
    WAIT_COUNTS = "wait-counts"
    DONE = "done"


class AlignmentExchange(Party):
    """Swap the numbers a join needs; :meth:`result` is this side's :class:`Alignment`.

    ``role`` is this side's PSI role, ``outcome`` its both-reveal :class:`PsiOutcome` and
    ``key_table`` the table whose ``keys`` were the PSI input. ``join`` and ``left`` must equal
    the peer's (checked; they belong in the handshake params too).
    """

    def __init__(
        self,
        role: Role | str,
        outcome: PsiOutcome,
        key_table: KeyTable,
        join: str = "inner",
        left: Role | str = Role.CLIENT,
        *,
        max_output_rows: int = DEFAULT_MAX_OUTPUT_ROWS,
    ) -> None:
        super().__init__()
        self.role = Role(role)
        self.join, self.left = _check_join(join, left)
        self.table = key_table
        self.indices = _check_indices(outcome.indices, key_table)
        self.is_left = self.role == self.left
        self.max_output_rows = max_output_rows
        offsets, _rows = key_table.groups()
        self._own_counts = offsets[self.indices + 1] - offsets[self.indices]
        self._peer_multi = False
        self._peer_unmatched = 0
        self._peer_counts: np.ndarray | None = None
        self._result: Alignment | None = None
        self._state = _State.SEND
        self._set_phase("align")

    # -- messages --------------------------------------------------------------------------
    def _produce(self) -> None:
        if self._state is not _State.SEND:
            return
        multi = bool(len(self._own_counts) and self._own_counts.max() > 1)
        unmatched = None
        if sends_unmatched(self.is_left, self.join):
            unmatched = int(self.table.row_numbers.size - self._own_counts.sum())
        info = {"join": self.join, "left": self.left.value, "matched": int(len(self.indices)),
                "multi": multi, "unmatched": unmatched}
        self._send(INFO_KIND, pack_json(info))
        if multi:
            if self._own_counts.max() > _U32_MAX:
                raise UsageError("a key has more rows than the alignment exchange can express")
            body = struct.pack(">I", len(self._own_counts)) + self._own_counts.astype(">u4").tobytes()
            self._send(COUNTS_KIND, body)
        self._state = _State.WAIT_INFO

    def _handle(self, message: Message) -> None:
        if self._state is _State.WAIT_INFO and message.kind == INFO_KIND:
            self._read_info(message.body)
            if self._peer_multi:
                self._state = _State.WAIT_COUNTS
            else:
                self._complete()
        elif self._state is _State.WAIT_COUNTS and message.kind == COUNTS_KIND:
            self._peer_counts = self._read_counts(message.body)
            self._complete()
        else:
            raise self._unexpected(message, self._state.value)

    def _read_info(self, body: bytes) -> None:
        info = unpack_json(body, max_size=4096)
        if set(info) != _INFO_FIELDS:
            raise MalformedMessage("alignment info has missing or extra fields")
        if info["join"] != self.join or info["left"] != self.left.value:
            raise ParameterMismatch(
                f"join settings differ from the peer's (ours: {self.join}, left={self.left.value};"
                f" peer: {info['join']!r}, left={info['left']!r})"
            )
        matched = info["matched"]
        if type(matched) is not int or matched != len(self.indices):
            raise MalformedMessage(f"peer reports {matched!r} matched keys, this side has {len(self.indices)}")
        if type(info["multi"]) is not bool:
            raise MalformedMessage("alignment info field 'multi' is not a boolean")
        self._peer_multi = info["multi"]
        unmatched = info["unmatched"]
        if sends_unmatched(not self.is_left, self.join):
            if type(unmatched) is not int or not 0 <= unmatched <= _U32_MAX:
                raise MalformedMessage("peer's unmatched row count is missing or out of range")
            self._peer_unmatched = unmatched
        elif unmatched is not None:
            raise MalformedMessage("peer sent an unmatched row count this join does not use")

    def _read_counts(self, body: bytes) -> np.ndarray:
        expected = len(self.indices)
        if len(body) != 4 + 4 * expected or struct.unpack_from(">I", body)[0] != expected:
            raise MalformedMessage(f"row counts message does not hold exactly {expected} counts")
        counts = np.frombuffer(body, dtype=">u4", offset=4).astype(np.int64)
        if len(counts) and counts.min() < 1:
            raise MalformedMessage("peer sent a zero row count for a matched key")
        return counts

    def _complete(self) -> None:
        rows, matched, own_tail, empty = compute_row_order(
            self.table,
            self.indices,
            self._peer_counts,
            is_left=self.is_left,
            join=self.join,
            peer_unmatched=self._peer_unmatched,
            max_output_rows=self.max_output_rows,
        )
        self._result = Alignment(rows, self.join, self.left, matched, own_tail, empty)
        self._state = _State.DONE
        self._finish()

    def result(self) -> Alignment:
        self._require_finished()
        if self._result is None:  # pragma: no cover - _finish() is only called with a result
            raise ProtocolStateError("alignment finished without a result")
        return self._result
