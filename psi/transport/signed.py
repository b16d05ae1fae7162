"""SM2 message signing on top of any channel (``--sm2-key`` / ``--sm2-peer-key``).

Python's :mod:`ssl` cannot run TLS with SM2 certificates (nor TLCP, GB/T 38636), so a party that
must authenticate its traffic with national algorithms signs every frame with its own SM2 key
(GB/T 32918.2: SM3, distinguishing ID ``1234567812345678``, through OpenSSL, see
:mod:`psi.crypto.libcrypto`) and checks every frame of the peer against the peer's public key,
*in addition to* TLS 1.3, which still encrypts and authenticates the connection.

Flow (:meth:`SignedChannel.establish`, both sides at once, before the session's hello)::

    -> sm2.nonce   version 1 | 32-byte fresh nonce | SHA-256(own public point)
    <- sm2.nonce   (the peer's)
    -> sm2.confirm SM2 signature over "psiq sm2 confirm v1" | signer's side | client nonce
                   | server nonce | SHA-256 of both public points
    <- sm2.confirm (the peer's); verified under --sm2-peer-key
    -> sm2.verdict "ok", or an ``error`` frame (exit 6) when the peer's confirm failed
    <- sm2.verdict (the peer's)

Then every frame in either direction carries a 64-byte ``r || s`` trailer: an SM2 signature over
``"psiq sm2 frame v1" | client nonce | server nonce | direction | sequence number (u64, from 1
per direction) | kind | SM3(body)``. :meth:`recv` verifies it before returning the message, so
no protocol code parses an unverified payload.

What it promises:

* A frame modified, dropped, replayed (from this session or another: the nonces are fresh per
  session) or reordered in transit fails verification: :class:`TamperDetected`, exit 4, and the
  session stops before anything is written.
* A peer whose confirm does not verify under ``--sm2-peer-key`` (wrong key, another party) is
  refused with :class:`~psi.errors.AuthenticationError` (exit 6) on both sides, before any
  protocol message.
* A peer that does not sign (options given on one side only) is refused with
  :class:`~psi.errors.IncompatiblePeer` (exit 5) on both sides.
* Memory: the receiving party's per-kind limits apply to the body plus the 64-byte trailer.

What it does not do: encrypt (TLS does), or make the signatures evidence against a third party
beyond what SM2 signatures over this transcript are; the nonces and signatures are not logged.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from ..crypto import libcrypto
from ..errors import AuthenticationError, IncompatiblePeer, MalformedMessage, PsiqError, UsageError
from ..messages import BodyLimit, Message
from .base import Channel

__all__ = ["Sm2Signing", "SignedChannel", "TamperDetected", "NONCE_KIND", "SIGNATURE_SIZE"]

NONCE_KIND = "sm2.nonce"
CONFIRM_KIND = "sm2.confirm"
VERDICT_KIND = "sm2.verdict"
ERROR_KIND = "error"
SIGNATURE_SIZE = 64
_VERSION = 1
_NONCE_BODY = 1 + 32 + 32
_SEQUENCE = struct.Struct(">Q")


class TamperDetected(MalformedMessage):
    """A frame's SM2 signature did not verify: modified, replayed, reordered or forged in transit."""


@dataclass(frozen=True)
class Sm2Signing:
    """This party's SM2 private key and the peer's SM2 public key."""

    own_key: libcrypto.Sm2PrivateKey
    peer_key: libcrypto.Sm2PublicKey

    @classmethod
    def from_files(cls, key_path: Path, peer_key_path: Path) -> "Sm2Signing":
        """Load both PEM files (the peer's as a public key or a certificate); :class:`UsageError`
        (exit 2) naming the file when one is missing, unreadable or not an SM2 key."""
        own = _load(key_path, libcrypto.Sm2PrivateKey.from_pem, "--sm2-key", "an unencrypted SM2 private key")
        peer = _load(peer_key_path, libcrypto.Sm2PublicKey.from_pem, "--sm2-peer-key",
                     "an SM2 public key or certificate")
        if own.public_point() == peer.public_point():
            raise UsageError("--sm2-peer-key is this party's own public key: give the peer's")
        return cls(own, peer)  # type: ignore[arg-type]


def _load(path: Path, parse: object, flag: str, what: str) -> object:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"{flag} {path}: {err.strerror or err}") from None
    try:
        return parse(data)  # type: ignore[operator]
    except libcrypto.LibcryptoUnavailable:
        raise
    except ValueError as err:
        raise UsageError(f"{flag} {path}: not {what} ({err})") from None


def _fingerprint(point: bytes) -> bytes:
    return hashlib.sha256(point).digest()


