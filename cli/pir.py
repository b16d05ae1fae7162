"""``psiq pir``: build a blacklist table, serve it, query it without revealing the id asked."""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import click

from psi.errors import InputError, UsageError
from psi.normalize import KeyNormalizationError, Normalization

from pir.protocol import DEFAULT_MAX_LOOKUPS
from pir.quota import DEFAULT_DAILY_QUOTA, DEFAULT_WARN_AT

from . import dbopts
from .common import warn, emit_json, handles_errors, info, output_options, tls_options

__all__ = ["pir_group"]

_normalize_option = click.option(
    "--normalize", default="trim", show_default=True,
    help="Key folds, comma-separated: trim,casefold,fullwidth,phone (must match the server's).",
)
_regex_option = click.option("--key-regex", default=None, help="Keep only this regex's first group of each id.")


_encoding_option = click.option(
    "--encoding", type=click.Choice(["utf-8", "utf-8-sig", "gbk", "gb18030"]), default=None,
    help="Text encoding of the CSV (default UTF-8; a byte-order mark is detected and wins).",
)


def _decode_error(path: Path, encoding: str) -> InputError:
    """The first line of ``path`` that ``encoding`` cannot decode, as a one-line error with a hint."""
    codec = "utf-8" if encoding.startswith("utf-8") else encoding
    line = 0
    with path.open("rb") as fh:
        for line, raw in enumerate(fh, start=1):
            try:
                raw.decode(codec)
            except UnicodeDecodeError:
                break
    hint = "pass --encoding gbk (or gb18030) for a GBK export" if codec == "utf-8" else "check --encoding"
    return InputError(f"{path} line {line}: not valid {encoding.upper()}; {hint}")


