"""One-call entry points for scripts, notebooks and the CLI.

>>> from psi import api
>>> summary = api.connect("bank_a.csv", on=["id_number"], peer="10.0.0.2:7766", tls=tls,
...                       output="aligned_a.csv", options=api.PsiOptions(protocol="ecdh", reveal="both"))

``serve`` and ``connect`` run one party of a PSI session over TCP+TLS; ``run_session`` runs
one party over any channel (tests use the in-memory pair); ``intersect_files`` runs both
parties in this process over loopback TLS or memory, which is what ``psiq demo`` does.
Every function returns a :class:`PsiSummary` (``.as_dict()`` is the ``--json`` output) and
raises :class:`~psi.errors.PsiqError` subclasses only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import resource
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from .alignment import JOIN_TYPES, AlignmentExchange
from .convert import output_format, write_output
from .driver import RunStats, run_party
from .encodings import utf8_copy
from .errors import AuthenticationError, InputError, LocalError, PsiqError, TransportError, UsageError
from .normalize import Normalization
from .parallel import Executor
from .preflight import check_output, check_session_options, expand_output
from .protocols.base import Progress, PsiOutcome, Reveal, Role
from .protocols.handshake import Hello
from .records import DEDUP_POLICIES, KeyTable, detect_format, read_keys
from .session import DEFAULT_MAX_PEER_SIZE, PROTOCOLS, exchange_hello, peer_set_size, protocol_module
from .transport.base import Channel
from .transport.memory import memory_pair
from .transport.tcp import Listener, TlsConfig, connect as tcp_connect

__all__ = [
    "PsiOptions",
    "PsiSummary",
    "run_session",
    "serve",
    "connect",
    "intersect",
    "intersect_files",
    "align",
    "exchange_via_folder",
    "DEFAULT_PROTOCOL",
]

DEFAULT_PROTOCOL = "ecdh"
ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class PsiOptions:
    """Every setting of a PSI session; the CLI options map one to one onto these fields.

    Settings that must agree between the parties (protocol, reveal, normalisation, dedup,
    join, number of key columns, protocol parameters) are checked in the handshake.
    """

    protocol: str = DEFAULT_PROTOCOL
    reveal: str = "receiver"
    normalization: Normalization = field(default_factory=Normalization)
    dedup: str = "error"
    skip_empty: bool = False
    join: str = "inner"
    left: str = "client"
    input_format: str | None = None
    # protocol parameters
    group: str = "x25519"
    compression: str = "auto"
    fpr_bits: int = 40
    key_bits: int = 2048
    # deployment
    workers: int | None = None
    max_peer_size: int | None = DEFAULT_MAX_PEER_SIZE  # None: no cap
    server_key: Path | None = None
    cache_dir: Path | None = None
    prepared: Path | None = None
    timeout: float = 600.0
    create_key: bool = False  # create a missing --server-key (RSA); never implicitly
    allow_empty: bool = False  # run with an input that has no keys (header only)
    encoding: str | None = None  # CSV/TSV text encoding of input and output (default UTF-8; a BOM decides)
    output_format: str | None = None  # default: from the output's extension, else the input's format
    suite: str = "standard"  # psi.crypto.suite: "gm" = national algorithms only (SM2/SM3/SM4); RSA refuses it
    sm2_signing: Any = None  # psi.transport.signed.Sm2Signing: SM2-sign every frame (--sm2-key/--sm2-peer-key)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"unknown protocol {self.protocol!r} (choose from {', '.join(PROTOCOLS)})")
        try:
            Reveal(self.reveal)
        except ValueError:
            raise UsageError(f"unknown reveal mode {self.reveal!r} (receiver, both, cardinality)") from None
        if self.dedup not in DEDUP_POLICIES:
            raise UsageError(f"unknown dedup policy {self.dedup!r} ({', '.join(DEDUP_POLICIES)})")
        if self.join not in JOIN_TYPES:
            raise UsageError(f"unknown join type {self.join!r} ({', '.join(JOIN_TYPES)})")
        if self.left not in ("client", "server"):
            raise UsageError("the left side of a join is 'client' or 'server'")
        if self.join != "inner" and self.reveal != "both":
            raise UsageError(f"a {self.join} join writes aligned rows on both sides: it needs --reveal both")
        _check_suite(self)

    def replace(self, **changes: Any) -> "PsiOptions":
        return dataclasses.replace(self, **changes)

    def protocol_config(self) -> Any:
        """The protocol module's ``Config`` built from these options."""
        module = protocol_module(self.protocol)
        fields = {f.name for f in dataclasses.fields(module.Config)}
        wanted: dict[str, Any] = {"reveal": Reveal(self.reveal)}
        for name in ("group", "compression", "fpr_bits", "key_bits", "suite"):
            if name in fields:
                wanted[name] = getattr(self, name)
        return module.Config(**wanted)


