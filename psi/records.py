"""Reading key columns from customer files, and writing selected rows back out.

Two streaming passes, never the whole file in memory:

* :func:`read_keys` reads only the key columns and keeps, per unique key, its encoded bytes
  and the row numbers that carry it (numpy arrays, 16 bytes per kept row). Rows themselves
  are not kept.
* :func:`write_rows` copies rows out in any order: for CSV/TSV one pass records each row's
  byte range, then rows are copied byte for byte from a memory map (quoting, number formats
  and spacing are preserved exactly); for Parquet the needed row groups are read chunk by
  chunk. Output is atomic: a temporary file in the target directory, ``os.replace`` at the end.

Row numbers count data records from 0, header and blank lines excluded; both passes count the
same way. Error messages name the file and its 1-based line (CSV/TSV; the header is line 1)
or 1-based data row (Parquet), never a key value: keys are customer identifiers and error
messages end up in logs.

Composite keys (``on`` with several columns) are encoded unambiguously by
:func:`encode_key`: each field as a 4-byte big-endian length then its UTF-8 bytes, so
``("a,b", "c")`` and ``("a", "b,c")`` differ. A single key column is its plain UTF-8 bytes.
Both parties must therefore use the same number of key columns (the handshake compares it).
"""

from __future__ import annotations

import csv
import mmap
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np

from .atomic import AtomicFile
from .errors import InputError, UsageError
from .normalize import KeyNormalizationError, Normalization

__all__ = [
    "FORMATS",
    "DEDUP_POLICIES",
    "KeyTable",
    "detect_format",
    "encode_key",
    "read_keys",
    "write_rows",
    "count_rows",
]

FORMATS = ("csv", "tsv", "parquet")
DEDUP_POLICIES = ("error", "first", "keep-all")
Dedup = Literal["error", "first", "keep-all"]

_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
_BOM = b"\xef\xbb\xbf"
_PROGRESS_EVERY = 100_000
_PARQUET_BATCH = 65_536
_PARQUET_CHUNK = 1 << 20
_CSV_CHUNK = 1 << 16


# -- formats --------------------------------------------------------------------------------
def detect_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """``fmt`` if given (validated), else the format implied by the file extension."""
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise UsageError(f"unknown file format {fmt!r} (known: {', '.join(FORMATS)})")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    raise UsageError(f"{Path(path).name}: cannot tell the format from the extension; pass --format csv|tsv|parquet")


def _pyarrow(path: Path) -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path.name}: reading Parquet needs pyarrow (pip install 'psiq[parquet]')") from None
    return pa, pq


def encode_key(fields: Sequence[str]) -> bytes:
    """Encode one key: plain UTF-8 for one field, length-prefixed UTF-8 fields otherwise."""
    if len(fields) == 1:
        return fields[0].encode("utf-8")
    parts = []
    for value in fields:
        data = value.encode("utf-8")
        parts.append(len(data).to_bytes(4, "big"))
        parts.append(data)
    return b"".join(parts)


