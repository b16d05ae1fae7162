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


# -- memory a peer can make us allocate (issue 10, point 6a) ----------------------------------

def _raw_peer(script) -> tuple[int, threading.Thread, socket.socket]:
    """A plain-TCP loopback 'peer' that runs ``script(conn)`` on the first connection."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        try:
            script(conn)
        finally:
            conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv.getsockname()[1], t, srv


def _header(kind: bytes, body_len: int) -> bytes:
    from psi.messages import HEADER, MAGIC, WIRE_VERSION

    return HEADER.pack(MAGIC, WIRE_VERSION, len(kind), 0, bytes(8), body_len) + kind


def test_a_huge_announced_body_is_not_allocated_up_front() -> None:
    """A header announcing 200 MiB followed by 1 KiB must not cost 200 MiB (it did: bytearray(n))."""
    import tracemalloc

    release = threading.Event()

    def announce(conn: socket.socket) -> None:
        conn.sendall(_header(b"data", 200 * 1024 * 1024) + b"x" * 1024)
        release.wait(10)

    port, t, srv = _raw_peer(announce)
    ch = connect(f"127.0.0.1:{port}", None)
    tracemalloc.start()
    try:
        with pytest.raises(TransportError, match="timed out"):
            ch.recv(1.0)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        release.set()
        ch.close()
        srv.close()
        t.join(5)
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while the peer sent 1 KiB"


def test_a_body_over_the_kind_cap_is_refused_from_its_header_naming_the_kind() -> None:
    from psi.messages import control_limit

    release = threading.Event()

    def announce(conn: socket.socket) -> None:
        conn.sendall(_header(b"hello", 10 * 1024 * 1024))  # and never a byte of body
        release.wait(10)

    port, t, srv = _raw_peer(announce)
    ch = connect(f"127.0.0.1:{port}", None)
    try:
        with pytest.raises(MalformedMessage, match="'hello' message of 10485760 bytes") as info:
            ch.recv(5.0, limit=control_limit)  # refused at once, not after the 5 s timeout
        assert info.value.exit_code == 4
    finally:
        release.set()
        ch.close()
        srv.close()
        t.join(5)


def test_the_driver_passes_the_party_cap_to_the_channel() -> None:
    """A party's receive_limit reaches recv through run_party (an OT receiver meets a 100 KiB hello)."""
    from psi.driver import run_party
    from psi.ot import OneOfNReceiver

    a, b = memory_pair()
    b.send(Message("hello", b"{" + b" " * (100 * 1024) + b"}"))
    with pytest.raises(MalformedMessage, match="'hello' message of 102402 bytes"):
        run_party(OneOfNReceiver([0]), a, timeout=0)


def test_the_hard_cap_stays_a_backstop() -> None:
    a, b = memory_pair(max_body=1000)
    a.send(Message("data", b"x" * 1001))
    with pytest.raises(MalformedMessage, match="exceeds the cap of 1000"):
        b.recv(0)


# -- peer identity (issue 10, point 7) ---------------------------------------------------------

def test_a_server_requires_a_client_certificate(pki: Path) -> None:
    """Deliberate bug 'CERT_OPTIONAL' must fail here: the server context demands a certificate."""
    from psi.transport.tls import client_context, server_context

    assert server_context(tls_for(pki, "bank-b")).verify_mode == ssl.CERT_REQUIRED
    assert client_context(tls_for(pki, "bank-a")).verify_mode == ssl.CERT_REQUIRED


def test_a_client_without_a_certificate_is_refused(pki: Path) -> None:
    with Listener("127.0.0.1:0", tls_for(pki, "bank-b", any_peer=True)) as lst:
        t, box = _serve_once(lst, _echo)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts the CA, presents no certificate
        ctx.check_hostname = False
        ctx.load_verify_locations(cafile=str(pki / "ca.pem"))
        raw = socket.create_connection(("127.0.0.1", lst.address[1]), timeout=10)
        with ctx.wrap_socket(raw) as sock:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                sock.sendall(b"x")
                if not sock.recv(100):
                    raise ConnectionResetError("closed")
        t.join(10)
    assert isinstance(box.get("error"), AuthenticationError) and box["error"].exit_code == 6
    assert "peer" not in box


def test_a_missing_client_certificate_is_refused_even_if_tls_let_it_through() -> None:
    from psi.transport.tls import check_peer_certificate

    with pytest.raises(AuthenticationError, match="no certificate"):
        check_peer_certificate(None, None)


def test_pinning_bank_b_refuses_a_server_holding_bank_a_on_both_sides(pki: Path) -> None:
    """Same CA, wrong party: the client refuses, and the server learns it was refused (exit 6 both)."""
    with Listener("127.0.0.1:0", tls_for(pki, "bank-a", any_peer=True)) as lst:
        t, box = _serve_once(lst, _echo)
        with pytest.raises(AuthenticationError, match="is for 'bank-a', expected 'bank-b'") as info:
            connect(f"127.0.0.1:{lst.address[1]}", tls_for(pki, "bank-a", peer="bank-b"), retries=0)
        assert info.value.exit_code == 6
        t.join(10)
    assert isinstance(box.get("error"), AuthenticationError), box
    assert "refused our certificate" in str(box["error"]) and "bank-b" not in str(box["error"])


