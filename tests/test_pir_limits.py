"""Caps on everything a PIR peer announces, and audit records for hostile sessions.

Client side: a server announcing a table whose hint or public matrix exceeds ``ClientLimits`` is
refused at its hello, before the hint is asked for or anything is allocated for it; a hint of
another shape than announced is refused before its arrays are read. Server side: the announced
lookup count, the OPRF batch and the frame size are bounded; a malformed or hostile session
ends with exit code 4 (or 7) and one audit line.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pir import api
from pir.database import build_table
from pir.protocol import HINT, HINT_REQUEST, OPRF, QUERY, ClientLimits, PirClient, PirServerSession
from pir.quota import QuotaBook
from pir.service import PirService
from psi.errors import MalformedMessage, PolicyError
from psi.messages import Message
from psi.normalize import Normalization
from psi.parallel import Executor
from psi.protocols.base import Role
from psi.protocols.handshake import Hello
from psi.transport.memory import memory_pair


@pytest.fixture(scope="module")
def table():
    with Executor(1) as ex:
        built, _ = build_table([(f"id{i}".encode(), b"label") for i in range(2000)], executor=ex)
    return built


def _server_hello(table, **changes) -> Message:
    hello = Hello.from_message(_first_server_message(table))
    info = {**hello.info, **changes}
    for key, value in changes.items():
        if value is None:
            info.pop(key)
    return Hello(hello.protocol, hello.version, Role.SERVER, hello.params, info).to_message()


def _first_server_message(table) -> Message:
    server = PirServerSession(table)
    for m in PirClient([b"x"]).outgoing():
        server.receive(m)
    return server.outgoing()[0]


def test_table_too_large_for_the_client_is_refused_before_the_hint(table) -> None:
    columns = table.params.columns
    assert columns * 4096 > 4 * 1024 * 1024  # the public matrix A would be several MiB
    client = PirClient([b"id1"], limits=ClientLimits(max_columns=1024))
    client.outgoing()
    tracemalloc.start()
    try:
        with pytest.raises(MalformedMessage, match="columns, more than this client accepts"):
            client.receive(_first_server_message(table))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024 and client.hint is None
    client = PirClient([b"id1"], limits=ClientLimits(max_hint_bytes=64 * 1024))
    client.outgoing()
    with pytest.raises(MalformedMessage, match="hint, more than this client accepts"):
        client.receive(_first_server_message(table))


@pytest.mark.parametrize("field,value", [("rows", None), ("rows", 0), ("rows", 1 << 17), ("rows", True),
                                         ("columns", (1 << 21) + 1), ("columns", "12"), ("max_batch", 0)])
def test_bad_announced_dimensions(table, field, value) -> None:
    client = PirClient([b"id1"])
    client.outgoing()
    with pytest.raises(MalformedMessage):
        client.receive(_server_hello(table, **{field: value}))
    assert client.failed


def test_hint_of_another_shape_than_announced_is_refused(table) -> None:
    with Executor(1) as ex:
        small, _ = build_table([(b"a", b"1")], executor=ex)
    client = PirClient([b"id1"])
    client.outgoing()
    # announce the small table's shape and version, then send the big table's hint
    client.receive(_server_hello(table, rows=small.params.rows, columns=small.params.columns))
    assert [m.kind for m in client.outgoing()] == [HINT_REQUEST]
    with pytest.raises(MalformedMessage, match="shape differs"):
        client.receive(Message(HINT, table.hint_blob()))
    assert client.hint is None


@pytest.mark.parametrize("lookups", [None, -1, "5", True, 1.5])
def test_server_refuses_a_bad_lookup_count(table, lookups) -> None:
    reserved: list[int] = []
    server = PirServerSession(table, reserve=reserved.append)
    hello = Hello.from_message(PirClient([b"a"]).outgoing()[0])
    info = {} if lookups is None else {"lookups": lookups}
    with pytest.raises(MalformedMessage):
        server.receive(Hello(hello.protocol, hello.version, Role.CLIENT, hello.params, info).to_message())
    assert reserved == [] and server.failed and not server._outbox  # nothing sent back


def test_server_refuses_more_lookups_than_its_session_cap(table) -> None:
    reserved: list[int] = []
    server = PirServerSession(table, reserve=reserved.append, max_lookups=3)
    with pytest.raises(PolicyError, match="at most 3 per session"):
        server.receive(PirClient([b"a"] * 4).outgoing()[0])
    assert reserved == []


def _hostile(db: Path, log: Path, messages: list[Message]) -> tuple[dict, list[Message]]:
    service = PirService(db, quota=QuotaBook(100, log))
    client_end, server_end = memory_pair()
    server_end.peer_name = "mallory-bank"
    for m in messages:
        client_end.send(m)
    event = service.handle(server_end, timeout=2)
    received = []
    while client_end.pending():
        try:
            received.append(client_end.recv(0))
        except Exception:  # noqa: BLE001 - the close marker
            break
    return event, received


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pirh") / "db"
    api.setup([(f"id{i}", "label") for i in range(100)], d, workers=1)
    return d


def _valid_hello() -> Message:
    return PirClient([b"a"], settings={"normalization": Normalization().to_params()}).outgoing()[0]


@pytest.mark.parametrize("case", ["deep-json", "not-json", "garbage-oprf", "oversized-frame", "wrong-first"])
def test_hostile_session_ends_with_an_audit_record(db: Path, tmp_path: Path, case: str) -> None:
    from pir.store import load_table

    version = bytes.fromhex(load_table(db).version)
    messages = {
        "deep-json": [Message("hello", b"[" * 30_000 + b"]" * 30_000)],  # under the 64 KiB hello cap
        "not-json": [Message("hello", b"\xff\xfe")],
        "garbage-oprf": [_valid_hello(), Message(OPRF, version + b"\x00\x00\x00\x01\x00\x20" + b"\x01" * 32)],
        "oversized-frame": [_valid_hello(), Message(QUERY, bytes(8 * 1024 * 1024))],
        "wrong-first": [Message(QUERY, b"")],
    }[case]
    log = tmp_path / "audit.jsonl"
    event, received = _hostile(db, log, messages)
    audit = [json.loads(line) for line in log.read_text().splitlines()]
    sessions = [e for e in audit if e["event"] == "session"]
    assert len(sessions) == 1 and sessions[0]["outcome"] == "error" and sessions[0]["client"] == "mallory-bank"
    # a JSON nesting bomb is RecursionError inside json until psi.messages caps the depth
    # (another change): either way the session is audited, not a crashed thread
    if case != "deep-json":
        assert sessions[0]["exit_code"] == 4, sessions[0]
    assert sessions[0]["evaluations"] == 0
    assert {k: v for k, v in sessions[0].items() if k != "time"} == event


def test_a_cheating_client_reads_up_to_32_over_log_p_buckets_per_query_all_sealed(table) -> None:
    """docs/PIR.md: a query is any vector; shifted unit vectors return floor(32 / log2 p) whole
    columns per query (3 at p = 512), exactly, but records in them open only with OPRF outputs."""
    from pir import oprf
    from pir.database import derive, open_bucket
    from pir.protocol import ANSWER
    from psi.messages import pack_items

    params = table.params
    assert params.log_p == 9
    client = PirClient([b"id5"])
    server = PirServerSession(table)
    for m in client.outgoing():
        server.receive(m)
    server.outgoing()
    server.receive(Message(OPRF, bytes.fromhex(table.version) + pack_items([oprf.blind(b"id5")[1]], 32)))
    server.outgoing()
    outputs = [oprf.evaluate(table._key, f"id{i}".encode()) for i in (10, 20, 30)]
    wanted = [table.hint.bucket_of(derive(params.salt, out)[0]) for out in outputs]
    assert len(set(wanted)) == 3
    query = np.zeros(params.columns, dtype=np.uint32)
    for shift, column in enumerate(wanted):
        query[column] = np.uint32(1 << (9 * shift))
    server.receive(Message(QUERY, bytes.fromhex(table.version) + (1).to_bytes(4, "big") + query.astype("<u4").tobytes()))
    answer = next(m for m in server.outgoing() if m.kind == ANSWER)
    values = np.frombuffer(answer.body, dtype="<u4", offset=4)
    for shift, column in enumerate(wanted):
        assert ((values >> np.uint32(9 * shift)) & np.uint32(511) == table.digits[:, column]).all()
    # the buckets read are sealed: a record opens only with its id's OPRF output
    for column, output in zip(wanted, outputs):
        digits = ((values >> np.uint32(9 * wanted.index(column))) & np.uint32(511)).astype(np.uint32)
        assert open_bucket(params, digits, output) == b"label"
        assert open_bucket(params, digits, oprf.evaluate(oprf.generate_key(), b"id10")) is None


def _solve_mod32(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
    """X with X . a = b (mod 2^32) for a square ``a`` with an odd determinant (Gauss-Jordan)."""
    size, mod = len(a), 1 << 32
    at = [[a[j][i] for j in range(size)] + [b[r][i] for r in range(len(b))] for i in range(size)]  # a^T | b^T
    for col in range(size):
        pivot = next(r for r in range(col, size) if at[r][col] % 2)
        at[col], at[pivot] = at[pivot], at[col]
        inv = pow(at[col][col], -1, mod)
        at[col] = [v * inv % mod for v in at[col]]
        for r in range(size):
            if r != col and at[r][col]:
                f = at[r][col]
                at[r] = [(v - f * w) % mod for v, w in zip(at[r], at[col])]
    return [[at[i][size + r] for i in range(size)] for r in range(len(b))]


def test_the_hint_of_a_narrow_table_determines_the_whole_sealed_matrix() -> None:
    """docs/PIR.md: with at most n = 1024 columns, H = Dc.A gives every sealed record outright,
    so the list's confidentiality rests on the OPRF sealing, never on PIR."""
    from pir import lwe

    with Executor(1) as ex:
        small, _ = build_table([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")], executor=ex)
    params = small.params
    import itertools

    a = lwe.expand_a(params.seed, params.columns)
    assert params.columns == 3
    for chosen in itertools.combinations(range(a.shape[1]), 3):  # any 3 of A's 1024 columns with odd det
        square = [[int(a[i, j]) for j in chosen] for i in range(params.columns)]
        hint = [[int(small.hint.hint[r, j]) for j in chosen] for r in range(params.rows)]
        try:
            centred = _solve_mod32(square, hint)
            break
        except StopIteration:
            continue
    half = params.lwe.p // 2
    recovered = np.array([[(v + half) % (1 << 32) for v in row] for row in centred])
    assert (recovered == small.digits).all()


def test_client_refuses_a_frame_larger_than_anything_it_accepts(tmp_path: Path) -> None:
    with Executor(1) as ex:
        small, _ = build_table([(b"a", b"1")], executor=ex, settings={"normalization": Normalization().to_params()})
    client_end, server_end = memory_pair()
    server = PirServerSession(small, settings=small.settings)
    server.receive(PirClient([b"a"], settings=small.settings).outgoing()[0])
    server_end.send(server.outgoing()[0])  # an honest hello for a small table ...
    server_end.send(Message(HINT, bytes(2 * 1024 * 1024)))  # ... then a 2 MiB "hint"
    with pytest.raises(MalformedMessage, match="exceeds the cap"):
        api.lookup_over(client_end, ["a"], cache=api.HintCache(tmp_path / "c"), timeout=5,
                        limits=ClientLimits(max_hint_bytes=1024 * 1024))