# -- the key table --------------------------------------------------------------------------
@dataclass(eq=False)
class KeyTable:
    """The unique keys of one file and the rows that carry them.

    ``keys[k]`` is the ``k``-th distinct key in order of first appearance; this list is what a
    PSI protocol takes as its input set, and ``PsiOutcome.indices`` point into it.
    ``row_numbers`` / ``row_keys`` list, in file order, every row that counts under the dedup
    policy (all rows with ``keep-all``, the first row of each key otherwise) and its key index.
    """

    path: Path
    fmt: str
    header: list[str]
    on: list[str]
    columns: list[int]
    normalization: Normalization
    dedup: str
    keys: list[bytes]
    row_numbers: np.ndarray
    row_keys: np.ndarray
    rows_read: int
    duplicate_rows: int
    skipped_rows: int
    _groups: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def unique_keys(self) -> int:
        return len(self.keys)

    def counts(self) -> np.ndarray:
        """Rows kept per key (int64; all ones unless ``keep-all``)."""
        return np.bincount(self.row_keys, minlength=len(self.keys)).astype(np.int64)

    def groups(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR form: rows of key ``k`` are ``rows[offsets[k]:offsets[k+1]]``, in file order."""
        if self._groups is None:
            order = np.argsort(self.row_keys, kind="stable")
            offsets = np.zeros(len(self.keys) + 1, dtype=np.int64)
            np.cumsum(self.counts(), out=offsets[1:])
            self._groups = (offsets, self.row_numbers[order])
        return self._groups

    def rows_of(self, key_index: int) -> np.ndarray:
        """Row numbers carrying key ``key_index``, in file order."""
        offsets, rows = self.groups()
        return rows[offsets[key_index] : offsets[key_index + 1]]

    def summary(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "format": self.fmt,
            "on": list(self.on),
            "dedup": self.dedup,
            "normalize": self.normalization.describe(),
            "rows_read": self.rows_read,
            "unique_keys": len(self.keys),
            "duplicate_rows": self.duplicate_rows,
            "skipped_rows": self.skipped_rows,
        }


class _Collector:
    """Accumulates keys row by row and applies the dedup and empty-key policies."""

    def __init__(self, name: str, on: list[str], normalization: Normalization, dedup: str,
                 skip_empty: bool, unit: str) -> None:
        self.name, self.on, self.unit = name, on, unit
        self.normalize = None if normalization.is_identity else normalization.apply
        self.dedup, self.skip_empty = dedup, skip_empty
        self.index: dict[bytes, int] = {}
        self.keys: list[bytes] = []
        self.first_line = array("q")
        self.row_numbers = array("q")
        self.row_keys = array("q")
        self.duplicates = 0
        self.skipped = 0

    def add(self, row: int, line: int, values: Sequence[str]) -> None:
        normalize = self.normalize
        if normalize is not None:
            try:
                values = [normalize(value) for value in values]
            except KeyNormalizationError:
                column = self._failing_column(values)
                if self.skip_empty:
                    self.skipped += 1
                    return
                raise InputError(
                    f"{self.name} {self.unit} {line}: value in key column {column!r} does not match the key regex"
                    " (use --skip-empty-keys to skip such rows)"
                ) from None
        for position, value in enumerate(values):
            if not value:
                if self.skip_empty:
                    self.skipped += 1
                    return
                raise InputError(
                    f"{self.name} {self.unit} {line}: empty value in key column {self.on[position]!r}"
                    " (use --skip-empty-keys to skip such rows)"
                )
        key = values[0].encode("utf-8") if len(values) == 1 else encode_key(values)
        known = self.index.get(key)
        if known is None:
            known = self.index[key] = len(self.keys)
            self.keys.append(key)
            self.first_line.append(line)
        else:
            self.duplicates += 1
            if self.dedup == "error":
                raise InputError(
                    f"{self.name} {self.unit} {line}: duplicate key (first seen on {self.unit} "
                    f"{self.first_line[known]}); use --dedup first or --dedup keep-all to allow duplicates"
                )
            if self.dedup == "first":
                return
        self.row_numbers.append(row)
        self.row_keys.append(known)

    def _failing_column(self, values: Sequence[str]) -> str:
        for position, value in enumerate(values):
            try:
                self.normalize(value)  # type: ignore[misc]
            except KeyNormalizationError:
                return self.on[position]
        return self.on[0]


# -- CSV / TSV scanning ---------------------------------------------------------------------
class _CsvScan:
    """One pass over a CSV/TSV file: header, then (row, first line, start, end, fields).

    Lines are read as bytes so each record's byte range and line number are known; each line
    is decoded as strict UTF-8 (a BOM at the start is accepted and remembered).
    """

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.name = path, path.name
        self.delimiter = "\t" if fmt == "tsv" else ","
        self.quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
        self.line = 0
        self.pos = 0
        self.bom = b""
        self.header: list[str] = []
        self.header_line = 0
        self.header_bytes = b""
        self.newline = b"\n"
        self.ends_with_newline = True

    def _lines(self, handle: Any) -> Iterator[str]:
        for raw in handle:
            self.line += 1
            self.pos += len(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(
                    f"{self.name} line {self.line}: not valid UTF-8 (byte {err.start + 1} of the line);"
                    " save the file as UTF-8"
                ) from None
            yield text

    def records(self) -> Iterator[tuple[int, int, int, int, list[str]]]:
        """Yield (row number, first line, start offset, end offset, fields) per data record."""
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            raise InputError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"{self.path}: is a directory, not a file") from None
        except OSError as err:
            raise InputError(f"{self.path}: cannot open ({err.strerror})") from None
        with handle:
            head = handle.read(3)
            if head == _BOM:
                self.bom, self.pos = _BOM, 3
            else:
                handle.seek(0)
            reader = csv.reader(self._lines(handle), delimiter=self.delimiter, quoting=self.quoting, strict=True)
            width = 0
            row = 0
            while True:
                start, first_line = self.pos, self.line + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as err:
                    raise InputError(f"{self.name} line {self.line}: malformed {self._kind()} ({err})") from None
                if not fields:
                    continue  # blank line
                if not width:
                    width = len(fields)
                    self.header, self.header_line = fields, first_line
                    with open(self.path, "rb") as again:
                        again.seek(start)
                        self.header_bytes = again.read(self.pos - start)
                    if self.header_bytes.endswith(b"\r\n"):
                        self.newline = b"\r\n"
                    continue
                if len(fields) != width:
                    raise InputError(
                        f"{self.name} line {first_line}: {len(fields)} fields, but the header has {width}"
                    )
                yield row, first_line, start, self.pos, fields
                row += 1
            if not width:
                raise InputError(f"{self.name}: file is empty (no header row and no data)")

    def _kind(self) -> str:
        return "TSV" if self.delimiter == "\t" else "CSV"


def _key_columns(name: str, header: Sequence[str], on: Sequence[str]) -> list[int]:
    stripped = [column.strip().lstrip("\ufeff") for column in header]
    positions = []
    for wanted in on:
        hits = [i for i, column in enumerate(stripped) if column == wanted]
        if len(hits) > 1:
            raise InputError(f"{name}: key column {wanted!r} appears {len(hits)} times in the header")
        if not hits:
            shown = ", ".join(repr(c) for c in stripped[:20]) + (", ..." if len(stripped) > 20 else "")
            hint = ""
            near = [c for c in stripped if c.casefold() == wanted.casefold()]
            if near:
                hint = f"; did you mean {near[0]!r}? (column names are case-sensitive)"
            elif any(_looks_like_data(c) for c in stripped):
                hint = "; the first line looks like data: does the file have a header row?"
            raise InputError(f"{name}: no key column {wanted!r}; the columns are: {shown}{hint}")
        positions.append(hits[0])
    return positions


def _looks_like_data(value: str) -> bool:
    return (len(value) >= 6 and value.replace("-", "").replace("+", "").isdigit()) or "@" in value


# -- reading --------------------------------------------------------------------------------
def read_keys(
    path: str | os.PathLike[str],
    on: Sequence[str],
    *,
    normalization: Normalization | None = None,
    dedup: Dedup = "error",
    fmt: str | None = None,
    skip_empty: bool = False,
    progress: Callable[[int], None] | None = None,
) -> KeyTable:
    """Read the key columns ``on`` of a CSV/TSV/Parquet file into a :class:`KeyTable`.

    ``dedup``: ``error`` (default) stops at the first repeated key, naming both lines;
    ``first`` keeps the first row of each key; ``keep-all`` keeps every row (joins expand
    them as SQL does). Empty key values (after normalisation) are an error naming the line
    unless ``skip_empty``, which skips and counts those rows (as it does for values that do
    not match the key regex). ``progress`` is called with the rows read so far now and then.
    Raises :class:`InputError` with a one-line message naming the file and line.
    """
    path = Path(path)
    on = list(on)
    if not on:
        raise UsageError("at least one key column is needed (--on)")
    if len(set(on)) != len(on):
        raise UsageError(f"key columns repeat: {', '.join(on)}")
    if dedup not in DEDUP_POLICIES:
        raise UsageError(f"unknown dedup policy {dedup!r} (known: {', '.join(DEDUP_POLICIES)})")
    normalization = normalization or Normalization()
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        header, columns, collector, rows = _read_parquet_keys(path, on, normalization, dedup, skip_empty, progress)
    else:
        header, columns, collector, rows = _read_csv_keys(path, fmt, on, normalization, dedup, skip_empty, progress)
    return KeyTable(
        path=path,
        fmt=fmt,
        header=header,
        on=on,
        columns=columns,
        normalization=normalization,
        dedup=dedup,
        keys=collector.keys,
        row_numbers=np.frombuffer(collector.row_numbers, dtype=np.int64).copy(),
        row_keys=np.frombuffer(collector.row_keys, dtype=np.int64).copy(),
        rows_read=rows,
        duplicate_rows=collector.duplicates,
        skipped_rows=collector.skipped,
    )


def _read_csv_keys(path: Path, fmt: str, on: list[str], normalization: Normalization, dedup: str,
                   skip_empty: bool, progress: Callable[[int], None] | None) -> tuple[list[str], list[int], _Collector, int]:
    scan = _CsvScan(path, fmt)
    collector = _Collector(path.name, on, normalization, dedup, skip_empty, "line")
    add = collector.add
    records = scan.records()
    columns: list[int] | None = None
    rows = 0
    for row, line, _start, _end, fields in records:
        if columns is None:
            columns = _key_columns(path.name, scan.header, on)
            single = columns[0] if len(columns) == 1 else None
        if single is not None:
            add(row, line, (fields[single],))
        else:
            add(row, line, [fields[c] for c in columns])
        rows += 1
        if progress is not None and rows % _PROGRESS_EVERY == 0:
            progress(rows)
    if columns is None:  # header only: still check the columns exist
        columns = _key_columns(path.name, scan.header, on)
    if progress is not None:
        progress(rows)
    return list(scan.header), columns, collector, rows


def _read_parquet_keys(path: Path, on: list[str], normalization: Normalization, dedup: str,
                       skip_empty: bool, progress: Callable[[int], None] | None) -> tuple[list[str], list[int], _Collector, int]:
    _pa, pq = _pyarrow(path)
    parquet = _open_parquet(path, pq)
    header = list(parquet.schema_arrow.names)
    columns = _key_columns(path.name, header, on)
    names = [header[c] for c in columns]
    collector = _Collector(path.name, on, normalization, dedup, skip_empty, "row")
    row = 0
    try:
        batches = parquet.iter_batches(batch_size=_PARQUET_BATCH, columns=names)
        for batch in batches:
            values = [[_text(v) for v in batch.column(i).to_pylist()] for i in range(len(names))]
            for fields in zip(*values):
                collector.add(row, row + 1, fields)
                row += 1
            if progress is not None:
                progress(row)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - pyarrow raises many types for corrupt files
        raise InputError(f"{path.name}: cannot read Parquet data near row {row + 1} ({err})") from None
    return header, columns, collector, row


def _open_parquet(path: Path, pq: Any) -> Any:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        return pq.ParquetFile(str(path))
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path.name}: not a readable Parquet file ({err})") from None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("a binary key value is not valid UTF-8") from None
    return str(value)


def count_rows(path: str | os.PathLike[str], fmt: str | None = None) -> int:
    """Number of data rows, counted the way :func:`read_keys` and :func:`write_rows` count."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        _pa, pq = _pyarrow(path)
        return int(_open_parquet(path, pq).metadata.num_rows)
    return sum(1 for _ in _CsvScan(path, fmt).records())


# -- writing --------------------------------------------------------------------------------
def _order_array(row_order: Iterable[int | None] | np.ndarray) -> np.ndarray:
    """Row order as int64 with -1 for an empty row (``None`` or any negative number)."""
    if isinstance(row_order, np.ndarray):
        if row_order.dtype.kind not in "iu":
            raise UsageError("row order must be an integer array")
        order = row_order.astype(np.int64, copy=False)
    else:
        order = np.fromiter((-1 if r is None else r for r in row_order), dtype=np.int64)
    return np.where(order < 0, -1, order)


def write_rows(
    src_path: str | os.PathLike[str],
    row_order: Iterable[int | None] | np.ndarray,
    out_path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    expect_rows: int | None = None,
) -> int:
    """Write the header of ``src_path`` then its rows in ``row_order`` to ``out_path``.

    ``row_order`` holds row numbers (as counted by :func:`read_keys`); ``None`` (or a negative
    number in a numpy array) writes an empty row of the right width (all nulls in Parquet,
    ``,,,`` in CSV, ``""`` for a one-column CSV so the row is not a blank line). The output has
    the source's format, header, BOM and line endings; CSV rows are copied byte for byte.
    The write is atomic: nothing appears at ``out_path`` unless the whole file was written.
    ``expect_rows`` (e.g. ``key_table.rows_read``) guards against the source file having
    changed since it was read: a different row count raises :class:`InputError`. The output
    file is created with mode 0600 (owner only), as customer data should be; I/O failures
    such as a full disk raise :class:`InputError`.
    Returns the number of data rows written.
    """
    src = Path(src_path)
    out = Path(out_path)
    fmt = detect_format(src, fmt)
    order = _order_array(row_order)
    if out.resolve() == src.resolve():
        raise UsageError(f"{out.name}: the output file must differ from the input file")
    if fmt == "parquet":
        writer = _write_parquet
    else:
        writer = _write_csv
    try:
        with AtomicFile(out) as handle:
            writer(src, fmt, order, handle, expect_rows)
    except OSError as err:
        raise InputError(f"{out}: cannot write the output ({err.strerror or err})") from None
    return int(len(order))


def _check_range(order: np.ndarray, total: int, name: str, expect_rows: int | None) -> None:
    if expect_rows is not None and total != expect_rows:
        raise InputError(f"{name}: has {total} data rows now but had {expect_rows} when its keys were read;"
                         " the file changed during the run")
    if len(order) and int(order.max()) >= total:
        raise UsageError(f"{name}: row {int(order.max())} requested but the file has {total} data rows")


def _write_csv(src: Path, fmt: str, order: np.ndarray, handle: Any, expect_rows: int | None) -> None:
    scan = _CsvScan(src, fmt)
    starts = array("q")
    ends = array("q")
    for _row, _line, start, end, _fields in scan.records():
        starts.append(start)
        ends.append(end)
    _check_range(order, len(starts), src.name, expect_rows)
    width = len(scan.header)
    newline = scan.newline
    empty = (b"," * (width - 1) if fmt == "csv" else b"\t" * (width - 1)) if width > 1 else b'""'
    if width == 1 and fmt == "tsv":
        empty = b""  # TSV has no quoting; a lone empty field is unavoidable
    empty += newline
    header = scan.bom + scan.header_bytes
    if not header.endswith(b"\n"):
        header += newline
    handle.write(header)
    if not len(order):
        return
    start_at = np.frombuffer(starts, dtype=np.int64)
    end_at = np.frombuffer(ends, dtype=np.int64)
    with open(src, "rb") as source, mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ) as data:
        write = handle.write
        for begin in range(0, len(order), _CSV_CHUNK):
            rows = order[begin : begin + _CSV_CHUNK]
            safe = np.maximum(rows, 0)
            spans = zip(rows.tolist(), start_at[safe].tolist(), end_at[safe].tolist())
            for row, start, end in spans:
                if row < 0:
                    write(empty)
                    continue
                chunk = data[start:end]
                write(chunk)
                if not chunk.endswith(b"\n"):
                    write(newline)


