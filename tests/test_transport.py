"""TCP+TLS channels: mutual authentication, peer pinning, refusal of a foreign CA, framing, faults."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from psi.errors import AuthenticationError, PeerDisconnected, TransportError, UsageError, MalformedMessage
from psi.messages import Message
from psi.transport.memory import memory_pair
from psi.transport.tcp import Listener, connect, parse_address

from .conftest import tls_for


def _serve_once(listener: Listener, handler) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            ch = listener.accept(timeout=10)
            box["peer"] = ch.peer_name
            handler(ch)
            ch.close()
        except Exception as err:  # noqa: BLE001 - reported to the test
            box["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _echo(ch) -> None:
    while True:
        try:
            m = ch.recv(10)
        except PeerDisconnected:
            return
        ch.send(Message("echo", m.body))


def test_mutual_tls_round_trip_and_byte_counts(pki: Path) -> None:
    with Listener("127.0.0.1:0", tls_for(pki, "bank-b", peer="bank-a")) as lst:
        t, box = _serve_once(lst, _echo)
        ch = connect(f"127.0.0.1:{lst.address[1]}", tls_for(pki, "bank-a", peer="bank-b"))
        big = bytes(range(256)) * 40_000  # 10 MB: exercises partial reads and the writer thread
        ch.send(Message("data", big))
        ch.send(Message("small", b"x"))
        assert ch.recv(10) == Message("echo", big)
        assert ch.recv(10) == Message("echo", b"x")
        assert ch.peer_name == "bank-b"
        assert ch.bytes_sent == (20 + 4 + len(big)) + (20 + 5 + 1)
        assert ch.bytes_received == (20 + 4 + len(big)) + (20 + 4 + 1)
        ch.close()
        t.join(10)
    assert box.get("peer") == "bank-a" and "error" not in box


def test_client_from_another_ca_is_refused(pki: Path) -> None:
    with Listener("127.0.0.1:0", tls_for(pki, "bank-b")) as lst:
        t, box = _serve_once(lst, _echo)
        with pytest.raises(AuthenticationError):
            ch = connect(f"127.0.0.1:{lst.address[1]}", tls_for(pki, "mallory"), retries=0)
            ch.send(Message("x", b"1"))
            ch.recv(5)
        t.join(10)
    assert isinstance(box.get("error"), AuthenticationError)


def test_wrong_peer_name_is_refused(pki: Path) -> None:
    with Listener("127.0.0.1:0", tls_for(pki, "bank-b")) as lst:
        t, _box = _serve_once(lst, _echo)
        with pytest.raises(AuthenticationError, match="expected 'bank-z'"):
            connect(f"127.0.0.1:{lst.address[1]}", tls_for(pki, "bank-a", peer="bank-z"), retries=0)
        t.join(10)


def test_peer_dropping_mid_stream_is_a_clean_error(pki: Path) -> None:
    def drop(ch) -> None:
        ch.recv(10)
        ch._sock.close()  # vanish without a goodbye

    with Listener("127.0.0.1:0", tls_for(pki, "bank-b")) as lst:
        t, _box = _serve_once(lst, drop)
        ch = connect(f"127.0.0.1:{lst.address[1]}", tls_for(pki, "bank-a"))
        ch.send(Message("x", b"1"))
        with pytest.raises((PeerDisconnected, AuthenticationError, TransportError)):
            ch.recv(10)
        t.join(10)


def test_garbage_from_peer_is_malformed() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def talk() -> None:
        conn, _ = srv.accept()
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        conn.close()

    t = threading.Thread(target=talk, daemon=True)
    t.start()
    ch = connect(f"127.0.0.1:{port}", None)
    with pytest.raises(MalformedMessage, match="not speaking the psiq protocol"):
        ch.recv(5)
    ch.close()
    srv.close()
    t.join(5)


def test_connection_refused_after_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    with pytest.raises(TransportError, match="after 4 attempts"):
        connect(f"127.0.0.1:{port}", None, retries=3, sleep=sleeps.append)
    assert sleeps == [0.2, 0.4, 0.8]


def test_port_in_use(pki: Path) -> None:
    with Listener("127.0.0.1:0", tls_for(pki, "bank-b")) as lst:
        with pytest.raises(TransportError, match="address already in use"):
            Listener(f"127.0.0.1:{lst.address[1]}", tls_for(pki, "bank-b"))


def test_insecure_only_on_loopback() -> None:
    with pytest.raises(UsageError, match="loopback"):
        connect("192.0.2.1:7766", None, retries=0)
    with pytest.raises(UsageError):
        parse_address("no-port")


def test_memory_pair_counts_like_tcp() -> None:
    a, b = memory_pair()
    a.send(Message("k", b"abc"))
    assert b.recv(0) == Message("k", b"abc")
    assert a.bytes_sent == b.bytes_received == 20 + 1 + 3
    a.close()
    with pytest.raises(PeerDisconnected):
        b.recv(0)


def test_simultaneous_bulk_traffic_both_ways(pki: Path) -> None:
    """Both ends send and receive at the same time (writer thread + reader on one TLS socket)."""
    payloads = [bytes([i]) * (300_000 + i) for i in range(40)]

    def pump(ch) -> None:
        for p in payloads:
            ch.send(Message("bulk", p))
        for _ in range(3):
            assert ch.recv(30) == Message("hi", b"x")
        for p in payloads:
            assert ch.recv(30) == Message("bulk", p)

    with Listener("127.0.0.1:0", tls_for(pki, "bank-b")) as lst:
        t, box = _serve_once(lst, pump)
        ch = connect(f"127.0.0.1:{lst.address[1]}", tls_for(pki, "bank-a"))
        for _ in range(3):  # hello-style simultaneous small messages, then bulk
            ch.send(Message("hi", b"x"))
        pump_client_errors: list[BaseException] = []
        try:
            for p in payloads:
                ch.send(Message("bulk", p))
            received = [ch.recv(30) for _ in payloads]
        except BaseException as err:  # noqa: BLE001
            pump_client_errors.append(err)
            received = []
        ch.close()
        t.join(30)
    assert not pump_client_errors
    assert received == [Message("bulk", p) for p in payloads]
    assert "error" not in box, box


def test_a_peer_dying_mid_session_reads_as_a_disconnect():
    # a killed peer leaves a TLS EOF without close_notify: one clear line, exit code 3
    from psi.transport.tcp import _tls_error

    err = _tls_error(ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2427)"))
    assert isinstance(err, PeerDisconnected) and err.exit_code == 3
    assert str(err) == "peer closed the connection without ending the TLS session"
