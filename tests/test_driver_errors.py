"""The partner learns why a session stopped (issue 11.5): psi.driver's error frames, sans network.

A refusing side sends one ``error`` frame and hangs up. The other side may be busy sending a
large message at that moment: its send fails first, and it must still find and show the
reason (same cause, same exit code) instead of "peer closed the connection".
"""

from __future__ import annotations

from collections import deque

import pytest

from psi.driver import raise_if_error, run_party, send_error
from psi.errors import IncompatiblePeer, PeerDisconnected, PolicyError, TransportError
from psi.messages import Message, pack_json
from psi.protocols.base import Party
from psi.transport.base import Channel


class _Talker(Party):
    """Sends two large messages, then waits for an answer."""

    def __init__(self) -> None:
        super().__init__()
        self._sent = False

    def _produce(self) -> None:
        if not self._sent:
            self._sent = True
            self._send("data", b"x" * 1000)
            self._send("data", b"y" * 1000)

    def _handle(self, message: Message) -> None:  # pragma: no cover - never reached here
        self._finish()

    def result(self) -> None:  # pragma: no cover - never reached here
        return None


class _HungUpPeer(Channel):
    """The peer sent ``waiting`` and hung up: every send fails, recv yields what was sent, then EOF."""

    def __init__(self, waiting: list[Message]) -> None:
        super().__init__()
        self.waiting = deque(waiting)
        self.sent: list[Message] = []

    def send(self, message: Message) -> None:
        self.sent.append(message)
        if message.kind != "error":
            raise PeerDisconnected("peer closed the connection without ending the TLS session")

    def recv(self, timeout: float | None = None) -> Message:
        if self.waiting:
            return self.waiting.popleft()
        raise PeerDisconnected("peer closed the connection")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _refusal(code: int, text: str) -> Message:
    return Message("error", pack_json({"code": code, "message": text}))


def test_a_failed_send_still_reports_the_peers_reason() -> None:
    channel = _HungUpPeer([_refusal(7, "peer announced 10000 keys, above the cap of 10 (--max-peer-size)")])
    with pytest.raises(PolicyError, match="max-peer-size") as info:
        run_party(_Talker(), channel, timeout=1)
    assert info.value.exit_code == 7
    assert [m.kind for m in channel.sent] == ["data"], "the peer's own reason is never echoed back"


def test_a_failed_send_without_a_reason_stays_a_transport_error() -> None:
    with pytest.raises(TransportError, match="peer closed") as info:
        run_party(_Talker(), _HungUpPeer([]), timeout=1)
    assert info.value.exit_code == 3


class _Recorder(Channel):
    def __init__(self, incoming: int) -> None:
        super().__init__()
        self.incoming = incoming
        self.sent: list[Message] = []
        self.reads = 0

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def recv(self, timeout: float | None = None) -> Message:
        self.reads += 1
        if self.reads <= self.incoming:
            return Message("data", b"z")
        raise PeerDisconnected("peer closed the connection")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_send_error_reads_until_the_peer_hangs_up() -> None:
    """Closing with unread data would make TCP reset the link and could destroy the frame."""
    channel = _Recorder(incoming=3)
    send_error(channel, IncompatiblePeer("peer runs protocol rsa, we run ecdh"))
    assert [m.kind for m in channel.sent] == ["error"]
    assert channel.reads == 4  # three pending messages dropped, then the hang-up seen
    with pytest.raises(IncompatiblePeer, match="rsa") as info:
        raise_if_error(channel.sent[0])
    assert info.value.exit_code == 5


def test_an_error_from_the_peer_is_not_sent_back() -> None:
    channel = _Recorder(incoming=0)
    with pytest.raises(IncompatiblePeer) as info:
        raise_if_error(_refusal(5, "settings differ"))
    send_error(channel, info.value)
    assert channel.sent == []


def test_the_peers_reason_cannot_forge_log_lines() -> None:
    """The reason is the peer's text, printed in our log: one line, no terminal escapes."""
    with pytest.raises(PolicyError) as info:
        raise_if_error(_refusal(7, "quota\nexport: ok\x1b[2J\r"))
    text = str(info.value)
    assert "\n" not in text and "\x1b" not in text and "\r" not in text
    assert text.startswith("peer stopped: quota")
