"""The PIR service against idle and slow TCP connections, with real sockets on loopback.

Idle connections come from other loopback source addresses (127.0.0.2...) than the honest
client (127.0.0.1), as they would from other hosts.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from pir import api
from pir.quota import QuotaBook
from pir.service import PirService, ServiceLimits
from psi.errors import AuthenticationError, TransportError
from psi.transport.tcp import Listener

from .conftest import tls_for


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pirtls") / "db"
    api.setup([(f"1101011990{i:08d}", f"reason {i}") for i in range(50)], d, workers=1)
    return d


class _Server:
    def __init__(self, db: Path, pki: Path, log: Path, limits: ServiceLimits, forever: bool = True) -> None:
        self.service = PirService(db, quota=QuotaBook(1000, log))
        # the listener's own handshake timeout is longer: the service's limit is what must apply
        self.listener = Listener("127.0.0.1:0", tls_for(pki, "bank-a", any_peer=True), handshake_timeout=30.0)
        self.port = self.listener.address[1]
        self.stop = threading.Event()
        self.events: list[dict] = []
        self.thread = threading.Thread(target=self.service.serve, args=(self.listener,),
                                       kwargs={"forever": forever, "limits": limits, "stop": self.stop,
                                               "on_event": self.events.append}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


def _idle(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _closed_by_server(sock: socket.socket, wait: float) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


def _lookup(pki: Path, port: int, cache: Path, ident: str = "110101199000000007"):
    return api.lookup([ident], peer=f"127.0.0.1:{port}", tls=tls_for(pki, "bank-b", "bank-a"),
                      cache_dir=cache, timeout=20)


def test_idle_connections_beyond_the_slots_do_not_lock_clients_out(db: Path, pki: Path, tmp_path: Path) -> None:
    server = _Server(db, pki, tmp_path / "audit.jsonl",
                     ServiceLimits(max_sessions=2, max_per_source=4, handshake_timeout=30.0))
    idle = [_idle(f"127.0.0.{2 + i // 4}", server.port) for i in range(12)]  # 12 > 2 slots, 4 per source
    try:
        time.sleep(0.3)  # every idle connection is accepted and waiting in its handshake
        start = time.monotonic()
        results = _lookup(pki, server.port, tmp_path / "cache")
        elapsed = time.monotonic() - start
        assert results[0].label == "reason 7"
        assert elapsed < 5.0, elapsed  # served at once, not after the idle handshakes time out
        assert not any(_closed_by_server(s, 0.01) for s in idle)  # they were still pending meanwhile
    finally:
        for s in idle:
            s.close()
        server.close()


def test_a_source_over_its_unauthenticated_limit_is_dropped(db: Path, pki: Path, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    server = _Server(db, pki, log, ServiceLimits(max_per_source=3, handshake_timeout=30.0))
    idle = []
    try:
        for _ in range(6):
            idle.append(_idle("127.0.0.3", server.port))
            time.sleep(0.05)
        closed = [_closed_by_server(s, 0.3) for s in idle]
        assert closed == [False, False, False, True, True, True]
        assert _lookup(pki, server.port, tmp_path / "cache")[0].listed  # other sources are served
    finally:
        for s in idle:
            s.close()
        server.close()
    refused = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "refused"]
    assert len(refused) >= 3 and all(e["source"] == "127.0.0.3" for e in refused[:3])
    assert "more than 3 unauthenticated connections from 127.0.0.3" in refused[0]["error"]


def test_a_slow_handshake_is_cut_at_the_deadline(db: Path, pki: Path, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    server = _Server(db, pki, log, ServiceLimits(handshake_timeout=0.5))
    sock = _idle("127.0.0.4", server.port)
    try:
        start = time.monotonic()
        # a TLS record header announcing 512 bytes, then its body one byte every 0.1 s: no
        # single read waits long, only a deadline on the whole handshake stops it
        trickle = b"\x16\x03\x01\x02\x00" + bytes(512)
        cut = None
        for i in range(len(trickle)):
            try:
                sock.send(trickle[i : i + 1])
            except OSError:
                cut = time.monotonic() - start
                break
            if _closed_by_server(sock, 0.1):
                cut = time.monotonic() - start
                break
            if time.monotonic() - start > 5:
                break
        assert cut is not None and cut < 4.0, cut  # deadline 0.5 s; slack for a loaded machine
    finally:
        sock.close()
        server.close()
    refused = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "refused"]
    assert refused and "not completed within 0.5 s" in refused[0]["error"]


def test_one_shot_server_keeps_listening_through_refused_connections(db: Path, pki: Path, tmp_path: Path) -> None:
    server = _Server(db, pki, tmp_path / "audit.jsonl", ServiceLimits(handshake_timeout=2.0), forever=False)
    try:
        probe = _idle("127.0.0.5", server.port)  # a port scan / health check
        probe.close()
        with pytest.raises((AuthenticationError, TransportError)):  # a certificate from another CA
            api.lookup(["1"], peer=f"127.0.0.1:{server.port}", tls=tls_for(pki, "mallory"),
                       cache_dir=tmp_path / "m", timeout=5)
        assert server.thread.is_alive()
        assert _lookup(pki, server.port, tmp_path / "cache")[0].listed
        server.thread.join(5)
        assert not server.thread.is_alive()  # one session run: the one-shot server is done
    finally:
        server.close()
    assert [e["event"] for e in server.events].count("session") == 1
    assert [e["event"] for e in server.events].count("refused") >= 1


def test_one_client_cannot_hold_every_session_slot(db: Path, pki: Path, tmp_path: Path) -> None:
    from psi.errors import PolicyError
    from psi.transport.tcp import connect

    server = _Server(db, pki, tmp_path / "audit.jsonl", ServiceLimits(max_sessions=4, max_per_client=2))
    address = f"127.0.0.1:{server.port}"
    held = [connect(address, tls_for(pki, "bank-b", "bank-a")) for _ in range(2)]  # authenticated, then idle
    try:
        time.sleep(0.3)
        with pytest.raises(PolicyError, match="already has 2 sessions running"):
            _lookup(pki, server.port, tmp_path / "cache")
        other = api.lookup(["110101199000000007"], peer=address, tls=tls_for(pki, "bank-a", "bank-a"),
                           cache_dir=tmp_path / "other", timeout=20)  # another certificate is served
        assert other[0].label == "reason 7"
    finally:
        for channel in held:
            channel.close()
        server.close()
