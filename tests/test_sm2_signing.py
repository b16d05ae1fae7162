"""SM2 message signing (psi.transport.signed, --sm2-key/--sm2-peer-key): sessions still give the
plaintext answer; a modified, replayed, reordered, dropped or foreign frame is caught before it is
parsed (exit 4, nothing written); a wrong key is refused (exit 6); one-sided options fail."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Callable

import pytest

from psi.crypto import libcrypto
from psi.errors import AuthenticationError, IncompatiblePeer, MalformedMessage
from psi.messages import HEADER, Message, encode_frame
from psi.transport.memory import memory_pair
from psi.transport.signed import SignedChannel, Sm2Signing, TamperDetected

from .conftest import free_port, tls_args
from .helpers import ids, run_psiq, start_psiq

pytestmark = pytest.mark.skipif(not libcrypto.available(), reason="OpenSSL libcrypto 3.x not loadable")


@pytest.fixture(scope="module")
def keys() -> dict[str, libcrypto.Sm2PrivateKey]:
    return {name: libcrypto.Sm2PrivateKey.generate() for name in ("a", "b", "mallory")}


def _signing(keys: dict, own: str, peer: str) -> Sm2Signing:
    return Sm2Signing(keys[own], keys[peer].public_key())


def _establish(client_signing: Sm2Signing | None, server_signing: Sm2Signing | None):
    """Both ends of a memory pair through the handshake (one thread each); returns
    (client end, server end, client error, server error, raw client, raw server)."""
    raw_c, raw_s = memory_pair()
    box: dict[str, object] = {}

    def run(name: str, raw, signing, role: str) -> None:
        try:
            if signing is None:  # a party without signing: what the session's hello exchange does
                from psi.session import exchange_hello  # noqa: F401 - the check lives there
                raw.send(Message("hello", b"{}"))
                message = raw.recv(10)
                box[name] = ("plain", message)
            else:
                box[name] = SignedChannel.establish(raw, signing, role, timeout=10)
        except Exception as err:  # noqa: BLE001 - the test inspects it
            box[name] = err

    threads = [threading.Thread(target=run, args=("c", raw_c, client_signing, "client")),
               threading.Thread(target=run, args=("s", raw_s, server_signing, "server"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return box["c"], box["s"], raw_c, raw_s


def _pair(keys: dict) -> tuple[SignedChannel, SignedChannel, object, object]:
    client, server, raw_c, raw_s = _establish(_signing(keys, "a", "b"), _signing(keys, "b", "a"))
    assert isinstance(client, SignedChannel) and isinstance(server, SignedChannel), (client, server)
    return client, server, raw_c, raw_s


def _capture(sender: SignedChannel, raw_receiver, messages: list[Message]) -> list[Message]:
    """Send through the signing end and take the signed frames off the wire unverified."""
    for message in messages:
        sender.send(message)
    return [raw_receiver.recv(1) for _ in messages]


def _inject(raw_receiver, message: Message) -> None:
    raw_receiver._inbox.put(encode_frame(message))


def test_round_trip_and_byte_counts(keys: dict) -> None:
    client, server, raw_c, raw_s = _pair(keys)
    for i in range(5):
        client.send(Message("x.data", bytes([i]) * (i * 1000)))
        assert server.recv(1) == Message("x.data", bytes([i]) * (i * 1000))
        server.send(Message("x.reply", b"r%d" % i))
        assert client.recv(1) == Message("x.reply", b"r%d" % i)
    assert client.bytes_sent == raw_c.bytes_sent == server.bytes_received


@pytest.mark.parametrize("cheat", ["flip payload", "flip kind", "strip signature", "replay", "reorder", "drop",
                                   "another session", "reflect"])
def test_tampered_frames_are_caught_before_parsing(keys: dict, cheat: str) -> None:
    client, server, raw_c, raw_s = _pair(keys)
    frames = _capture(client, raw_s, [Message("x.data", b"first payload"), Message("x.data", b"second payload")])
    first, second = frames
    if cheat == "flip payload":
        body = bytearray(first.body)
        body[3] ^= 1
        wire = [Message(first.kind, bytes(body))]
    elif cheat == "flip kind":
        wire = [Message("x.dat4", first.body)]
    elif cheat == "strip signature":
        wire = [Message(first.kind, first.body[:-64])]
    elif cheat == "replay":
        wire = [first, first]
    elif cheat == "reorder":
        wire = [second, first]
    elif cheat == "drop":
        wire = [second]
    elif cheat == "another session":  # a frame signed by the same key in an earlier session
        old_client, _old_server, _c, old_raw_s = _pair(keys)
        wire = _capture(old_client, old_raw_s, [Message("x.data", b"first payload")])
    else:  # the server's own frame sent back to it
        reflected = _capture(server, raw_c, [Message("x.data", b"first payload")])
        wire = reflected
    for message in wire:
        _inject(raw_s, message)
    if cheat == "replay":
        assert server.recv(1) == Message("x.data", b"first payload")
    with pytest.raises(TamperDetected, match="tamper detected"):
        server.recv(1)


def test_wrong_peer_key_is_refused_on_both_sides(keys: dict) -> None:
    # the server expects mallory's key; the client signs with a's
    client, server, *_ = _establish(_signing(keys, "a", "b"), _signing(keys, "b", "mallory"))
    assert isinstance(server, AuthenticationError) and "--sm2-peer-key" in str(server)
    assert isinstance(client, AuthenticationError) and "peer stopped" in str(client)


def test_a_peer_without_signing_is_refused(keys: dict) -> None:
    client, server, *_ = _establish(_signing(keys, "a", "b"), None)
    assert isinstance(client, IncompatiblePeer) and "does not sign" in str(client)


def test_limits_apply_to_the_body_plus_the_trailer(keys: dict) -> None:
    client, server, raw_c, raw_s = _pair(keys)
    client.send(Message("x.data", b"z" * 100))
    assert server.recv(1, limit=lambda kind: 100).body == b"z" * 100
    client.send(Message("x.data", b"z" * 101))
    with pytest.raises(MalformedMessage, match="more than"):
        server.recv(1, limit=lambda kind: 100)


# -- two processes --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sm2keys")
    for party in ("bank-a", "bank-b", "mallory"):
        result = run_psiq(["certs", "sm2-keygen", str(d), "--party", party])
        assert result.returncode == 0, result.stderr
    assert (d / "bank-a.sm2.key").stat().st_mode & 0o077 == 0
    return d


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sm2tables")
    (d / "a.csv").write_text("id,v\n" + "".join(f"{i},a{i}\n" for i in range(0, 300)))
    (d / "b.csv").write_text("id,w\n" + "".join(f"{i},b{i}\n" for i in range(150, 400)))
    return d


def _sm2(key_files: Path, own: str, peer: str) -> list[str]:
    return ["--sm2-key", str(key_files / f"{own}.sm2.key"), "--sm2-peer-key", str(key_files / f"{peer}.sm2.pub")]


def _session(tables: Path, tmp_path: Path, server_args: list[str], client_args: list[str], *, protocol: str = "ecdh",
             port: int | None = None, connect_port: int | None = None):
    port = port or free_port()
    common = ["--protocol", protocol, "--on", "id", "--reveal", "both", "--json", "--quiet"]
    server = start_psiq(["psi", "serve", "--input", str(tables / "b.csv"), "--listen", f"127.0.0.1:{port}",
                         "--output", str(tmp_path / "b_out.csv"), *common, *server_args])
    client = run_psiq(["psi", "connect", "--input", str(tables / "a.csv"), "--peer", f"127.0.0.1:{connect_port or port}",
                       "--output", str(tmp_path / "a_out.csv"), *common, *client_args], timeout=120)
    return server, client


@pytest.mark.parametrize("protocol", ["ecdh", "kkrt"])
def test_signed_session_over_tls_gives_the_plaintext_answer(protocol: str, tables: Path, key_files: Path, pki: Path,
                                                             tmp_path: Path) -> None:
    server, client = _session(tables, tmp_path, [*tls_args(pki, "bank-b"), *_sm2(key_files, "bank-b", "bank-a")],
                              [*tls_args(pki, "bank-a"), *_sm2(key_files, "bank-a", "bank-b")], protocol=protocol)
    s_out, s_err = server.communicate(timeout=60)
    assert client.returncode == 0 and server.returncode == 0, client.stderr + s_err
    expected = {str(i) for i in range(150, 300)}
    assert set(ids(tmp_path / "a_out.csv", "id")) == expected == set(ids(tmp_path / "b_out.csv", "id"))
    assert json.loads(client.stdout)["intersection_size"] == 150


class _Proxy:
    """A loopback TCP relay between client and server that parses psiq frames and lets a test
    rewrite the ``index``-th frame of one direction (``mutate`` returns the frames to forward)."""

    def __init__(self, target: int, direction: str, mutate: Callable[[int, bytes], list[bytes]]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target, self.direction, self.mutate = target, direction, mutate
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        downstream, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.target))
        for src, dst, name in ((downstream, upstream, "c2s"), (upstream, downstream, "s2c")):
            threading.Thread(target=self._pump, args=(src, dst, name == self.direction), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, rewrite: bool) -> None:
        buffer, index = b"", 0
        try:
            while chunk := src.recv(65536):
                if not rewrite:
                    dst.sendall(chunk)
                    continue
                buffer += chunk
                while len(buffer) >= HEADER.size:
                    _m, _v, kind_len, _f, _s, body_len = HEADER.unpack(buffer[: HEADER.size])
                    size = HEADER.size + kind_len + body_len
                    if len(buffer) < size:
                        break
                    frame, buffer = buffer[:size], buffer[size:]
                    for out in self.mutate(index, frame):
                        dst.sendall(out)
                    index += 1
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _flip(target_index: int) -> Callable[[int, bytes], list[bytes]]:
    def mutate(index: int, frame: bytes) -> list[bytes]:
        if index == target_index:
            data = bytearray(frame)
            data[-100] ^= 0x01  # a byte of the payload (the 64-byte signature trailer is last)
            return [bytes(data)]
        return [frame]
    return mutate


def _replay(target_index: int) -> Callable[[int, bytes], list[bytes]]:
    return lambda index, frame: [frame, frame] if index == target_index else [frame]


@pytest.mark.parametrize("cheat,direction,mutate", [
    ("flip", "s2c", _flip(4)),     # frames: 0 nonce, 1 confirm, 2 verdict, 3 hello, 4.. protocol
    ("replay", "c2s", _replay(4)),
])
def test_man_in_the_middle_is_detected_and_nothing_is_written(cheat: str, direction: str, mutate: Callable,
                                                              tables: Path, key_files: Path, tmp_path: Path) -> None:
    port = free_port()
    server = start_psiq(["psi", "serve", "--input", str(tables / "b.csv"), "--listen", f"127.0.0.1:{port}",
                         "--output", str(tmp_path / "b_out.csv"), "--protocol", "ecdh", "--on", "id", "--reveal", "both",
                         "--quiet", "--insecure", "--timeout", "30", *_sm2(key_files, "bank-b", "bank-a")])
    import time

    time.sleep(1.5)
    proxy = _Proxy(port, direction, mutate)
    client = run_psiq(["psi", "connect", "--input", str(tables / "a.csv"), "--peer", f"127.0.0.1:{proxy.port}",
                       "--output", str(tmp_path / "a_out.csv"), "--protocol", "ecdh", "--on", "id", "--reveal", "both",
                       "--quiet", "--insecure", "--timeout", "30", *_sm2(key_files, "bank-a", "bank-b")], timeout=90)
    _s_out, s_err = server.communicate(timeout=60)
    victim = (client.returncode, client.stderr) if direction == "s2c" else (server.returncode, s_err)
    assert victim[0] == 4 and "tamper detected" in victim[1], victim
    assert client.returncode != 0 and server.returncode != 0
    assert not (tmp_path / "a_out.csv").exists() and not (tmp_path / "b_out.csv").exists()


def test_wrong_peer_key_is_refused_by_the_cli(tables: Path, key_files: Path, tmp_path: Path) -> None:
    port = free_port()
    server = start_psiq(["psi", "serve", "--input", str(tables / "b.csv"), "--listen", f"127.0.0.1:{port}",
                         "--protocol", "ecdh", "--on", "id", "--insecure", "--timeout", "20",
                         *_sm2(key_files, "bank-b", "mallory")])
    import time

    time.sleep(1.5)
    client = run_psiq(["psi", "connect", "--input", str(tables / "a.csv"), "--peer", f"127.0.0.1:{port}",
                       "--output", str(tmp_path / "a_out.csv"), "--protocol", "ecdh", "--on", "id", "--insecure",
                       *_sm2(key_files, "bank-a", "bank-b")], timeout=60)
    server.terminate()
    _s_out, s_err = server.communicate(timeout=30)
    assert client.returncode == 6 and "--sm2-peer-key" in client.stderr, client.stderr
    assert "refused a connection" in s_err and "--sm2-peer-key" in s_err
    assert not (tmp_path / "a_out.csv").exists()


@pytest.mark.parametrize("given", ["key only", "peer key only", "not a key", "missing file", "own key as peer"])
def test_key_options_are_checked_before_connecting(given: str, tables: Path, key_files: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    own, pub = str(key_files / "bank-a.sm2.key"), str(key_files / "bank-b.sm2.pub")
    args = {"key only": ["--sm2-key", own], "peer key only": ["--sm2-peer-key", pub],
            "not a key": ["--sm2-key", own, "--sm2-peer-key", str(junk)],
            "missing file": ["--sm2-key", str(tmp_path / "nope.key"), "--sm2-peer-key", pub],
            "own key as peer": ["--sm2-key", own, "--sm2-peer-key", str(key_files / "bank-a.sm2.pub")]}[given]
    port = free_port()  # nobody listens: exit 2 must come before any connection attempt (else exit 3)
    result = run_psiq(["psi", "connect", "--input", str(tables / "a.csv"), "--peer", f"127.0.0.1:{port}",
                       "--protocol", "ecdh", "--on", "id", "--insecure", *args], timeout=60)
    assert result.returncode == 2 and "--sm2" in result.stderr, result.stderr


def test_one_sided_signing_is_refused_by_both(tables: Path, key_files: Path, tmp_path: Path) -> None:
    server, client = _session(tables, tmp_path, ["--insecure", "--timeout", "20"],
                              ["--insecure", *_sm2(key_files, "bank-a", "bank-b")])
    _s_out, s_err = server.communicate(timeout=60)
    assert client.returncode == 5 and server.returncode == 5, client.stderr + s_err
    assert "SM2" in client.stderr and "SM2" in s_err


@pytest.mark.parametrize("cheat", ["impostor key", "replayed confirmation", "bad nonce message", "bad verdict"])
def test_a_cheating_client_in_the_signing_handshake_is_refused(keys: dict, cheat: str) -> None:
    """The server expects a's key. The client (mallory) plays the handshake by hand: it announces
    a's fingerprint but signs with its own key; replays a confirmation signed for another pair of
    nonces; sends a nonce message of the wrong length; or answers the verdict with something other
    than ``ok``."""
    from psi.transport import signed

    raw_c, raw_s = memory_pair()
    box: dict[str, object] = {}

    def server() -> None:
        try:
            box["s"] = SignedChannel.establish(raw_s, _signing(keys, "b", "a"), "server", timeout=10)
        except Exception as err:  # noqa: BLE001 - the test inspects it
            box["s"] = err

    t = threading.Thread(target=server)
    t.start()
    nonce = bytes(32)
    a_print = signed._fingerprint(keys["a"].public_point())
    if cheat == "bad nonce message":
        raw_c.send(Message(signed.NONCE_KIND, bytes([signed._VERSION]) + nonce + a_print[:-1]))
    else:
        raw_c.send(Message(signed.NONCE_KIND, bytes([signed._VERSION]) + nonce + a_print))
        server_nonce, server_print = (lambda b: (b[1:33], b[33:]))(raw_c.recv(10).body)
        signer = keys["mallory"] if cheat == "impostor key" else keys["a"]
        signed_nonce = bytes([1]) * 32 if cheat == "replayed confirmation" else server_nonce
        transcript = b"psiq sm2 confirm v1" + b"C" + nonce + signed_nonce + a_print + server_print
        raw_c.send(Message(signed.CONFIRM_KIND, libcrypto.der_to_raw(signer.sign(transcript))))
        if cheat == "bad verdict":
            raw_c.recv(10)  # the server's signature and its "ok"
            raw_c.recv(10)
            raw_c.send(Message(signed.VERDICT_KIND, b"ok!"))
        else:
            raw_c.recv(10)  # the server's signature; then hang up instead of waiting for its refusal
            raw_c.close()
    t.join(30)
    error = box["s"]
    if cheat in ("impostor key", "replayed confirmation"):
        assert isinstance(error, AuthenticationError) and "its signature does not verify" in str(error), error
    else:
        assert isinstance(error, MalformedMessage) and "malformed" in str(error), error
