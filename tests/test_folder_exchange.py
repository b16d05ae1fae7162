"""``--via-dir``: messages through a shared folder are encrypted, signed and bound to one session.

Each test plays someone who can write to the exchange folder (the other bank, or a third party
on the share): tampering, stripping the signature, replaying, reordering, reflecting, another
bank's or another CA's certificate, and oversized files. Every one is refused (exit 6 for what
fails authentication, exit 4 for what is malformed or over a cap) and an honest exchange works.
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
from pathlib import Path

import pytest

from psi.errors import AuthenticationError, MalformedMessage, PsiqError, UsageError
from psi.messages import Message, control_limit
from psi.transport.files import FolderChannel

from .conftest import tls_for


def _pair(directory: Path, pki: Path, client: str = "bank-a", server: str = "bank-b",
          client_peer: str | None = None, server_peer: str | None = None,
          timeout: float = 10.0) -> tuple[FolderChannel, FolderChannel]:
    """Both ends of a folder, hellos exchanged (the server's in a thread, as a second process would)."""
    c = FolderChannel(directory, "client", tls_for(pki, client, client_peer), poll=0.005, handshake_timeout=timeout)
    s = FolderChannel(directory, "server", tls_for(pki, server, server_peer), poll=0.005, handshake_timeout=timeout)
    box: dict = {}

    def server_side() -> None:
        try:
            s._handshake()
        except PsiqError as err:
            box["error"] = err

    t = threading.Thread(target=server_side, daemon=True)
    t.start()
    try:
        c._handshake()
    except PsiqError as err:
        box["client_error"] = err
    t.join(timeout + 5)
    if box:
        raise ExceptionGroup("handshake failed", list(box.values()))
    return c, s


def test_an_honest_exchange_works_both_ways(tmp_path: Path, pki: Path) -> None:
    c, s = _pair(tmp_path / "x", pki)
    big = os.urandom(3 * 1024 * 1024)
    c.send(Message("hello", b'{"a":1}'))
    c.send(Message("data", big))
    assert s.recv(5) == Message("hello", b'{"a":1}')
    assert s.recv(5, limit=lambda kind: 4 * 1024 * 1024) == Message("data", big)
    s.send(Message("reply", b"ok"))
    assert c.recv(5) == Message("reply", b"ok")
    assert c.peer_name == "bank-b" and s.peer_name == "bank-a"
    # nothing readable on the share: the body is not in the file
    c.send(Message("secret", b"customer 110101199003071234"))
    stored = (tmp_path / "x" / "client-out" / "0000000002.frame").read_bytes()
    assert b"110101199003071234" not in stored
    assert s.recv(5).body == b"customer 110101199003071234"
    c.close()
    s.close()


def _sent(tmp_path: Path, pki: Path, body: bytes = b"payload") -> tuple[FolderChannel, FolderChannel, Path]:
    c, s = _pair(tmp_path / "x", pki)
    c.send(Message("data", body))
    return c, s, tmp_path / "x" / "client-out" / "0000000000.frame"


def test_a_tampered_file_is_refused(tmp_path: Path, pki: Path) -> None:
    _c, s, path = _sent(tmp_path, pki)
    data = bytearray(path.read_bytes())
    data[-20] ^= 1  # one bit of the ciphertext
    path.write_bytes(bytes(data))
    with pytest.raises(AuthenticationError, match="not signed by 'bank-a'") as info:
        s.recv(5)
    assert info.value.exit_code == 6


def test_a_changed_kind_is_refused(tmp_path: Path, pki: Path) -> None:
    _c, s, path = _sent(tmp_path, pki)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"data", b"date", 1))
    with pytest.raises(AuthenticationError):
        s.recv(5)


def test_an_unsigned_or_foreign_signed_file_is_refused(tmp_path: Path, pki: Path) -> None:
    _c, s, path = _sent(tmp_path, pki)
    data = path.read_bytes()
    head = struct.Struct(">4sBQBH")
    magic, version, seq, kind_len, sig_len = head.unpack_from(data)
    rest = data[head.size + kind_len + sig_len :]
    unsigned = head.pack(magic, version, seq, kind_len, 0) + data[head.size : head.size + kind_len] + rest
    path.write_bytes(unsigned)
    with pytest.raises(AuthenticationError, match="not signed"):
        s.recv(5)


