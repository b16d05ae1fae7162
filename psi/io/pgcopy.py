"""PostgreSQL through psycopg 3: ``COPY (SELECT ...) TO STDOUT`` for reading, text lines for writing.

Row-by-row fetching costs a Python object per value; COPY's text format arrives as lines that
the key pipeline can split in bulk, like a CSV block (:meth:`psi.records._Collector.add_batch`),
and that can be copied into ``COPY ... FROM STDIN`` unchanged when the sink is PostgreSQL too.

Text format (PostgreSQL docs, COPY, "Text Format"): one row per line, fields separated by a tab,
``\\N`` for NULL, and backslash escapes for backslash, newline, carriage return, tab and the
other control characters. A block with no backslash needs no unescaping (the common case);
anything else is unescaped line by line. Each CopyData message holds exactly one row, so joined
messages always end on a row boundary.
"""

from __future__ import annotations

import queue
import re
import select
import threading
from typing import Any, Iterator

__all__ = ["usable", "blocks", "split_block", "unescape", "BLOCK_BYTES", "background_writer"]

BLOCK_BYTES = 1 << 22
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)")


def usable(connection: Any) -> bool:
    """True when ``connection`` is PostgreSQL through psycopg 3 (COPY available)."""
    if connection.dialect.name != "postgresql":
        return False
    return type(connection.connection.driver_connection).__module__.startswith("psycopg")


def blocks(connection: Any, statement: str) -> Iterator[bytes]:
    """The result of ``statement`` as COPY text, in blocks of whole lines (UTF-8).

    PostgreSQL sends one CopyData message per row; psycopg's ``Copy.read()`` hands them over
    one at a time through its generator machinery (about 1 µs of Python per row). Here the
    rows already in libpq's input buffer are taken straight from ``PQgetCopyData`` (psycopg's
    public :mod:`psycopg.pq` wrapper) and only an empty buffer waits on the socket. psycopg's
    ``Copy`` object still frames the operation (the COPY statement, its errors, cancelling on
    an exception); the end of the data is handled here, as psycopg would.
    """
    raw = connection.connection.driver_connection
    with raw.cursor() as cursor:
        cursor.execute("SET LOCAL client_encoding TO 'UTF8'")
        with cursor.copy(f"COPY ({statement}) TO STDOUT") as copy:
            try:
                if hasattr(copy, "_finished"):
                    yield from _fast_blocks(raw.pgconn, copy)
                else:  # a psycopg whose Copy we do not know: its own reader
                    yield from _blocks_of(copy)
            except BaseException:
                # Abandoned mid-COPY (an error, a lost connection, the consumer closing us): drop
                # the connection rather than cancel, drain the rest of the table for nothing and roll
                # back. Closing the socket ends the server's transaction; a read-only one has nothing
                # to keep. (Consumers must close this generator before the connection: see
                # psi.io.sql.stream_rows.)
                connection.invalidate()
                raise


def _blocks_of(copy: Any) -> Iterator[bytes]:
    pending: list[bytes] = []
    size = 0
    for data in copy:
        pending.append(bytes(data))
        size += len(data)
        if size >= BLOCK_BYTES:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _fast_blocks(pgconn: Any, copy: Any) -> Iterator[bytes]:
    import psycopg

    get = pgconn.get_copy_data
    socket = pgconn.socket
    pending = bytearray()  # rows copied out at once: keeping libpq's per-row buffers alive costs more
    while True:
        nbytes, data = get(1)  # async: 0 = no whole row buffered yet
        if nbytes > 0:
            pending += data
            if len(pending) >= BLOCK_BYTES:
                yield bytes(pending)
                pending.clear()
            continue
        if nbytes == 0:
            select.select([socket], [], [])
            pgconn.consume_input()
            continue
        break  # -1: the data is over; the command's result follows (-2 raises in psycopg)
    results = []
    while (result := pgconn.get_result()) is not None:
        results.append(result)
    copy._finished = True  # what Copy.read() records at this point: nothing left to drain
    for result in results:
        if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
            state = result.error_field(psycopg.pq.DiagnosticField.SQLSTATE)
            message = (result.error_message or b"COPY failed").decode("utf-8", "replace").strip()
            try:
                kind = psycopg.errors.lookup(state.decode()) if state else psycopg.OperationalError
            except KeyError:
                kind = psycopg.DatabaseError
            raise kind(message)
    if pending:
        yield bytes(pending)


def split_block(block: bytes) -> list[bytes]:
    """The lines of a block (without their newlines)."""
    lines = block.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def _unescape_field(field: str) -> str | None:
    if field == "\\N":
        return None
    if "\\" not in field:
        return field

    def replace(match: "re.Match[str]") -> str:
        code = match.group(1)
        if code[0] == "x" and len(code) > 1:
            return chr(int(code[1:], 16))
        if code[0] in "01234567":
            return chr(int(code, 8))
        return _ESCAPES.get(code, code)

    return _ESCAPE.sub(replace, field)


def unescape(line: bytes) -> tuple[str | None, ...]:
    """One COPY text line as values (None for NULL)."""
    return tuple(_unescape_field(field) for field in line.decode("utf-8").split("\t"))


def background_writer(cursor: Any, depth: int = 2) -> Any:
    """A psycopg COPY ``Writer`` that sends from a thread, so the caller prepares the next block
    while the server parses the last one (at most ``depth`` blocks wait: memory stays bounded).
    Built on psycopg's public ``copy.Writer`` / ``copy.LibpqWriter``."""
    from psycopg.copy import LibpqWriter, Writer

    class _BackgroundWriter(Writer):
        def __init__(self) -> None:
            self._inner = LibpqWriter(cursor)
            self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
            self._error: BaseException | None = None
            self._thread: threading.Thread | None = None

        def _run(self) -> None:
            try:
                while (data := self._queue.get()) is not None:
                    self._inner.write(data)
            except BaseException as err:  # noqa: BLE001 - handed to the caller's next write/finish
                self._error = err
                while self._queue.get() is not None:  # keep taking, so write() never blocks forever
                    pass

        def write(self, data: Any) -> None:
            if self._error is not None:
                raise self._error
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="psiq-copy-writer", daemon=True)
                self._thread.start()
            self._queue.put(data)

        def finish(self, exc: BaseException | None = None) -> None:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None
            if self._error is not None and exc is None:
                raise self._error
            self._inner.finish(exc if exc is not None else self._error)

    return _BackgroundWriter()
