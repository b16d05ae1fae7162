"""TCP channels, with TLS 1.3 and mutual authentication unless explicitly insecure on loopback.

Frames are written by a background writer thread, so a party keeps reading while its large
sends drain: neither side can block the other forever on full socket buffers. The writer queue
is capped in bytes (back-pressure) so memory stays bounded. Every failure surfaces as a
:class:`~psi.errors.TransportError` subclass with a one-line message.
"""

from __future__ import annotations

import ipaddress
import queue
import select
import socket
import ssl
import threading
import time
from typing import Callable

from ..errors import AuthenticationError, PeerDisconnected, TransportError, UsageError
from ..messages import DEFAULT_MAX_BODY, HEADER, Message, decode_header, encode_frame, pack_json
from .base import Channel
from .tls import TlsConfig, check_peer_name, client_context, server_context

__all__ = ["TlsConfig", "TcpChannel", "Listener", "PendingConnection", "connect", "parse_address", "is_loopback"]

_QUEUE_BYTES = 64 * 1024 * 1024


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) to a (host, port) pair; :class:`UsageError` if bad."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise UsageError(f"address {address!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"address {address!r} has a bad port") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"port {port} out of range")
    return host, port


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_error(err: BaseException, *, handshake: bool = False) -> TransportError:
    """Map an ssl/socket error to a one-line TransportError (AuthenticationError for identity failures)."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return AuthenticationError(f"TLS: peer certificate rejected ({err.verify_message})")
    if isinstance(err, ssl.SSLZeroReturnError):
        return PeerDisconnected("peer closed the TLS connection")
    if isinstance(err, ssl.SSLEOFError):  # the peer's process died or its link dropped mid-session
        return PeerDisconnected("peer closed the connection without ending the TLS session")
    if isinstance(err, ssl.SSLError):
        text = str(getattr(err, "reason", None) or err).lower().replace("_", " ")
        if handshake or "alert" in text or "certificate" in text:
            return AuthenticationError(f"TLS handshake failed: {text}" if handshake else f"TLS: peer refused us: {text}")
        return TransportError(f"TLS error on the connection: {text}")
    return TransportError(f"connection failed: {err}")


_CHUNK = 256 * 1024


class TcpChannel(Channel):
    """A framed message channel over a connected (TLS) socket."""

    def __init__(self, sock: socket.socket, *, max_body: int = DEFAULT_MAX_BODY, peer_name: str | None = None) -> None:
        super().__init__()
        # The socket is non-blocking: OpenSSL forbids using one SSL object from two threads at
        # once, so every read/write call holds _io_lock, and waiting (select) happens outside it.
        sock.setblocking(False)
        self._sock = sock
        self._io_lock = threading.Lock()
        self.max_body = max_body
        self.peer_name = peer_name
        self._queue: "queue.Queue[bytes | None]" = queue.Queue()
        self._queued = 0
        self._cond = threading.Condition()
        self._write_error: BaseException | None = None
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="psiq-writer", daemon=True)
        self._writer.start()

    def _wait(self, want: str, timeout: float | None) -> bool:
        """Block until the socket is readable ('r') or writable ('w'); False on timeout."""
        rlist = [self._sock] if want == "r" else []
        wlist = [self._sock] if want == "w" else []
        ready = select.select(rlist, wlist, [], timeout)
        return bool(ready[0] or ready[1])

    # -- sending -----------------------------------------------------------------------------
    def _send_frame(self, frame: bytes) -> None:
        view = memoryview(frame)
        offset = 0
        while offset < len(view):
            want = "w"
            with self._io_lock:
                try:
                    offset += self._sock.send(view[offset : offset + _CHUNK])
                    continue
                except ssl.SSLWantReadError:
                    want = "r"
                except (ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                    want = "w"
            self._wait(want, 1.0)

    def _write_loop(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            try:
                if self._write_error is None:
                    self._send_frame(frame)
            except (OSError, ssl.SSLError, ValueError) as err:
                self._write_error = err
            finally:
                with self._cond:
                    self._queued -= len(frame)
                    self._cond.notify_all()

    def _raise_write_error(self) -> None:
        err = self._write_error
        if err is None:
            return
        if isinstance(err, ssl.SSLError):
            raise _tls_error(err)
        raise PeerDisconnected(f"connection to peer lost while sending ({err.__class__.__name__})")

    def send(self, message: Message) -> None:
        if self._closed:
            raise TransportError("channel is closed")
        self._raise_write_error()
        frame = encode_frame(message)
        with self._cond:
            while self._queued > _QUEUE_BYTES and self._write_error is None:
                self._cond.wait(1.0)
            self._queued += len(frame)
        self._queue.put(frame)
        self.bytes_sent += len(frame)

    def flush(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queued > 0 and self._write_error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError("timed out sending to peer")
                self._cond.wait(min(left, 1.0))
        self._raise_write_error()

    # -- receiving ---------------------------------------------------------------------------
    def _read_exact(self, n: int, timeout: float | None) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while got < n:
            want = "r"
            with self._io_lock:
                try:
                    k = self._sock.recv_into(view[got:], n - got)
                    if k == 0:
                        raise PeerDisconnected("peer closed the connection" + (" mid-message" if got else ""))
                    got += k
                    continue
                except ssl.SSLWantWriteError:
                    want = "w"
                except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                    want = "r"
                except ssl.SSLError as err:
                    raise _tls_error(err) from None
                except OSError as err:
                    raise PeerDisconnected(f"connection to peer lost ({err.__class__.__name__})") from None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TransportError("timed out waiting for the peer")
            self._wait(want, left)
        return bytes(buf)

    def recv(self, timeout: float | None = None) -> Message:
        header = self._read_exact(HEADER.size, timeout)
        kind_len, _session, body_len = decode_header(header, self.max_body)
        rest = self._read_exact(kind_len + body_len, timeout)
        self.bytes_received += HEADER.size + len(rest)
        try:
            kind = rest[:kind_len].decode("ascii")
        except UnicodeDecodeError:
            from ..errors import MalformedMessage

            raise MalformedMessage("message kind is not ASCII") from None
        return Message(kind, rest[kind_len:])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(timeout=30.0)
        except TransportError:
            pass
        self._queue.put(None)
        self._writer.join(timeout=5.0)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


def _check_insecure(host: str) -> None:
    if not is_loopback(host):
        raise UsageError("plain TCP (--insecure) is allowed only on loopback; configure TLS for other addresses")


def _secure(raw: socket.socket, ctx: ssl.SSLContext | None, tls: TlsConfig | None, *, server_side: bool) -> TcpChannel:
    """The channel over ``raw``: plain without a context, else after the TLS handshake and the
    peer-name check (``raw`` is closed if either fails)."""
    if ctx is None:
        return TcpChannel(raw)
    try:
        sock = ctx.wrap_socket(raw, server_side=server_side)
        name = check_peer_name(sock, tls.peer_name if tls else None)
    except (ssl.SSLError, OSError) as err:
        raw.close()
        raise _tls_error(err, handshake=True) from None
    except AuthenticationError as err:
        _tell_peer(sock, 6, f"it refused our certificate: {err}")
        raw.close()
        raise
    return TcpChannel(sock, peer_name=name)


def _tell_peer(sock: ssl.SSLSocket, code: int, text: str) -> None:
    """Best effort: one ``error`` frame with a short, non-secret reason before we hang up, so the
    peer prints the same cause (``psi.driver.raise_if_error``) instead of 'peer closed'."""
    try:
        body = pack_json({"code": code, "message": text[:500]})
        sock.settimeout(2.0)
        sock.sendall(encode_frame(Message("error", body)))
        sock.unwrap()
    except (OSError, ValueError, ssl.SSLError):
        pass


def connect(
    address: str,
    tls: TlsConfig | None,
    *,
    timeout: float = 10.0,
    retries: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> TcpChannel:
    """Connect to ``address``; retry refused/unreachable connections with exponential backoff.

    ``tls=None`` is plain TCP and only allowed on loopback. Authentication failures are not
    retried.
    """
    host, port = parse_address(address)
    if tls is None:
        _check_insecure(host)
    ctx = client_context(tls) if tls is not None else None
    delay = 0.2
    last: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except (ConnectionRefusedError, socket.timeout, OSError) as err:
            last = err
            if attempt < retries:
                sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            reason = "connection refused" if isinstance(err, ConnectionRefusedError) else str(err) or err.__class__.__name__
            raise TransportError(f"cannot connect to {address}: {reason} (after {retries + 1} attempts)") from None
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _secure(raw, ctx, tls, server_side=False)
    raise TransportError(f"cannot connect to {address}: {last}")  # pragma: no cover


class Listener:
    """A listening socket handing out authenticated channels, one per accepted peer."""

    def __init__(self, address: str, tls: TlsConfig | None, *, handshake_timeout: float = 30.0) -> None:
        host, port = parse_address(address)
        if tls is None:
            _check_insecure(host)
        self._tls = tls
        self._ctx = server_context(tls) if tls is not None else None
        self._handshake_timeout = handshake_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as err:
            self._sock.close()
            reason = "address already in use" if err.errno == 98 else (err.strerror or str(err))
            raise TransportError(f"cannot listen on {address}: {reason}") from None
        self._sock.listen(16)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]

    def accept(self, timeout: float | None = None) -> TcpChannel:
        """Wait for one peer and complete the TLS handshake with it.

        Raises :class:`AuthenticationError` when the peer's certificate is refused (the caller
        may keep listening), :class:`TransportError` on timeout.
        """
        return self.accept_pending(timeout).secure()

    def accept_pending(self, timeout: float | None = None) -> "PendingConnection":
        """Accept a TCP connection without doing the TLS handshake yet.

        A concurrent server calls :meth:`PendingConnection.secure` in the connection's own
        thread, so a slow or hostile client cannot hold up the accept loop.
        """
        self._sock.settimeout(timeout)
        try:
            raw, _addr = self._sock.accept()
        except socket.timeout:
            raise TransportError("no peer connected before the timeout") from None
        except OSError as err:
            raise TransportError(f"accept failed: {err}") from None
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return PendingConnection(raw, self._ctx, self._tls, self._handshake_timeout)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PendingConnection:
    """An accepted TCP connection whose TLS handshake has not run yet."""

    def __init__(self, raw: socket.socket, ctx: ssl.SSLContext | None, tls: TlsConfig | None, timeout: float) -> None:
        self._raw, self._ctx, self._tls, self._timeout = raw, ctx, tls, timeout

    def secure(self) -> TcpChannel:
        """Run the TLS handshake (if configured) and check the peer; return the channel."""
        if self._ctx is not None:
            self._raw.settimeout(self._timeout)
        return _secure(self._raw, self._ctx, self._tls, server_side=True)

    def close(self) -> None:
        self._raw.close()
