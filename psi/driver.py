"""Run sans-IO parties over channels.

``run_pair`` joins two parties in one thread (tests, in-process runs); ``run_party`` drives one
party over a real channel (the CLI). Both time each protocol phase and report bytes on the wire.
When the local side fails with a :class:`~psi.errors.PsiqError`, the driver tells the peer in
an ``error`` message so that both sides end with the same one-line reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import (
    AuthenticationError,
    IncompatiblePeer,
    LocalError,
    MalformedMessage,
    PolicyError,
    ProtocolStateError,
    PsiqError,
    RemoteError,
    TransportError,
)
from .messages import Message, pack_json, unpack_json
from .protocols.base import Party, Progress
from .transport.base import Channel
from .transport.memory import memory_pair

__all__ = ["RunStats", "run_party", "run_pair", "send_error", "raise_if_error", "PeerAborted"]

ERROR_KIND = "error"


class PeerAborted(RemoteError):
    """The peer stopped the session and said why."""


@dataclass
class RunStats:
    """Timings per phase (seconds) and bytes on the wire for one party's run."""

    phases: dict[str, float] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 4),
            "phases": {k: round(v, 4) for k, v in self.phases.items()},
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
        }


class _PhaseClock:
    def __init__(self, stats: RunStats) -> None:
        self.stats = stats
        self.phase = "start"
        self.t = time.perf_counter()

    def tick(self, phase: str) -> None:
        if phase == self.phase:
            return
        now = time.perf_counter()
        self.stats.phases[self.phase] = self.stats.phases.get(self.phase, 0.0) + (now - self.t)
        self.phase, self.t = phase, now


_ERROR_CLASSES: dict[int, type[PsiqError]] = {5: IncompatiblePeer, 6: AuthenticationError, 7: PolicyError}


_LINGER = 5.0  # seconds to keep reading after our error frame, so that it is not lost to a reset


def send_error(channel: Channel, err: BaseException, *, linger: float = _LINGER) -> None:
    """Best effort: tell the peer that this side stops, and why when that is safe (never raises).

    Only errors about the peer's own messages or settings are described; a local error (bad
    input, a receiver's out-of-range choice, a file path) is reported without its text, so
    nothing private leaks through an error message. An error that came from the peer is not
    echoed back. After the frame, whatever the peer still sends is read and dropped for up to
    ``linger`` seconds (until it hangs up): closing a connection with unread data makes TCP
    reset it, and the reset can destroy our frame before the peer reads it.
    """
    if getattr(err, "from_peer", False):
        return
    code = err.exit_code if isinstance(err, PsiqError) else 1
    if isinstance(err, (RemoteError, PolicyError, AuthenticationError)):
        text = str(err)
    elif isinstance(err, LocalError):
        text = "the peer stopped on a local error"
    else:
        text = "internal error on the peer"
    try:
        channel.send(Message(ERROR_KIND, pack_json({"code": code, "message": text[:500]})))
        channel.flush()
    except Exception:  # noqa: BLE001 - the link may already be gone
        return
    deadline = time.monotonic() + linger
    while (left := deadline - time.monotonic()) > 0:
        try:
            if channel.recv(left).kind == ERROR_KIND:
                return  # the peer stopped too (both refused): it sends nothing more
        except Exception:  # noqa: BLE001 - the peer hung up (what we wait for), or the time is up
            return


def raise_if_error(message: Message) -> None:
    """Turn a peer's ``error`` message into the matching local exception."""
    if message.kind != ERROR_KIND:
        return
    try:
        info = unpack_json(message.body, max_size=4096)
        text = str(info.get("message", "no reason given"))[:500]
        code = int(info.get("code", 4))
    except (MalformedMessage, ValueError, TypeError):
        text, code = "no reason given", 4
    # the peer writes this text and we print it on one line of our log: no line breaks, no
    # terminal escapes
    text = "".join(c if c.isprintable() else " " for c in text)
    cls = _ERROR_CLASSES.get(code, PeerAborted)
    error = cls(f"peer stopped: {text}")
    error.from_peer = True  # type: ignore[attr-defined]  # never echoed back by send_error
    raise error


