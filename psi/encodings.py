"""Text encodings of CSV/TSV inputs and outputs: UTF-8 (with or without BOM), GBK, GB18030.

Promises:

* :func:`resolve_encoding` picks the encoding of a file: a byte-order mark decides (UTF-8,
  GB18030, UTF-16 BOMs), else the one asked for (default UTF-8).
* :func:`utf8_copy` gives a UTF-8 path with the same text: the file itself when it already is
  UTF-8, else a private copy (folder mode 0700, removed by the context manager) decoded line by
  line; a byte sequence the encoding cannot decode stops with the file's line number and a hint.
  Keys are compared as UTF-8 text, so a GBK bank and a UTF-8 bank match the same customers.
* :func:`encode_file` turns a UTF-8 CSV/TSV into ``encoding`` atomically; a character the
  encoding cannot hold stops with the line number (nothing is written).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .atomic import AtomicFile
from .errors import InputError, UsageError

__all__ = ["ENCODINGS", "resolve_encoding", "utf8_copy", "encode_file", "is_utf8"]

ENCODINGS = ("utf-8", "utf-8-sig", "gbk", "gb18030")
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\x84\x31\x95\x33", "gb18030"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def is_utf8(encoding: str | None) -> bool:
    return encoding in (None, "utf-8", "utf-8-sig")


def resolve_encoding(path: str | os.PathLike[str], wanted: str | None = None) -> str:
    """The encoding to read ``path`` with: its BOM's if it has one, else ``wanted`` (default utf-8)."""
    if wanted is not None and wanted not in ENCODINGS:
        raise UsageError(f"unknown encoding {wanted!r} (known: {', '.join(ENCODINGS)})")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return wanted or "utf-8"  # the reader reports a missing file with its own message
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    return wanted or "utf-8"


def _hint(encoding: str) -> str:
    if encoding.startswith("utf-8"):
        return "save the file as UTF-8, or pass --encoding gbk (or gb18030) for a GBK export"
    return "check --encoding (utf-8, utf-8-sig, gbk, gb18030)"


@contextlib.contextmanager
def utf8_copy(path: str | os.PathLike[str], encoding: str | None) -> Iterator[Path]:
    """Yield a UTF-8 version of ``path`` (itself when already UTF-8); see the module docstring."""
    source = Path(path)
    actual = resolve_encoding(source, encoding)
    if is_utf8(actual):
        yield source
        return
    folder = tempfile.mkdtemp(prefix="psiq-text-")  # 0700: a private copy of customer data
    try:
        target = Path(folder) / source.name
        _transcode(source, actual, target, "utf-8", strip_bom=True)
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _transcode(src: Path, src_enc: str, dst: Path | None, dst_enc: str, *, strip_bom: bool = False,
               handle: object = None) -> None:
    decoder_name = "utf-16" if src_enc == "utf-16" else src_enc
    try:
        source = open(src, "rb")
    except OSError as err:
        raise InputError(f"{src}: cannot open ({err.strerror})") from None
    out = handle if handle is not None else open(dst, "xb")  # type: ignore[arg-type]
    try:
        with source:
            if decoder_name == "utf-16":  # not line-splittable as bytes: decode the stream
                import io

                lines: Iterator[bytes | str] = io.TextIOWrapper(source, encoding="utf-16", newline="")
            else:
                lines = source
            first = True
            for number, raw in enumerate(lines, start=1):
                try:
                    text = raw if isinstance(raw, str) else raw.decode(decoder_name)
                except UnicodeDecodeError as err:
                    raise InputError(f"{src.name} line {number}: not valid {src_enc.upper()} "
                                     f"(byte {err.start + 1} of the line); {_hint(src_enc)}") from None
                if first:
                    first = False
                    if strip_bom or decoder_name == "gb18030":
                        text = text.lstrip("\ufeff")
                try:
                    out.write(text.encode(dst_enc))  # type: ignore[attr-defined]
                except UnicodeEncodeError as err:
                    raise InputError(f"line {number}: the character {err.object[err.start]!r} has no "
                                     f"{dst_enc.upper()} encoding; choose --encoding gb18030 or utf-8") from None
    except UnicodeDecodeError as err:  # utf-16 stream decoding
        raise InputError(f"{src.name}: not valid {src_enc.upper()} ({err.reason}); {_hint(src_enc)}") from None
    finally:
        if handle is None:
            out.close()  # type: ignore[attr-defined]


def encode_file(utf8_path: str | os.PathLike[str], out_path: str | os.PathLike[str], encoding: str) -> None:
    """Write ``utf8_path``'s text to ``out_path`` in ``encoding``, atomically (mode 0600)."""
    if encoding not in ENCODINGS:
        raise UsageError(f"unknown encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    with AtomicFile(out_path) as handle:
        if encoding == "utf-8-sig":
            handle.write(b"\xef\xbb\xbf")
        _transcode(Path(utf8_path), "utf-8-sig", None, "utf-8" if encoding == "utf-8-sig" else encoding,
                   strip_bom=True, handle=handle)
