"""The PPCA white-box link layer over gRPC: ``org.interconnection.link.ReceiverService/Push``.

Each party serves ``Push`` and pushes its messages to the peer's service. A message key is
``{channel}:P2P-{n}:{src}->{dst}``; the channel is the session id (``--link-id``, SecretFlow's
link ``id``) for the first stage and ``{id}-0`` for the second. Around the spec's keys,
SecretFlow's link layer (yacl) adds control messages that psiq speaks too:

* ``connect_{rank}`` (with the suffix ``\\x01\\x020``) from each side at start;
* sequence ids (yacl's default): ``\\x01\\x02{seq}`` appended to every data key, counting from
  1, and an ``ACK\\x01\\x02`` message carrying each received seq back. psiq strips and ACKs
  them whenever they arrive; it appends its own only with ``seq_ids`` (``--link-seq-ids``);
* ``FIN\\x01\\x02`` with the number of sequenced messages sent, at shutdown, from each side.

Received messages are checked here: the sender's rank, the key's form (channel, direction),
no key twice, chunked messages reassembled within ``max_message`` bytes, at most
``max_buffered`` bytes waiting. A violation is recorded and raised (exit 4) by the next
:meth:`GrpcLink.recv`; a peer that goes quiet makes :meth:`recv` raise
:class:`~psi.errors.TransportError` (exit 3) after ``timeout`` seconds.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from ...errors import AuthenticationError, MalformedMessage, PeerDisconnected, TransportError
from ._pb import header_pb2, transport_pb2
from .party import MAIN, SUB

__all__ = ["GrpcLink", "LinkTls"]

SERVICE = "org.interconnection.link.ReceiverService"
METHOD = f"/{SERVICE}/Push"
SEQ_SEP = "\x01\x02"
MAX_KEY = 256
MAX_WAITING = 65536  # messages received but not yet asked for
MAX_PARTIAL = 16  # chunked messages being reassembled at once


@dataclass(frozen=True)
class LinkTls:
    """Mutual TLS for the gRPC link: this party's certificate and key, the CA both chain to, and
    optionally the common name the peer's certificate must carry."""

    cert: Path
    key: Path
    ca: Path
    peer_name: str | None = None