def raise_pending_error(channel: Channel, wait: float = 0.5) -> None:
    """After a failed send: if the peer's ``error`` frame is already waiting, raise it instead.

    A peer that refuses us sends its reason and hangs up; our next send may then fail before we
    read that reason. Returns quietly when nothing (or nothing readable) is waiting.
    """
    try:
        message = channel.recv(wait)
    except Exception:  # noqa: BLE001 - nothing more to read: the caller raises its own error
        return
    raise_if_error(message)


def run_party(
    party: Party,
    channel: Channel,
    *,
    stats: RunStats | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    timeout: float | None = None,
) -> RunStats:
    """Drive ``party`` over ``channel`` until it finishes; return timings and byte counts.

    Raises the party's or the transport's :class:`PsiqError`; the peer is told first.
    """
    stats = stats or RunStats()
    clock = _PhaseClock(stats)
    clock.phase = party.progress().phase
    party.phase_listener = clock.tick
    start = time.perf_counter()
    sent0, recv0 = channel.bytes_sent, channel.bytes_received
    try:
        while True:
            out = party.outgoing()
            for message in out:
                channel.send(message)
                stats.messages_sent += 1
            _report(party, clock, on_progress)
            if party.finished:
                break
            if out:
                continue
            message = channel.recv(timeout, limit=party.receive_limit)
            stats.messages_received += 1
            raise_if_error(message)
            party.receive(message)
            _report(party, clock, on_progress)
        channel.flush()
    except TransportError as err:
        if not isinstance(err, AuthenticationError):
            raise_pending_error(channel)  # the peer's reason, if it sent one before hanging up
        raise
    except PsiqError as err:
        if not isinstance(err, (RemoteError,)) or isinstance(err, IncompatiblePeer):
            if not isinstance(err, PeerAborted):
                send_error(channel, err)
        raise
    except Exception as err:
        send_error(channel, err)
        raise
    finally:
        clock.tick("done")
        stats.phases.pop("done", None)
        stats.seconds += time.perf_counter() - start
        stats.bytes_sent += channel.bytes_sent - sent0
        stats.bytes_received += channel.bytes_received - recv0
    return stats


def _report(party: Party, clock: _PhaseClock, on_progress: Callable[[Progress], None] | None) -> None:
    progress = party.progress()
    if progress.phase != clock.phase:
        clock.tick(progress.phase)
    if on_progress is not None:
        on_progress(progress)


def run_pair(client: Party, server: Party, *, max_steps: int = 10_000_000) -> tuple[RunStats, RunStats]:
    """Run two parties against each other in this thread over an in-memory channel pair.

    Returns (client stats, server stats). Raises :class:`ProtocolStateError` if both parties
    wait for each other (a protocol bug), or whatever error a party raises.
    """
    ch_client, ch_server = memory_pair()
    stats = (RunStats(), RunStats())
    ends = ((client, ch_client, stats[0]), (server, ch_server, stats[1]))
    start = time.perf_counter()
    for _ in range(max_steps):
        progressed = False
        for party, channel, st in ends:
            for message in party.outgoing():
                channel.send(message)
                st.messages_sent += 1
                progressed = True
            while channel.pending():
                message = channel.recv(0, limit=party.receive_limit)
                st.messages_received += 1
                raise_if_error(message)
                party.receive(message)
                progressed = True
        if client.finished and server.finished:
            break
        if not progressed:
            raise ProtocolStateError("deadlock: both parties wait for a message")
    else:
        raise ProtocolStateError("protocol did not finish within the step limit")
    elapsed = time.perf_counter() - start
    for _party, channel, st in ends:
        st.bytes_sent, st.bytes_received, st.seconds = channel.bytes_sent, channel.bytes_received, elapsed
    return stats