def test_a_server_pinning_its_client_refuses_another_bank(pki: Path) -> None:
    with Listener("127.0.0.1:0", tls_for(pki, "bank-b", peer="bank-z")) as lst:
        t, box = _serve_once(lst, _echo)
        with pytest.raises(AuthenticationError, match="peer refused our certificate"):
            connect(f"127.0.0.1:{lst.address[1]}", tls_for(pki, "bank-a"), retries=0)
        t.join(10)
    assert isinstance(box.get("error"), AuthenticationError) and "expected 'bank-z'" in str(box["error"])


def test_any_peer_accepts_any_certificate_from_the_ca(pki: Path) -> None:
    with Listener("127.0.0.1:0", tls_for(pki, "bank-b", any_peer=True)) as lst:
        t, box = _serve_once(lst, _echo)
        ch = connect(f"127.0.0.1:{lst.address[1]}", tls_for(pki, "bank-a", any_peer=True))
        ch.send(Message("x", b"1"))
        assert ch.recv(10) == Message("echo", b"1") and ch.peer_name == "bank-b"
        ch.close()
        t.join(10)
    assert box.get("peer") == "bank-a" and "error" not in box


def test_neither_peer_name_nor_any_peer_is_refused_before_listening_or_connecting(pki: Path) -> None:
    from psi.transport.tls import TlsConfig

    base = tls_for(pki, "bank-a")
    anonymous = TlsConfig(base.cert, base.key, base.ca)
    with pytest.raises(UsageError, match="--peer-name NAME .* or --any-peer"):
        Listener("127.0.0.1:0", anonymous)
    with pytest.raises(UsageError, match="--any-peer"):
        connect("127.0.0.1:9", anonymous, retries=0)  # nothing listens there: refused before connecting
    with pytest.raises(UsageError, match="not both"):
        Listener("127.0.0.1:0", TlsConfig(base.cert, base.key, base.ca, "bank-b", any_peer=True))


def test_a_pinned_name_matches_the_cn_or_a_dns_san_and_nothing_shared(pki: Path, tmp_path: Path) -> None:
    """Trial certificates carry only the party name; a deployment certificate may differ in CN and SAN."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from psi.transport.tls import TlsConfig, certificate_names, check_peer_certificate

    trial = x509.load_pem_x509_certificate((pki / "bank-a.pem").read_bytes())
    assert certificate_names(trial) == ("bank-a", ["bank-a"])
    der = trial.public_bytes(serialization.Encoding.DER)

    def policy(name: str) -> TlsConfig:
        return TlsConfig(Path("c"), Path("k"), Path("ca"), name)

    assert check_peer_certificate(der, policy("bank-a")) == "bank-a"
    for wrong in ("localhost", "127.0.0.1", "bank-b", "psiq trial CA"):
        with pytest.raises(AuthenticationError):
            check_peer_certificate(der, policy(wrong))
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bank B Ltd")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("psi.bank-b.example")]), critical=False)
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    assert check_peer_certificate(der, policy("Bank B Ltd")) == "Bank B Ltd"
    assert check_peer_certificate(der, policy("PSI.bank-b.example")) == "Bank B Ltd"
    with pytest.raises(AuthenticationError, match="is for 'Bank B Ltd', expected 'bank-b.example'"):
        check_peer_certificate(der, policy("bank-b.example"))


@pytest.mark.parametrize("protocol", ["ecdh", "rsa", "kkrt"])
def test_a_peer_cannot_send_more_than_its_announced_set_size_allows(protocol: str, tmp_path: Path) -> None:
    """A server announcing 10 keys then sending a 12 MiB message is refused from the header."""
    from psi import api
    from psi.records import read_keys
    from psi.session import session_body_cap

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("id\n" + "".join(f"{i}\n" for i in range(10)))
    b.write_text("id\n" + "".join(f"{i}\n" for i in range(5, 15)))
    options = api.PsiOptions(protocol=protocol, workers=1, timeout=20)
    client_end, server_end = memory_pair()
    honest_send = server_end.send
    sent = {"n": 0}

    def cheating_send(message: Message) -> None:
        sent["n"] += 1
        if sent["n"] == 2:  # the first message after the hello, blown up
            message = Message(message.kind, bytes(12 * 1024 * 1024))
        honest_send(message)

    server_end.send = cheating_send  # type: ignore[method-assign]
    box: dict = {}

    def server() -> None:
        try:
            api.run_session("server", server_end, read_keys(b, ["id"]), options=options)
        except Exception as err:  # noqa: BLE001 - the client's verdict matters here
            box["error"] = err

    t = threading.Thread(target=server, daemon=True)
    t.start()
    with pytest.raises(MalformedMessage, match=r"peer announced a '[a-z0-9.]+' message of 12582912 bytes") as info:
        api.run_session("client", client_end, read_keys(a, ["id"]), options=options)
    assert info.value.exit_code == 4 and session_body_cap(10, 10) < 12 * 1024 * 1024
    client_end.close()
    t.join(30)