def _write_parquet(src: Path, fmt: str, order: np.ndarray, handle: Any, expect_rows: int | None) -> None:
    pa, pq = _pyarrow(src)
    parquet = _open_parquet(src, pq)
    total = int(parquet.metadata.num_rows)
    _check_range(order, total, src.name, expect_rows)
    group_starts = np.zeros(parquet.num_row_groups + 1, dtype=np.int64)
    for i in range(parquet.num_row_groups):
        group_starts[i + 1] = group_starts[i] + parquet.metadata.row_group(i).num_rows
    schema = parquet.schema_arrow
    with pq.ParquetWriter(handle, schema) as writer:
        if not len(order):
            writer.write_table(schema.empty_table())
        for begin in range(0, len(order), _PARQUET_CHUNK):
            chunk = order[begin : begin + _PARQUET_CHUNK]
            wanted = chunk[chunk >= 0]
            groups = np.unique(np.searchsorted(group_starts, wanted, side="right") - 1)
            if len(groups):
                table = pa.concat_tables([parquet.read_row_group(int(g)) for g in groups])
                # position of each global row inside the concatenated table
                sizes = group_starts[groups + 1] - group_starts[groups]
                base = np.concatenate(([0], np.cumsum(sizes)[:-1]))
                group_of = np.searchsorted(group_starts, np.where(chunk >= 0, chunk, 0), side="right") - 1
                slot = np.searchsorted(groups, group_of)
                local = np.where(chunk >= 0, base[np.minimum(slot, len(groups) - 1)] + chunk - group_starts[group_of], 0)
                indices = pa.array(local, mask=chunk < 0, type=pa.int64())
                writer.write_table(table.take(indices))
            else:
                writer.write_table(pa.table({name: pa.nulls(len(chunk), type=schema.field(name).type)
                                             for name in schema.names}, schema=schema))
