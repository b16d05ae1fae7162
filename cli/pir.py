"""``psiq pir``: build a blacklist table, serve it, query it without revealing the id asked."""

from __future__ import annotations

import csv
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import click

from psi.errors import InputError, UsageError
from psi.normalize import Normalization

from . import dbopts
from .common import warn, emit_json, handles_errors, info, output_options, tls_options

__all__ = ["pir_group"]

_normalize_option = click.option(
    "--normalize", default="trim", show_default=True,
    help="Key folds, comma-separated: trim,casefold,fullwidth,phone (must match the server's).",
)
_regex_option = click.option("--key-regex", default=None, help="Keep only this regex's first group of each id.")


def _csv_rows(path: Path) -> tuple[list[str], Iterator[list[str]]]:
    try:
        handle = path.open("r", encoding="utf-8-sig", newline="")
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    reader = csv.reader(handle, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        handle.close()
        raise InputError(f"{path} is empty") from None
    except (csv.Error, UnicodeDecodeError) as err:
        handle.close()
        raise InputError(f"{path}: cannot parse the header ({err})") from None

    def rows() -> Iterator[list[str]]:
        with handle:
            try:
                for row in reader:
                    if row:
                        yield row
            except (csv.Error, UnicodeDecodeError) as err:
                raise InputError(f"{path}, line {reader.line_num}: {err}") from None

    return header, rows()


def _column(header: list[str], name: str, path: Path) -> int:
    if name not in header:
        raise InputError(f"{path} has no column {name!r} (columns: {', '.join(header[:12])})")
    return header.index(name)


@click.group("pir")
def pir_group() -> None:
    """Keyword PIR blacklist lookup (匿踪查询): the service never learns which id was asked."""


@pir_group.command("setup")
@handles_errors
@click.option("--input", "input_path", required=True, type=str,
              help="CSV/TSV file, or a database URL with --table/--query (docs/DATABASES.md).")
@dbopts.source_options
@click.option("--on", "on", required=True, help="Column holding the listed ids.")
@click.option("--label", "label", default=None, help="Column holding the label returned to askers.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Table directory.")
@click.option("--label-width", type=click.IntRange(0, 4096), default=None, help="Bytes per label (default: the longest).")
@click.option("--workers", type=click.IntRange(1, 256), default=None, help="Processes for the OPRF (default: all cores).")
@_normalize_option
@_regex_option
@output_options
def setup_command(input_path: Any, on: str, label: str | None, out_dir: Path, label_width: int | None,
                  workers: int | None, normalize: str, key_regex: str | None, as_json: bool, quiet: bool,
                  **db: Any) -> None:
    """Build a new table version from a CSV or a database table (fresh keys: old hints and labels stop working)."""
    from pir import api

    input_path = dbopts.resolve_source({"input_path": input_path, **db})
    if not isinstance(input_path, Path):  # a database table or query: (id, label) pairs streamed
        report = api.setup(dbopts.pir_entries(input_path, on, label), out_dir, label_width=label_width,
                           workers=workers, normalization=Normalization.parse(normalize, key_regex))
        _setup_report(report, out_dir, as_json, quiet)
        return
    if not input_path.is_file():
        raise InputError(f"{input_path}: no such file")
    header, rows = _csv_rows(input_path)
    id_col = _column(header, on, input_path)
    label_col = _column(header, label, input_path) if label else None

    def entries() -> Iterator[tuple[str, str]]:
        for row in rows:
            if id_col >= len(row):
                raise InputError(f"{input_path}: a row has fewer columns than the header")
            yield row[id_col], (row[label_col] if label_col is not None and label_col < len(row) else "")

    report = api.setup(entries(), out_dir, label_width=label_width, workers=workers,
                       normalization=Normalization.parse(normalize, key_regex))
    _setup_report(report, out_dir, as_json, quiet)


def _setup_report(report: Any, out_dir: Path, as_json: bool, quiet: bool) -> None:
    summary = report.as_dict()
    if as_json:
        emit_json(summary)
    else:
        info(f"table {report.version[:16]}: {report.entries} entries ({report.duplicates} duplicates dropped), "
             f"{summary['rows']}x{summary['columns']} matrix, hint {summary['hint_bytes']} bytes, "
             f"setup {summary['seconds']['total']} s -> {out_dir}", quiet)


@pir_group.command("serve")
@handles_errors
@click.option("--db", "db_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--listen", default="127.0.0.1:7767", show_default=True)
@click.option("--quota", type=click.IntRange(0), default=None, help="Lookups per client per UTC day.")
@click.option("--audit-log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON-lines audit of counts per client (default: DB/audit.jsonl).")
@click.option("--forever", is_flag=True, help="Serve clients concurrently until interrupted (default: one client).")
@tls_options
@output_options
def serve_command(db_dir: Path, listen: str, quota: int | None, audit_log: Path | None, forever: bool,
                  tls: object, as_json: bool, quiet: bool) -> None:
    """Answer lookups from the table in DB; counts evaluations per client certificate."""
    from psi.transport.tcp import Listener

    from pir.service import PirService, QuotaBook

    service = PirService(db_dir, quota=QuotaBook(quota, audit_log or db_dir / "audit.jsonl"))
    table = service.table()
    with Listener(listen, tls) as listener:  # type: ignore[arg-type]
        host, port = listener.address
        info(f"serving table {table.version[:16]} ({table.params.entries} entries) on {host}:{port}", quiet)
        print(f"listening {host}:{port}", file=sys.stderr, flush=True)

        def report(event: dict) -> None:
            if as_json:
                emit_json(event)
            elif event.get("event") == "refused":
                warn(f"connection refused: {event['error']}")
            else:
                info(f"client {event['client']}: {event['outcome']}, {event['evaluations']} lookups"
                     + (f" ({event['error']})" if event.get("error") else ""), quiet)

        try:
            service.serve(listener, forever=forever, on_event=report)
        except KeyboardInterrupt:
            info("stopped", quiet)


def _print_result(result: object, as_json: bool) -> None:
    if as_json:
        emit_json(result.as_dict())  # type: ignore[attr-defined]
    elif result.listed:  # type: ignore[attr-defined]
        click.echo(f"{result.id}\tlisted\t{result.label}")  # type: ignore[attr-defined]
    else:
        click.echo(f"{result.id}\tnot listed")  # type: ignore[attr-defined]


@pir_group.command("query")
@handles_errors
@click.option("--peer", required=True, help="HOST:PORT of the lookup service.")
@click.option("--id", "ident", default=None, help="One id to look up.")
@click.option("--input", "input_path", default=None, type=str,
              help="CSV file of ids, or a database URL with --table/--query.")
@dbopts.source_options
@click.option("--on", "on", default=None, help="Id column of --input.")
@click.option("--output", "output_path", default=None, type=str,
              help="CSV with the input rows plus 'listed' and 'label' columns (or a database URL with --output-table).")
@dbopts.output_table_options
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where hints are cached per table version (default ~/.cache/psiq/pir).")
@_normalize_option
@_regex_option
@tls_options
@output_options
def query_command(peer: str, ident: str | None, input_path: Path | None, on: str | None, output_path: Path | None,
                  cache_dir: Path | None, normalize: str, key_regex: str | None, tls: object,
                  as_json: bool, quiet: bool, **db: Any) -> None:
    """Look ids up; exit status 0 whether listed or not."""
    from pir import api

    db.update(input_path=input_path, output=output_path)
    input_path = dbopts.resolve_source(db)  # a Path, a database source, or None
    output_path = sink = dbopts.resolve_output(db, input_path)
    if not isinstance(sink, (Path, type(None))):
        sink.check()  # --if-exists fail: before any lookup
    normalization = Normalization.parse(normalize, key_regex)
    if (ident is None) == (input_path is None):
        raise UsageError("give exactly one of --id or --input")
    if ident is not None:
        results = api.lookup([ident], peer=peer, tls=tls, cache_dir=cache_dir, normalization=normalization)
        _print_result(results[0], as_json)
        return
    assert input_path is not None
    if on is None:
        raise UsageError("--input needs --on (the id column)")
    if not isinstance(input_path, Path):
        header, types, rows = dbopts.read_rows(input_path, on)
    else:
        if not input_path.is_file():
            raise InputError(f"{input_path}: no such file")
        header, rows_iter = _csv_rows(input_path)
        rows, types = list(rows_iter), None
    id_col = _column(header, on, input_path)
    ids = [dbopts.text(row[id_col]) if id_col < len(row) else "" for row in rows]
    results = api.lookup(ids, peer=peer, tls=tls, cache_dir=cache_dir, normalization=normalization) if ids else []
    listed = sum(r.listed for r in results)
    if output_path is not None and not isinstance(output_path, Path):
        dbopts.write_answers(output_path, header, types, rows, results)
    elif output_path is not None:
        directory = output_path.resolve().parent
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".psiq-", suffix=".csv")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*header, "listed", "label"])
            for row, result in zip(rows, results):
                writer.writerow([*row, "true" if result.listed else "false", result.label or ""])
        os.replace(tmp, output_path)
    if as_json:
        emit_json({"queried": len(results), "listed": listed,
                   "results": [r.as_dict() for r in results] if output_path is None else None,
                   "output": str(output_path) if output_path else None})
    elif output_path is None:
        for result in results:
            _print_result(result, False)
    info(f"{len(results)} ids looked up, {listed} listed", quiet)
