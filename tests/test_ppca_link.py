"""The PPCA gRPC link on loopback: keys, sequence ids, chunks, and a peer that misbehaves."""

from __future__ import annotations

import socket
import threading

import pytest

pytest.importorskip("grpc", reason="psiq[interop] (grpcio) not installed")

import grpc  # noqa: E402

from psi.errors import MalformedMessage, TransportError  # noqa: E402
from psi.interop.ppca._pb import transport_pb2  # noqa: E402
from psi.interop.ppca.link import METHOD, GrpcLink  # noqa: E402
from psi.interop.ppca.party import MAIN, SUB  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pair(seq_ids: bool = False, timeout: float = 10.0, max_message: int = 1 << 20) -> tuple[GrpcLink, GrpcLink]:
    a, b = free_port(), free_port()
    links = [GrpcLink(0, f"127.0.0.1:{a}", f"127.0.0.1:{b}", link_id="t", seq_ids=seq_ids, timeout=timeout,
                      max_message=max_message),
             GrpcLink(1, f"127.0.0.1:{b}", f"127.0.0.1:{a}", link_id="t", seq_ids=seq_ids, timeout=timeout,
                      max_message=max_message)]
    starters = [threading.Thread(target=link.start) for link in links]
    for t in starters:
        t.start()
    for t in starters:
        t.join()
    return links[0], links[1]


def close(*links: GrpcLink) -> None:
    threads = [threading.Thread(target=link.close) for link in links]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def raw_push(target: GrpcLink, **fields) -> transport_pb2.PushResponse:
    with grpc.insecure_channel(target._listen) as channel:
        push = channel.unary_unary(METHOD, request_serializer=transport_pb2.PushRequest.SerializeToString,
                                   response_deserializer=transport_pb2.PushResponse.FromString)
        return push(transport_pb2.PushRequest(**fields), timeout=5)


@pytest.mark.parametrize("seq_ids", [False, True])
def test_messages_cross_in_both_directions_and_fin_closes(seq_ids: bool) -> None:
    l0, l1 = pair(seq_ids)
    l0.send((MAIN, 1), b"hello")
    l1.send((SUB, 1), b"world")
    l1.send((MAIN, 1), b"")
    assert l1.recv((MAIN, 1)) == b"hello"
    assert l0.recv((SUB, 1)) == b"world"
    assert l0.recv((MAIN, 1)) == b""
    assert l0.key((SUB, 3), 0, 1) == "t-0:P2P-3:0->1"
    close(l0, l1)
    assert l0._peer_fin == (2 if seq_ids else 0) and l1._peer_fin == (1 if seq_ids else 0)


def test_a_quiet_peer_times_out() -> None:
    l0, l1 = pair(timeout=1.0)
    with pytest.raises(TransportError, match="timed out"):
        l0.recv((MAIN, 1))
    close(l0, l1)


def test_chunks_are_reassembled_in_any_order() -> None:
    l0, l1 = pair()
    payload = bytes(range(256)) * 10
    for offset in (1280, 0):
        raw_push(l0, sender_rank=1, key="t:P2P-1:1->0\x01\x027", value=payload[offset : offset + 1280],
                 trans_type=transport_pb2.CHUNKED,
                 chunk_info=transport_pb2.ChunkInfo(message_length=len(payload), chunk_offset=offset))
    assert l0.recv((MAIN, 1)) == payload
    close(l0, l1)


@pytest.mark.parametrize("fields,message", [
    ({"sender_rank": 0, "key": "t:P2P-1:1->0"}, "from rank 0"),
    ({"sender_rank": 1, "key": "t:P2P-1:0->1"}, "unexpected message key"),
    ({"sender_rank": 1, "key": "other:P2P-1:1->0"}, "unexpected message key"),
    ({"sender_rank": 1, "key": "t:P2P-1:1->0\x01\x02x"}, "sequence id"),
    ({"sender_rank": 1, "key": "t:P2P-1:1->0", "trans_type": 1,
      "chunk_info": {"message_length": 1 << 30, "chunk_offset": 0}, "value": b"x"}, "cap"),
    ({"sender_rank": 1, "key": "t:P2P-1:1->0", "value": b"x" * ((1 << 20) + 1)}, "cap"),
])
def test_misbehaving_pushes_are_reported_on_the_next_recv(fields: dict, message: str) -> None:
    l0, l1 = pair()
    if "chunk_info" in fields:
        fields["chunk_info"] = transport_pb2.ChunkInfo(**fields["chunk_info"])
    response = raw_push(l0, **fields)
    assert response.header.error_code == 31100100
    with pytest.raises(MalformedMessage, match=message):
        l0.recv((MAIN, 1))
    close(l0, l1)


def test_a_key_sent_twice_is_a_violation() -> None:
    l0, l1 = pair()
    raw_push(l0, sender_rank=1, key="t:P2P-1:1->0", value=b"a")
    assert l0.recv((MAIN, 1)) == b"a"
    raw_push(l0, sender_rank=1, key="t:P2P-1:1->0", value=b"b")
    with pytest.raises(MalformedMessage, match="twice"):
        l0.recv((MAIN, 2))
    close(l0, l1)


def test_many_small_unrequested_messages_hit_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from psi.interop.ppca import link as link_module

    monkeypatch.setattr(link_module, "MAX_WAITING", 3)
    l0, l1 = pair()
    for n in range(2, 6):
        raw_push(l0, sender_rank=1, key=f"t:P2P-{n}:1->0", value=b"")
    with pytest.raises(MalformedMessage, match="receive buffer"):
        l0.recv((MAIN, 1))
    close(l0, l1)


def test_too_many_partial_chunked_messages_hit_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from psi.interop.ppca import link as link_module

    monkeypatch.setattr(link_module, "MAX_PARTIAL", 2)
    l0, l1 = pair()
    for n in range(2, 5):
        raw_push(l0, sender_rank=1, key=f"t:P2P-{n}:1->0", value=b"x", trans_type=transport_pb2.CHUNKED,
                 chunk_info=transport_pb2.ChunkInfo(message_length=1000, chunk_offset=0))
    with pytest.raises(MalformedMessage, match="chunked messages at once"):
        l0.recv((MAIN, 1))
    close(l0, l1)
