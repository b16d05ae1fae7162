"""pandas DataFrames in and out (for notebooks); pandas is never imported by psiq itself.

A DataFrame input goes through the same key pipeline as a CSV file (missing values count as
empty keys). :class:`FrameSink` collects the aligned rows into a new DataFrame whose index is the
aligned position: row ``i`` of both parties' frames belongs to the same customer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import InputError, UsageError
from ..normalize import Normalization
from ..records import DEDUP_POLICIES, KeyTable, _Collector

__all__ = ["FrameSink", "FrameKeyTable", "read_frame_keys", "frame_rows", "is_frame_table"]

_BATCH = 65_536


@dataclass(eq=False)
class FrameKeyTable(KeyTable):
    """A :class:`KeyTable` read from a DataFrame (rows numbered by position, not by index label)."""

    frame: Any = None

    def summary(self) -> dict[str, Any]:
        summary = super().summary()
        summary["file"] = "DataFrame"
        summary["format"] = "dataframe"
        return summary


def is_frame_table(table: Any) -> bool:
    return isinstance(table, FrameKeyTable)


def _values(series: Any) -> list[Any]:
    return series.astype(object).where(series.notna(), None).tolist()


def read_frame_keys(frame: Any, on: Sequence[str], *, normalization: Normalization | None = None,
                    dedup: str = "error", skip_empty: bool = False, progress: Callable[[int], None] | None = None,
                    fmt: str | None = None) -> FrameKeyTable:
    """The key columns ``on`` of a pandas DataFrame, normalised exactly as for CSV."""
    from .sql import add_rows

    on = list(on)
    if not on:
        raise UsageError("at least one key column is needed (on=)")
    if dedup not in DEDUP_POLICIES:
        raise UsageError(f"unknown dedup policy {dedup!r} (known: {', '.join(DEDUP_POLICIES)})")
    header = [str(c) for c in frame.columns]
    if len(set(header)) != len(header):
        raise InputError("DataFrame: column names repeat")
    for column in on:
        if column not in header:
            raise InputError(f"DataFrame: no key column {column!r}; the columns are: {', '.join(map(repr, header[:20]))}")
    normalization = normalization or Normalization()
    collector = _Collector("DataFrame", on, normalization, dedup, skip_empty, "row")
    positions = [header.index(c) for c in on]
    total = len(frame)
    for begin in range(0, total, _BATCH):
        part = frame.iloc[begin : begin + _BATCH]
        columns = [_values(part.iloc[:, p]) for p in positions]
        add_rows(collector, begin, list(zip(*columns)))
        if progress is not None:
            progress(min(total, begin + _BATCH))
    return FrameKeyTable(
        path=Path("DataFrame"), fmt="dataframe", header=header, on=on, columns=positions,
        normalization=normalization, dedup=dedup, keys=collector.keys,
        row_numbers=np.frombuffer(collector.row_numbers, dtype=np.int64).copy(),
        row_keys=np.frombuffer(collector.row_keys, dtype=np.int64).copy(),
        rows_read=total, duplicate_rows=collector.duplicates, skipped_rows=collector.skipped, frame=frame,
    )


def frame_rows(table: FrameKeyTable, order: np.ndarray) -> tuple[list[str], None, Iterator[Any], np.ndarray]:
    """Rows of the frame for the aligned output, in the shape :mod:`psi.io.sink` consumes."""
    from .sql import _Placement

    placement = _Placement(order)
    frame = table.frame
    if len(frame) != table.rows_read:
        raise InputError("DataFrame: its length changed during the run")

    def batches() -> Iterator[tuple[np.ndarray, list[Any]]]:
        for begin in range(0, len(placement.positions), _BATCH):
            positions = placement.positions[begin : begin + _BATCH]
            part = frame.iloc[placement.rows[begin : begin + _BATCH]]
            columns = [_values(part.iloc[:, i]) for i in range(part.shape[1])]
            yield positions, list(zip(*columns))

    return list(table.header), None, batches(), placement.empty


class FrameSink:
    """Collects the aligned rows as a DataFrame in :attr:`frame` (index = aligned position).

    >>> sink = FrameSink()
    >>> # api.connect(df, on=["id"], ..., output=sink); sink.frame
    """

    def __init__(self) -> None:
        self.frame: Any = None

    def __str__(self) -> str:
        return "DataFrame"

    def write(self, table: Any, order: np.ndarray) -> int:
        try:
            import pandas as pd
        except ImportError:
            raise UsageError("a DataFrame output needs pandas (pip install pandas)") from None
        from .sink import _rows_of

        order = np.asarray(order, dtype=np.int64)
        header, _types, batches, _empty = _rows_of(table, order)
        rows: list[Any] = [None] * len(order)
        for positions, picked in batches:
            for position, row in zip(positions.tolist(), picked):
                rows[position] = row
        blank = (None,) * len(header)
        self.frame = pd.DataFrame([blank if row is None else row for row in rows], columns=header)
        return len(order)


def write_frame_file(table: FrameKeyTable, order: np.ndarray, output: str | os.PathLike[str]) -> int:
    """Aligned rows of a DataFrame input into a CSV/TSV file (atomic, mode 0600)."""
    from ..atomic import AtomicFile
    from ..records import detect_format

    out = Path(output)
    fmt = detect_format(out)
    sink = FrameSink()
    sink.write(table, order)
    with AtomicFile(out) as handle:
        if fmt == "parquet":
            sink.frame.to_parquet(handle, index=False)
        else:
            handle.write(sink.frame.to_csv(index=False, sep="\t" if fmt == "tsv" else ",").encode("utf-8"))
    return len(order)
