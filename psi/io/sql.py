"""Database sources and sinks through SQLAlchemy 2 (extra ``psiq[sql]`` plus a driver extra).

Reading (:func:`read_keys`): ``SELECT <key columns> FROM <table or (query)> ORDER BY <order>``
streamed with a server-side cursor (``stream_results`` + ``yield_per``) in batches of
:data:`BATCH` rows, through the same key pipeline as CSV files (:class:`psi.records._Collector`:
normalisation, empty keys, dedup), so a key read from a table and the same text read from a
CSV give the same bytes. Only the keys are kept, never the rows: memory is that of the CSV path.

Row identity. A table has no row order, so psiq numbers rows by a deterministic ``ORDER BY``:
the table's primary key when it has one, else every column (key columns first; rows equal in
every column are interchangeable, so ties do not matter). Writing re-runs the query with the
same order and checks, for every row it writes, that the row's key is still the key read in the
first pass and that the row count is unchanged; a table that changed in between is an
:class:`~psi.errors.InputError` and nothing is written.

Writing (:class:`SqlSink`): one transaction. PostgreSQL, SQLite and DuckDB have transactional
DDL: the table is created (after dropping the old one for ``replace``) and filled inside the
transaction (PostgreSQL by ``COPY ... FROM STDIN``), so a failure or a lost connection leaves
neither a new table nor partial rows. Other dialects fill a staging table and rename it at the
end; the staging table is dropped on failure. The aligned position goes in ``order_column``
(default ``psiq_row``, 0-based); column types are copied from the source table where the sink
dialect can express them.

Errors: cannot connect / connection lost: :class:`~psi.errors.TransportError` (exit 3) naming
the host; missing table or column, an empty result: :class:`~psi.errors.InputError` (exit 2).
Messages show the URL with its password masked and never a key value.
"""

from __future__ import annotations

import contextlib
from array import array
import csv
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import InputError, PsiqError, TransportError, UsageError
from ..normalize import Normalization
from ..records import KeyTable, _Collector, check_key_options
from . import pgcopy
from .urls import mask_url, resolve_url, sqlalchemy

__all__ = ["SqlSource", "SqlSink", "SqlKeyTable", "read_keys", "write_file", "iter_columns", "IF_EXISTS", "BATCH"]

BATCH = 50_000  # rows fetched per round trip / inserted per statement
IF_EXISTS = ("fail", "replace", "append")
_TRANSACTIONAL_DDL = ("postgresql", "sqlite", "duckdb")
_FILE_DATABASES = ("sqlite", "duckdb")
_IDENTIFIER_PART = re.compile(r"^[^\x00\"`]+$")


def _one_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err)
    text = text.split("[SQL:")[0].split("(Background on this error")[0]
    return " ".join(text.split())[:300]


def _split_name(name: str, what: str) -> tuple[str | None, str]:
    parts = name.split(".")
    if len(parts) > 2 or not all(parts) or not all(_IDENTIFIER_PART.match(p) for p in parts):
        raise UsageError(f"{what} {name!r}: give NAME or SCHEMA.NAME")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


