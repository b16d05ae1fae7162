"""The outer-join tails of a bucketed session, agreed without a per-row array.

The unbucketed session learns the peer's unmatched row count from the alignment exchange
(:class:`psi.alignment.AlignmentExchange`) and builds the whole row order. A bucketed session
at 10^8 rows must not: :class:`TailExchange` sends and checks exactly the same messages (an
exchange with no matched keys, as the previous bucketed version did) but keeps only counts,
and :meth:`TailExchange.segments` says what follows the matched rows: this side's unmatched
rows in file order and/or runs of empty rows, in the order of ``compute_row_order``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..alignment import DEFAULT_MAX_OUTPUT_ROWS, AlignmentExchange, check_output_cap, sends_unmatched
from ..errors import ProtocolStateError
from ..normalize import Normalization
from ..protocols.base import PsiOutcome, Role
from ..records import KeyTable
from .output import Segment

__all__ = ["TailExchange", "sends_unmatched"]


class TailExchange(AlignmentExchange):
    """The tail part of an alignment exchange for ``own_unmatched`` rows (see module doc)."""

    def __init__(self, role: Role | str, own_unmatched: int, join: str, left: Role | str, *, matched_rows: int,
                 max_output_rows: int = DEFAULT_MAX_OUTPUT_ROWS) -> None:
        # a table whose only use is its row count: a zero-stride array of own_unmatched rows
        table = KeyTable(path=Path("-"), fmt="csv", header=[], on=[], columns=[], normalization=Normalization(),
                         dedup="keep-all", keys=[b"\x00"],
                         row_numbers=np.broadcast_to(np.int64(0), (int(own_unmatched),)),
                         row_keys=np.zeros(0, dtype=np.int64), rows_read=0, duplicate_rows=0, skipped_rows=0)
        super().__init__(role, PsiOutcome([], None), table, join, left, max_output_rows=max_output_rows)
        self.own_unmatched = int(own_unmatched)
        self.matched_rows = int(matched_rows)
        self._segments: list[Segment] | None = None

    def _complete(self) -> None:
        own_tail = self.own_unmatched if sends_unmatched(self.is_left, self.join) else 0
        peer_tail = self._peer_unmatched if sends_unmatched(not self.is_left, self.join) else 0
        check_output_cap(self.matched_rows, own_tail, peer_tail, self.max_output_rows)
        segments = []
        for side_is_left in (True, False):
            if sends_unmatched(side_is_left, self.join):
                segments.append(Segment("own") if side_is_left == self.is_left else Segment("empty", peer_tail))
        self._segments = segments
        self._own_tail, self._empty = own_tail, peer_tail
        self._state = type(self._state).DONE
        self._finish()

    def segments(self) -> list[Segment]:
        """What follows the matched rows, in output order."""
        self._require_finished()
        if self._segments is None:  # pragma: no cover
            raise ProtocolStateError("tail exchange finished without a result")
        return self._segments

    def counts(self) -> tuple[int, int]:
        """(own unmatched rows written, empty rows written)."""
        self._require_finished()
        return self._own_tail, self._empty

    def result(self) -> Any:  # the per-row order is exactly what this class avoids building
        raise ProtocolStateError("TailExchange has segments(), not a row order")
