"""Reading key columns from customer files, and writing selected rows back out.

Two streaming passes, never the whole file in memory:

* :func:`read_keys` reads only the key columns and keeps, per unique key, its encoded bytes
  and the row numbers that carry it (numpy arrays, 16 bytes per kept row). Rows themselves
  are not kept.
* :func:`write_rows` copies rows out in any order: for CSV/TSV one pass records each row's
  byte range, then rows are copied byte for byte from a memory map (quoting, number formats
  and spacing are preserved exactly); for Parquet the needed row groups are read chunk by
  chunk. Output is atomic: a temporary file in the target directory, ``os.replace`` at the end.

CSV/TSV files are read in blocks of a few MiB. A block with no quote characters, no stray
carriage returns, valid UTF-8 and every record as wide as the header is split on newlines and
delimiters directly (the common case, several times faster); anything else goes through the
csv module from that block until a record ends at a block boundary. Both give the same
records, line numbers and errors (``tests/test_records.py`` checks this on random input).

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
from itertools import repeat
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np

from .atomic import AtomicFile
from .errors import InputError, UsageError
from .keyindex import KeyIndex
from .normalize import KeyNormalizationError, Normalization
from .rowoffsets import RowOffsets
from .textblocks import field_bounds, gather, line_bounds, trim_bounds

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
_CSV_CHUNK = 1 << 14  # rows gathered per write: ~4 MB of pieces in flight
_SCAN_BLOCK = 1 << 22  # bytes read at a time by the CSV/TSV scan
_HEADER_ONLY = object()
_FAST = True  # False: parse every CSV/TSV record with the csv module (the reference path, for tests)
_ASCII_SPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.strip() removes from ASCII text
_LENGTHS = [n.to_bytes(4, "big") for n in range(256)]
_SPACE_TABLE = np.zeros(256, dtype=bool)
_SPACE_TABLE[list(_ASCII_SPACE)] = True


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
    #: CSV/TSV: where each row is in the file (about 2 bytes per row), for :func:`write_rows`
    offsets: "RowOffsets | None" = field(default=None, repr=False)

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
    """Accumulates keys row by row (or a block of rows at a time) and applies the dedup and
    empty-key policies. :meth:`add_batch` gives exactly the result of calling :meth:`add` for
    each row in turn; whenever a block has anything unusual (an empty or non-matching value,
    a duplicate under ``dedup="error"``) it falls back to :meth:`add` so errors are the same.
    """

    def __init__(self, name: str, on: list[str], normalization: Normalization, dedup: str,
                 skip_empty: bool, unit: str) -> None:
        self.name, self.on, self.unit = name, on, unit
        self.normalization = normalization
        self.normalize = None if normalization.is_identity else normalization.apply
        self.ascii_fold: bytes | None = None  # how the normalisation acts on pure-ASCII values
        if normalization.is_identity:
            self.ascii_fold = b""
        elif normalization == Normalization():  # trim only (the default)
            self.ascii_fold = _ASCII_SPACE
        self.dedup, self.skip_empty = dedup, skip_empty
        self._index = KeyIndex()
        self.keys: list[bytes] = []
        self.first_line = array("q")  # per key, only kept (and needed) with dedup="error"
        self.row_numbers = array("q")
        self.row_keys = array("q")
        self.duplicates = 0
        self.skipped = 0
        self.offsets: RowOffsets | None = None  # set by the CSV reader when asked to record them

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
        self._keep(row, line, key)

    def _keep(self, row: int, line: int, key: bytes) -> None:
        """Apply the dedup policy to one valid key (``psi.scale`` overrides this to spill)."""
        known = self._index.find(key, self.keys)
        if known is None:
            known = len(self.keys)
            self._index.add(key, known)
            self.keys.append(key)
            if self.dedup == "error":
                self.first_line.append(line)
        else:
            self.duplicates += 1
            if self.dedup == "error":
                self._duplicate_error(line, self.first_line[known])
            if self.dedup == "first":
                return
        self.row_numbers.append(row)
        self.row_keys.append(known)

    def _duplicate_error(self, line: int, first: int) -> None:
        raise InputError(
            f"{self.name} {self.unit} {line}: duplicate key (first seen on {self.unit} "
            f"{first}); use --dedup first or --dedup keep-all to allow duplicates"
        )

    def _failing_column(self, values: Sequence[str]) -> str:
        for position, value in enumerate(values):
            try:
                self.normalize(value)  # type: ignore[misc]
            except KeyNormalizationError:
                return self.on[position]
        return self.on[0]

    # -- a block of rows at once ------------------------------------------------------------
    def add_batch(self, row0: int, columns: list[list[bytes]], lines: np.ndarray, trimmed: bool = False) -> None:
        """Rows ``row0, row0+1, ...`` whose key fields are ``columns[j][i]`` (raw UTF-8 bytes,
        no newlines, already validated as UTF-8); ``lines[i]`` is row ``i``'s first line.
        ``trimmed``: the caller already removed ASCII whitespace from both ends of every field
        (only meaningful with ``trim`` on, where it changes no key: trimming removes it anyway)."""
        count = len(columns[0])
        if not count:
            return
        fold = self.ascii_fold
        encoded: list[list[bytes]] | None = None
        if fold is not None and b"".join([b"".join(column) for column in columns]).isascii():
            if not fold or (trimmed and self.normalization.trim):
                encoded = columns
            else:
                encoded = [list(map(bytes.strip, column, repeat(fold))) for column in columns]
        else:
            texts = [b"\n".join(column).decode("utf-8").split("\n") for column in columns]
            try:
                folded = [self.normalization.apply_many(text) for text in texts]
            except KeyNormalizationError:
                return self._add_each(row0, columns, lines)
            encoded = [("\n".join(values)).encode("utf-8").split(b"\n") for values in folded]
        if any(b"" in column for column in encoded):
            return self._add_each(row0, columns, lines)
        keys = encoded[0] if len(encoded) == 1 else _join_fields(encoded)
        self._dedup_batch(row0, keys, lines)

    def _add_each(self, row0: int, columns: list[list[bytes]], lines: np.ndarray) -> None:
        texts = [b"\n".join(column).decode("utf-8").split("\n") for column in columns]
        add = self.add
        for i, values in enumerate(zip(*texts)):
            add(row0 + i, int(lines[i]), values)

    def _dedup_batch(self, row0: int, keys: list[bytes], lines: np.ndarray) -> None:
        count = len(keys)
        before = len(self.keys)
        numbers, new = self._index.assign(keys, self.keys)
        if self.dedup == "error":
            if len(new) != count:  # the first repeat in row order, and where its key was first seen
                fresh = np.zeros(count, dtype=bool)
                fresh[new] = True
                at = int(np.argmin(fresh))
                number = int(numbers[at])
                first = self.first_line[number] if number < before else int(lines[new[number - before]])
                self.duplicates += 1
                self._duplicate_error(int(lines[at]), first)
            self.keys.extend(keys)
            self.first_line.frombytes(np.ascontiguousarray(lines, dtype=np.int64).tobytes())
            self.row_numbers.frombytes(np.arange(row0, row0 + count, dtype=np.int64).tobytes())
            self.row_keys.frombytes(np.arange(before, before + count, dtype=np.int64).tobytes())
            return
        self.keys.extend(keys if len(new) == count else map(keys.__getitem__, new.tolist()))
        self.duplicates += count - len(new)
        if self.dedup == "keep-all" or len(new) == count:
            rows = np.arange(row0, row0 + count, dtype=np.int64)
        else:  # first: keep the first row of each key new in this block (new keys are numbered in row order)
            rows = new.astype(np.int64) + row0
            numbers = numbers[new]
        self.row_numbers.frombytes(rows.tobytes())
        self.row_keys.frombytes(np.ascontiguousarray(numbers, dtype=np.int64).tobytes())


def _join_fields(columns: list[list[bytes]]) -> list[bytes]:
    """``encode_key`` for many rows at once, on already UTF-8 encoded fields."""
    parts: list[Any] = []
    for column in columns:
        lengths = list(map(len, column))
        try:
            parts.append(list(map(_LENGTHS.__getitem__, lengths)))
        except IndexError:
            parts.append([n.to_bytes(4, "big") for n in lengths])
        parts.append(column)
    return list(map(b"".join, zip(*parts)))


# -- CSV / TSV scanning ---------------------------------------------------------------------
class _Block:
    """Consecutive data records of a clean stretch of a CSV/TSV file (no quotes, no stray CR,
    valid UTF-8, every record of the header's width): record ``row0 + i`` is
    ``block[begins[i]:ends[i]]`` (line ending excluded), ``first_lines[i]`` its line number,
    ``starts``/``ends_in_file`` its byte range in the file, line ending included (only when
    the scan was asked for offsets)."""

    __slots__ = ("row0", "first_lines", "starts", "ends", "_block", "_arr", "_begins", "_stops", "_delims",
                 "_width")

    def __init__(self, row0: int, first_lines: np.ndarray, block: bytes, arr: np.ndarray, begins: np.ndarray,
                 stops: np.ndarray, delims: np.ndarray | None, width: int) -> None:
        self.row0, self.first_lines = row0, first_lines
        self.starts: np.ndarray | None = None
        self.ends: np.ndarray | None = None
        self._block, self._arr, self._begins, self._stops = block, arr, begins, stops
        self._delims, self._width = delims, width

    def __len__(self) -> int:
        return len(self._begins)

    @property
    def lines(self) -> list[bytes]:
        """The records' bytes, line endings excluded."""
        return gather(self._block, self._arr, self._begins, self._stops)

    def fields(self, column: int, delimiter: bytes, trim: bool = False) -> list[bytes]:
        """Field ``column`` of every record (raw bytes; ``trim``: ASCII whitespace stripped from
        both ends, as ``bytes.strip`` with ``str.strip``'s ASCII whitespace would)."""
        delims = self._delims
        if delims is None:
            delims = self._delims = np.flatnonzero(self._arr == delimiter[0])
        begin, end = field_bounds(delims, self._begins, self._stops, self._width, column)
        if trim:
            begin, end = trim_bounds(self._arr, begin, end, _SPACE_TABLE)
        return gather(self._block, self._arr, begin, end)


def _blocks(handle: Any, size: int) -> Iterator[bytes]:
    """The file in pieces of about ``size`` bytes, each ending just after a newline (or at EOF)."""
    rest = b""
    while True:
        block = handle.read(size)
        if not block:
            if rest:
                yield rest
            return
        if rest:
            block = rest + block
        cut = block.rfind(b"\n") + 1
        if not cut:
            rest = block
            continue
        if cut < len(block):
            rest = block[cut:]
            block = block[:cut]
        else:
            rest = b""
        yield block


class _CsvScan:
    """One pass over a CSV/TSV file: header, then data records.

    :meth:`items` yields either a :class:`_Block` (many records at once, for stretches of the
    file where plain splitting on newlines and delimiters is exactly what the csv module would
    do) or a ``(row, first line, start offset, end offset, fields)`` tuple per record parsed by
    the csv module (anywhere else: quoted fields, stray CRs, bad UTF-8, wrong widths, ...).
    Lines are counted as in the file's bytes (``\\n``);
    each line must be strict UTF-8 (a BOM at the start is accepted and remembered).
    """

    def __init__(self, path: Path, fmt: str, *, fast: bool | None = None, offsets: bool = False) -> None:
        self.path, self.name = path, path.name
        self.delimiter = "\t" if fmt == "tsv" else ","
        self.quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
        self.fast = _FAST if fast is None else fast
        self.offsets = offsets
        self.limit = csv.field_size_limit()
        self.line = 0
        self.pos = 0
        self.row = 0
        self.width = 0
        self.bom = b""
        self.header: list[str] = []
        self.header_line = 0
        self.header_bytes = b""
        self.newline = b"\n"
        self._left = 0

    def items(self) -> Iterator[_Block | tuple[int, int, int, int, list[str]]]:
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
            blocks = _blocks(handle, _SCAN_BLOCK)
            for block in blocks:
                if self.fast:
                    done = self._fast_block(block)
                    if done is not None:
                        if done is not _HEADER_ONLY:
                            yield done
                        continue
                yield from self._slow(block, blocks)
            if not self.width:
                raise InputError(f"{self.name}: file is empty (no header row and no data)")

    # -- the plain path ---------------------------------------------------------------------
    def _fast_block(self, block: bytes) -> Any:
        """Handle ``block`` without the csv module if that gives the same result; None if not."""
        if b"\0" in block or (self.quoting != csv.QUOTE_NONE and b'"' in block):
            return None
        crlf = b"\r" in block
        if crlf and block.count(b"\r") != block.count(b"\r\n"):
            return None
        if not block.isascii():
            try:
                block.decode("utf-8")
            except UnicodeDecodeError:
                return None
        arr = np.frombuffer(block, dtype=np.uint8)
        begins, stops, raw_ends = line_bounds(arr, crlf)
        lengths = stops - begins
        if len(block) >= self.limit and int(lengths.max()) >= self.limit:
            return None
        first = 0  # index of the first data line
        header = None
        if not self.width:
            filled = np.flatnonzero(lengths)
            if not len(filled):  # blank lines only
                self.line += len(begins)
                self.pos += len(block)
                return _HEADER_ONLY
            first = int(filled[0])
            header = block[begins[first] : stops[first]].decode("utf-8").split(self.delimiter)
            first += 1
        width = self.width or len(header)  # type: ignore[arg-type]
        delimiter = self.delimiter.encode()
        kept = np.flatnonzero(lengths[first:]) + first  # data lines that are not blank
        delims = None
        if width == 1:
            if delimiter in block:  # a one-column header has none: some record is too wide
                return None
        else:
            delims = np.flatnonzero(arr == delimiter[0])
            counts = np.searchsorted(delims, stops[kept]) - np.searchsorted(delims, begins[kept])
            if not bool((counts == width - 1).all()):
                return None
        if header is not None:  # commit the header
            at = first - 1
            self.header, self.header_line = header, self.line + first
            self.header_bytes = block[begins[at] : raw_ends[at]]
            self.width = width
            if self.header_bytes.endswith(b"\r\n"):
                self.newline = b"\r\n"
        if not len(kept):
            self.line += len(begins)
            self.pos += len(block)
            return _HEADER_ONLY  # nothing to yield: consumers look at the header on the first record
        result = _Block(self.row, kept + (self.line + 1), block, arr, begins[kept], stops[kept], delims, width)
        if self.offsets:
            result.starts, result.ends = begins[kept] + self.pos, raw_ends[kept] + self.pos
        self.line += len(begins)
        self.pos += len(block)
        self.row += len(kept)
        return result

    # -- the csv module path ----------------------------------------------------------------
    def _feed(self, block: bytes, blocks: Iterator[bytes]) -> Iterator[str]:
        while True:
            parts = block.split(b"\n")
            last = parts.pop()
            raws = [part + b"\n" for part in parts]
            if last:
                raws.append(last)
            self._left = len(raws)
            for raw in raws:
                self._left -= 1
                self.line += 1
                self.pos += len(raw)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise InputError(
                        f"{self.name} line {self.line}: not valid UTF-8 (byte {err.start + 1} of the line);"
                        " save the file as UTF-8, or pass --encoding gbk (or gb18030) for a GBK export"
                    ) from None
                yield text
            next_block = next(blocks, None)
            if next_block is None:
                return
            block = next_block

    def _slow(self, block: bytes, blocks: Iterator[bytes]) -> Iterator[tuple[int, int, int, int, list[str]]]:
        """Parse with the csv module from ``block`` on, until a record ends where a block does."""
        reader = csv.reader(self._feed(block, blocks), delimiter=self.delimiter, quoting=self.quoting, strict=True)
        while True:
            start, first_line = self.pos, self.line + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise InputError(f"{self.name} line {self.line}: malformed {self._kind()} ({err})") from None
            if fields:
                if not self.width:
                    self.width = len(fields)
                    self.header, self.header_line = fields, first_line
                    with open(self.path, "rb") as again:
                        again.seek(start)
                        self.header_bytes = again.read(self.pos - start)
                    if self.header_bytes.endswith(b"\r\n"):
                        self.newline = b"\r\n"
                elif len(fields) != self.width:
                    raise InputError(
                        f"{self.name} line {first_line}: {len(fields)} fields, but the header has {self.width}"
                    )
                else:
                    yield self.row, first_line, start, self.pos, fields
                    self.row += 1
            if not self._left and self.fast:
                return  # at a block boundary, between records: the plain path may go on

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

def check_key_options(on: Sequence[str], dedup: str) -> list[str]:
    """The key columns as a list; :class:`UsageError` for none, a repeated one, or an unknown
    dedup policy (shared by every reader: files here, databases and DataFrames in :mod:`psi.io`)."""
    on = list(on)
    if not on:
        raise UsageError("at least one key column is needed (--on)")
    if len(set(on)) != len(on):
        raise UsageError(f"key columns repeat: {', '.join(on)}")
    if dedup not in DEDUP_POLICIES:
        raise UsageError(f"unknown dedup policy {dedup!r} (known: {', '.join(DEDUP_POLICIES)})")
    return on

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
    on = check_key_options(on, dedup)
    normalization = normalization or Normalization()
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        header, columns, collector, rows = _read_parquet_keys(path, on, normalization, dedup, skip_empty, progress)
    else:
        stat = _file_stat(path)  # before reading: a change during the read makes the writer scan again
        header, columns, collector, rows = _read_csv_keys(path, fmt, on, normalization, dedup, skip_empty, progress,
                                                          record_offsets=True)
        if collector.offsets is not None:
            collector.offsets.stat = stat
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
        offsets=collector.offsets,
    )


