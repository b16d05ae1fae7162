"""Where rows come from and where aligned rows go: files, databases, DataFrames.

The protocols never see any of this: they take the :class:`~psi.records.KeyTable` that a
source produces, and the session hands the aligned row order to a sink.

* Files (CSV/TSV/Parquet) stay in :mod:`psi.records`.
* Databases (:mod:`psi.io.sql`, extra ``psiq[sql]`` plus a driver extra):
  :class:`SqlSource` reads a table or a query through SQLAlchemy, streaming;
  :class:`SqlSink` writes the aligned rows into a table in one transaction.
* pandas DataFrames (:mod:`psi.io.frame`, pandas only if installed): a DataFrame as input,
  :class:`FrameSink` to get the aligned rows back as a DataFrame.

:func:`read_keys` and :func:`write_rows` dispatch on what they are handed. Nothing here imports
SQLAlchemy or pandas until a database or DataFrame is actually used.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from .urls import is_database_url, mask_url

__all__ = [
    "SqlSource",
    "SqlSink",
    "FrameSink",
    "is_database_url",
    "mask_url",
    "read_keys",
    "write_rows",
    "check_output",
    "is_source",
]


def __getattr__(name: str) -> Any:  # lazy: importing psi.io must not import SQLAlchemy
    if name in ("SqlSource", "SqlSink"):
        from . import sql

        return getattr(sql, name)
    if name == "FrameSink":
        from .frame import FrameSink

        return FrameSink
    raise AttributeError(name)


def _is_frame(obj: Any) -> bool:
    return type(obj).__name__ == "DataFrame" and type(obj).__module__.startswith("pandas")


def is_source(obj: Any) -> bool:
    """True for inputs this package reads (a database source or a DataFrame), False for file paths."""
    from . import sql

    return isinstance(obj, sql.SqlSource) or _is_frame(obj)


def read_keys(source: Any, on: Sequence[str], **options: Any) -> Any:
    """Read the key columns of ``source``: an :class:`SqlSource`, a pandas DataFrame, a database
    URL string (only with ``table=``/``query=`` in ``options``) or a file path."""
    if _is_frame(source):
        from .frame import read_frame_keys

        return read_frame_keys(source, on, **options)
    from . import sql

    if isinstance(source, sql.SqlSource):
        return sql.read_keys(source, on, **options)
    from .. import records

    return records.read_keys(source, on, **options)


def check_output(output: Any) -> None:
    """Checks an output can be written, before any protocol work (``--if-exists fail`` and an
    existing table: :class:`~psi.errors.UsageError`)."""
    from . import sql

    if isinstance(output, sql.SqlSink):
        output.check()


def write_rows(table: Any, row_order: np.ndarray, output: Any,
               progress: Callable[[int], None] | None = None) -> int:
    """Write ``table``'s source rows in ``row_order`` (-1: an empty row) to ``output``; returns rows written."""
    from . import sql
    from .frame import FrameSink, is_frame_table

    if isinstance(output, FrameSink):
        return output.write(table, row_order)
    if isinstance(output, sql.SqlSink):
        return output.write(table, row_order)
    if isinstance(table, sql.SqlKeyTable):
        return sql.write_file(table, row_order, output)
    if is_frame_table(table):
        from .frame import write_frame_file

        return write_frame_file(table, row_order, output)
    from .. import records

    return records.write_rows(table.path, row_order, os.fspath(output), fmt=table.fmt, expect_rows=table.rows_read)
