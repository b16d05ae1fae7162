"""Database options shared by ``psiq psi`` and ``psiq pir``: --table/--query for a URL input,
--output-table/--if-exists/--order-column for a URL output, the password from a file or
``PSIQ_DB_PASSWORD`` (never from the command line: a URL with a password is refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import click

from psi.errors import UsageError
from psi.io.urls import PASSWORD_ENV, is_database_url

__all__ = ["source_options", "output_table_options", "resolve_source", "resolve_output", "session_db_options"]

F = TypeVar("F", bound=Callable[..., Any])


def source_options(fn: F, *, allow_empty: bool = True) -> F:
    """--table, --query, --allow-empty, --db-password-file (for an --input database URL); the PSI
    commands have their own --allow-empty (any input), which the database source then follows."""
    for decorator in reversed([
        click.option("--table", "db_table", default=None,
                     help="With a database URL as --input: read this table (NAME or SCHEMA.NAME)."),
        click.option("--query", "db_query", default=None,
                     help="With a database URL as --input: read the rows of this SELECT instead of a table."),
        *([click.option("--allow-empty", "db_allow_empty", is_flag=True,
                        help="Accept a table or query with no rows (default: exit 2, usually a wrong query).")]
          if allow_empty else []),
        click.option("--db-password-file", "db_password_file", type=click.Path(dir_okay=False, path_type=Path),
                     default=None,
                     help=f"Database password: first line of this file (else ${PASSWORD_ENV}, else the driver's own, "
                          "e.g. ~/.pgpass). Never put it in the URL."),
    ]):
        fn = decorator(fn)
    return fn


def output_table_options(fn: F) -> F:
    """--output-table, --if-exists, --order-column (for an --output database URL)."""
    for decorator in reversed([
        click.option("--output-table", "db_output_table", default=None,
                     help="With a database URL as --output (default: the --input database): write the rows to this "
                          "table, in one transaction."),
        click.option("--if-exists", "db_if_exists", type=click.Choice(["fail", "replace", "append"]), default="fail",
                     show_default=True, help="What to do when --output-table exists (fail is checked before any "
                                             "protocol work)."),
        click.option("--order-column", "db_order_column", default="psiq_row", show_default=True,
                     help="Column holding the aligned position (0-based) in --output-table."),
    ]):
        fn = decorator(fn)
    return fn


def session_db_options(fn: F) -> F:
    return source_options(output_table_options(fn), allow_empty=False)


def resolve_source(kw: dict[str, Any], input_key: str = "input_path") -> Any:
    """The --input value as a file path or an :class:`~psi.io.SqlSource`; pops the db options.
    Refuses (exit 2) a URL with a password in it, and --table/--query without a URL."""
    value = kw.get(input_key)
    table, query = kw.pop("db_table", None), kw.pop("db_query", None)
    allow_empty, password_file = kw.pop("db_allow_empty", kw.get("allow_empty", False)), kw.get("db_password_file")
    if value is None:
        return None
    if not is_database_url(str(value)):
        if table is not None or query is not None:
            raise UsageError("--table/--query need a database URL as --input (e.g. postgresql://user@host/db)")
        return Path(value)
    from psi.io.sql import SqlSource

    if (table is None) == (query is None):
        raise UsageError("a database URL as --input needs exactly one of --table and --query")
    source = SqlSource(str(value), table=table, query=query, password_file=password_file,
                       allow_empty=allow_empty, allow_password_in_url=False)
    source._resolved()  # refuses a password in the URL now, before anything else runs
    return source


def resolve_output(kw: dict[str, Any], source: Any, output_key: str = "output") -> Any:
    """The --output value as a file path or an :class:`~psi.io.SqlSink`; pops the db options."""
    value = kw.get(output_key)
    table = kw.pop("db_output_table", None)
    if_exists, order_column = kw.pop("db_if_exists", "fail"), kw.pop("db_order_column", "psiq_row")
    password_file = kw.pop("db_password_file", None)
    if table is None:
        if value is not None and is_database_url(str(value)):
            raise UsageError("a database URL as --output needs --output-table")
        return None if value is None else Path(value)
    if value is None:
        from psi.io.sql import SqlSource

        if not isinstance(source, SqlSource):
            raise UsageError("--output-table needs a database URL as --output (or as --input)")
        value = source.url
    if not is_database_url(str(value)):
        raise UsageError("--output-table needs a database URL as --output")
    from psi.io.sql import SqlSink

    sink = SqlSink(str(value), table, if_exists=if_exists, order_column=order_column,
                   password_file=password_file, allow_password_in_url=False)
    sink._resolved()
    return sink


def pir_entries(source: Any, on: str, label: str | None) -> Iterator[tuple[str, str]]:
    """(id, label) pairs streamed from a database source, for ``psiq pir setup``."""
    from psi.io.sql import _text, iter_columns

    columns = [on] if label is None or label == on else [on, label]
    for batch in iter_columns(source, columns):
        for row in batch:
            yield _text(row[0]), (_text(row[-1]) if label is not None else "")


def text(value: Any) -> str:
    from psi.io.sql import _text

    return _text(value)


def read_rows(source: Any, on: str) -> tuple[list[str], list[Any] | None, list[Any]]:
    """Every row of a database source (PIR batch lookups hold the ids in memory anyway)."""
    from psi.io.sql import read_rows as read

    return read(source)


def write_answers(sink: Any, header: list[str], types: list[Any] | None, rows: list[Any], results: list[Any]) -> None:
    """The input rows plus ``listed`` and ``label`` into the sink table, in one transaction."""
    import sqlalchemy as sa

    records = [(*row, bool(result.listed), result.label or "") for row, result in zip(rows, results)]
    sink.write_records([*header, "listed", "label"], records,
                       None if types is None else [*types, sa.Boolean(), sa.Text()])
