"""The blacklist lookup service: many concurrent clients, quotas, audit log, table reloads.

Connections go through two stages:

1. **Handshake** (unauthenticated): each accepted TCP connection gets its own thread for the
   TLS handshake, which must finish within ``handshake_timeout`` seconds in total, however
   slowly the peer trickles bytes. At most ``max_per_source`` such
   connections per source address and ``max_handshakes`` in all; beyond that a new connection
   is closed at once and audited. Handshakes never hold a session slot, so idle or slow TCP
   connections cannot lock authenticated clients out.
2. **Session** (authenticated): one of ``max_sessions`` slots, one
   :class:`~pir.protocol.PirServerSession` until the client is done.

The client's identity is the common name of its TLS certificate (``Channel.peer_name``); without
TLS (loopback trials) every client is ``"anonymous"``. The identity is what quotas and the audit
log count (see :mod:`pir.quota`). Every session, including one that a peer ends with a malformed
or hostile message, and every refused connection leaves one audit line (counts, outcome,
error text; never ids, never buckets).

When the table directory changes (a new ``setup``), the next connection loads the new table
version; sessions already running finish on the version they started with.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from psi.driver import run_party, send_error
from psi.errors import PolicyError, PsiqError, TransportError
from psi.transport.base import Channel

from .database import Table
from .store import load_table, table_stamp
from .protocol import DEFAULT_MAX_LOOKUPS, MAX_BATCH, PirServerSession
from .quota import DEFAULT_DAILY_QUOTA, QuotaBook, Reservation

__all__ = ["QuotaBook", "PirService", "ServiceLimits", "ANONYMOUS", "DEFAULT_DAILY_QUOTA"]

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class ServiceLimits:
    """How many connections the service holds, and for how long.

    ``max_sessions``: authenticated sessions at once (an authenticated client waits up to
    ``slot_wait`` seconds for a slot, then is told the service is busy, code 7);
    ``max_per_client``: of those, how many one client certificate may hold (code 7 beyond).
    ``max_handshakes`` / ``max_per_source``: unauthenticated connections at once, in all / from
    one source address. ``handshake_timeout``: seconds for a whole TLS handshake.
    ``session_timeout``: seconds a session waits for the client's next message.
    """

    max_sessions: int = 16
    max_per_client: int = 4
    max_handshakes: int = 64
    max_per_source: int = 8
    handshake_timeout: float = 5.0
    session_timeout: float = 300.0
    slot_wait: float = 30.0

    def __post_init__(self) -> None:
        if min(self.max_sessions, self.max_per_client, self.max_handshakes, self.max_per_source) < 1:
            raise ValueError("service limits must be at least 1")
        if min(self.handshake_timeout, self.session_timeout, self.slot_wait) <= 0:
            raise ValueError("service timeouts must be positive")


class _HandshakeGate:
    """Counts unauthenticated connections, in all and per source address."""

    def __init__(self, total: int, per_source: int) -> None:
        self._total, self._per_source = total, per_source
        self._lock = threading.Lock()
        self._by_source: dict[str, int] = {}
        self._count = 0

    def enter(self, source: str) -> str | None:
        """Admit one connection from ``source``; return the reason when it is refused."""
        with self._lock:
            if self._by_source.get(source, 0) >= self._per_source:
                return f"more than {self._per_source} unauthenticated connections from {source}"
            if self._count >= self._total:
                return f"more than {self._total} unauthenticated connections in all"
            self._by_source[source] = self._by_source.get(source, 0) + 1
            self._count += 1
            return None

    def leave(self, source: str) -> None:
        with self._lock:
            self._count -= 1
            left = self._by_source.get(source, 1) - 1
            if left > 0:
                self._by_source[source] = left
            else:
                self._by_source.pop(source, None)


def _handshake(pending: Any, timeout: float) -> Channel:
    """``pending.secure()`` with one deadline for the whole TLS handshake."""
    try:
        return pending.secure(timeout=timeout)
    except PsiqError as err:
        if "timed out" in str(err):
            raise TransportError(f"TLS handshake not completed within {timeout:g} s") from None
        raise


def _source(pending: Any) -> str:
    address = getattr(pending, "peer_address", None)
    return str(address[0]) if address else "unknown"


class PirService:
    """Serves one table directory to many clients."""

    def __init__(
        self,
        db_dir: Path,
        *,
        quota: QuotaBook | None = None,
        max_batch: int = MAX_BATCH,
        max_lookups: int = DEFAULT_MAX_LOOKUPS,
    ) -> None:
        self.db_dir = Path(db_dir)
        self.quota = quota if quota is not None else QuotaBook()
        self.max_batch = max_batch
        self.max_lookups = max_lookups
        self._lock = threading.Lock()
        self._table: Table | None = None
        self._stamp: object = None
        self.sessions = 0
        self.failures = 0

    def table(self) -> Table:
        """The current table, reloaded when the directory holds a new version since the last load."""
        with self._lock:
            stamp = table_stamp(self.db_dir)
            if self._table is None or stamp != self._stamp:
                self._table = load_table(self.db_dir)
                self._stamp = stamp
            return self._table

    def handle(self, channel: Channel, *, timeout: float | None = 300.0) -> dict[str, Any]:
        """Run one client session to the end; returns its audit event (never raises).

        Whatever ends the session (success, quota, a malformed or hostile message, an internal
        error) is written to the audit log as one ``session`` line.
        """
        client = channel.peer_name or ANONYMOUS
        start = time.perf_counter()
        reservation: Reservation | None = None
        session: PirServerSession | None = None
        version = ""
        outcome, error, code, summary = "ok", None, 0, {}

        def reserve(count: int) -> None:
            nonlocal reservation
            reservation = self.quota.reserve(client, count, version)

        def charge(count: int) -> None:
            if reservation is None:  # pragma: no cover - the session reserves in its hello
                raise PolicyError("no quota reservation for this session")
            reservation.charge(count)

        try:
            table = self.table()
            version = table.version
            session = PirServerSession(table, charge=charge, reserve=reserve, max_batch=self.max_batch,
                                       max_lookups=self.max_lookups, settings=table.settings)
            if hasattr(channel, "max_body"):  # the largest legitimate message: a full batch of queries
                bound = 64 + 4 * self.max_batch * table.params.columns + 64 * 1024
                channel.max_body = min(channel.max_body, bound)  # type: ignore[attr-defined]
            stats = run_party(session, channel, timeout=timeout)
            summary = {"bytes_sent": stats.bytes_sent, "bytes_received": stats.bytes_received}
        except PsiqError as err:
            outcome, error, code = "error", str(err), err.exit_code
            if session is None:
                send_error(channel, err)
        except Exception as err:  # noqa: BLE001 - a hostile peer must never end the service silently
            outcome, error, code = "error", f"internal error ({err.__class__.__name__})", 1
            if session is None:
                send_error(channel, err)
        finally:
            if reservation is not None:
                reservation.release()
            channel.close()
        with self._lock:
            self.sessions += 1
            self.failures += outcome != "ok"
        event: dict[str, Any] = {
            "event": "session", "client": client, "outcome": outcome,
            "announced": session.announced if session else 0,
            "evaluations": session.evaluations if session else 0,
            "queries": session.queries if session else 0,
            "seconds": round(time.perf_counter() - start, 4), "table_version": version[:16], **summary,
        }
        if error:
            event["error"] = error[:200]
            event["exit_code"] = code
        self.quota.record(event)
        return event

    def serve(
        self,
        listener: Any,
        *,
        forever: bool = False,
        limits: ServiceLimits | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Accept connections until ``stop`` is set (``forever``) or one session has run.

        A one-shot server keeps listening through refused connections (port scans, wrong
        certificates, handshake timeouts) until one authenticated session has run.
        """
        limits = limits or ServiceLimits()
        stop = stop or threading.Event()
        slots = threading.BoundedSemaphore(limits.max_sessions)
        gate = _HandshakeGate(limits.max_handshakes, limits.max_per_source)
        served = threading.Event()
        claimed = threading.Lock()  # one-shot: the first authenticated connection takes it
        running: dict[str, int] = {}  # sessions per client certificate
        running_lock = threading.Lock()

        def refuse(channel: Channel, source: str, err: PolicyError) -> None:
            send_error(channel, err)
            channel.close()
            emit({"event": "refused", "source": source, "client": channel.peer_name or ANONYMOUS, "error": str(err)})

        def emit(event: dict[str, Any], audit: bool = True) -> None:
            if audit:
                self.quota.record(event)
            if on_event is not None:
                on_event(event)

        def run(pending: Any, source: str) -> None:
            try:
                channel = _handshake(pending, limits.handshake_timeout)
            except PsiqError as err:
                emit({"event": "refused", "source": source, "error": str(err)[:200]})
                return
            finally:
                gate.leave(source)
            if not forever and not claimed.acquire(blocking=False):
                channel.close()  # a one-shot server runs one session only
                return
            client = channel.peer_name or ANONYMOUS
            with running_lock:
                mine = running.get(client, 0)
                if mine < limits.max_per_client:
                    running[client] = mine + 1
            if mine >= limits.max_per_client:
                refuse(channel, source, PolicyError(
                    f"client {client!r} already has {mine} sessions running (at most {limits.max_per_client})"))
                return
            try:
                if not slots.acquire(timeout=limits.slot_wait):
                    refuse(channel, source, PolicyError(
                        f"the service is busy ({limits.max_sessions} sessions running); retry later"))
                    return
                try:
                    emit(self.handle(channel, timeout=limits.session_timeout), audit=False)  # handle() audits
                finally:
                    slots.release()
                    served.set()
            finally:
                with running_lock:
                    running[client] -= 1
                    if not running[client]:
                        del running[client]

        while not stop.is_set() and not (not forever and served.is_set()):
            try:
                pending = listener.accept_pending(timeout=0.5)
            except PsiqError:
                time.sleep(0.01)  # accept timeout or a transient accept error: check stop, go on
                continue
            source = _source(pending)
            refused = gate.enter(source)
            if refused is not None:
                pending.close()
                emit({"event": "refused", "source": source, "error": refused})
                continue
            threading.Thread(target=run, args=(pending, source), name="psiq-pir-connection", daemon=True).start()