class _Database:
    """A URL with its engine (created on first use, never at construction) and error mapping."""

    url: str
    password_file: str | os.PathLike[str] | None
    allow_password_in_url: bool

    def _resolved(self) -> Any:
        resolved = getattr(self, "_url_obj", None)
        if resolved is None:
            resolved = resolve_url(self.url, password_file=self.password_file,
                                   allow_password_in_url=self.allow_password_in_url)
            object.__setattr__(self, "_url_obj", resolved)
        return resolved

    @property
    def display(self) -> str:
        return mask_url(self.url)

    @property
    def host(self) -> str:
        url = self._resolved()
        if url.host:
            return f"{url.host}:{url.port}" if url.port else url.host
        return url.database or url.drivername

    def engine(self) -> Any:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            return engine
        sa = sqlalchemy()
        url = self._resolved()
        if url.drivername == "postgresql":  # SQLAlchemy's default driver is psycopg2; psiq[postgresql] installs psycopg 3
            try:
                import psycopg2  # noqa: F401
            except ImportError:
                url = url.set(drivername="postgresql+psycopg")
        try:
            connect_args = {"connect_timeout": 30} if url.get_backend_name() == "postgresql" else {}
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args)
        except ImportError as err:
            raise UsageError(f"{self.display}: the database driver is not installed ({err}); install the extra, "
                             "e.g. pip install 'psiq[postgresql]' (psycopg), 'psiq[mysql]', 'psiq[oracle]', "
                             "'psiq[duckdb]' or 'psiq[hive]'") from None
        except Exception as err:  # noqa: BLE001 - NoSuchModuleError, ArgumentError
            raise UsageError(f"{self.display}: unsupported database URL ({_one_line(err)})") from None
        if engine.dialect.name == "sqlite":
            _sqlite_transactional_ddl(sa, engine)
        object.__setattr__(self, "_engine", engine)
        return engine

    @contextlib.contextmanager
    def connect(self, *, must_exist: bool = True) -> Iterator[Any]:
        """A connection; connection failures become one-line :class:`TransportError` naming the host."""
        engine = self.engine()
        if must_exist and engine.dialect.name in _FILE_DATABASES:
            database = engine.url.database
            if database and database != ":memory:" and not Path(database).exists():
                raise InputError(f"{self.display}: no such database file")
        try:
            connection = engine.connect()
        except Exception as err:  # noqa: BLE001 - every driver has its own hierarchy
            raise TransportError(f"cannot connect to the database at {self.host} ({self.display}): {_one_line(err)}") from None
        with self.errors(connection):  # outside: closing a dead connection raises too
            with connection:
                yield connection

    @contextlib.contextmanager
    def errors(self, connection: Any, what: str = "") -> Iterator[None]:
        try:
            yield
        except PsiqError:
            raise
        except Exception as err:  # noqa: BLE001
            raise self.error(err, connection, what) from None

    def error(self, err: BaseException, connection: Any, what: str = "") -> PsiqError:
        if _is_disconnect(err, connection):
            return TransportError(f"lost the connection to the database at {self.host} ({self.display}): {_one_line(err)}")
        return InputError(f"{what or self.display}: {_one_line(err)}")

    def quote(self, connection: Any, name: str) -> str:
        return connection.dialect.identifier_preparer.quote(name)


def _is_disconnect(err: BaseException, connection: Any) -> bool:
    if getattr(err, "connection_invalidated", False):
        return True
    orig = getattr(err, "orig", err)
    module = type(orig).__module__
    if module.startswith("psycopg"):
        import psycopg

        return isinstance(orig, psycopg.OperationalError)
    try:
        return bool(connection.invalidated)
    except Exception:  # noqa: BLE001
        return False


