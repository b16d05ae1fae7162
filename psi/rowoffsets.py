"""Where each data record of a CSV/TSV file is, kept compactly between reading and writing.

:func:`psi.records.read_keys` records every row's byte range while it reads (``KeyTable.offsets``)
and :func:`psi.records.write_rows` copies rows by those ranges without scanning the file again
(test ``test_write_rows_uses_the_recorded_offsets_without_scanning_again``). It trusts them while
the file's size and modification time are unchanged: on a file system with coarse timestamps an
edit that keeps the size between the read and the write would go unnoticed.
About 2 bytes per row are kept for the session; the writer expands them to 8 bytes per row (the
starts) while it writes. ``tests/test_records.py`` and ``tests/test_records_fast.py`` check the
output against a writer that scans the file with the csv module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RowOffsets"]


class RowOffsets:
    """Where each data record of a CSV/TSV file is, in about 2 bytes per record: its length
    (uint16; longer records listed apart) and, for the few records that do not start where the
    previous one ended (the first, and any after blank lines), the gap. Recorded by
    :func:`read_keys` (``KeyTable.offsets``) so that :func:`write_rows` need not scan the file
    again; it does anyway when the file's size or modification time differ from ``stat``.
    Also carries what the writer copies besides rows: BOM, header line, line ending, width."""

    _LONG = 0xFFFF

    def __init__(self) -> None:
        self._lengths: list[np.ndarray] = []
        self._long: list[tuple[np.ndarray, np.ndarray]] = []
        self._gaps: list[tuple[np.ndarray, np.ndarray]] = []
        self._end = 0
        self.count = 0
        self.stat: tuple[int, int] | None = None
        self.bom = self.header_bytes = b""
        self.newline = b"\n"
        self.width = 0
        self.lengths = np.empty(0, dtype=np.uint16)
        self.long_rows = self.long_lengths = self.gap_rows = self.gap_sizes = np.empty(0, dtype=np.int64)

    def add(self, starts: np.ndarray, ends: np.ndarray) -> None:
        n = len(starts)
        if not n:
            return
        lengths = ends - starts
        previous = np.empty(n, dtype=np.int64)
        previous[0] = self._end
        previous[1:] = ends[:-1]
        gaps = np.flatnonzero(starts != previous)
        if len(gaps):
            self._gaps.append((gaps + self.count, starts[gaps] - previous[gaps]))
        long = np.flatnonzero(lengths >= self._LONG)
        if len(long):
            self._long.append((long + self.count, lengths[long]))
        self._lengths.append(np.minimum(lengths, self._LONG).astype(np.uint16))
        self._end = int(ends[-1])
        self.count += n

    def finish(self, scan: Any) -> "RowOffsets":
        """Freeze the recorded rows; ``scan`` (the reader's scan) gives BOM, header, line ending, width."""
        self.bom, self.header_bytes, self.newline, self.width = scan.bom, scan.header_bytes, scan.newline, len(scan.header)
        if self._lengths:
            self.lengths = np.concatenate(self._lengths)
        for name, parts in (("long", self._long), ("gap", self._gaps)):
            if parts:
                rows, values = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
                setattr(self, f"{name}_rows", rows.astype(np.int64))
                setattr(self, f"{name}_lengths" if name == "long" else "gap_sizes", values.astype(np.int64))
        self._lengths, self._long, self._gaps = [], [], []
        return self

    def starts(self) -> np.ndarray:
        """Start of every record (int64, 8 bytes per record, built on demand)."""
        starts = np.empty(self.count, dtype=np.int64)
        if not self.count:
            return starts
        starts[0] = 0
        starts[1:] = self.lengths[:-1]
        inner = self.long_rows[self.long_rows < self.count - 1]
        starts[inner + 1] = self.long_lengths[: len(inner)]
        starts[self.gap_rows] += self.gap_sizes
        np.cumsum(starts, out=starts)
        return starts

    def length_of(self, rows: np.ndarray) -> np.ndarray:
        lengths = self.lengths[rows].astype(np.int64)
        if len(self.long_rows):
            at = np.minimum(np.searchsorted(self.long_rows, rows), len(self.long_rows) - 1)
            hit = self.long_rows[at] == rows
            lengths[hit] = self.long_lengths[at[hit]]
        return lengths
