"""``psiq pir``: build a blacklist table, serve it, query it without revealing the id asked."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Iterator

import click

from psi.errors import InputError, UsageError
from psi.normalize import Normalization

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


@pir_group.command("setup")
@handles_errors
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--on", "on", required=True, help="Column holding the listed ids.")
@click.option("--label", "label", default=None, help="Column holding the label returned to askers.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Table directory.")
@click.option("--label-width", type=click.IntRange(0, 4096), default=None, help="Bytes per label (default: the longest).")
@click.option("--workers", type=click.IntRange(1, 256), default=None, help="Processes for the OPRF (default: all cores).")
@_normalize_option
@_regex_option
@_encoding_option
@output_options
def setup_command(input_path: Path, on: str, label: str | None, out_dir: Path, label_width: int | None,
                  workers: int | None, normalize: str, key_regex: str | None, as_json: bool, quiet: bool,
                  encoding: str | None = None) -> None:
    """Build a new table version from a CSV (fresh keys: old hints and labels stop working)."""
    from pir import api

    header, rows = _csv_rows(input_path, encoding)
    id_col = _column(header, on, input_path)
    label_col = _column(header, label, input_path) if label else None

    def entries() -> Iterator[tuple[str, str]]:
        for row in rows:
            if id_col >= len(row):
                raise InputError(f"{input_path}: a row has fewer columns than the header")
            yield row[id_col], (row[label_col] if label_col is not None and label_col < len(row) else "")

    report = api.setup(entries(), out_dir, label_width=label_width, workers=workers,
                       normalization=Normalization.parse(normalize, key_regex))
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
        info(f"listening {host}:{port}", quiet)

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
@click.option("--input", "input_path", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV/TSV of ids to look up in one connection (with --on).")
@click.option("--on", "on", default=None, help="Id column of --input.")
@click.option("--output", "output_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV with the input rows plus 'listed' and 'label' columns.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where hints are cached per table version (default ~/.cache/psiq/pir).")
@_normalize_option
@_regex_option
@_encoding_option
@click.option("--timeout", type=click.FloatRange(1), default=120.0, show_default=True,
              help="Seconds to wait for any one message from the service.")
@tls_options
@output_options
def query_command(peer: str, ident: str | None, input_path: Path | None, on: str | None, output_path: Path | None,
                  cache_dir: Path | None, normalize: str, key_regex: str | None, tls: object,
                  as_json: bool, quiet: bool, encoding: str | None = None, timeout: float = 120.0) -> None:
    """Look ids up; exit status 0 whether listed or not."""
    from pir import api

    normalization = Normalization.parse(normalize, key_regex)
    if (ident is None) == (input_path is None):
        raise UsageError("give exactly one of --id or --input")
    if ident is not None:
        results = api.lookup([ident], peer=peer, tls=tls, cache_dir=cache_dir, normalization=normalization,
                             timeout=timeout)
        _print_result(results[0], as_json)
        return
    assert input_path is not None
    if on is None:
        raise UsageError("--input needs --on (the id column)")
    header, rows_iter = _csv_rows(input_path, encoding)
    id_col = _column(header, on, input_path)
    rows = list(rows_iter)
    ids = [row[id_col] if id_col < len(row) else "" for row in rows]
    results = (api.lookup(ids, peer=peer, tls=tls, cache_dir=cache_dir, normalization=normalization, timeout=timeout)
               if ids else [])
    listed = sum(r.listed for r in results)
    if output_path is not None:
        directory = output_path.resolve().parent
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".psiq-", suffix=".csv")
        with os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="") as fh:
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
