"""The blacklist lookup service: many concurrent clients, quotas, audit log, table reloads.

Each connection runs one :class:`~pir.protocol.PirServerSession` in its own thread. The client's
identity is the common name of its TLS certificate (``Channel.peer_name``); without TLS
(loopback trials) every client is ``"anonymous"``. The identity is what quotas and the audit
log count: OPRF evaluations (= ids tested) per client per UTC day. The audit log holds counts,
never ids (the server never sees them) and never buckets.

When ``DB_DIR/params.json`` changes (a new ``setup``), the next connection loads the new table
version; sessions already running finish on the version they started with.
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

from psi.driver import run_party
from psi.errors import PsiqError, QuotaExceeded
from psi.transport.base import Channel

from .database import Table
from .protocol import MAX_BATCH, PirServerSession

__all__ = ["QuotaBook", "PirService", "ANONYMOUS"]

ANONYMOUS = "anonymous"


def _today(now: float) -> str:
    return _dt.datetime.fromtimestamp(now, _dt.timezone.utc).date().isoformat()


class QuotaBook:
    """Evaluations per client per UTC day, capped at ``limit`` (None = unlimited), audited.

    With an ``audit_log`` path, every charge is appended as one JSON line, and on start the
    day's charges already in the log are counted again, so a restart does not reset quotas.
    """

    def __init__(self, limit: int | None = None, audit_log: Path | None = None, *, clock: Callable[[], float] = time.time) -> None:
        if limit is not None and limit < 0:
            raise ValueError("quota must be non-negative")
        self.limit = limit
        self.audit_log = audit_log
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        if audit_log is not None and audit_log.exists():
            self._replay(audit_log)

    def _replay(self, path: Path) -> None:
        today = _today(self._clock())
        with path.open("r", encoding="utf-8") as fh:
            for line in fh:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "evaluate" and event.get("day") == today and not event.get("refused"):
                    key = (str(event.get("client")), today)
                    self._counts[key] = self._counts.get(key, 0) + int(event.get("count", 0))

    def used(self, client: str) -> int:
        with self._lock:
            return self._counts.get((client, _today(self._clock())), 0)

    def charge(self, client: str, count: int, version: str = "") -> None:
        """Count ``count`` evaluations for ``client`` or raise :class:`QuotaExceeded`."""
        now = self._clock()
        day = _today(now)
        with self._lock:
            used = self._counts.get((client, day), 0)
            refused = self.limit is not None and used + count > self.limit
            if not refused:
                self._counts[(client, day)] = used + count
            self._log({"event": "evaluate", "client": client, "count": count, "day": day,
                       "day_total": used if refused else used + count, "refused": refused,
                       "table_version": version[:16]}, now)
        if refused:
            raise QuotaExceeded(
                f"daily lookup quota of {self.limit} for client {client!r} would be exceeded "
                f"({used} used today, {count} requested)"
            )

    def record(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._log(event, self._clock())

    def _log(self, event: dict[str, Any], now: float) -> None:
        if self.audit_log is None:
            return
        event = {"time": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="seconds"), **event}
        with self.audit_log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, sort_keys=True) + "\n")


class PirService:
    """Serves one table directory to many clients."""

    def __init__(self, db_dir: Path, *, quota: QuotaBook | None = None, max_batch: int = MAX_BATCH) -> None:
        self.db_dir = Path(db_dir)
        self.quota = quota or QuotaBook()
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._table: Table | None = None
        self._stamp: int | None = None
        self.sessions = 0
        self.failures = 0

    def table(self) -> Table:
        """The current table, reloaded when ``params.json`` changed since the last load."""
        with self._lock:
            stamp = (self.db_dir / "params.json").stat().st_mtime_ns if (self.db_dir / "params.json").exists() else None
            if self._table is None or stamp != self._stamp:
                self._table = Table.load(self.db_dir)
                self._stamp = stamp
            return self._table

    def handle(self, channel: Channel, *, timeout: float | None = 300.0) -> dict[str, Any]:
        """Run one client session to the end; returns a summary (never raises PsiqError)."""
        client = channel.peer_name or ANONYMOUS
        table = self.table()
        session = PirServerSession(
            table,
            charge=lambda k: self.quota.charge(client, k, table.version),
            max_batch=self.max_batch,
            settings=table.settings,
        )
        start = time.perf_counter()
        outcome, error = "ok", None
        try:
            stats = run_party(session, channel, timeout=timeout)
            summary = {"bytes_sent": stats.bytes_sent, "bytes_received": stats.bytes_received}
        except PsiqError as err:
            outcome, error, summary = "error", str(err), {}
            with self._lock:
                self.failures += 1
        finally:
            channel.close()
        with self._lock:
            self.sessions += 1
        event = {"event": "session", "client": client, "outcome": outcome, "evaluations": session.evaluations,
                 "queries": session.queries, "seconds": round(time.perf_counter() - start, 4),
                 "table_version": table.version[:16], **summary}
        if error:
            event["error"] = error[:200]
        self.quota.record(event)
        return event

    def serve(self, listener: Any, *, forever: bool = False, max_clients: int = 16,
              on_event: Callable[[dict[str, Any]], None] | None = None, stop: threading.Event | None = None) -> None:
        """Accept connections; one at a time unless ``forever`` (then a thread each, at most ``max_clients``)."""
        slots = threading.Semaphore(max_clients)
        stop = stop or threading.Event()

        def run(pending: Any) -> None:
            try:
                try:
                    channel = pending.secure()  # TLS handshake in this connection's thread
                except PsiqError as err:
                    if not forever:
                        raise
                    if on_event:
                        on_event({"event": "refused", "error": str(err)})
                    return
                event = self.handle(channel)
                if on_event:
                    on_event(event)
            finally:
                slots.release()

        while not stop.is_set():
            try:
                pending = listener.accept_pending(timeout=0.5 if forever else None)
            except PsiqError:
                if forever:
                    continue
                raise
            if not forever:
                slots.acquire()
                run(pending)
                return
            slots.acquire()
            threading.Thread(target=run, args=(pending,), name="psiq-pir-session", daemon=True).start()