class GrpcLink:
    """One party's end of the link; see the module docstring. Use as a context manager."""

    def __init__(self, rank: int, listen: str, peer: str, *, link_id: str = "root", seq_ids: bool = False,
                 timeout: float = 60.0, max_message: int = 64 << 20, max_buffered: int = 4 << 30,
                 tls: LinkTls | None = None) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", link_id):
            raise ValueError("link id: 1-64 letters, digits, '_', '.' or '-'")
        self.rank, self.peer_rank = rank, 1 - rank
        self._listen, self._peer = listen, peer
        self._id = link_id
        self._seq_ids = seq_ids
        self._timeout = timeout
        self._max_message = max_message
        self._max_buffered = max_buffered
        self._tls = tls
        self._cond = threading.Condition()
        self._mailbox: dict[str, bytes] = {}
        self._seen: set[str] = set()
        self._chunks: dict[str, tuple[bytearray, int]] = {}
        self._buffered = 0
        self._violation: BaseException | None = None
        self._peer_connected = False
        self._peer_fin: int | None = None
        self._sent_seq = 0
        self._server: grpc.Server | None = None
        self._channel: grpc.Channel | None = None
        self._push = None
        self._acks = futures.ThreadPoolExecutor(1, thread_name_prefix="ppca-ack")
        pattern = rf"({re.escape(link_id)}|{re.escape(link_id)}-0):P2P-([1-9][0-9]{{0,8}}):{self.peer_rank}->{rank}"
        self._key_re = re.compile(pattern)

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> "GrpcLink":
        self.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(graceful=exc_type is None)

    def start(self) -> None:
        """Serve, then exchange ``connect_{rank}`` with the peer (retrying until ``timeout``)."""
        options = [("grpc.max_receive_message_length", self._max_message + 4096),
                   ("grpc.max_send_message_length", self._max_message + 4096)]
        self._server = grpc.server(futures.ThreadPoolExecutor(4, thread_name_prefix="ppca-push"), options=options)
        handler = grpc.method_handlers_generic_handler(SERVICE, {"Push": grpc.unary_unary_rpc_method_handler(
            self._on_push, request_deserializer=_parse_push,
            response_serializer=transport_pb2.PushResponse.SerializeToString)})
        self._server.add_generic_rpc_handlers((handler,))
        try:
            if self._tls is None:
                bound = self._server.add_insecure_port(self._listen)
            else:
                creds = grpc.ssl_server_credentials([(self._tls.key.read_bytes(), self._tls.cert.read_bytes())],
                                                    root_certificates=self._tls.ca.read_bytes(),
                                                    require_client_auth=True)
                bound = self._server.add_secure_port(self._listen, creds)
        except RuntimeError as err:
            raise TransportError(f"cannot listen on {self._listen}: {err}") from None
        if not bound:
            raise TransportError(f"cannot listen on {self._listen} (address in use?)")
        self._server.start()
        if self._tls is None:
            self._channel = grpc.insecure_channel(self._peer, options=options)
        else:
            creds = grpc.ssl_channel_credentials(self._tls.ca.read_bytes(), self._tls.key.read_bytes(),
                                                 self._tls.cert.read_bytes())
            if self._tls.peer_name:
                options.append(("grpc.ssl_target_name_override", self._tls.peer_name))
            self._channel = grpc.secure_channel(self._peer, creds, options=options)
        self._push = self._channel.unary_unary(METHOD, request_serializer=transport_pb2.PushRequest.SerializeToString,
                                               response_deserializer=transport_pb2.PushResponse.FromString)
        self._send_raw(f"connect_{self.rank}{SEQ_SEP}0", b"", retry_until=time.monotonic() + self._timeout)
        with self._cond:
            if not self._cond.wait_for(lambda: self._peer_connected or self._violation is not None, self._timeout):
                raise TransportError(f"peer at {self._peer} did not connect within {self._timeout:g} s")
            self._raise_violation()

    def close(self, graceful: bool = True) -> None:
        """Send FIN; on a graceful close wait (at most ``timeout``) for the peer's FIN, then stop."""
        try:
            if self._push is not None:
                try:
                    self._send_raw(f"FIN{SEQ_SEP}", str(self._sent_seq).encode(), retry_until=time.monotonic() + 5)
                except TransportError:
                    graceful = False
                if graceful:
                    with self._cond:
                        self._cond.wait_for(lambda: self._peer_fin is not None, self._timeout)
        finally:
            self._acks.shutdown(wait=True)
            if self._channel is not None:
                self._channel.close()
            if self._server is not None:
                self._server.stop(grace=1.0)

    # -- data -----------------------------------------------------------------------------------
    def key(self, logical: tuple[str, int], src: int, dst: int) -> str:
        channel = self._id if logical[0] == MAIN else f"{self._id}-0"
        return f"{channel}:P2P-{logical[1]}:{src}->{dst}"

    def send(self, logical: tuple[str, int], data: bytes) -> None:
        key = self.key(logical, self.rank, self.peer_rank)
        if self._seq_ids:
            self._sent_seq += 1
            key = f"{key}{SEQ_SEP}{self._sent_seq}"
        self._send_raw(key, data, retry_until=time.monotonic() + self._timeout)

    def recv(self, logical: tuple[str, int]) -> bytes:
        """The peer's message for ``logical``; waits at most ``timeout`` seconds (TransportError)."""
        key = self.key(logical, self.peer_rank, self.rank)
        with self._cond:
            arrived = self._cond.wait_for(lambda: key in self._mailbox or self._violation is not None
                                          or self._peer_fin is not None, self._timeout)
            if arrived and key not in self._mailbox and self._violation is None:
                # the peer said FIN: give messages still in flight a moment before giving up
                self._cond.wait_for(lambda: key in self._mailbox or self._violation is not None, 2.0)
            self._raise_violation()
            if key in self._mailbox:
                data = self._mailbox.pop(key)
                self._buffered -= len(data)
                return data
            if not arrived:
                raise TransportError(f"timed out after {self._timeout:g} s waiting for the peer's message {key!r}")
            raise PeerDisconnected(f"peer ended the link (FIN) before sending {key!r}")

    # -- internals ------------------------------------------------------------------------------
    def _send_raw(self, key: str, value: bytes, retry_until: float) -> None:
        request = transport_pb2.PushRequest(sender_rank=self.rank, key=key, value=value)
        delay = 0.05
        while True:
            try:
                response = self._push(request, timeout=max(1.0, self._timeout))
                break
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else None
                if code == grpc.StatusCode.UNAVAILABLE and time.monotonic() + delay < retry_until:
                    if self._tls is not None and "handshake" in str(err.details() or "").lower():
                        raise AuthenticationError(f"TLS with the peer at {self._peer} failed: {err.details()}") from None
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                raise TransportError(f"push of {key!r} to {self._peer} failed: {code} {err.details()}") from None
        if response.header.error_code != 0:
            raise TransportError(f"peer refused message {key!r}: code {response.header.error_code}"
                                 f" ({response.header.error_msg})")

    def _on_push(self, request: transport_pb2.PushRequest | None, context: grpc.ServicerContext):
        reply = transport_pb2.PushResponse(header=header_pb2.ResponseHeader(error_code=0))
        try:
            if request is None:
                raise MalformedMessage("link: a Push request that is not a valid PushRequest")
            if self._tls is not None and self._tls.peer_name:
                names = [n.decode() for n in context.auth_context().get("x509_common_name", [])]
                if self._tls.peer_name not in names:
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, "unexpected client certificate")
            self._accept(request)
        except MalformedMessage as err:
            with self._cond:
                if self._violation is None:
                    self._violation = err
                self._cond.notify_all()
            reply.header.error_code = header_pb2.INVALID_REQUEST
            reply.header.error_msg = str(err)[:200]
        return reply

    def _accept(self, request: transport_pb2.PushRequest) -> None:
        if request.sender_rank != self.peer_rank:
            raise MalformedMessage(f"link: message from rank {request.sender_rank}, expected {self.peer_rank}")
        raw_key = request.key
        if len(raw_key) > MAX_KEY:
            raise MalformedMessage("link: message key too long")
        base, _, seq_text = raw_key.partition(SEQ_SEP)
        if base == "ACK":
            return
        if base == "FIN":
            with self._cond:
                self._peer_fin = _int(request.value.decode("ascii", "replace"), "FIN count")
                self._cond.notify_all()
            return
        if base == f"connect_{self.peer_rank}":
            with self._cond:
                self._peer_connected = True
                self._cond.notify_all()
            return
        if not self._key_re.fullmatch(base):
            raise MalformedMessage(f"link: unexpected message key {base!r}")
        value = self._reassemble(base, request)
        if value is None:
            return
        seq = _int(seq_text, "sequence id") if seq_text else 0
        with self._cond:
            if base in self._seen:
                raise MalformedMessage(f"link: message {base!r} received twice")
            if self._buffered + len(value) > self._max_buffered or len(self._mailbox) >= MAX_WAITING:
                raise MalformedMessage("link: the peer sent more than the receive buffer allows")
            self._seen.add(base)
            self._mailbox[base] = value
            self._buffered += len(value)
            self._cond.notify_all()
        if seq:
            self._acks.submit(self._ack, seq)

    def _reassemble(self, base: str, request: transport_pb2.PushRequest) -> bytes | None:
        if request.trans_type == transport_pb2.MONO:
            if len(request.value) > self._max_message:
                raise MalformedMessage(f"link: message of {len(request.value)} bytes (cap {self._max_message})")
            return request.value
        if request.trans_type != transport_pb2.CHUNKED:
            raise MalformedMessage(f"link: unknown transfer type {request.trans_type}")
        total, offset = request.chunk_info.message_length, request.chunk_info.chunk_offset
        if total > self._max_message:
            raise MalformedMessage(f"link: chunked message of {total} bytes (cap {self._max_message})")
        if offset + len(request.value) > total or not request.value:
            raise MalformedMessage("link: chunk outside its message")
        with self._cond:
            if base not in self._chunks and (len(self._chunks) >= MAX_PARTIAL
                                             or self._buffered + total > self._max_buffered):
                raise MalformedMessage("link: too many or too large chunked messages at once")
            buffer, received = self._chunks.get(base, (bytearray(total), 0))
            if len(buffer) != total:
                raise MalformedMessage("link: chunks of one message disagree on its length")
            buffer[offset : offset + len(request.value)] = request.value
            received += len(request.value)
            if received > total:
                raise MalformedMessage("link: overlapping chunks")
            if received < total:
                self._chunks[base] = (buffer, received)
                return None
            self._chunks.pop(base, None)
        return bytes(buffer)

    def _ack(self, seq: int) -> None:
        try:
            self._send_raw(f"ACK{SEQ_SEP}", str(seq).encode(), retry_until=time.monotonic() + 5)
        except TransportError:
            pass  # the peer may already be closing; a missing ACK only slows its sender

    def _raise_violation(self) -> None:
        if self._violation is not None:
            raise self._violation


def _parse_push(data: bytes) -> transport_pb2.PushRequest | None:
    try:
        return transport_pb2.PushRequest.FromString(data)
    except Exception:  # noqa: BLE001 - any decode failure is the peer's malformed request
        return None


def _int(text: str, what: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise MalformedMessage(f"link: {what} {text[:20]!r} is not a number")
    return int(text)