def _read_csv_keys(path: Path, fmt: str, on: list[str], normalization: Normalization, dedup: str,
                   skip_empty: bool, progress: Callable[[int], None] | None,
                   collector_cls: type[_Collector] | None = None, *,
                   record_offsets: bool = False) -> tuple[list[str], list[int], _Collector, int]:
    """The CSV/TSV half of :func:`read_keys`; ``record_offsets`` leaves the rows' byte ranges in
    ``collector.offsets`` (a :class:`RowOffsets`) for the writer."""
    scan = _CsvScan(path, fmt, offsets=record_offsets)
    offsets = RowOffsets() if record_offsets else None
    slow_starts, slow_ends = array("q"), array("q")
    collector = (collector_cls or _Collector)(path.name, on, normalization, dedup, skip_empty, "line")
    add = collector.add
    delimiter = scan.delimiter.encode()
    trim = normalization.trim  # strip ASCII whitespace while gathering the fields: trimming would anyway
    columns: list[int] | None = None
    single: int | None = None
    rows = 0
    for item in scan.items():
        if columns is None:
            columns = _key_columns(path.name, scan.header, on)
            single = columns[0] if len(columns) == 1 else None
        if isinstance(item, _Block):
            if offsets is not None:
                if slow_starts:
                    offsets.add(np.frombuffer(slow_starts, dtype=np.int64), np.frombuffer(slow_ends, dtype=np.int64))
                    slow_starts, slow_ends = array("q"), array("q")
                offsets.add(item.starts, item.ends)  # type: ignore[arg-type]
            values = [item.fields(c, delimiter, trim) for c in columns]
            collector.add_batch(item.row0, values, item.first_lines, trim)
            before, rows = rows, rows + len(item)
            if progress is not None and rows // _PROGRESS_EVERY != before // _PROGRESS_EVERY:
                progress(rows)
            continue
        _row, line, start, end, fields = item
        if offsets is not None:
            slow_starts.append(start)
            slow_ends.append(end)
        if single is not None:
            add(_row, line, (fields[single],))
        else:
            add(_row, line, [fields[c] for c in columns])
        rows += 1
        if progress is not None and rows % _PROGRESS_EVERY == 0:
            progress(rows)
    if columns is None:  # header only: still check the columns exist
        columns = _key_columns(path.name, scan.header, on)
    if progress is not None:
        progress(rows)
    if offsets is not None:
        offsets.add(np.frombuffer(slow_starts, dtype=np.int64), np.frombuffer(slow_ends, dtype=np.int64))
        collector.offsets = offsets.finish(scan)
    return list(scan.header), columns, collector, rows


