"""A channel through a shared folder, for parties that cannot open a connection to each other.

Each side writes numbered files into ``DIR/<own role>-out/`` (written to a temp name and
renamed, so a reader never sees half a file) and polls ``DIR/<peer role>-out/`` for the next
number; every file is deleted once read. The folder can be a mounted exchange share (SFTP drop,
NFS) that both institutions' jobs can reach, so it is treated as hostile: whoever can write
there must not be able to read, forge, replay, reorder or reflect a message.

Security (the same certificates and identity policy as the TLS path, :mod:`.tls`):

1. **Hello.** Each side writes ``hello``: role, a fresh 32-byte nonce, a fresh X25519 public
   key and its certificate, signed with its certificate key. The server writes its hello only
   after checking the client's, and signs over the client's hello too. Each side checks the
   peer's certificate against the CA file (issued directly by a certificate there, within its
   validity) and the identity policy (``peer_name`` in CN/SAN, or ``any_peer``), and the
   signature: anything else is :class:`~psi.errors.AuthenticationError` (exit 6).
2. **Keys.** ``session id = SHA-256(both hellos)``; one AES-256-GCM key per direction from
   HKDF-SHA256 over the X25519 shared secret, salted with the session id (forward secret: the
   ephemeral keys are never stored).
3. **Messages.** File ``n`` holds ``seq = n``, the message kind, the sender's signature over
   (session id, direction, seq, kind, SHA-256 of the ciphertext) and the AES-GCM ciphertext of
   the body with the same fields as associated data. The receiver checks seq, signature and tag
   before using a byte of the body: a tampered, unsigned, replayed (other position or other
   session), reflected or foreign file is refused with exit 6.

Sizes are checked before reading: a file larger than the channel's hard cap, or whose kind
(readable in its header) may not be that large at this step of the protocol, is refused
(exit 4) without reading its body. The ``closed`` marker is not authenticated: anyone who can
write to the folder can end the session early (as they could by deleting files); they cannot
make a party accept a message.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import struct
import time
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import (
    AuthenticationError,
    InputError,
    MalformedMessage,
    PeerDisconnected,
    PsiqError,
    TransportError,
    UsageError,
)
from ..messages import DEFAULT_MAX_BODY, BodyLimit, Message, check_body_limit, decode_kind
from .base import Channel
from .tls import TlsConfig, check_peer_certificate

__all__ = ["FolderChannel"]

_CLOSED = "closed"
_REFUSED = "refused"
_HELLO = "hello"
_HELLO_MAGIC = b"PSQH"
_MSG_MAGIC = b"PSQE"
_VERSION = 1
_HELLO_MAX = 64 * 1024
_HELLO_HEAD = struct.Struct(">4sBB32s32sH")  # magic, version, role, nonce, x25519 key, cert length
_MSG_HEAD = struct.Struct(">4sBQBH")  # magic, version, seq, kind length, signature length
_TAG = 16
_ROLES = {"client": 1, "server": 2}
_DOMAIN_HELLO = b"psiq folder v1 hello\x00"
_DOMAIN_SESSION = b"psiq folder v1 session\x00"
_DOMAIN_KEYS = b"psiq folder v1 keys"
_DOMAIN_MESSAGE = b"psiq folder v1 message\x00"
_SIGNATURE_MAX = 1024


class _Identity:
    """This party's certificate (DER) and private key, loaded and matched from a TlsConfig."""

    def __init__(self, tls: TlsConfig) -> None:
        tls.check_identity_policy()
        tls.check_files()
        try:
            cert = x509.load_pem_x509_certificates(Path(tls.cert).read_bytes())[0]
            key = serialization.load_pem_private_key(Path(tls.key).read_bytes(), password=None)
            cas = x509.load_pem_x509_certificates(Path(tls.ca).read_bytes())
        except (ValueError, TypeError, OSError) as err:
            raise InputError(f"cannot load the certificate, key or CA ({tls.cert}, {tls.key}, {tls.ca}): {err}") from None
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
            raise InputError(f"{tls.key}: only EC, RSA and Ed25519 keys can sign folder messages")
        if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
                cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
            raise InputError(f"{tls.key} is not the key of {tls.cert}")
        self.tls = tls
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.key = key
        self.cas = cas

    def sign(self, data: bytes) -> bytes:
        key = self.key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(hashes.SHA256()))
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH), hashes.SHA256())
        return key.sign(data)

    def verify_peer(self, der: bytes) -> tuple[x509.Certificate, str]:
        """The peer certificate if a CA in the CA file issued it, it is valid now and fits the
        identity policy; its name. Raises :class:`AuthenticationError` otherwise."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise AuthenticationError("peer certificate in the exchange folder cannot be parsed") from None
        now = datetime.datetime.now(datetime.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise AuthenticationError("peer certificate is expired or not yet valid")
        if _is_ca(cert):
            raise AuthenticationError("peer certificate is a CA certificate")
        for ca in self.cas:
            if ca.subject != cert.issuer or not _is_ca(ca):
                continue
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
                continue
            return cert, check_peer_certificate(der, self.tls)
        raise AuthenticationError("peer certificate was not issued by the configured CA")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _verify(cert: x509.Certificate, signature: bytes, data: bytes) -> bool:
    key = cert.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


class FolderChannel(Channel):
    """One side of a folder exchange: ``role`` is ``client`` or ``server``; ``tls`` holds this
    party's certificate, key, CA and identity policy (exactly as for a TLS connection)."""

    def __init__(self, directory: str | os.PathLike[str], role: str, tls: TlsConfig | None = None, *,
                 poll: float = 0.02, max_body: int = DEFAULT_MAX_BODY, handshake_timeout: float = 600.0) -> None:
        super().__init__()
        if role not in _ROLES:
            raise UsageError("folder channel role must be 'client' or 'server'")
        if tls is None:
            raise UsageError("--via-dir needs this party's certificate, key and CA (messages are signed and encrypted)")
        self._identity = _Identity(tls)
        peer = "server" if role == "client" else "client"
        self._role, self._peer_role = role, peer
        self.directory = Path(directory)
        self._out = self.directory / f"{role}-out"
        self._in = self.directory / f"{peer}-out"
        try:
            self._out.mkdir(parents=True, exist_ok=True)
            self._in.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TransportError(f"cannot use exchange folder {self.directory}: {err.strerror or err}") from None
        if any(self._out.iterdir()):
            raise UsageError(f"exchange folder {self._out} holds files of an earlier session: use a fresh folder per session")
        self._sent = 0
        self._received = 0
        self._poll = poll
        self.max_body = max_body
        self._handshake_timeout = handshake_timeout
        self._closed = False
        self._session: bytes | None = None
        self._send_key: AESGCM | None = None
        self._recv_key: AESGCM | None = None
        self._peer_cert: x509.Certificate | None = None
        self._handshake_error: PsiqError | None = None

    # -- handshake ---------------------------------------------------------------------------
    def _hello(self, nonce: bytes, ephemeral: bytes, peer_hello: bytes) -> bytes:
        cert = self._identity.cert_der
        body = _HELLO_HEAD.pack(_HELLO_MAGIC, _VERSION, _ROLES[self._role], nonce, ephemeral, len(cert)) + cert
        signature = self._identity.sign(_DOMAIN_HELLO + body + hashlib.sha256(peer_hello).digest())
        return body + struct.pack(">H", len(signature)) + signature

    def _check_hello(self, data: bytes, own_hello: bytes) -> tuple[bytes, x509.Certificate]:
        """The peer's X25519 key and certificate from its verified hello."""
        if len(data) < _HELLO_HEAD.size:
            raise MalformedMessage("peer hello file is truncated")
        magic, version, role, _nonce, ephemeral, cert_len = _HELLO_HEAD.unpack_from(data)
        if magic != _HELLO_MAGIC:
            raise MalformedMessage("peer hello file is not a psiq folder hello")
        if version != _VERSION:
            raise MalformedMessage(f"peer hello has folder format version {version}, this build speaks {_VERSION}")
        if role != _ROLES[self._peer_role]:
            raise AuthenticationError(f"hello in {self._in.name} is not from a {self._peer_role}")
        end = _HELLO_HEAD.size + cert_len
        if len(data) < end + 2:
            raise MalformedMessage("peer hello file is truncated")
        (sig_len,) = struct.unpack_from(">H", data, end)
        if len(data) != end + 2 + sig_len:
            raise MalformedMessage("peer hello file length does not match its fields")
        cert, name = self._identity.verify_peer(bytes(data[_HELLO_HEAD.size : end]))
        signed = _DOMAIN_HELLO + bytes(data[:end]) + hashlib.sha256(own_hello).digest()
        if not _verify(cert, bytes(data[end + 2 :]), signed):
            raise AuthenticationError(f"the hello of {name!r} in the exchange folder is not signed by its certificate key")
        self.peer_name = name
        return bytes(ephemeral), cert

    def _handshake(self) -> None:
        """Exchange hellos once, before the first message in either direction.

        A refused hello leaves a ``refused`` marker, so the peer stops with an identity error
        too (the marker is unauthenticated: forging it only ends the session, as deleting
        files would)."""
        if self._session is not None:
            return
        if self._handshake_error is not None:
            raise TransportError("the exchange folder handshake failed earlier")
        try:
            self._run_handshake()
        except PsiqError as err:
            self._handshake_error = err
            if isinstance(err, (AuthenticationError, MalformedMessage)):
                try:
                    (self._out / _REFUSED).touch()
                except OSError:
                    pass
            raise

    def _run_handshake(self) -> None:
        ephemeral = X25519PrivateKey.generate()
        own_pub = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        nonce = secrets.token_bytes(32)
        deadline = time.monotonic() + self._handshake_timeout
        if self._role == "client":
            own = self._hello(nonce, own_pub, b"")
            self._write(_HELLO, own)
            peer = self._read(_HELLO, _HELLO_MAX, deadline)
            peer_pub, cert = self._check_hello(peer, own)
            transcript = own + peer
        else:
            peer = self._read(_HELLO, _HELLO_MAX, deadline)
            peer_pub, cert = self._check_hello(peer, b"")
            own = self._hello(nonce, own_pub, peer)
            self._write(_HELLO, own)
            transcript = peer + own
        try:
            shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(peer_pub))
        except ValueError:
            raise AuthenticationError("peer's ephemeral key is invalid (low order)") from None
        self._session = hashlib.sha256(_DOMAIN_SESSION + transcript).digest()
        keys = HKDF(hashes.SHA256(), 64, self._session, _DOMAIN_KEYS).derive(shared)
        client_key, server_key = keys[:32], keys[32:]
        own_key, peer_key = (client_key, server_key) if self._role == "client" else (server_key, client_key)
        self._send_key, self._recv_key = AESGCM(own_key), AESGCM(peer_key)
        self._peer_cert = cert

    # -- files -------------------------------------------------------------------------------
    def _write(self, name: str, data: bytes) -> None:
        tmp = self._out / f".{name}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self._out / name)
        except OSError as err:
            raise TransportError(f"cannot write to exchange folder: {err.strerror or err}") from None

    def _wait_for(self, name: str, deadline: float | None) -> Path:
        path = self._in / name
        while not path.exists():
            if (self._in / _REFUSED).exists():
                raise AuthenticationError("the peer refused this exchange (it did not accept our certificate or hello)")
            if (self._in / _CLOSED).exists() and not path.exists():
                raise PeerDisconnected("peer closed the exchange")
            if deadline is not None and time.monotonic() >= deadline:
                raise TransportError("timed out waiting for the peer's next file")
            time.sleep(self._poll)
        return path

    def _read(self, name: str, cap: int, deadline: float | None) -> bytes:
        """A whole small file (the hello), its size checked before reading; deleted once read."""
        path = self._wait_for(name, deadline)
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > cap:
                    raise MalformedMessage(f"peer file {name} of {size} bytes exceeds the cap of {cap}")
                data = fh.read(cap + 1)
            path.unlink()
        except OSError as err:
            raise TransportError(f"cannot read from exchange folder: {err.strerror or err}") from None
        if len(data) > cap:
            raise MalformedMessage(f"peer file {name} exceeds the cap of {cap} bytes")
        return data

    def _fields(self, seq: int, kind: bytes, role: str) -> bytes:
        assert self._session is not None
        return self._session + bytes([_ROLES[role]]) + struct.pack(">Q", seq) + bytes([len(kind)]) + kind

    # -- channel API -------------------------------------------------------------------------
    def send(self, message: Message) -> None:
        if self._closed:
            raise TransportError("channel is closed")
        if (self._in / _CLOSED).exists():
            raise PeerDisconnected("peer closed the exchange")
        self._handshake()
        assert self._send_key is not None
        seq, kind = self._sent, message.kind.encode("ascii")
        fields = self._fields(seq, kind, self._role)
        sealed = self._send_key.encrypt(seq.to_bytes(12, "big"), bytes(message.body), fields)
        signature = self._identity.sign(_DOMAIN_MESSAGE + fields + hashlib.sha256(sealed).digest())
        head = _MSG_HEAD.pack(_MSG_MAGIC, _VERSION, seq, len(kind), len(signature)) + kind + signature
        self._write(f"{seq:010d}.frame", head + sealed)
        self._sent += 1
        self.bytes_sent += len(head) + len(sealed)

    def recv(self, timeout: float | None = None, *, limit: BodyLimit | None = None) -> Message:
        self._handshake()
        assert self._recv_key is not None and self._peer_cert is not None
        seq = self._received
        name = f"{seq:010d}.frame"
        path = self._wait_for(name, None if timeout is None else time.monotonic() + timeout)
        try:
            with open(path, "rb") as fh:
                message, size = self._open(fh, seq, name, limit)
            path.unlink()
        except OSError as err:
            raise TransportError(f"cannot read from exchange folder: {err.strerror or err}") from None
        self._received += 1
        self.bytes_received += size
        return message

    def _open(self, fh: BinaryIO, seq: int, name: str, limit: BodyLimit | None) -> tuple[Message, int]:
        """Check one message file: sizes first, then sequence, signature and AEAD tag."""
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(_MSG_HEAD.size)
        if len(head) != _MSG_HEAD.size:
            raise MalformedMessage(f"peer file {name} is truncated")
        magic, version, file_seq, kind_len, sig_len = _MSG_HEAD.unpack(head)
        if magic != _MSG_MAGIC or version != _VERSION:
            raise MalformedMessage(f"peer file {name} is not a psiq folder message")
        if not 1 <= kind_len <= 64 or sig_len > _SIGNATURE_MAX:
            raise MalformedMessage(f"peer file {name} has a bad header")
        kind_bytes = fh.read(kind_len)
        signature = fh.read(sig_len)
        if len(kind_bytes) != kind_len or len(signature) != sig_len:
            raise MalformedMessage(f"peer file {name} is truncated")
        kind = decode_kind(kind_bytes)
        body_len = size - _MSG_HEAD.size - kind_len - sig_len - _TAG
        if body_len < 0:
            raise MalformedMessage(f"peer file {name} is truncated")
        if body_len > self.max_body:
            raise MalformedMessage(f"peer file {name} holds a body of {body_len} bytes, over the cap of {self.max_body}")
        check_body_limit(kind, body_len, limit)
        if file_seq != seq:
            raise AuthenticationError(f"peer file {name} carries sequence number {file_seq} (replayed or reordered)")
        sealed = fh.read(body_len + _TAG + 1)
        if len(sealed) != body_len + _TAG:
            raise MalformedMessage(f"peer file {name} changed size while being read")
        fields = self._fields(seq, kind_bytes, self._peer_role)
        assert self._peer_cert is not None and self._recv_key is not None
        if not _verify(self._peer_cert, signature, _DOMAIN_MESSAGE + fields + hashlib.sha256(sealed).digest()):
            raise AuthenticationError(f"peer file {name} is not signed by {self.peer_name!r} for this session")
        try:
            body = self._recv_key.decrypt(seq.to_bytes(12, "big"), sealed, fields)
        except InvalidTag:
            raise AuthenticationError(f"peer file {name} does not decrypt under this session's key") from None
        return Message(kind, body), size

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                (self._out / _CLOSED).touch()
            except OSError:
                pass