def _check_suite(options: PsiOptions) -> None:
    """``suite="gm"``: refuse RSA (no national-algorithm form); the group becomes sm2 (left at
    its default x25519, it is replaced; any other group is a usage error)."""
    from .crypto.suite import get_suite

    suite = get_suite(options.suite)
    if not suite.is_gm:
        return
    if options.protocol == "rsa":
        raise UsageError("RSA PSI has no national-algorithm (SM2/SM3/SM4) form: --suite gm needs --protocol ecdh, kkrt or rr22")
    group = suite.psi_group(None if options.group == "x25519" else options.group, "sm2")
    object.__setattr__(options, "group", group)


@dataclass
class PsiSummary:
    """What one party reports after a session (``as_dict`` is the ``--json`` document)."""

    role: str
    protocol: str
    reveal: str
    input: dict[str, Any]
    peer_size: int
    intersection_size: int | None
    output: str | None = None
    output_rows: int | None = None
    alignment: dict[str, Any] | None = None
    stats: RunStats = field(default_factory=RunStats)
    peer_name: str | None = None
    notes: list[str] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    scale: dict[str, Any] | None = None  # bucketed sessions (psi.scale): buckets, reconnects, ...
    suite: str = "standard"  # the crypto suite the session ran under (psi.crypto.suite)

    def as_dict(self) -> dict[str, Any]:
        stats = self.stats.as_dict()
        return {
            "psiq_version": __version__,
            "role": self.role,
            "protocol": self.protocol,
            "reveal": self.reveal,
            "suite": self.suite,
            "input": self.input,
            "set_size": self.input.get("unique_keys"),
            "peer_set_size": self.peer_size,
            "intersection_size": self.intersection_size,
            "output": self.output,
            "output_rows": self.output_rows,
            "alignment": self.alignment,
            "peer_name": self.peer_name,
            "seconds": stats["seconds"],
            "phases": stats["phases"],
            "bytes_sent": stats["bytes_sent"],
            "bytes_received": stats["bytes_received"],
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "notes": self.notes,
            **({"scale": self.scale} if self.scale is not None else {}),
        }