def _read_parquet_keys(path: Path, on: list[str], normalization: Normalization, dedup: str,
                       skip_empty: bool, progress: Callable[[int], None] | None,
                       collector_cls: type[_Collector] | None = None) -> tuple[list[str], list[int], _Collector, int]:
    _pa, pq = _pyarrow(path)
    parquet = _open_parquet(path, pq)
    header = list(parquet.schema_arrow.names)
    columns = _key_columns(path.name, header, on)
    names = [header[c] for c in columns]
    collector = (collector_cls or _Collector)(path.name, on, normalization, dedup, skip_empty, "row")
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
    return sum(len(item) if isinstance(item, _Block) else 1 for item in _CsvScan(path, fmt).items())


# -- writing --------------------------------------------------------------------------------
def _order_array(row_order: Iterable[int | None] | np.ndarray) -> np.ndarray:
    """Row order as int64 with -1 for an empty row (``None`` or any negative number)."""
    if isinstance(row_order, np.ndarray):
        if row_order.dtype.kind not in "iu":
            raise UsageError("row order must be an integer array")
        order = row_order.astype(np.int64, copy=False)
    else:
        order = np.fromiter((-1 if r is None else r for r in row_order), dtype=np.int64)
    if len(order) and int(order.min()) < -1:  # copy only when there is something to change
        order = np.where(order < 0, -1, order)
    return order


