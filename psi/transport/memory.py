"""An in-memory channel pair for tests and single-process runs.

Messages go through the real frame encoder and decoder, so byte counts match TCP and frame
validation is exercised. ``recv`` on an empty queue raises instead of blocking, because both
ends live in one thread (``psi.driver.run_pair`` alternates between them).
"""

from __future__ import annotations

import queue

from ..errors import PeerDisconnected, TransportError
from ..messages import DEFAULT_MAX_BODY, BodyLimit, Message, decode_frame, encode_frame
from .base import Channel

__all__ = ["MemoryChannel", "memory_pair"]


class MemoryChannel(Channel):
    """One end of an in-memory pair; thread-safe, so it also serves two-thread tests."""

    def __init__(self, max_body: int = DEFAULT_MAX_BODY) -> None:
        super().__init__()
        self._inbox: "queue.Queue[bytes | None]" = queue.Queue()
        self._peer: MemoryChannel | None = None
        self._closed = False
        self.max_body = max_body

    def send(self, message: Message) -> None:
        if self._closed:
            raise TransportError("channel is closed")
        assert self._peer is not None
        if self._peer._closed:
            raise PeerDisconnected("peer closed the connection")
        frame = encode_frame(message)
        self.bytes_sent += len(frame)
        self._peer._inbox.put(frame)

    def recv(self, timeout: float | None = None, *, limit: BodyLimit | None = None) -> Message:
        try:
            frame = self._inbox.get(timeout=timeout) if timeout != 0 else self._inbox.get_nowait()
        except queue.Empty:
            raise PeerDisconnected("no message from peer (timed out)") from None
        if frame is None:
            raise PeerDisconnected("peer closed the connection")
        self.bytes_received += len(frame)
        message, _session = decode_frame(frame, self.max_body, limit)
        return message

    def pending(self) -> int:
        """Messages waiting to be received."""
        return self._inbox.qsize()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._peer is not None:
                self._peer._inbox.put(None)


def memory_pair(max_body: int = DEFAULT_MAX_BODY) -> tuple[MemoryChannel, MemoryChannel]:
    """Two connected channel ends."""
    a, b = MemoryChannel(max_body), MemoryChannel(max_body)
    a._peer, b._peer = b, a
    return a, b