class SignedChannel(Channel):
    """Wraps an established channel; every frame is SM2-signed and checked (see the module doc)."""

    def __init__(self, inner: Channel, signing: Sm2Signing, role: str, client_nonce: bytes, server_nonce: bytes) -> None:
        # no Channel.__init__: the byte counters and peer name are the inner channel's
        self._inner = inner
        self._signing = signing
        self._outgoing = b"C" if role == "client" else b"S"
        self._incoming = b"S" if role == "client" else b"C"
        self._binding = client_nonce + server_nonce
        self._sent = 0
        self._received = 0
        self._lock = threading.Lock()

    # -- the handshake ----------------------------------------------------------------------------
    @classmethod
    def establish(cls, inner: Channel, signing: Sm2Signing, role: str, *, timeout: float | None = 120.0) -> "SignedChannel":
        """Run the nonce / confirm / verdict exchange over ``inner``; see the module docstring."""
        if role not in ("client", "server"):
            raise ValueError("role is 'client' or 'server'")
        own_print = _fingerprint(signing.own_key.public_point())
        peer_print = _fingerprint(signing.peer_key.public_point())
        nonce = secrets.token_bytes(32)
        inner.send(Message(NONCE_KIND, bytes([_VERSION]) + nonce + own_print))
        message = cls._handshake_recv(inner, NONCE_KIND, timeout)
        if len(message.body) != _NONCE_BODY or message.body[0] != _VERSION:
            raise MalformedMessage("peer's SM2 nonce message is malformed")
        peer_nonce, claimed = message.body[1:33], message.body[33:]
        client_nonce, server_nonce = (nonce, peer_nonce) if role == "client" else (peer_nonce, nonce)
        # the transcript holds the key fingerprints as announced, so that a party with the wrong
        # --sm2-peer-key refuses alone and the other side hears its reason
        client_print, server_print = (own_print, claimed) if role == "client" else (claimed, own_print)
        side = b"C" if role == "client" else b"S"
        peer_side = b"S" if role == "client" else b"C"

        def transcript(signer: bytes) -> bytes:
            return b"psiq sm2 confirm v1" + signer + client_nonce + server_nonce + client_print + server_print

        inner.send(Message(CONFIRM_KIND, libcrypto.der_to_raw(signing.own_key.sign(transcript(side)))))
        message = cls._handshake_recv(inner, CONFIRM_KIND, timeout)
        if len(message.body) != SIGNATURE_SIZE or not _verify(signing.peer_key, message.body, transcript(peer_side)):
            detail = ("it announces another key (SHA-256 " + claimed.hex()[:16] + "...)" if claimed != peer_print
                      else "its signature does not verify")
            error = AuthenticationError(
                f"the peer's SM2 signature does not match --sm2-peer-key (SHA-256 {peer_print.hex()[:16]}...): {detail}")
            _send_refusal(inner, error)
            raise error
        inner.send(Message(VERDICT_KIND, b"ok"))
        message = cls._handshake_recv(inner, VERDICT_KIND, timeout)
        if message.body != b"ok":
            raise MalformedMessage("peer's SM2 verdict is malformed")
        return cls(inner, signing, role, client_nonce, server_nonce)

    @staticmethod
    def _handshake_recv(inner: Channel, kind: str, timeout: float | None) -> Message:
        message = inner.recv(timeout, limit=lambda _kind: 4096)
        if message.kind == ERROR_KIND:
            from ..driver import raise_if_error

            raise_if_error(message)
        if message.kind == kind:
            return message
        if kind == NONCE_KIND:
            error = IncompatiblePeer("the peer does not sign its messages with SM2: give both parties "
                                     "--sm2-key and --sm2-peer-key, or neither")
            _send_refusal(inner, error)
            raise error
        raise MalformedMessage(f"expected the peer's {kind!r} message, got {message.kind!r}")

    # -- Channel ----------------------------------------------------------------------------------
    def _to_sign(self, direction: bytes, sequence: int, kind: str, body: bytes) -> bytes:
        from ..crypto.sm2 import sm3

        kind_bytes = kind.encode("ascii")
        return (b"psiq sm2 frame v1" + self._binding + direction + _SEQUENCE.pack(sequence)
                + bytes([len(kind_bytes)]) + kind_bytes + sm3(body))

    def send(self, message: Message) -> None:
        with self._lock:
            self._sent += 1
            to_sign = self._to_sign(self._outgoing, self._sent, message.kind, message.body)
            signature = libcrypto.der_to_raw(self._signing.own_key.sign(to_sign))
            self._inner.send(Message(message.kind, bytes(message.body) + signature))

    def recv(self, timeout: float | None = None, *, limit: BodyLimit | None = None) -> Message:
        def signed_limit(kind: str) -> int | None:
            cap = limit(kind) if limit is not None else None
            return None if cap is None else cap + SIGNATURE_SIZE

        message = self._inner.recv(timeout, limit=signed_limit)
        with self._lock:
            self._received += 1
            sequence = self._received
        body = message.body
        if len(body) < SIGNATURE_SIZE or not _verify(
                self._signing.peer_key, body[-SIGNATURE_SIZE:],
                self._to_sign(self._incoming, sequence, message.kind, body[:-SIGNATURE_SIZE])):
            raise TamperDetected(
                f"tamper detected: the peer's SM2 signature on message #{sequence} ({message.kind!r}) does not "
                "verify: it was modified, replayed, reordered or dropped in transit")
        return Message(message.kind, body[:-SIGNATURE_SIZE])

    def flush(self) -> None:
        self._inner.flush()

    def close(self) -> None:
        self._inner.close()

    @property  # type: ignore[override]
    def bytes_sent(self) -> int:
        return self._inner.bytes_sent

    @property  # type: ignore[override]
    def bytes_received(self) -> int:
        return self._inner.bytes_received

    @property  # type: ignore[override]
    def peer_name(self) -> str | None:
        return self._inner.peer_name

    def pending(self) -> int:
        """Messages waiting (in-memory channels only)."""
        return self._inner.pending()  # type: ignore[attr-defined]


def _verify(key: libcrypto.Sm2PublicKey, raw: bytes, message: bytes) -> bool:
    try:
        der = libcrypto.raw_to_der(raw)
    except ValueError:
        return False
    return key.verify(der, message)


def _send_refusal(inner: Channel, error: PsiqError) -> None:
    """Tell the peer why (one unsigned ``error`` frame, before any protocol message), then wait
    briefly for it to hang up so that the frame is not lost to a connection reset."""
    from ..driver import send_error

    send_error(inner, error)