def test_a_replayed_file_is_refused(tmp_path: Path, pki: Path) -> None:
    c, s, path = _sent(tmp_path, pki, b"first")
    copy = path.read_bytes()
    assert s.recv(5) == Message("data", b"first")
    (tmp_path / "x" / "client-out" / "0000000001.frame").write_bytes(copy)  # file 0 again, as file 1
    with pytest.raises(AuthenticationError, match="sequence number 0"):
        s.recv(5)


def test_reordered_files_are_refused(tmp_path: Path, pki: Path) -> None:
    c, s = _pair(tmp_path / "x", pki)
    c.send(Message("data", b"one"))
    c.send(Message("data", b"two"))
    out = tmp_path / "x" / "client-out"
    zero, one = (out / "0000000000.frame").read_bytes(), (out / "0000000001.frame").read_bytes()
    (out / "0000000000.frame").write_bytes(one)
    (out / "0000000001.frame").write_bytes(zero)
    with pytest.raises(AuthenticationError, match="replayed or reordered"):
        s.recv(5)


def test_a_file_from_another_session_is_refused(tmp_path: Path, pki: Path) -> None:
    _c1, _s1, old = _sent(tmp_path / "one", pki, b"old session")
    _c2, s2 = _pair(tmp_path / "two" / "x", pki)
    shutil.copy(old, tmp_path / "two" / "x" / "client-out" / "0000000000.frame")
    with pytest.raises(AuthenticationError, match="for this session"):
        s2.recv(5)


def test_a_reflected_file_is_refused(tmp_path: Path, pki: Path) -> None:
    c, s = _pair(tmp_path / "x", pki)
    s.send(Message("data", b"from the server"))
    reflected = (tmp_path / "x" / "server-out" / "0000000000.frame").read_bytes()
    (tmp_path / "x" / "client-out" / "0000000000.frame").write_bytes(reflected)  # back to the server
    with pytest.raises(AuthenticationError):
        s.recv(5)
    assert c.recv(5) == Message("data", b"from the server")


def test_the_wrong_bank_is_refused_on_both_sides(tmp_path: Path, pki: Path) -> None:
    """The client expects bank-b; the folder's server holds bank-a's certificate (same CA)."""
    c = FolderChannel(tmp_path / "x", "client", tls_for(pki, "bank-a", "bank-b"), poll=0.005, handshake_timeout=5)
    s = FolderChannel(tmp_path / "x", "server", tls_for(pki, "bank-a", "bank-a"), poll=0.005, handshake_timeout=5)
    box: dict = {}

    def server_side() -> None:  # as 'psiq psi serve --via-dir': wait for the client's first message
        try:
            s.recv(5)
        except PsiqError as err:
            box["error"] = err

    t = threading.Thread(target=server_side, daemon=True)
    t.start()
    with pytest.raises(AuthenticationError, match="is for 'bank-a', expected 'bank-b'") as info:
        c.send(Message("hello", b"{}"))
    t.join(10)
    assert info.value.exit_code == 6
    assert isinstance(box.get("error"), AuthenticationError) and "peer refused this exchange" in str(box["error"])
    assert not list((tmp_path / "x" / "client-out").glob("*.frame"))  # nothing was sent to the wrong party


def test_a_certificate_from_another_ca_is_refused(tmp_path: Path, pki: Path) -> None:
    with pytest.raises(ExceptionGroup) as info:
        _pair(tmp_path / "x", pki, client="mallory", server="bank-b", server_peer="bank-a", client_peer="bank-b",
              timeout=3)
    assert any("not issued by the configured CA" in str(e) for e in info.value.exceptions)