def write_rows(
    src_path: str | os.PathLike[str],
    row_order: Iterable[int | None] | np.ndarray,
    out_path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    expect_rows: int | None = None,
    offsets: RowOffsets | None = None,
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
    such as a full disk raise :class:`InputError`. ``offsets`` (``KeyTable.offsets``) spares
    the scan for the rows' byte ranges when the file's size and modification time are unchanged.
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
            if fmt == "parquet" or offsets is None:
                writer(src, fmt, order, handle, expect_rows)
            else:
                writer(src, fmt, order, handle, expect_rows, offsets)
    except OSError as err:
        raise InputError(f"{out}: cannot write the output ({err.strerror or err})") from None
    return int(len(order))


def _check_range(order: np.ndarray, total: int, name: str, expect_rows: int | None) -> None:
    if expect_rows is not None and total != expect_rows:
        raise InputError(f"{name}: has {total} data rows now but had {expect_rows} when its keys were read;"
                         " the file changed during the run")
    if len(order) and int(order.max()) >= total:
        raise UsageError(f"{name}: row {int(order.max())} requested but the file has {total} data rows")


def _scan_offsets(src: Path, fmt: str) -> RowOffsets:
    """Scan ``src`` for its records' byte ranges (when read_keys did not record them)."""
    scan = _CsvScan(src, fmt, offsets=True)
    offsets = RowOffsets()
    starts = array("q")
    ends = array("q")
    for item in scan.items():
        if isinstance(item, _Block):
            if starts:
                offsets.add(np.frombuffer(starts, dtype=np.int64), np.frombuffer(ends, dtype=np.int64))
                starts, ends = array("q"), array("q")
            offsets.add(item.starts, item.ends)  # type: ignore[arg-type]
            continue
        starts.append(item[2])
        ends.append(item[3])
    offsets.add(np.frombuffer(starts, dtype=np.int64), np.frombuffer(ends, dtype=np.int64))
    return offsets.finish(scan)


def _file_stat(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _write_csv(src: Path, fmt: str, order: np.ndarray, handle: Any, expect_rows: int | None,
               offsets: RowOffsets | None = None) -> None:
    if offsets is None or offsets.stat is None or offsets.stat != _file_stat(src):
        offsets = _scan_offsets(src, fmt)  # not recorded, or the file changed since: scan it again
    total = offsets.count
    _check_range(order, total, src.name, expect_rows)
    width = offsets.width
    newline = offsets.newline
    empty = (b"," * (width - 1) if fmt == "csv" else b"\t" * (width - 1)) if width > 1 else b'""'
    if width == 1 and fmt == "tsv":
        empty = b""  # TSV has no quoting; a lone empty field is unavoidable
    empty += newline
    header = offsets.bom + offsets.header_bytes
    if not header.endswith(b"\n"):
        header += newline
    handle.write(header)
    if not len(order):
        return
    starts = offsets.starts()
    with open(src, "rb") as source, mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ) as data:
        # only the file's last record can lack a line ending
        last = int(starts[-1] + offsets.length_of(np.array([total - 1]))[0]) if total else 0
        unterminated = total - 1 if total and not data[last - 1 : last] == b"\n" else -2
        write = handle.write
        for begin in range(0, len(order), _CSV_CHUNK):
            rows = order[begin : begin + _CSV_CHUNK]
            if not total:  # only empty rows can be asked for
                pieces = [empty] * len(rows)
            else:
                safe = np.maximum(rows, 0)
                start_at = starts[safe]
                end_at = start_at + offsets.length_of(safe)
                pieces = list(map(data.__getitem__, map(slice, start_at.tolist(), end_at.tolist())))
                for i in np.flatnonzero(rows < 0).tolist():
                    pieces[i] = empty
            for i in np.flatnonzero(rows == unterminated).tolist():
                pieces[i] += newline
            write(b"".join(pieces))


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
