"""Keyword PIR end to end over the memory pair: labels, misses, wrong keys, stale hints, bad messages."""

from __future__ import annotations

import os
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pir import oprf
from pir.database import build_table, derive, open_bucket
from pir.protocol import ANSWER, OPRF, QUERY, PirClient, PirServerSession
from psi.driver import run_pair
from psi.errors import InvalidToken, MalformedMessage, ParameterMismatch, ProtocolStateError, QuotaExceeded, UnexpectedMessage
from psi.messages import Message, pack_items
from psi.parallel import Executor


def _table(entries, **kw):
    with Executor(1) as ex:
        return build_table(entries, executor=ex, **kw)


def _lookup(table, ids, hints=None, **kw):
    client = PirClient(ids, hints=hints, **kw)
    run_pair(client, PirServerSession(table))
    return client


ids_strategy = st.lists(st.text(string.digits + "X", min_size=1, max_size=18), max_size=40, unique=True)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(listed=ids_strategy, others=ids_strategy, data=st.data())
def test_listed_ids_get_their_label_and_others_not_listed(listed, others, data) -> None:
    labels = {i: data.draw(st.binary(max_size=32)) for i in listed}
    entries = [(i.encode(), labels[i]) for i in listed]
    table, report = _table(entries, label_width=32)
    asked = listed[: len(listed) // 2] + [o for o in others if o not in labels]
    asked += asked[:2]  # duplicates in the query list
    client = _lookup(table, [a.encode() for a in asked])
    for ident, result in zip(asked, client.result()):
        assert result.listed == (ident in labels)
        assert result.label == labels.get(ident)


def test_medium_table_all_found() -> None:
    n = 3000
    entries = [(f"{110101199000000000 + i * 7919}".encode(), os.urandom(32)) for i in range(n)]
    table, report = _table(entries, label_width=32)
    assert report.shape.capacity >= 1 and report.failure_log2 < -40
    sample = entries[::97]
    client = _lookup(table, [e[0] for e in sample] + [b"not-there"])
    results = client.result()
    assert [r.label for r in results[:-1]] == [e[1] for e in sample]
    assert not results[-1].listed and results[-1].label is None
    # the hint is reused: no second download
    again = _lookup(table, [sample[0][0]], hints={client.fetched_hint.version: client.fetched_hint})
    assert again.fetched_hint is None and again.result()[0].label == sample[0][1]


def test_wide_buckets_when_query_cap_is_small() -> None:
    entries = [(f"id{i}".encode(), f"label {i}".encode()) for i in range(2000)]
    table, report = _table(entries, max_query_bytes=1024)
    assert report.shape.capacity > 1 and report.shape.columns * 4 <= 1024
    results = _lookup(table, [b"id5", b"id1999", b"id2000"]).result()
    assert [r.label for r in results] == [b"label 5", b"label 1999", None]


def test_empty_table() -> None:
    table, _ = _table([])
    assert not _lookup(table, [b"x"]).result()[0].listed


def test_wrong_oprf_output_opens_nothing() -> None:
    entries = [(f"id{i}".encode(), b"secret label") for i in range(50)]
    table, _ = _table(entries, max_query_bytes=64)  # all records in few buckets
    params = table.params
    right = oprf.evaluate(table._key, b"id3")
    position, _, _ = derive(params.salt, right)
    column = table.hint.bucket_of(position)
    digits = table.digits[:, column]
    assert open_bucket(params, digits, right) == b"secret label"
    assert open_bucket(params, digits, os.urandom(64)) is None
    assert open_bucket(params, digits, oprf.evaluate(oprf.generate_key(), b"id3")) is None
    # a matching tag with a wrong key is the opaque InvalidToken
    raw = bytearray()
    from pir.database import _bytes_to_digits, _digits_to_bytes

    raw = bytearray(_digits_to_bytes(digits, params.log_p, params.capacity * params.record_size))
    slot = next(i for i in range(params.capacity)
                if raw[i * params.record_size : i * params.record_size + 8] == derive(params.salt, right)[1])
    raw[slot * params.record_size + 20] ^= 1
    tampered = _bytes_to_digits(np.frombuffer(bytes(raw), dtype=np.uint8).reshape(1, -1), params.log_p, params.rows)[0]
    with pytest.raises(InvalidToken):
        open_bucket(params, tampered, right)


def test_new_setup_gives_new_version_and_keys() -> None:
    entries = [(b"a", b"1"), (b"b", b"2")]
    t1, _ = _table(entries)
    t2, _ = _table(entries)
    assert t1.version != t2.version and t1._key != t2._key
    old = _lookup(t1, [b"a"])
    # the old hint is not used for the new version: fetched again
    client = _lookup(t2, [b"a"], hints={old.fetched_hint.version: old.fetched_hint})
    assert client.fetched_hint is not None and client.result()[0].label == b"1"


def _ready_server(table, **kw):
    client = PirClient([b"a"])
    server = PirServerSession(table, **kw)
    for m in client.outgoing():
        server.receive(m)
    for m in server.outgoing():
        client.receive(m)
    return client, server


def test_stale_version_refused_with_code_5() -> None:
    t1, _ = _table([(b"a", b"1")])
    t2, _ = _table([(b"a", b"1")])
    _, server = _ready_server(t2)
    blinded = oprf.blind(b"a")[1]
    with pytest.raises(ParameterMismatch) as info:
        server.receive(Message(OPRF, bytes.fromhex(t1.version) + pack_items([blinded], 32)))
    assert info.value.exit_code == 5 and "stale" in str(info.value)
    with pytest.raises(ProtocolStateError):
        server.receive(Message(OPRF, b""))


@pytest.mark.parametrize("case", ["short", "long", "count", "no-oprf", "version"])
def test_malformed_query_refused(case) -> None:
    table, _ = _table([(b"a", b"1"), (b"b", b"2")])
    _, server = _ready_server(table)
    version = bytes.fromhex(table.version)
    m = table.params.columns
    if case != "no-oprf":
        server.receive(Message(OPRF, version + pack_items([oprf.blind(b"a")[1]], 32)))
        server.outgoing()
    good = (1).to_bytes(4, "big") + bytes(4 * m)
    body = {
        "short": version + good[:-4],
        "long": version + good + bytes(4),
        "count": version + (2).to_bytes(4, "big") + bytes(8 * m),
        "no-oprf": version + good,
        "version": bytes(32) + good,
    }[case]
    with pytest.raises(ParameterMismatch if case == "version" else MalformedMessage):
        server.receive(Message(QUERY, body))


def test_bad_oprf_elements_and_unexpected_messages() -> None:
    table, _ = _table([(b"a", b"1")])
    _, server = _ready_server(table)
    with pytest.raises(MalformedMessage):
        server.receive(Message(OPRF, bytes.fromhex(table.version) + pack_items([bytes(32)], 32)))
    _, server = _ready_server(table, max_batch=2)
    with pytest.raises(MalformedMessage):
        server.receive(Message(OPRF, bytes.fromhex(table.version) + pack_items([oprf.blind(b"a")[1]] * 3, 32)))
    _, server = _ready_server(table)
    with pytest.raises(UnexpectedMessage):
        server.receive(Message(ANSWER, b""))


def test_quota_callback_stops_evaluation() -> None:
    table, _ = _table([(b"a", b"1")])
    charged = []

    def charge(k):
        if sum(charged) + k > 3:
            raise QuotaExceeded("quota")
        charged.append(k)

    client = PirClient([b"a", b"b", b"c"], batch_size=2)
    server = PirServerSession(table, charge=charge)
    run_pair(client, server)
    assert charged == [2, 1]
    with pytest.raises(QuotaExceeded):
        run_pair(PirClient([b"a"] * 4), PirServerSession(table, charge=charge))


def test_normalisation_mismatch_detected() -> None:
    table, _ = _table([(b"a", b"1")], settings={"normalization": {"trim": True}})
    with pytest.raises(ParameterMismatch):
        run_pair(PirClient([b"a"], settings={"normalization": {"trim": False}}),
                 PirServerSession(table, settings=table.settings))
