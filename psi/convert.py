"""The output file's format and encoding: from ``--output``'s extension (or ``--output-format``).

Promises: :func:`output_format` names the format an output gets (the explicit format, else
the output name's extension, else the input's) and refuses an explicit format that contradicts
the extension; :func:`write_output` writes a session's rows in that format and encoding,
atomically. Rows keep the input's columns and header. Same format and UTF-8: rows are copied
byte for byte (:func:`psi.records.write_rows`); CSV<->TSV re-delimits the fields (a TSV field
cannot hold a tab or a line break: refused); CSV/TSV -> Parquet stores every column as text;
Parquet -> CSV/TSV writes pyarrow's text rendering. Intermediate files live in a private
hidden folder beside the output and are removed.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .atomic import AtomicFile
from .encodings import encode_file, is_utf8
from .errors import InputError, UsageError
from .records import _EXTENSIONS, FORMATS, write_rows

__all__ = ["output_format", "write_output"]


def output_format(output: str | os.PathLike[str], explicit: str | None, input_format: str) -> str:
    """The format ``output`` is written in; :class:`UsageError` when ``explicit`` contradicts the name."""
    suffix = Path(str(output)).suffix.lower()
    implied = _EXTENSIONS.get(suffix)
    if explicit is not None:
        explicit = explicit.lower()
        if explicit not in FORMATS:
            raise UsageError(f"unknown output format {explicit!r} (known: {', '.join(FORMATS)})")
        if implied is not None and implied != explicit:
            raise UsageError(f"--output-format {explicit} but the output is named {Path(str(output)).name} "
                             f"({implied}): rename it or drop --output-format")
        return explicit
    return implied or input_format


def write_output(src: Path, src_fmt: str, rows: Any, output: str | os.PathLike[str], *, fmt: str | None = None,
                 encoding: str | None = None, expect_rows: int | None = None, offsets: Any = None) -> int:
    """Write ``rows`` of ``src`` (UTF-8 or Parquet) to ``output`` in its format and encoding
    (``offsets``: the source's ``KeyTable.offsets``, see :func:`psi.records.write_rows`)."""
    out_fmt = output_format(output, fmt, src_fmt)
    text_out = out_fmt != "parquet"
    if out_fmt == src_fmt and (not text_out or is_utf8(encoding)):
        return write_rows(src, rows, output, fmt=src_fmt, expect_rows=expect_rows, offsets=offsets)
    folder = Path(output).parent if str(Path(output).parent) else Path(".")
    work = Path(tempfile.mkdtemp(prefix=".psiq-out-", dir=folder))
    try:
        middle = work / f"rows.{src_fmt}"
        count = write_rows(src, rows, middle, fmt=src_fmt, expect_rows=expect_rows, offsets=offsets)
        if out_fmt != src_fmt:
            converted = work / f"converted.{out_fmt}"
            _convert(middle, src_fmt, converted, out_fmt)
            middle = converted
        if text_out and not is_utf8(encoding):
            encode_file(middle, output, encoding)  # type: ignore[arg-type]
        else:
            with AtomicFile(output) as handle, open(middle, "rb") as data:
                shutil.copyfileobj(data, handle, 1 << 20)
        return count
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _convert(src: Path, src_fmt: str, dst: Path, dst_fmt: str) -> None:
    if src_fmt != "parquet" and dst_fmt != "parquet":
        _text_to_text(src, src_fmt, dst, dst_fmt)
        return
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("writing between CSV/TSV and Parquet needs pyarrow (pip install 'psiq[parquet]')") from None
    if dst_fmt == "parquet":
        with open(src, "rb") as fh:
            header = next(csv.reader([fh.readline().decode("utf-8-sig")], delimiter="\t" if src_fmt == "tsv" else ","))
        parse = pacsv.ParseOptions(delimiter="\t" if src_fmt == "tsv" else ",",
                                   quote_char=False if src_fmt == "tsv" else '"', newlines_in_values=src_fmt == "csv")
        convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in header}, strings_can_be_null=False)
        reader = pacsv.open_csv(src, parse_options=parse, convert_options=convert)
        with pq.ParquetWriter(dst, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
        return
    parquet = pq.ParquetFile(src)
    options = pacsv.WriteOptions(delimiter="\t" if dst_fmt == "tsv" else ",",
                                 quoting_style="none" if dst_fmt == "tsv" else "needed")
    try:
        with pacsv.CSVWriter(dst, parquet.schema_arrow, write_options=options) as writer:
            for batch in parquet.iter_batches():
                writer.write_batch(batch)
    except pa.ArrowInvalid as err:
        raise InputError(f"cannot write these rows as {dst_fmt.upper()}: {err}") from None


def _text_to_text(src: Path, src_fmt: str, dst: Path, dst_fmt: str) -> None:
    with open(src, newline="", encoding="utf-8-sig") as fin, open(dst, "w", newline="", encoding="utf-8") as fout:
        reader = csv.reader(fin, delimiter="\t" if src_fmt == "tsv" else ",",
                            quoting=csv.QUOTE_NONE if src_fmt == "tsv" else csv.QUOTE_MINIMAL)
        if dst_fmt == "tsv":
            for number, row in enumerate(reader, start=1):
                if any("\t" in f or "\n" in f or "\r" in f for f in row):
                    raise InputError(f"output row {number} has a field with a tab or line break: TSV cannot hold it")
                fout.write("\t".join(row) + "\n")
        else:
            csv.writer(fout, lineterminator="\n").writerows(reader)