def _own_peak_kb() -> int:
    """This process image's peak RSS in KiB: ``VmHWM`` where /proc has it.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` survives ``execve`` on Linux: a psiq started by a large
    process (a notebook's kernel, a pipeline, a benchmark holding its data) would report the
    parent's size at the fork instead of its own peak."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_mb() -> float:
    """Peak RSS of this process or of its largest finished worker, in MiB (``--json``)."""
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(_own_peak_kb(), workers) / 1024.0


def _hello(role: Role, options: PsiOptions, config: Any, table: KeyTable) -> Hello:
    module = protocol_module(options.protocol)
    params = dict(config.hello_params())
    params.update(
        {
            "reveal": options.reveal,
            "key_columns": len(table.on),
            "normalize": options.normalization.to_params(),
            "join": options.join,
            "left": options.left,
            "dedup": options.dedup,
        }
    )
    info = {"set_size": table.unique_keys, "software": f"psiq {__version__}"}
    return Hello(module.NAME, module.VERSION, role, params, info)


def _matched_rows_in_file_order(table: KeyTable, indices: Sequence[int]) -> np.ndarray:
    mask = np.zeros(table.unique_keys, dtype=bool)
    if len(indices):
        mask[np.asarray(indices, dtype=np.int64)] = True
    keep = mask[table.row_keys]
    return np.sort(table.row_numbers[keep])


def run_session(
    role: Role | str,
    channel: Channel,
    table: KeyTable,
    *,
    options: PsiOptions,
    output: str | os.PathLike[str] | None = None,
    executor: Executor | None = None,
    on_progress: ProgressCallback | None = None,
    head_start: Any = None,
    server_state: dict[str, Any] | None = None,
) -> PsiSummary:
    """Run one party of a PSI session over ``channel`` with the keys in ``table``.

    ``head_start`` (server, ECDH): an :class:`psi.protocols.ecdh.HeadStart` begun on ``table``
    before the connection; used if the session's settings match. ``server_state``: the
    protocol's persisted server state, loaded and checked before listening (:func:`server_state`).

    Writes ``output`` (this party's rows of the intersection; aligned with the peer's in
    ``both`` mode) atomically when this party learns the intersection. Raises
    :class:`UsageError` when asked for an output this party cannot learn.
    """
    role = Role(role)
    reveal = Reveal(options.reveal)
    check_session_options(role.value, options, output)
    config = options.protocol_config()
    module = protocol_module(options.protocol)
    own_executor = executor is None
    executor = executor or Executor(options.workers)
    _warm(executor, options)
    try:
        hello = _hello(role, options, config, table)
        peer = exchange_hello(channel, hello, max_peer_size=options.max_peer_size, timeout=options.timeout)
        peer_size = peer_set_size(peer)
        party_cls = module.Client if role == Role.CLIENT else module.Server
        if role == Role.SERVER:
            extras = dict(server_state) if server_state is not None else _server_extras(options, table, executor)
        else:
            extras = {}
        if head_start is not None and role == Role.SERVER and not extras:
            extras["head_start"] = head_start
        party = party_cls(table.keys, config, peer_size=peer_size, executor=executor, **extras)
        from .session import session_body_cap  # frames beyond it are refused unread

        party.session_body_cap = session_body_cap(table.unique_keys, peer_size)
        stats = run_party(party, channel, on_progress=on_progress, timeout=options.timeout)
        outcome: PsiOutcome = party.result()
        summary = PsiSummary(
            role=role.value,
            protocol=options.protocol,
            reveal=reveal.value,
            input=dict(table.summary(), file=str(getattr(table, "source_path", table.path))),
            peer_size=peer_size,
            intersection_size=(len(outcome.indices) if outcome.indices is not None else outcome.cardinality),
            stats=stats,
            peer_name=channel.peer_name,
            suite=options.suite,
        )
        summary.notes.extend(str(n) for n in outcome.details.get("notes", []))
        if role == Role.SERVER and (extras.get("key") is not None or extras.get("prepared") is not None):
            from .server_state import PERSISTED_KEY_NOTE

            summary.notes.append(PERSISTED_KEY_NOTE)
        if reveal == Reveal.BOTH:
            exchange = AlignmentExchange(role, outcome, table, options.join, options.left)
            run_party(exchange, channel, stats=stats, on_progress=on_progress, timeout=options.timeout)
            alignment = exchange.result()
            summary.alignment = alignment.summary()
            rows = alignment.rows
        elif outcome.indices is not None:
            rows = _matched_rows_in_file_order(table, outcome.indices)
        else:
            rows = None
        if output is not None and rows is not None:
            t0 = time.perf_counter()
            if _io_output(table, output):  # a database table, a DataFrame, or rows from either
                from .io import write_rows as io_write_rows

                summary.output_rows = io_write_rows(table, rows, output)
            else:
                summary.output_rows = write_output(table.path, table.fmt, rows, output, fmt=options.output_format,
                                                   encoding=options.encoding, expect_rows=table.rows_read,
                                                   offsets=getattr(table, "offsets", None))
            summary.output = str(output)
            stats.phases["write-output"] = time.perf_counter() - t0
        summary.peak_rss_mb = _peak_rss_mb()
        return summary
    finally:
        if own_executor:
            executor.close()


def server_state(options: PsiOptions, table: KeyTable, executor: Executor) -> dict[str, Any]:
    """Load (and check against ``table``) the server's persisted key, signed-set cache or prepared
    set: call it before listening so that a wrong or missing file is reported at once."""
    return _server_extras(options, table, executor)


def _server_extras(options: PsiOptions, table: KeyTable, executor: Executor) -> dict[str, Any]:
    """Protocol-specific server state: a persisted RSA key and signed-set cache, or a prepared ECDH set."""
    if options.protocol == "rsa":
        from .server_state import rsa_server_state

        return rsa_server_state(options, table, executor)
    if options.protocol == "ecdh" and options.prepared is not None:
        from .server_state import load_prepared

        return {"prepared": load_prepared(options, table)}
    if options.protocol == "ecdh" and options.server_key is not None:
        raise UsageError("with ECDH, --server-key is used together with --prepared (see 'psiq psi prepare')")
    if options.prepared is not None or options.server_key is not None:
        raise UsageError(f"--prepared/--server-key do not apply to the {options.protocol} protocol")
    return {}


def _io_output(table: KeyTable, output: Any) -> bool:
    """True when psi.io (not the file writer) handles this input/output pair."""
    return type(table) is not KeyTable or not isinstance(output, (str, os.PathLike))


def _check_output(output: Any) -> None:
    """Before any protocol work: an output table that exists with if_exists='fail' (exit 2)."""
    if output is not None and not isinstance(output, (str, os.PathLike)):
        from .io import check_output as check_output_table

        check_output_table(output)


def database_endpoints(input: Any, output: Any, *, table: str | None = None, query: str | None = None,
                       output_table: str | None = None, if_exists: str = "fail", order_column: str = "psiq_row",
                       password_file: str | os.PathLike[str] | None = None,
                       allow_empty: bool = False) -> tuple[Any, Any]:
    """``(input, output)`` with database URLs turned into :class:`psi.io.SqlSource` (``table=`` or
    ``query=``) and :class:`psi.io.SqlSink` (``output_table=``; the output URL defaults to the
    input's); anything else is returned as given. A URL without its table is a UsageError."""
    from .io import is_database_url

    def url(value: Any) -> bool:
        return isinstance(value, (str, os.PathLike)) and is_database_url(os.fspath(value))

    if table is not None or query is not None:
        if not url(input):
            raise UsageError("table=/query= need a database URL as input (e.g. postgresql://user@host/db)")
        from .io import SqlSource

        input = SqlSource(os.fspath(input), table=table, query=query, password_file=password_file,
                          allow_empty=allow_empty)
    if output_table is not None:
        from .io import SqlSink, SqlSource

        if output is None and isinstance(input, SqlSource):
            output = input.url
        if not url(output):
            raise UsageError("output_table= needs a database URL as output (or as input)")
        output = SqlSink(os.fspath(output), output_table, if_exists=if_exists, order_column=order_column,
                         password_file=password_file)
    elif url(output):
        raise UsageError("a database URL as output needs output_table=")
    return input, output


def _read(input: Any, on: Sequence[str], options: PsiOptions, stack: contextlib.ExitStack) -> KeyTable:
    """Read the keys of ``input`` (a file, a database source or a DataFrame); a non-UTF-8 CSV/TSV
    is read through a UTF-8 copy that lives as long as ``stack`` (the session), since the
    output's rows are copied from it."""
    from .io.urls import is_database_url

    if is_database_url(input):
        raise UsageError("a database URL needs a table or a query: table=/query= (or psi.io.SqlSource(url, table=...))")
    if isinstance(input, (str, os.PathLike)):  # a file: psi.io.sql (and what it imports) is not needed
        return _read_file(input, on, options, stack)
    from .io import is_source

    if is_source(input):  # a database table or query, a pandas DataFrame
        from .io import read_keys as io_read_keys

        return io_read_keys(input, list(on), normalization=options.normalization, dedup=options.dedup,
                            skip_empty=options.skip_empty)
    return _read_file(input, on, options, stack)


def _read_file(input: Any, on: Sequence[str], options: PsiOptions, stack: contextlib.ExitStack) -> KeyTable:
    fmt = detect_format(input, options.input_format)
    path = input if fmt == "parquet" else stack.enter_context(utf8_copy(input, options.encoding))
    table = read_keys(
        path,
        list(on),
        normalization=options.normalization,
        dedup=options.dedup,  # type: ignore[arg-type]
        fmt=fmt,
        skip_empty=options.skip_empty,
    )
    table.source_path = Path(input)  # type: ignore[attr-defined]
    if table.unique_keys == 0 and not options.allow_empty:
        raise InputError(f"{Path(input).name}: no keys (no data rows, or every key skipped); "
                         "pass --allow-empty to run with an empty set")
    return table


def _preflight(role: Role, input: str | os.PathLike[str], output: Any, options: PsiOptions, forever: bool = False) -> None:
    """Every check that needs neither the input's keys nor the peer: options, then the output."""
    check_session_options(role.value, options, output, forever=forever)
    if output is not None and isinstance(output, (str, os.PathLike)):  # database sinks: _check_output
        source_format = (detect_format(input, options.input_format) if isinstance(input, (str, os.PathLike))
                         else "csv")
        output_format(output, options.output_format, source_format)
        try:
            estimate = os.path.getsize(input)
        except (OSError, TypeError):  # TypeError: a database source or a DataFrame
            estimate = 0
        check_output(output, estimate_bytes=estimate)


def serve(
    input: str | os.PathLike[str],
    *,
    on: Sequence[str],
    listen: str,
    tls: TlsConfig | None,
    output: str | os.PathLike[str] | None = None,
    options: PsiOptions | None = None,
    forever: bool = False,
    on_progress: ProgressCallback | None = None,
    on_listening: Callable[[tuple[str, int]], None] | None = None,
    on_session: Callable[[PsiSummary], None] | None = None,
    on_error: Callable[[PsiqError], None] | None = None,
    accept_timeout: float | None = None,
    on_refused: Callable[[PsiqError], None] | None = None,
    table: str | None = None,
    query: str | None = None,
    output_table: str | None = None,
    if_exists: str = "fail",
    order_column: str = "psiq_row",
    password_file: str | os.PathLike[str] | None = None,
) -> PsiSummary | None:
    """Run the server side: read ``input`` once, then answer one session (or many with ``forever``).

    Everything local is checked before listening: option combinations, the output folder, the
    input and any persisted server state. A connection that fails before the peer's hello
    arrives (a port scan, a health check, a certificate we refuse) is reported through
    ``on_refused`` and the server keeps listening, also without ``forever``. With ``forever`` a
    failed session is reported through ``on_error`` and the server keeps listening; without it
    the error is raised. ``accept_timeout`` bounds the wait for a session (one-shot: in total).
    ``output`` may name ``{peer}``, ``{session}``, ``{time}`` (see :mod:`psi.preflight`);
    with ``forever`` it must. Returns the last session's summary.

    Databases (docs/DATABASES.md): ``input`` a URL with ``table=`` or ``query=``; ``output`` a URL
    (default: the input's database) with ``output_table=``, ``if_exists=`` and ``order_column=``;
    ``password_file=`` as ``--db-password-file`` (else ``PSIQ_DB_PASSWORD``, else the driver's own).
    """
    options = options or PsiOptions()
    input, output = database_endpoints(input, output, table=table, query=query, output_table=output_table,
                                       if_exists=if_exists, order_column=order_column,
                                       password_file=password_file, allow_empty=options.allow_empty)
    _preflight(Role.SERVER, input, output, options, forever)
    _check_output(output)
    with Executor(options.workers) as executor, contextlib.ExitStack() as stack:
        _warm(executor, options)
        table = _read(input, on, options, stack)
        state = server_state(options, table, executor)
        with Listener(listen, tls) as listener:
            return _serve_on(table, listener, executor, output, options, forever, on_progress, on_listening,
                             on_session, on_error, accept_timeout, state, on_refused)


def _warm(executor: Executor, options: PsiOptions) -> None:
    """Start the worker processes in the background (overlapping the input read and handshake)."""
    if options.protocol in ("ecdh", "rsa", "rr22"):  # kkrt does its work in the main process
        executor.warm(protocol_module(options.protocol).__name__)


def _serve_on(table: KeyTable, listener: Listener, executor: Executor, output: Any, options: PsiOptions,
              forever: bool, on_progress: Any, on_listening: Any, on_session: Any, on_error: Any,
              accept_timeout: float | None, state: dict[str, Any] | None = None,
              on_refused: Any = None) -> PsiSummary | None:
    last: PsiSummary | None = None
    sessions = 0
    deadline = None if accept_timeout is None or forever else time.monotonic() + accept_timeout
    if on_listening is not None:
        on_listening(listener.address)
    while True:
        head = _head_start(table, options, executor)
        try:
            wait = accept_timeout if deadline is None else max(0.01, deadline - time.monotonic())
            pending = listener.accept_pending(timeout=wait)  # a timeout ends the server (raised)
            try:
                channel = pending.secure()
            except PsiqError as err:  # a scan, a health check, a certificate we refuse: keep listening
                if on_refused is not None:
                    on_refused(err)
                continue
            with channel:
                sessions += 1
                try:
                    channel = _signed(channel, options, Role.SERVER)
                except TransportError as err:  # wrong SM2 key either way: refused, keep listening
                    sessions -= 1
                    if forever or not isinstance(err, AuthenticationError):
                        raise
                    if on_refused is not None:
                        on_refused(err)
                    continue
                out = None if output is None else expand_output(output, peer=channel.peer_name, session=sessions)
                try:
                    last = run_session(Role.SERVER, channel, table, options=options, output=out,
                                       executor=executor, on_progress=on_progress, head_start=head,
                                       server_state=state)
                except TransportError as err:  # AuthenticationError: the peer refused our certificate
                    if forever or (channel.bytes_received and not isinstance(err, AuthenticationError)):
                        raise
                    sessions -= 1  # the peer went away before its hello: not a session
                    if on_refused is not None:
                        on_refused(err)
                    continue
            if on_session is not None:
                on_session(last)
        except PsiqError as err:
            if not forever:
                raise
            if on_error is not None:
                on_error(err)
        finally:
            if head is not None:
                head.cancel()  # unused (no session, or settings differ): drop its queued work
        if not forever:
            return last


def _head_start(table: KeyTable, options: PsiOptions, executor: Executor) -> Any:
    """ECDH: start encrypting the server's set (fresh key) while waiting for the next client."""
    if options.protocol != "ecdh" or options.prepared is not None or options.server_key is not None:
        return None
    if executor.workers == 1:  # in-process: the work would block accept() until it is all done
        return None
    from .protocols import ecdh

    return ecdh.HeadStart(table.keys, options.protocol_config(), executor)


def connect(
    input: str | os.PathLike[str],
    *,
    on: Sequence[str],
    peer: str,
    tls: TlsConfig | None,
    output: str | os.PathLike[str] | None = None,
    options: PsiOptions | None = None,
    on_progress: ProgressCallback | None = None,
    connect_timeout: float = 10.0,
    retries: int = 5,
    table: str | None = None,
    query: str | None = None,
    output_table: str | None = None,
    if_exists: str = "fail",
    order_column: str = "psiq_row",
    password_file: str | os.PathLike[str] | None = None,
) -> PsiSummary:
    """Run the client side against a server at ``peer`` (``host:port``). Databases: as :func:`serve`."""
    options = options or PsiOptions()
    input, output = database_endpoints(input, output, table=table, query=query, output_table=output_table,
                                       if_exists=if_exists, order_column=order_column,
                                       password_file=password_file, allow_empty=options.allow_empty)
    _preflight(Role.CLIENT, input, output, options)
    _check_output(output)
    with Executor(options.workers) as executor, contextlib.ExitStack() as stack:
        _warm(executor, options)
        table = _read(input, on, options, stack)
        with tcp_connect(peer, tls, timeout=connect_timeout, retries=retries) as channel:
            channel = _signed(channel, options, Role.CLIENT)
            out = None if output is None else expand_output(output, peer=channel.peer_name, session=1)
            return run_session(Role.CLIENT, channel, table, options=options, output=out,
                               on_progress=on_progress, executor=executor)


def _signed(channel: Channel, options: PsiOptions, role: Role) -> Channel:
    """The channel itself, or wrapped in SM2 message signing when ``options.sm2_signing`` is set."""
    if options.sm2_signing is None:
        return channel
    from .transport.signed import SignedChannel

    return SignedChannel.establish(channel, options.sm2_signing, role.value, timeout=options.timeout)


def exchange_via_folder(
    role: Role | str,
    input: str | os.PathLike[str],
    *,
    on: Sequence[str],
    directory: str | os.PathLike[str],
    tls: TlsConfig,
    output: str | os.PathLike[str] | None = None,
    options: PsiOptions | None = None,
    on_progress: ProgressCallback | None = None,
) -> PsiSummary:
    """Run one party through a shared exchange folder instead of a connection. Every message is
    encrypted and signed with the parties' certificates (``tls``: own certificate, key, CA and
    whom to expect, as for a connection; see :mod:`psi.transport.files`). Use a fresh folder
    per session."""
    from .transport.files import FolderChannel

    options = options or PsiOptions()
    if options.sm2_signing is not None:
        raise UsageError("SM2 message signing (sm2_signing) applies to serve()/connect(), not to a folder exchange")
    _preflight(Role(role), input, output, options)
    _check_output(output)
    with contextlib.ExitStack() as stack:
        table = _read(input, on, options, stack)
        with FolderChannel(directory, Role(role).value, tls, handshake_timeout=options.timeout) as channel:
            return run_session(Role(role), channel, table, options=options, output=output, on_progress=on_progress)


def align(input: str | os.PathLike[str], *, on: Sequence[str], peer: str | None = None, listen: str | None = None,
          tls: TlsConfig | None, output: str | os.PathLike[str], options: PsiOptions | None = None,
          on_progress: ProgressCallback | None = None) -> PsiSummary | None:
    """Sample alignment: both parties end with the intersection rows in the same order.

    Give ``peer`` to connect or ``listen`` to serve; ``reveal`` is forced to ``both``.
    """
    options = (options or PsiOptions()).replace(reveal="both")
    if (peer is None) == (listen is None):
        raise UsageError("align needs exactly one of peer= (connect) or listen= (serve)")
    if peer is not None:
        return connect(input, on=on, peer=peer, tls=tls, output=output, options=options, on_progress=on_progress)
    return serve(input, on=on, listen=listen or "", tls=tls, output=output, options=options, on_progress=on_progress)


def intersect(input: str | os.PathLike[str], *, on: Sequence[str], peer: str | None = None,
              listen: str | None = None, tls: TlsConfig | None, output: str | os.PathLike[str] | None = None,
              options: PsiOptions | None = None, on_progress: ProgressCallback | None = None) -> PsiSummary | None:
    """Run this party of a PSI session: connect to ``peer``, or serve one session on ``listen``."""
    if (peer is None) == (listen is None):
        raise UsageError("intersect needs exactly one of peer= (connect) or listen= (serve)")
    if peer is not None:
        return connect(input, on=on, peer=peer, tls=tls, output=output, options=options, on_progress=on_progress)
    return serve(input, on=on, listen=listen or "", tls=tls, output=output, options=options, on_progress=on_progress)


def intersect_files(
    client_input: str | os.PathLike[str],
    server_input: str | os.PathLike[str],
    *,
    on: Sequence[str],
    server_on: Sequence[str] | None = None,
    client_output: str | os.PathLike[str] | None = None,
    server_output: str | os.PathLike[str] | None = None,
    options: PsiOptions | None = None,
    tls: tuple[TlsConfig, TlsConfig] | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[PsiSummary, PsiSummary]:
    """Run both parties in this process: over loopback TCP with ``tls`` = (client, server)
    configs, or over an in-memory pair when ``tls`` is None. Returns (client, server) summaries.
    """
    options = options or PsiOptions()
    stack = contextlib.ExitStack()
    with stack:
        server_table = _read(server_input, server_on or on, options, stack)
        client_table = _read(client_input, on, options, stack)
        return _intersect_tables(client_table, server_table, client_output, server_output, options, tls, on_progress)


def _intersect_tables(client_table: KeyTable, server_table: KeyTable, client_output: Any, server_output: Any,
                      options: PsiOptions, tls: Any, on_progress: Any) -> tuple[PsiSummary, PsiSummary]:
    if options.sm2_signing is not None:
        raise UsageError("SM2 message signing (sm2_signing) applies to serve()/connect()")
    box: dict[str, Any] = {}
    listening = threading.Event()

    def server_side(channel_factory: Callable[[], Channel]) -> None:
        try:
            with channel_factory() as channel:
                box["server"] = run_session(Role.SERVER, channel, server_table, options=options, output=server_output)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box["server_error"] = err

    if tls is None:
        ch_client, ch_server = memory_pair()
        thread = threading.Thread(target=server_side, args=(lambda: ch_server,), daemon=True)
        address = None
    else:
        client_tls, server_tls = tls
        listener = Listener("127.0.0.1:0", server_tls)
        address = f"127.0.0.1:{listener.address[1]}"

        def accept() -> Channel:
            try:
                listening.set()
                return listener.accept(timeout=options.timeout)
            finally:
                listener.close()

        thread = threading.Thread(target=server_side, args=(accept,), daemon=True)
    thread.start()
    try:
        if address is None:
            with ch_client:
                client_summary = run_session(Role.CLIENT, ch_client, client_table, options=options,
                                             output=client_output, on_progress=on_progress)
        else:
            listening.wait()
            with tcp_connect(address, client_tls) as channel:
                client_summary = run_session(Role.CLIENT, channel, client_table, options=options,
                                             output=client_output, on_progress=on_progress)
    except PsiqError as err:
        thread.join()
        server_err = box.get("server_error")
        if isinstance(server_err, LocalError) and not isinstance(err, LocalError):
            raise server_err from None  # the root cause: the server could not start its side
        raise
    thread.join()
    if "server_error" in box:
        raise box["server_error"]
    return client_summary, box["server"]


def input_digest(table: KeyTable) -> str:
    """SHA-256 over the normalised unique keys (order-sensitive): identifies an input for caches."""
    h = hashlib.sha256(b"psiq/input-digest/v1\x00")
    for key in table.keys:
        h.update(len(key).to_bytes(4, "big"))
        h.update(key)
    return h.hexdigest()


def new_session_id() -> bytes:
    return secrets.token_bytes(8)