def _csv_rows(path: Path, encoding: str | None = None) -> tuple[list[str], Iterator[list[str]]]:
    from psi.encodings import resolve_encoding

    actual = resolve_encoding(path, encoding)
    try:
        handle = path.open("r", encoding="utf-8-sig" if actual.startswith("utf-8") else actual, newline="")
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    reader = csv.reader(handle, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        handle.close()
        raise InputError(f"{path} is empty") from None
    except UnicodeDecodeError:
        handle.close()
        raise _decode_error(path, actual) from None
    except csv.Error as err:
        handle.close()
        raise InputError(f"{path}: cannot parse the header ({err})") from None

    def rows() -> Iterator[list[str]]:
        with handle:
            try:
                for row in reader:
                    if row:
                        yield row
            except UnicodeDecodeError:
                raise _decode_error(path, actual) from None
            except csv.Error as err:
                raise InputError(f"{path}, line {reader.line_num}: {err}") from None

    return header, rows()


def _column(header: list[str], name: str, path: Path) -> int:
    if name not in header:
        raise InputError(f"{path} has no column {name!r} (columns: {', '.join(header[:12])})")
    return header.index(name)


@click.group("pir")
def pir_group() -> None:
    """Keyword PIR blacklist lookup (匿踪查询): the service never learns which id was asked."""


def _suite_option(text: str) -> Any:
    return click.option("--suite", type=click.Choice(["standard", "gm"]), default="standard", show_default=True, help=text)


@pir_group.command("setup")
@handles_errors
@click.option("--input", "input_path", required=True, type=str,
              help="CSV/TSV/Parquet file of listed ids, or a database URL with --table/--query (docs/DATABASES.md).")
@dbopts.source_options
@click.option("--on", "on", required=True, help="Column holding the listed ids.")
@click.option("--label", "label", default=None, help="Column holding the label returned to askers.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Table directory.")
@click.option("--replace", is_flag=True,
              help="Replace the table already in --out (it stays live until the new version is complete).")
@click.option("--dedup", type=click.Choice(["error", "first", "keep-all"]), default="error", show_default=True,
              help="A repeated id: stop naming both lines, keep the first row's label, or keep every distinct label.")
@click.option("--skip-empty-keys", "skip_empty", is_flag=True,
              help="Skip rows whose id is empty (or does not match --key-regex) instead of stopping.")
@click.option("--label-width", type=click.IntRange(0, 4096), default=None, help="Bytes per label (default: the longest).")
@click.option("--workers", type=click.IntRange(1, 256), default=None, help="Processes for the OPRF (default: all cores).")
@_normalize_option
@_regex_option
@_encoding_option
@_suite_option("The table's crypto suite, fixed for good: 'gm' = SM2/SM3 OPRF, SM4-GCM records, SM4-CTR (docs/GM.md).")
@output_options
def setup_command(input_path: Any, on: str, label: str | None, out_dir: Path, replace: bool, dedup: str,
                  skip_empty: bool, label_width: int | None, workers: int | None, normalize: str,
                  key_regex: str | None, as_json: bool, quiet: bool, encoding: str | None = None,
                  suite: str = "standard", **db: Any) -> None:
    """Build a new table version from a file or a database table (fresh keys: old hints and labels stop working)."""
    from pir import api
    from psi.encodings import utf8_copy
    from psi.records import detect_format

    normalization = Normalization.parse(normalize, key_regex)
    input_path = dbopts.resolve_source({"input_path": input_path, **db})
    if not isinstance(input_path, Path):  # a database table or query: (id, label) pairs streamed
        report = api.setup(dbopts.pir_entries(input_path, on, label), out_dir, label_width=label_width,
                           workers=workers, normalization=normalization, dedup=dedup, skip_empty=skip_empty,
                           replace=replace, suite=suite)
    else:
        if not input_path.is_file():
            raise InputError(f"{input_path}: no such file")
        with contextlib.ExitStack() as stack:
            path = input_path if detect_format(input_path, None) == "parquet" else stack.enter_context(
                utf8_copy(input_path, encoding))
            report = api.setup_file(path, on, out_dir, label=label, label_width=label_width, workers=workers,
                                    normalization=normalization, dedup=dedup, skip_empty=skip_empty, replace=replace,
                                    suite=suite)
    summary = {**report.as_dict(), "suite": suite}
    if as_json:
        emit_json(summary)
    else:
        notes = []
        if report.duplicates:
            notes.append(f"{report.duplicates} duplicate rows {'merged' if dedup == 'keep-all' else 'dropped'}")
        if report.skipped:
            notes.append(f"{report.skipped} rows with an empty id skipped")
        info(f"table {report.version[:16]}: {report.entries} entries"
             + (f" ({', '.join(notes)})" if notes else "")
             + f", {summary['rows']}x{summary['columns']} matrix, hint {summary['hint_bytes']} bytes, "
             f"setup {summary['seconds']['total']} s -> {out_dir}", quiet)


def _quota_limit(text: str) -> int | None:
    if text.strip().lower() in ("unlimited", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--quota must be a number or 'unlimited', not {text!r}") from None
    if value < 0:
        raise UsageError("--quota must be non-negative")
    return value


@pir_group.command("serve")
@handles_errors
@click.option("--db", "db_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--listen", default="127.0.0.1:7767", show_default=True)
@click.option("--quota", "quota_text", default=str(DEFAULT_DAILY_QUOTA), show_default=True,
              help="Lookups (OPRF evaluations) per client certificate per UTC day, or 'unlimited'.")
@click.option("--session-cap", type=click.IntRange(0), default=DEFAULT_MAX_LOOKUPS, show_default=True,
              help="Most lookups one session may ask for.")
@click.option("--quota-warn", type=click.FloatRange(0, 1, min_open=True), default=DEFAULT_WARN_AT, show_default=True,
              help="Warn (stderr and audit log) when a client reaches this fraction of its daily quota.")
@click.option("--audit-log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON-lines audit of counts per client (default: DB/audit.jsonl).")
@click.option("--forever", is_flag=True, help="Serve clients concurrently until interrupted (default: one session).")
@click.option("--max-sessions", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="Authenticated sessions served at once.")
@click.option("--max-per-client", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="Sessions one client certificate may hold at once.")
@click.option("--max-per-source", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Connections still in their TLS handshake allowed from one address.")
@click.option("--handshake-timeout", type=click.FloatRange(0.1, 300), default=5.0, show_default=True,
              help="Seconds a connection may take to complete its TLS handshake.")
@tls_options
@output_options
def serve_command(db_dir: Path, listen: str, quota_text: str, session_cap: int, quota_warn: float,
                  audit_log: Path | None, forever: bool, max_sessions: int, max_per_client: int, max_per_source: int,
                  handshake_timeout: float, tls: object, as_json: bool, quiet: bool) -> None:
    """Answer lookups from the table in DB; counts evaluations per client certificate."""
    from psi.transport.tcp import Listener

    from pir.service import PirService, QuotaBook, ServiceLimits

    def quota_warning(event: dict) -> None:
        warn(f"client {event['client']} has used {event['day_total']} of its {event['limit']} lookups today")

    quota = QuotaBook(_quota_limit(quota_text), audit_log or db_dir / "audit.jsonl", warn_at=quota_warn,
                      on_warning=quota_warning)
    service = PirService(db_dir, quota=quota, max_lookups=session_cap)
    limits = ServiceLimits(max_sessions=max_sessions, max_per_client=max_per_client, max_per_source=max_per_source,
                           handshake_timeout=handshake_timeout)
    table = service.table()
    with Listener(listen, tls, handshake_timeout=handshake_timeout) as listener:  # type: ignore[arg-type]
        host, port = listener.address
        info(f"serving table {table.version[:16]} ({table.params.entries} entries) on {host}:{port}; "
             f"quota {quota.limit if quota.limit is not None else 'unlimited'} per client per day", quiet)
        info(f"listening {host}:{port}", quiet)

        def report(event: dict) -> None:
            if as_json:
                emit_json(event)
            elif event.get("event") == "refused":
                warn(f"connection from {event.get('source', '?')} refused: {event['error']}")
            else:
                info(f"client {event['client']}: {event['outcome']}, {event['evaluations']} lookups"
                     + (f" ({event['error']})" if event.get("error") else ""), quiet)

        try:
            service.serve(listener, forever=forever, limits=limits, on_event=report)
        except KeyboardInterrupt as err:
            if getattr(err, "exit_code", None):  # SIGTERM/SIGHUP (cli.main.Stopped): exit 143/129
                raise
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
@click.option("--skip-empty-keys", "skip_empty", is_flag=True,
              help="Leave rows with an empty id unasked (listed column empty) instead of stopping.")
@_normalize_option
@_regex_option
@_encoding_option
@click.option("--timeout", type=click.FloatRange(1), default=120.0, show_default=True,
              help="Seconds to wait for any one message from the service.")
@_suite_option("Crypto suite; must be the one the service's table was set up under (else exit 5).")
@tls_options
@output_options
def query_command(peer: str, ident: str | None, input_path: Path | None, on: str | None, output_path: Path | None,
                  cache_dir: Path | None, skip_empty: bool, normalize: str, key_regex: str | None, tls: object,
                  as_json: bool, quiet: bool, encoding: str | None = None, timeout: float = 120.0,
                  suite: str = "standard", **db: Any) -> None:
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
        results = api.lookup([ident], peer=peer, tls=tls, cache_dir=cache_dir, normalization=normalization,
                             timeout=timeout, suite=suite)
        _print_result(results[0], as_json)
        return
    assert input_path is not None
    if on is None:
        raise UsageError("--input needs --on (the id column)")
    types = None
    if not isinstance(input_path, Path):
        header, types, db_rows = dbopts.read_rows(input_path, on)
        rows = [[dbopts.text(value) for value in row] for row in db_rows]
    else:
        if not input_path.is_file():
            raise InputError(f"{input_path}: no such file")
        header, rows_iter = _csv_rows(input_path, encoding)
        rows, db_rows = list(rows_iter), None
    id_col = _column(header, on, input_path)
    asked: list[int] = []  # rows whose id is looked up; the others are empty and never sent
    for number, row in enumerate(rows, start=1):
        value = row[id_col] if id_col < len(row) else ""
        try:
            empty = not normalization.apply(value)
        except KeyNormalizationError:
            empty = True
        if not empty:
            asked.append(number - 1)
        elif not skip_empty:
            raise InputError(f"{input_path} data row {number}: empty id (or no match for --key-regex); "
                             "use --skip-empty-keys to leave such rows unasked")
    ids = [rows[i][id_col] for i in asked]
    found = api.lookup(ids, peer=peer, tls=tls, cache_dir=cache_dir, normalization=normalization,
                       timeout=timeout, suite=suite) if ids else []
    results: list = [None] * len(rows)
    for i, result in zip(asked, found):
        results[i] = result
    listed = sum(r.listed for r in found)
    if output_path is not None and not isinstance(output_path, Path):
        if len(found) != len(rows):
            raise UsageError("--skip-empty-keys with a database --output-table: every row needs an answer")
        dbopts.write_answers(output_path, header, types, db_rows if db_rows is not None else rows, found)
    elif output_path is not None:
        directory = output_path.resolve().parent
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".psiq-", suffix=".csv")
        with os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*header, "listed", "label"])
            for row, result in zip(rows, results):
                state = "" if result is None else "true" if result.listed else "false"
                writer.writerow([*row, state, (result.label or "") if result is not None else ""])
        os.replace(tmp, output_path)
    if as_json:
        emit_json({"queried": len(found), "listed": listed, "skipped": len(rows) - len(found), "suite": suite,
                   "results": [r.as_dict() for r in found] if output_path is None else None,
                   "output": str(output_path) if output_path else None})
    elif output_path is None:
        for result in found:
            _print_result(result, False)
    skipped = len(rows) - len(found)
    info(f"{len(found)} ids looked up, {listed} listed" + (f", {skipped} rows with an empty id not asked" if skipped else ""),
         quiet)
