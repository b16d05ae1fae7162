"""Frames and generic codecs: round trips, and refusal of truncated or oversized input."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from psi.errors import MalformedMessage, UnsupportedVersion
from psi.messages import (
    HEADER,
    Message,
    decode_frame,
    decode_header,
    encode_frame,
    pack_items,
    pack_json,
    pack_u32_list,
    unpack_items,
    unpack_json,
    unpack_u32_list,
)

kinds = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=64)


@given(kind=kinds, body=st.binary(max_size=4096), session=st.binary(min_size=8, max_size=8))
def test_any_frame_round_trips(kind: str, body: bytes, session: bytes) -> None:
    frame = encode_frame(Message(kind, body), session)
    message, sid = decode_frame(frame)
    assert message == Message(kind, body)
    assert sid == session


@given(kind=kinds, body=st.binary(min_size=1, max_size=512), cut=st.integers(min_value=1, max_value=600))
def test_truncated_frames_are_refused(kind: str, body: bytes, cut: int) -> None:
    frame = encode_frame(Message(kind, body))
    cut = min(cut, len(frame))
    with pytest.raises(MalformedMessage):
        decode_frame(frame[:-cut])


def test_oversized_frame_refused_from_header_alone() -> None:
    frame = encode_frame(Message("x", b"a" * 100))
    with pytest.raises(MalformedMessage, match="exceeds the cap"):
        decode_header(frame[: HEADER.size], max_body=99)


def test_bad_magic_and_version() -> None:
    frame = bytearray(encode_frame(Message("x", b"")))
    bad_magic = b"HTTP" + bytes(frame[4:])
    with pytest.raises(MalformedMessage, match="not speaking the psiq protocol"):
        decode_frame(bad_magic)
    frame[4] = 9
    with pytest.raises(UnsupportedVersion):
        decode_frame(bytes(frame))


@given(items=st.lists(st.binary(min_size=7, max_size=7), max_size=50))
def test_items_round_trip_and_count_checks(items: list[bytes]) -> None:
    body = pack_items(items, 7)
    assert unpack_items(body, 7, exact_count=len(items)) == b"".join(items)
    with pytest.raises(MalformedMessage):
        unpack_items(body, 8)
    with pytest.raises(MalformedMessage):
        unpack_items(body, 7, exact_count=len(items) + 1)
    if items:
        with pytest.raises(MalformedMessage):
            unpack_items(body, 7, max_count=len(items) - 1)
        with pytest.raises(MalformedMessage):
            unpack_items(body[:-1], 7)


@given(values=st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=100))
def test_u32_lists(values: list[int]) -> None:
    body = pack_u32_list(values)
    assert unpack_u32_list(body, max_count=100) == values
    if values:
        with pytest.raises(MalformedMessage):
            unpack_u32_list(body, max_count=100, below=max(values))


def test_json_control_messages() -> None:
    assert unpack_json(pack_json({"b": 1, "a": [1, 2]})) == {"a": [1, 2], "b": 1}
    for bad in (b"[1,2]", b"\xff", b"{", b"x" * 100):
        with pytest.raises(MalformedMessage):
            unpack_json(bad, max_size=50)


def test_local_errors_are_not_described_to_the_peer() -> None:
    from psi.driver import raise_if_error, send_error
    from psi.errors import IncompatiblePeer, ParameterMismatch, UsageError
    from psi.transport.memory import memory_pair

    a, b = memory_pair()
    send_error(a, UsageError("index 9 is out of range"), linger=0)
    with pytest.raises(Exception) as info:
        raise_if_error(b.recv(0))
    assert "9" not in str(info.value) and "local error" in str(info.value)
    send_error(a, ParameterMismatch("settings differ (dedup)"), linger=0)
    with pytest.raises(IncompatiblePeer, match="dedup"):
        raise_if_error(b.recv(0))


def test_a_deeply_nested_hello_is_a_protocol_error_not_a_recursion_error() -> None:
    """Issue 10 point 9: json.loads recursed until RecursionError (exit 1, no audit record)."""
    from psi.protocols.base import Role
    from psi.protocols.handshake import Hello
    from psi.session import exchange_hello
    from psi.transport.memory import memory_pair

    deep = b'{"protocol":"ecdh","version":1,"role":"server","params":' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert len(deep) < 64 * 1024  # under the hello cap: valid JSON that only the depth check stops
    ours, theirs = memory_pair()
    theirs.send(Message("hello", deep))
    with pytest.raises(MalformedMessage, match="nested more than 16 deep") as info:
        exchange_hello(ours, Hello("ecdh", 1, Role.CLIENT))
    assert info.value.exit_code == 4
    # the peer is told why (one line), as for any protocol violation
    assert theirs.recv(0).kind == "hello" and "nested" in theirs.recv(0).body.decode()


def test_json_depth_ignores_brackets_inside_strings() -> None:
    from psi.messages import json_depth

    assert json_depth(b'{"a":"[[[[{{{{","b":"\\\\","c":[{"d":"\\"]]]"}]}') == 3
    assert unpack_json(pack_json({"k": "[" * 100, "v": [[[1]]]}))["v"] == [[[1]]]
    with pytest.raises(MalformedMessage, match="nested"):
        unpack_json(b'{"a":' + b"[" * 17 + b"]" * 17 + b"}")
    assert unpack_json(b'{"a":' + b"[" * 15 + b"]" * 15 + b"}")


def test_a_deeply_nested_hello_to_the_pir_service_leaves_an_audit_record(tmp_path) -> None:
    import json as _json

    from pir import api
    from pir.service import PirService, QuotaBook
    from psi.transport.memory import memory_pair

    api.setup([("110101199000000001", "x")], tmp_path / "db", workers=1)
    audit = tmp_path / "audit.jsonl"
    service = PirService(tmp_path / "db", quota=QuotaBook(None, audit))
    client_end, server_end = memory_pair()
    client_end.send(Message("hello", b'{"a":' + b"[" * 20_000 + b"]" * 20_000 + b"}"))
    event = service.handle(server_end, timeout=0)
    assert event["outcome"] == "error" and "nested" in event["error"]
    records = [_json.loads(line) for line in audit.read_text().splitlines()]
    assert any(r.get("event") == "session" and "nested" in r.get("error", "") for r in records)
