"""The database sink: aligned rows into a table, in one transaction (see :mod:`psi.io.sql`)."""

from __future__ import annotations

import csv
import datetime
import decimal
import os
import secrets
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ..errors import InputError, UsageError
from .sql import _TRANSACTIONAL_DDL, BATCH, IF_EXISTS, SqlKeyTable, _Database, _Placement, _split_name, column_names, stream_rows
from . import pgcopy
from .urls import mask_url, sqlalchemy

__all__ = ["SqlSink"]


@dataclass(frozen=True)
class SqlSink(_Database):
    """Table ``table`` (``NAME`` or ``SCHEMA.NAME``) in the database at ``url``.

    ``if_exists``: ``fail`` (default; checked by :meth:`check` before any protocol work and again
    inside the write transaction), ``replace`` (dropped and recreated in the same transaction
    where the dialect allows) or ``append``. ``order_column`` holds each row's aligned position
    (0-based): row ``order_column = i`` of both parties' tables belongs to the same customer.
    """

    url: str
    table: str
    if_exists: str = "fail"
    order_column: str = "psiq_row"
    password_file: str | os.PathLike[str] | None = None
    allow_password_in_url: bool = True

    def __post_init__(self) -> None:
        if self.if_exists not in IF_EXISTS:
            raise UsageError(f"--if-exists is one of {', '.join(IF_EXISTS)}, not {self.if_exists!r}")
        _split_name(self.table, "output table")
        if not self.order_column:
            raise UsageError("--order-column must name a column")

    def __str__(self) -> str:
        return f"{mask_url(self.url)} table {self.table}"

    def _existing(self, connection: Any) -> list[str] | None:
        """Column names of the table if it exists, else None."""
        sa = sqlalchemy()
        schema, name = _split_name(self.table, "output table")
        inspector = sa.inspect(connection)
        if not inspector.has_table(name, schema=schema):
            return None
        try:
            return [c["name"] for c in inspector.get_columns(name, schema=schema)]
        except Exception:  # noqa: BLE001 - reflection failing (duckdb-engine on new DuckDB)
            connection.rollback()
            quote = connection.dialect.identifier_preparer.quote
            return column_names(connection, (quote(schema) + "." if schema else "") + quote(name))

    def _refuse(self, columns: list[str] | None, header: list[str] | None = None) -> None:
        if columns is None:
            return
        if self.if_exists == "fail":
            raise UsageError(f"output table {self.table!r} already exists in {mask_url(self.url)} "
                             "(--if-exists fail); choose another --output-table or --if-exists replace|append")
        if self.if_exists == "append":
            wanted = [self.order_column, *(header or [])]
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise UsageError(f"cannot append to {self.table!r}: it has no column {missing[0]!r}")

    def check(self) -> None:
        """Refuse early (exit 2) what the write would refuse: an existing table with ``fail``,
        an ``append`` target without the order column. Connects, so a wrong password or an
        unreachable server also shows up before any protocol work (exit 3)."""
        with self.connect(must_exist=False) as connection:
            self._refuse(self._existing(connection))

    def write(self, table: Any, order: np.ndarray) -> int:
        """Write ``table``'s source rows in ``order`` (-1: an all-NULL row) with their positions."""
        order = np.asarray(order, dtype=np.int64)
        if self._copies_from(table):  # PostgreSQL to PostgreSQL: COPY text lines pass through unparsed
            header, types, batches, empty = stream_rows(table, order, lines=True)
            self._write(header, types, batches, empty, lines=True)
        else:
            header, types, batches, empty = _rows_of(table, order)
            self._write(header, types, batches, empty)
        return int(len(order))

    def _copies_from(self, table: Any) -> bool:
        if not isinstance(table, SqlKeyTable) or table.column_types is None or table.source is None:
            return False
        ours, theirs = self.engine().dialect, table.source.engine().dialect
        return ours.name == theirs.name == "postgresql" and ours.driver == theirs.driver == "psycopg"

    def write_records(self, header: list[str], rows: list[Any], types: list[Any] | None = None) -> int:
        """Write ``rows`` (tuples in ``header`` order; position = list index) as a new table."""
        batches = iter([(np.arange(len(rows), dtype=np.int64), rows)] if rows else [])
        self._write(list(header), types, batches, np.zeros(0, dtype=np.int64))
        return len(rows)

    def _write(self, header: list[str], types: list[Any] | None, batches: Iterator[Any], empty: np.ndarray,
               lines: bool = False) -> None:
        if self.order_column in header:
            raise UsageError(f"the input already has a column {self.order_column!r}: choose another --order-column")
        try:
            sa = sqlalchemy()
            schema, name = _split_name(self.table, "output table")
            with self.connect(must_exist=False) as connection:
                first = next(batches, None)
                column_types = _column_types(sa, connection.dialect, types, header, first)
                pending = _chain(first, batches, empty, len(header), lines)
                existing = self._existing(connection)
                self._refuse(existing, header)
                connection.rollback()  # end the inspector's implicit transaction; ours starts now
                if connection.dialect.name in _TRANSACTIONAL_DDL:
                    with connection.begin():
                        existing = self._existing(connection)
                        self._refuse(existing, header)
                        if existing is not None and self.if_exists == "replace":
                            sa.Table(name, sa.MetaData(), schema=schema).drop(connection)
                            existing = None
                        target = self._target(sa, connection, name, schema, header, column_types, existing is None)
                        self._insert(sa, connection, target, header, pending, lines)
                else:
                    self._write_staged(sa, connection, name, schema, header, column_types, pending)
        finally:  # a failed write must not leave the source's reading connection (and its locks) open
            close = getattr(batches, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - the reading connection died too: the first error is the one to report
                    pass

    def _target(self, sa: Any, connection: Any, name: str, schema: str | None, header: list[str],
                column_types: list[Any], create: bool) -> Any:
        metadata = sa.MetaData()
        if not create:
            return sa.Table(name, metadata, schema=schema, autoload_with=connection)
        target = sa.Table(name, metadata, sa.Column(self.order_column, sa.BigInteger, nullable=False),
                          *(sa.Column(c, t) for c, t in zip(header, column_types)), schema=schema)
        target.create(connection)
        return target

    def _insert(self, sa: Any, connection: Any, target: Any, header: list[str],
                pending: Iterator[tuple[np.ndarray, list[Any]]], lines: bool = False) -> None:
        names = [self.order_column, *header]
        driver = connection.connection.driver_connection
        if connection.dialect.name == "postgresql" and type(driver).__module__.startswith("psycopg"):
            quote = connection.dialect.identifier_preparer.quote
            relation = (quote(target.schema) + "." if target.schema else "") + quote(target.name)
            columns = ", ".join(quote(c) for c in names)
            with driver.cursor() as cursor, cursor.copy(f"COPY {relation} ({columns}) FROM STDIN",
                                                         writer=pgcopy.background_writer(cursor)) as copy:
                if lines:
                    for positions, rows in pending:
                        copy.write(b"".join(map(b"%d\t%s\n".__mod__, zip(positions.tolist(), rows))))
                    return
                write = copy.write_row
                for positions, rows in pending:
                    block = _text_block(positions, rows, len(header))
                    if block is not None:  # plain text values (a CSV source): one buffer, as COPY text
                        copy.write(block)
                        continue
                    for position, row in zip(positions.tolist(), rows):
                        write((position, *row))
            return
        statement = sa.insert(target)
        keys = [self.order_column, *(c for c in names[1:])]
        for positions, rows in pending:
            for begin in range(0, len(rows), BATCH):
                chunk = zip(positions[begin : begin + BATCH].tolist(), rows[begin : begin + BATCH])
                connection.execute(statement, [dict(zip(keys, (p, *row))) for p, row in chunk])

    def _write_staged(self, sa: Any, connection: Any, name: str, schema: str | None, header: list[str],
                      column_types: list[Any], pending: Iterator[tuple[np.ndarray, list[Any]]]) -> None:
        """Dialects whose DDL commits (MySQL, Oracle, Hive): fill a staging table, then swap it in."""
        staging = f"psiq_stage_{secrets.token_hex(6)}"
        quote = connection.dialect.identifier_preparer.quote
        qualified = (quote(schema) + "." if schema else "") + quote(name)
        qualified_staging = (quote(schema) + "." if schema else "") + quote(staging)
        try:
            with connection.begin():
                target = self._target(sa, connection, staging, schema, header, column_types, True)
                self._insert(sa, connection, target, header, pending)
            with connection.begin():
                existing = self._existing(connection)
                self._refuse(existing, header)
                if existing is not None and self.if_exists == "append":
                    columns = ", ".join(quote(c) for c in [self.order_column, *header])
                    connection.exec_driver_sql(f"INSERT INTO {qualified} ({columns}) SELECT {columns} FROM {qualified_staging}")
                    connection.exec_driver_sql(f"DROP TABLE {qualified_staging}")
                    return
                if existing is not None:
                    connection.exec_driver_sql(f"DROP TABLE {qualified}")
                connection.exec_driver_sql(f"ALTER TABLE {qualified_staging} RENAME TO {quote(name)}")
        except BaseException:
            try:
                with connection.begin():
                    connection.exec_driver_sql(f"DROP TABLE IF EXISTS {qualified_staging}")
            except Exception:  # noqa: BLE001 - connection gone: the staging table is named psiq_stage_*
                pass
            raise


def _text_block(positions: np.ndarray, rows: list[Any], width: int) -> bytes | None:
    """``rows`` as COPY text lines behind their positions when every value is a string that needs
    no escaping (no backslash, tab, newline or carriage return) -- what ``write_row`` would send
    for them; None otherwise (NULLs, other types, escapes: the caller writes row by row)."""
    if not rows:
        return b""
    try:
        body = "\n".join(map("\t".join, rows))
    except TypeError:  # None or a non-string value
        return None
    if ("\\" in body or "\r" in body or body.count("\n") != len(rows) - 1
            or body.count("\t") != (width - 1) * len(rows)):
        return None
    lines = body.encode("utf-8").split(b"\n")
    return b"".join(map(b"%d\t%s\n".__mod__, zip(positions.tolist(), lines)))


def _chain(first: Any, batches: Iterator[Any], empty: np.ndarray, width: int,
           lines: bool = False) -> Iterator[tuple[np.ndarray, list[Any]]]:
    if first is not None:
        yield first
    yield from batches
    blank: Any = b"\t".join([b"\\N"] * width) if lines else (None,) * width
    for begin in range(0, len(empty), BATCH):
        chunk = empty[begin : begin + BATCH]
        yield chunk, [blank] * len(chunk)


_PYTHON_TYPES = (
    (bool, "Boolean"), (int, "BigInteger"), (float, "Float"), (decimal.Decimal, "Numeric"),
    (datetime.datetime, "DateTime"), (datetime.date, "Date"), (datetime.time, "Time"),
    (bytes, "LargeBinary"), (str, "Text"),
)


def _column_types(sa: Any, dialect: Any, types: list[Any] | None, header: list[str], first: Any) -> list[Any]:
    """Source column types the sink dialect can express (else their generic form, else TEXT);
    for a query or a file, types inferred from the first batch of values."""
    if types is not None:
        chosen = []
        for source_type in types:
            for candidate in (source_type, _generic(source_type)):
                if candidate is None:
                    continue
                try:
                    candidate.compile(dialect=dialect)
                except Exception:  # noqa: BLE001 - UnsupportedCompilationError and friends
                    continue
                chosen.append(candidate)
                break
            else:
                chosen.append(sa.Text())
        return chosen
    rows = first[1] if first is not None else []
    chosen = []
    for column in range(len(header)):
        value = next((row[column] for row in rows if row[column] is not None), None)
        kind = next((name for cls, name in _PYTHON_TYPES if isinstance(value, cls)), "Text")
        chosen.append(getattr(sa, kind)())
    return chosen


def _generic(source_type: Any) -> Any:
    try:
        return source_type.as_generic()
    except Exception:  # noqa: BLE001 - NotImplementedError for dialect-only types
        return None


def _rows_of(table: Any, order: np.ndarray) -> tuple[list[str], list[Any] | None, Iterator[Any], np.ndarray]:
    """The aligned rows of any key table: a database source, a DataFrame or a CSV/TSV/Parquet file."""
    if isinstance(table, SqlKeyTable):
        return stream_rows(table, order)
    from .frame import frame_rows, is_frame_table

    if is_frame_table(table):
        return frame_rows(table, order)
    return _file_rows(table, order)


def _file_rows(table: Any, order: np.ndarray) -> tuple[list[str], list[Any] | None, Iterator[Any], np.ndarray]:
    """CSV/TSV rows as text (Parquet rows as their values), numbered as :mod:`psi.records` numbers them."""
    placement = _Placement(order)
    header = list(table.header)
    if table.fmt == "parquet":
        import pyarrow.parquet as pq

        def parquet_batches() -> Iterator[list[Any]]:
            for batch in pq.ParquetFile(str(table.path)).iter_batches(batch_size=BATCH):
                columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
                yield list(zip(*columns))

        source: Iterator[list[Any]] = parquet_batches()
    else:
        source = _csv_batches(table.path, "\t" if table.fmt == "tsv" else ",", len(header))

    def batches() -> Iterator[tuple[np.ndarray, list[Any]]]:
        total = 0
        for batch in source:
            positions, offsets = placement.pick(total, len(batch))
            if len(positions):
                yield positions, [batch[i] for i in offsets.tolist()]
            total += len(batch)
        if total != table.rows_read:
            raise InputError(f"{table.path.name}: has {total} data rows now but had {table.rows_read} when its keys "
                             "were read; the file changed during the run")

    return header, None if table.fmt != "parquet" else None, batches(), placement.empty


def _csv_batches(path: Any, delimiter: str, width: int) -> Iterator[list[Any]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        next(reader, None)
        batch: list[Any] = []
        for record in reader:
            if not record:
                continue  # blank lines are not rows
            batch.append(tuple(record[:width]) + ("",) * (width - len(record)))
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch
