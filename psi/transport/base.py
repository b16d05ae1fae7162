"""The channel abstraction: moves whole messages between two parties, knows nothing of crypto."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..messages import BodyLimit, Message

__all__ = ["Channel"]


class Channel(ABC):
    """A reliable, ordered, message-oriented link to one peer.

    ``bytes_sent`` / ``bytes_received`` count whole frames (headers included), which is what
    the summaries report as bytes on the wire (TLS record overhead excluded).
    """

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.bytes_received = 0
        self.peer_name: str | None = None

    @abstractmethod
    def send(self, message: Message) -> None:
        """Queue ``message`` for the peer; raises :class:`~psi.errors.TransportError`."""

    @abstractmethod
    def recv(self, timeout: float | None = None, *, limit: BodyLimit | None = None) -> Message:
        """Block for the next message; raises :class:`~psi.errors.PeerDisconnected` on EOF.

        ``limit(kind)`` is the receiving party's cap for the message's kind: a frame announcing
        more (or more than the channel's hard ``max_body``) is refused with
        :class:`~psi.errors.MalformedMessage` naming the kind, before its body is read. Bodies
        are read in bounded chunks, so memory grows only with bytes that actually arrive.
        """

    def flush(self) -> None:
        """Block until everything sent so far has left this process."""

    @abstractmethod
    def close(self) -> None:
        """Release the link; safe to call twice."""

    def __enter__(self) -> "Channel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