def _sqlite_transactional_ddl(sa: Any, engine: Any) -> None:
    """pysqlite runs CREATE TABLE outside any transaction; take over BEGIN so DDL rolls back too
    (the recipe in SQLAlchemy's SQLite dialect documentation)."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


# -- sources --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SqlSource(_Database):
    """Rows of ``table`` (``NAME`` or ``SCHEMA.NAME``) or of ``query`` in the database at ``url``.

    ``allow_empty``: an empty result is an input like any other (default: an error, which
    usually means a wrong query). ``allow_password_in_url`` is for scripts; the CLI refuses.
    """

    url: str
    table: str | None = None
    query: str | None = None
    password_file: str | os.PathLike[str] | None = None
    allow_empty: bool = False
    allow_password_in_url: bool = True

    def __post_init__(self) -> None:
        if (self.table is None) == (self.query is None):
            raise UsageError(f"{mask_url(self.url)}: give exactly one of --table and --query")
        if self.table is not None:
            _split_name(self.table, "table")

    def __str__(self) -> str:
        return f"{self.display} table {self.table}" if self.table else f"{self.display} query"

    @property
    def label(self) -> str:
        return f"table {self.table}" if self.table else "the query"


@dataclass(eq=False)
class SqlKeyTable(KeyTable):
    """A :class:`KeyTable` read from a database, with what the write pass needs to find its rows again."""

    source: SqlSource | None = None
    relation: str = ""
    order_by: list[str] = field(default_factory=list)
    column_types: list[Any] | None = None

    def summary(self) -> dict[str, Any]:
        summary = super().summary()
        summary["file"] = str(self.source)
        summary["format"] = "sql"
        return summary


def _plan(db: SqlSource, connection: Any, on: Sequence[str]) -> tuple[str, list[str], list[Any] | None, list[str]]:
    """(FROM clause, column names, column types or None, ORDER BY columns) of the source."""
    sa = sqlalchemy()
    if db.table is not None:
        schema, name = _split_name(db.table, "table")
        inspector = sa.inspect(connection)
        if not inspector.has_table(name, schema=schema):
            raise InputError(f"{db.display}: no table {db.table!r}")
        relation = (db.quote(connection, schema) + "." if schema else "") + db.quote(connection, name)
        try:
            columns = inspector.get_columns(name, schema=schema)
            header: list[str] = [c["name"] for c in columns]
            types: list[Any] | None = [c["type"] for c in columns]
        except Exception:  # noqa: BLE001 - a dialect whose reflection fails (duckdb-engine on new DuckDB)
            connection.rollback()
            header, types = column_names(connection, relation), None
        try:
            primary = list(inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") or [])
        except Exception:  # noqa: BLE001 - NotImplementedError, or reflection failing as above
            connection.rollback()
            primary = []
    else:
        alias = " psiq_source" if connection.dialect.name == "oracle" else " AS psiq_source"
        relation = f"({db.query.strip().rstrip(';')}){alias}"  # type: ignore[union-attr]
        header, types, primary = column_names(connection, relation), None, []
    missing = [c for c in on if c not in header]
    if missing:
        shown = ", ".join(repr(c) for c in header[:20]) + (", ..." if len(header) > 20 else "")
        near = [c for c in header if c.casefold() == missing[0].casefold()]
        hint = f"; did you mean {near[0]!r}? (column names are case-sensitive)" if near else ""
        raise InputError(f"{db.label}: no key column {missing[0]!r}; the columns are: {shown}{hint}")
    if len(set(header)) != len(header):
        raise InputError(f"{db.label}: column names repeat; give each column a distinct name (SELECT ... AS ...)")
    order = primary or [*on, *(c for c in header if c not in on)]
    return relation, header, types, order


def column_names(connection: Any, relation: str) -> list[str]:
    """Column names of a table or ``(query) alias`` from an empty result (no reflection needed)."""
    result = connection.exec_driver_sql(f"SELECT * FROM {relation} WHERE 1 = 0")
    try:
        return list(result.keys())
    finally:
        result.close()


def _select(db: SqlSource, connection: Any, columns: Sequence[str], relation: str, order: Sequence[str]) -> str:
    names = ", ".join(db.quote(connection, c) for c in columns)
    keys = ", ".join(db.quote(connection, c) for c in order)
    return f"SELECT {names} FROM {relation} ORDER BY {keys}"


def _stream(connection: Any, statement: str) -> Iterator[list[Any]]:
    options = {"stream_results": True, "yield_per": BATCH}
    result = connection.exec_driver_sql(statement, execution_options=options)
    with contextlib.closing(result):
        yield from result.partitions(BATCH)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("a binary key value is not valid UTF-8") from None
    return str(value)


def _utf8_column(values: Sequence[Any]) -> list[bytes] | None:
    """A column as UTF-8 bytes in one pass, or None when a value holds a newline."""
    try:
        joined = "\n".join(values)
    except TypeError:
        joined = "\n".join(map(_text, values))
    if joined.count("\n") != len(values) - 1:
        return None
    return joined.encode("utf-8").split(b"\n")


def add_rows(collector: _Collector, row0: int, rows: Sequence[Sequence[Any]]) -> None:
    """Feed a batch of key tuples (database values) to the CSV key pipeline."""
    columns = [list(c) for c in zip(*rows)]
    encoded = [_utf8_column(c) for c in columns]
    if any(c is None for c in encoded):
        for i, values in enumerate(zip(*columns)):
            collector.add(row0 + i, row0 + i + 1, [_text(v) for v in values])
        return
    collector.add_batch(row0, encoded, np.arange(row0 + 1, row0 + 1 + len(rows), dtype=np.int64))  # type: ignore[arg-type]


def add_lines(collector: _Collector, row0: int, lines: list[bytes], columns: list[int], block: bytes | None = None,
              escaped: bool | None = None) -> None:
    """Feed COPY text lines (key fields at ``columns``) to the CSV key pipeline. ``block``: the
    lines joined (saves joining them again); ``escaped``: whether they hold a backslash, if known."""
    if not lines:
        return
    if escaped is None:
        escaped = b"\\" in (block if block is not None else b"".join(lines))
    if escaped:  # escapes or NULLs: one line at a time
        values = [pgcopy.unescape(line) for line in lines]
        add_rows(collector, row0, [tuple(v[c] for c in columns) for v in values])
        return
    if columns == [0] and block is not None and b"\t" not in block:
        fields = [lines]
    else:  # one pass per column, splitting no further than needed (as the CSV reader does)
        fields = [[line.split(b"\t", c + 1)[c] for line in lines] for c in columns]
    collector.add_batch(row0, fields, np.arange(row0 + 1, row0 + 1 + len(lines), dtype=np.int64))


def read_keys(source: SqlSource, on: Sequence[str], *, normalization: Normalization | None = None,
              dedup: str = "error", skip_empty: bool = False, progress: Callable[[int], None] | None = None,
              fmt: str | None = None) -> SqlKeyTable:
    """The key columns ``on`` of ``source``, streamed, as a :class:`SqlKeyTable` (rows counted from 0
    in the source's deterministic order; errors name the 1-based row)."""
    on = check_key_options(on, dedup)
    normalization = normalization or Normalization()
    collector = _Collector(source.label, on, normalization, dedup, skip_empty, "row")
    rows = 0
    with source.connect() as connection:
        relation, header, types, order = _plan(source, connection, on)
        statement = _select(source, connection, on, relation, order)
        if pgcopy.usable(connection):  # COPY text: split in bulk like a CSV block
            for block in pgcopy.blocks(connection, statement):
                lines = pgcopy.split_block(block)
                add_lines(collector, rows, lines, list(range(len(on))), block)
                rows += len(lines)
                if progress is not None:
                    progress(rows)
        else:
            for batch in _stream(connection, statement):
                add_rows(collector, rows, batch)
                rows += len(batch)
                if progress is not None:
                    progress(rows)
    if rows == 0 and not source.allow_empty:
        raise InputError(f"{source.label} returned no rows (pass --allow-empty if that is expected)")
    return SqlKeyTable(
        path=Path(source.table or "query"), fmt="sql", header=header, on=on,
        columns=[header.index(c) for c in on], normalization=normalization, dedup=dedup,
        keys=collector.keys,
        row_numbers=np.frombuffer(collector.row_numbers, dtype=np.int64).copy(),
        row_keys=np.frombuffer(collector.row_keys, dtype=np.int64).copy(),
        rows_read=rows, duplicate_rows=collector.duplicates, skipped_rows=collector.skipped,
        source=source, relation=relation, order_by=order, column_types=types,
    )


def iter_columns(source: SqlSource, columns: Sequence[str]) -> Iterator[list[Any]]:
    """Batches of tuples of ``columns`` from ``source`` (streamed; for the PIR blacklist)."""
    with source.connect() as connection:
        relation, _header, _types, order = _plan(source, connection, columns)
        total = 0
        for batch in _stream(connection, _select(source, connection, columns, relation, order)):
            total += len(batch)
            yield batch
    if total == 0 and not source.allow_empty:
        raise InputError(f"{source.label} returned no rows (pass --allow-empty if that is expected)")


def read_rows(source: SqlSource) -> tuple[list[str], list[Any] | None, list[Any]]:
    """(column names, column types or None, every row) of a small source (PIR batch lookups)."""
    with source.connect() as connection:
        relation, header, types, order = _plan(source, connection, [])
        rows: list[Any] = []
        for batch in _stream(connection, _select(source, connection, header, relation, order)):
            rows.extend(tuple(row) for row in batch)
    if not rows and not source.allow_empty:
        raise InputError(f"{source.label} returned no rows (pass --allow-empty if that is expected)")
    return header, types, rows


# -- the write pass: find the rows again ----------------------------------------------------
class _Placement:
    """Where each source row goes: the positions of ``order`` holding it, sorted by source row."""

    def __init__(self, order: np.ndarray) -> None:
        order = np.asarray(order, dtype=np.int64)
        self.size = len(order)
        filled = np.flatnonzero(order >= 0)
        by_row = np.argsort(order[filled], kind="stable")
        self.positions = filled[by_row]
        self.rows = order[self.positions]
        self.empty = np.flatnonzero(order < 0)

    def pick(self, row0: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, offsets into the batch) for source rows ``row0 .. row0+count-1``."""
        lo, hi = np.searchsorted(self.rows, [row0, row0 + count])
        return self.positions[lo:hi], self.rows[lo:hi] - row0


class _RowKeys(_Collector):
    """The write pass's re-keying: every row's key in row order, no dedup index (the check only
    compares keys with the first pass's, so building a dictionary of them would be wasted)."""

    def __init__(self, table: SqlKeyTable) -> None:
        super().__init__("", table.on, table.normalization, "keep-all", True, "row")
        self.found: list[bytes] = []

    def _keep(self, row: int, line: int, key: bytes) -> None:
        self.row_numbers.append(row)
        self.found.append(key)

    def _dedup_batch(self, row0: int, keys: list[bytes], lines: np.ndarray) -> None:
        self.row_numbers.frombytes(np.arange(row0, row0 + len(keys), dtype=np.int64).tobytes())
        self.found.extend(keys)


def _check_keys(table: SqlKeyTable, rows: np.ndarray, values: list[Any], lines: bool = False,
                escaped: bool | None = None) -> None:
    """The rows about to be written still carry the keys read in the first pass (re-keyed in
    bulk through the same pipeline; ``values`` are value tuples, or COPY text lines, ``escaped``
    telling whether any of those holds a backslash, if known)."""
    collector = _RowKeys(table)
    try:
        if lines:
            add_lines(collector, 0, values, table.columns, escaped=escaped)
        else:
            add_rows(collector, 0, [tuple(v[c] for c in table.columns) for v in values])
    except InputError:
        collector.row_numbers = array("q")  # cannot be keyed at all: changed
    where = np.searchsorted(table.row_numbers, rows)
    where = np.minimum(where, max(len(table.row_numbers) - 1, 0))
    same = len(collector.row_numbers) == len(rows) and len(table.row_numbers) > 0
    same = same and bool(np.array_equal(table.row_numbers[where], rows))
    if same:
        same = collector.found == list(map(table.keys.__getitem__, table.row_keys[where].tolist()))
    if not same:
        label = table.source.label if table.source else "the source"
        raise InputError(f"{label}: a row has changed since its keys were read; the table changed during the run "
                         "(nothing written)")


def stream_rows(table: SqlKeyTable, order: np.ndarray, *, lines: bool = False) -> tuple[
        list[str], list[Any] | None, Iterator[tuple[np.ndarray, list[Any]]], np.ndarray]:
    """(column names, column types or None, batches of (positions, rows), empty positions) for the
    aligned output. Rows come in source order, each batch with the output position of every row
    (``lines``: PostgreSQL COPY text lines instead of value tuples, for a PostgreSQL sink);
    positions with order -1 (empty rows) are returned apart. The iterator raises
    :class:`InputError` if the source changed since the keys were read.
    """
    source = table.source
    if source is None:
        raise UsageError("this key table was not read from a database")
    placement = _Placement(order)

    def batches() -> Iterator[tuple[np.ndarray, list[Any]]]:
        total = 0
        with source.connect() as connection:
            statement = _select(source, connection, table.header, table.relation, table.order_by)
            if lines:  # COPY text: a block's lines, and whether any holds an escape (then: line by line)
                stream: Iterator[Any] = pgcopy.blocks(connection, statement)
                batches: Iterator[Any] = ((pgcopy.split_block(block), b"\\" in block) for block in stream)
            else:
                stream = _stream(connection, statement)
                batches = ((batch, None) for batch in stream)
            try:
                for batch, escaped in batches:
                    positions, offsets = placement.pick(total, len(batch))
                    if len(positions):
                        every = len(offsets) == len(batch) and bool(np.array_equal(offsets, np.arange(len(batch))))
                        picked = batch if every else list(map(batch.__getitem__, offsets.tolist()))
                        _check_keys(table, offsets + total, picked, lines, escaped)
                        yield positions, picked
                    total += len(batch)
            finally:
                # Close the reading stream before its connection: a COPY still in progress when the
                # connection is closed (rolled back) makes psycopg wait forever for a reply the server
                # never sends (the hang of test_connection_terminated_mid_write_leaves_no_table).
                # Closed first, pgcopy.blocks drops the connection instead.
                stream.close()  # type: ignore[attr-defined]
        if total != table.rows_read:
            raise InputError(f"{source.label}: has {total} rows now but had {table.rows_read} when its keys were read;"
                             " the table changed during the run (nothing written)")

    return list(table.header), table.column_types, batches(), placement.empty


def write_file(table: SqlKeyTable, order: np.ndarray, output: str | os.PathLike[str]) -> int:
    """Aligned rows of a database source into a CSV/TSV file (atomic, mode 0600): the needed rows
    are spilled in source order to a private temporary file beside the output, then copied in
    output order by :func:`psi.records.write_rows`."""
    from .. import records

    out = Path(output)
    fmt = records.detect_format(out)
    if fmt == "parquet":
        raise UsageError(f"{out.name}: a database input writes CSV/TSV files or database tables (--output-table)")
    order = np.asarray(order, dtype=np.int64)
    header, _types, batches, _empty = stream_rows(table, order)
    remap = np.full(len(order), -1, dtype=np.int64)
    fd, spill = tempfile.mkstemp(dir=out.resolve().parent, prefix=".psiq-spill-", suffix=f".{fmt}")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
            writer.writerow(header)
            written = 0
            for positions, rows in batches:
                writer.writerows([["" if v is None else v for v in row] for row in rows])
                remap[positions] = np.arange(written, written + len(rows), dtype=np.int64)
                written += len(rows)
        return records.write_rows(spill, remap, out, fmt=fmt, expect_rows=written)
    finally:
        with contextlib.suppress(Exception):
            batches.close()  # type: ignore[attr-defined]  # release the reading connection on failure
        with contextlib.suppress(OSError):
            os.unlink(spill)


# -- sinks ----------------------------------------------------------------------------------
from .sink import SqlSink  # noqa: E402  (the sink builds on the source side above)
