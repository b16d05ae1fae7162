"""Per-client lookup quotas for the PIR service, with an append-only audit log.

Every OPRF evaluation the service performs lets the client test one id, so evaluations are what
is counted: per client (TLS certificate common name) per UTC day. A session first *reserves*
the number of lookups its client announced; the reservation is refused as a whole, before any
OPRF work, when it does not fit what is left of the day's quota (nothing is charged then).
Evaluations are charged against the reservation as batches are served; what the session did
not use is given back when it ends.

Promises:

* ``used + reserved <= limit`` for every client and day at every moment (one lock).
* With an audit log, every charge and every refusal is one JSON line (counts, never ids), and
  the day's charges are replayed at start, so a restart does not reset quotas.
* When a client's day total first reaches ``warn_at`` of the limit, one ``quota_warning``
  line is written (and ``on_warning`` called), once per client per day.
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

from psi.errors import ProtocolStateError, QuotaExceeded

__all__ = ["DEFAULT_DAILY_QUOTA", "DEFAULT_WARN_AT", "QuotaBook", "Reservation"]

#: Default OPRF evaluations (ids tested) per client certificate per UTC day.
DEFAULT_DAILY_QUOTA = 10_000
#: Fraction of the daily quota at which the audit log gets a warning for that client.
DEFAULT_WARN_AT = 0.8


def _today(now: float) -> str:
    return _dt.datetime.fromtimestamp(now, _dt.timezone.utc).date().isoformat()


class QuotaBook:
    """Evaluations per client per UTC day, capped at ``limit`` (None = unlimited), audited."""

    def __init__(
        self,
        limit: int | None = DEFAULT_DAILY_QUOTA,
        audit_log: Path | None = None,
        *,
        warn_at: float = DEFAULT_WARN_AT,
        clock: Callable[[], float] = time.time,
        on_warning: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if limit is not None and limit < 0:
            raise ValueError("quota must be non-negative")
        if not 0 < warn_at <= 1:
            raise ValueError("warn_at must be in (0, 1]")
        self.limit = limit
        self.audit_log = audit_log
        self.warn_at = warn_at
        self.on_warning = on_warning
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._reserved: dict[tuple[str, str], int] = {}
        self._warned: set[tuple[str, str]] = set()
        if audit_log is not None and audit_log.exists():
            self._replay(audit_log)

    def _replay(self, path: Path) -> None:
        today = _today(self._clock())
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    event = json.loads(line)
                    if not isinstance(event, dict) or event.get("day") != today:
                        continue
                    key = (str(event.get("client")), today)
                    if event.get("event") == "evaluate" and not event.get("refused"):
                        self._counts[key] = self._counts.get(key, 0) + int(event.get("count", 0))
                    elif event.get("event") == "quota_warning":
                        self._warned.add(key)
                except (ValueError, TypeError, RecursionError):
                    continue  # a damaged line is skipped, never fatal

    # -- queries ------------------------------------------------------------------------------
    def used(self, client: str) -> int:
        """Evaluations charged to ``client`` today."""
        with self._lock:
            return self._counts.get((client, _today(self._clock())), 0)

    def remaining(self, client: str) -> int | None:
        """Evaluations ``client`` may still reserve today (None = unlimited)."""
        if self.limit is None:
            return None
        with self._lock:
            key = (client, _today(self._clock()))
            return max(0, self.limit - self._counts.get(key, 0) - self._reserved.get(key, 0))

    # -- reserving and charging -----------------------------------------------------------------
    def reserve(self, client: str, count: int, version: str = "") -> "Reservation":
        """Set ``count`` evaluations aside for one session, or raise :class:`QuotaExceeded`.

        The refusal names what is used, what remains and what was asked, and charges nothing.
        """
        if count < 0:
            raise ValueError("cannot reserve a negative count")
        now = self._clock()
        day = _today(now)
        key = (client, day)
        with self._lock:
            used = self._counts.get(key, 0)
            held = self._reserved.get(key, 0)
            if self.limit is not None and used + held + count > self.limit:
                left = max(0, self.limit - used - held)
                self._log({"event": "evaluate", "client": client, "count": count, "day": day,
                           "day_total": used, "refused": True, "remaining": left,
                           "table_version": version[:16]}, now)
                in_flight = f", {held} held by sessions still running" if held else ""
                raise QuotaExceeded(
                    f"daily lookup quota of {self.limit} for client {client!r}: {used} used today{in_flight}, "
                    f"{left} remaining, {count} asked in this session; nothing was charged"
                )
            self._reserved[key] = held + count
        return Reservation(self, client, day, count, version)

    def charge(self, client: str, count: int, version: str = "") -> None:
        """Reserve and charge ``count`` evaluations at once (raises :class:`QuotaExceeded`)."""
        reservation = self.reserve(client, count, version)
        reservation.charge(count)
        reservation.release()

    def _charge(self, reservation: "Reservation", count: int) -> None:
        now = self._clock()
        key = (reservation.client, reservation.day)
        warning = None
        with self._lock:
            self._reserved[key] = self._reserved.get(key, 0) - count
            total = self._counts.get(key, 0) + count
            self._counts[key] = total
            self._log({"event": "evaluate", "client": reservation.client, "count": count, "day": reservation.day,
                       "day_total": total, "refused": False, "table_version": reservation.version[:16]}, now)
            if self.limit is not None and key not in self._warned and total >= self.warn_at * self.limit:
                self._warned.add(key)
                warning = {"event": "quota_warning", "client": reservation.client, "day": reservation.day,
                           "day_total": total, "limit": self.limit}
                self._log(warning, now)
        if warning is not None and self.on_warning is not None:
            self.on_warning(warning)

    def _release(self, reservation: "Reservation", count: int) -> None:
        key = (reservation.client, reservation.day)
        with self._lock:
            left = self._reserved.get(key, 0) - count
            if left > 0:
                self._reserved[key] = left
            else:
                self._reserved.pop(key, None)

    # -- audit --------------------------------------------------------------------------------
    def record(self, event: dict[str, Any]) -> None:
        """Append one event (a session summary, a refused connection...) to the audit log."""
        with self._lock:
            self._log(event, self._clock())

    def _log(self, event: dict[str, Any], now: float) -> None:
        if self.audit_log is None:
            return
        event = {"time": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="seconds"), **event}
        with self.audit_log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, sort_keys=True, ensure_ascii=False) + "\n")


class Reservation:
    """Evaluations set aside for one session; :meth:`charge` spends them, :meth:`release` ends it."""

    def __init__(self, book: QuotaBook, client: str, day: str, count: int, version: str) -> None:
        self._book = book
        self.client, self.day, self.version = client, day, version
        self.reserved = count
        self.charged = 0
        self._released = False

    @property
    def left(self) -> int:
        return self.reserved - self.charged

    def charge(self, count: int) -> None:
        """Spend ``count`` of the reservation; more than is left raises :class:`QuotaExceeded`."""
        if self._released:
            raise ProtocolStateError("reservation already released")
        if count > self.left:
            raise QuotaExceeded(f"session asked for {count} more lookups than the {self.reserved} it announced")
        self.charged += count
        self._book._charge(self, count)

    def release(self) -> None:
        """Give back what was not charged (idempotent)."""
        if not self._released:
            self._released = True
            self._book._release(self, self.left)