def test_a_forged_hello_is_refused(tmp_path: Path, pki: Path) -> None:
    """bank-b's certificate copied into a hello signed with another key."""
    from psi.transport import files

    s = FolderChannel(tmp_path / "x", "server", tls_for(pki, "bank-b"), poll=0.005, handshake_timeout=3)
    forger = FolderChannel(tmp_path / "x", "client", tls_for(pki, "bank-a"), poll=0.005)
    honest_cert = tls_for(pki, "bank-a").cert
    mallory = files._Identity(tls_for(pki, "mallory"))
    forger._identity.cert_der = files._Identity(tls_for(pki, "bank-a")).cert_der  # the real bank-a certificate...
    forger._identity.key = mallory.key  # ...signed with a key that is not bank-a's
    assert honest_cert.exists()
    forger._write("hello", forger._hello(os.urandom(32), os.urandom(32), b""))
    with pytest.raises(AuthenticationError, match="not signed by its certificate key"):
        s.recv(1)


def test_sizes_are_checked_before_reading(tmp_path: Path, pki: Path) -> None:
    import tracemalloc

    c, s = _pair(tmp_path / "x", pki)
    s.max_body = 64 * 1024 * 1024
    big = tmp_path / "x" / "client-out" / "0000000000.frame"
    with open(big, "wb") as fh:  # a sparse 300 MiB file with a plausible header
        fh.write(struct.pack(">4sBQBH", b"PSQE", 1, 0, 4, 0) + b"data")
        fh.truncate(300 * 1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(MalformedMessage, match="over the cap") as info:
            s.recv(5)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.exit_code == 4 and peak < 4 * 1024 * 1024


def test_a_kind_over_its_cap_is_refused_naming_it(tmp_path: Path, pki: Path) -> None:
    c, s = _pair(tmp_path / "x", pki)
    c.send(Message("hello", b"x" * (200 * 1024)))
    with pytest.raises(MalformedMessage, match="'hello' message of 204800 bytes"):
        s.recv(5, limit=control_limit)


def test_an_oversized_hello_is_refused_unread(tmp_path: Path, pki: Path) -> None:
    s = FolderChannel(tmp_path / "x", "server", tls_for(pki, "bank-b"), poll=0.005, handshake_timeout=3)
    hello = tmp_path / "x" / "client-out" / "hello"
    with open(hello, "wb") as fh:
        fh.truncate(100 * 1024 * 1024)
    with pytest.raises(MalformedMessage, match="exceeds the cap"):
        s.recv(1)


def test_a_folder_needs_certificates_and_an_identity_policy(tmp_path: Path, pki: Path) -> None:
    from psi.transport.tls import TlsConfig

    with pytest.raises(UsageError, match="certificate"):
        FolderChannel(tmp_path / "x", "client", None)
    base = tls_for(pki, "bank-a")
    with pytest.raises(UsageError, match="--any-peer"):
        FolderChannel(tmp_path / "x", "client", TlsConfig(base.cert, base.key, base.ca))


def test_a_whole_replayed_client_session_is_refused(tmp_path: Path, pki: Path) -> None:
    """An old client hello and its first file, copied into a fresh folder: the server's fresh
    nonce changes the session id, so the old file's signature no longer verifies."""
    old = tmp_path / "old"
    c = FolderChannel(old, "client", tls_for(pki, "bank-a"), poll=0.005, handshake_timeout=5)
    s = FolderChannel(old, "server", tls_for(pki, "bank-b"), poll=0.005, handshake_timeout=5)
    saved: dict[str, bytes] = {}
    real_write = c._write

    def keep(name: str, data: bytes) -> None:
        saved[name] = data
        real_write(name, data)

    c._write = keep  # type: ignore[method-assign]
    t = threading.Thread(target=s._handshake, daemon=True)
    t.start()
    c.send(Message("data", b"transfer 100"))
    t.join(10)
    assert s.recv(5) == Message("data", b"transfer 100")
    fresh = tmp_path / "new"
    (fresh / "client-out").mkdir(parents=True)
    (fresh / "client-out" / "hello").write_bytes(saved["hello"])
    (fresh / "client-out" / "0000000000.frame").write_bytes(saved["0000000000.frame"])
    server = FolderChannel(fresh, "server", tls_for(pki, "bank-b"), poll=0.005, handshake_timeout=5)
    with pytest.raises(AuthenticationError, match="for this session"):
        server.recv(5)
