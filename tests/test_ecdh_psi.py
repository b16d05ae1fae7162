"""ECDH PSI: full transcripts against plaintext answers, hand-made hostile messages, unbalanced mode."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psi.crypto.groups import GROUP_NAMES, get_group, multiply_batch
from psi.driver import run_pair
from psi.errors import InputError, MalformedMessage, ProtocolStateError, UnexpectedMessage, UsageError
from psi.messages import Message, pack_items, pack_json
from psi.parallel import Executor
from psi.protocols import ecdh
from psi.protocols.base import Reveal

EXECUTOR = Executor(workers=1)
COMPRESSIONS = ("raw", "bloom", "gcs", "auto")
ids = st.lists(st.integers(0, 79), max_size=50)


def items(numbers: list[int]) -> list[bytes]:
    return [b"customer-%d" % n for n in numbers]


def run(client_items, server_items, config, executor=EXECUTOR, prepared=None):
    client = ecdh.Client(client_items, config, peer_size=len(server_items), executor=executor)
    server = ecdh.Server(server_items, config, peer_size=len(client_items), executor=executor, prepared=prepared)
    run_pair(client, server)
    return client.result(), server.result()


def check_outcomes(x: list[bytes], y: list[bytes], reveal: Reveal, client, server) -> None:
    common = set(x) & set(y)
    assert client.cardinality == len(common)
    if reveal is Reveal.RECEIVER:
        assert client.indices == [i for i, item in enumerate(x) if item in common]
        assert server.indices is None and server.cardinality is None
    elif reveal is Reveal.CARDINALITY:
        assert client.indices is None
        assert server.indices is None and server.cardinality is None
    else:
        assert len(client.indices) == len(server.indices) == len(common)
        assert [x[i] for i in client.indices] == [y[j] for j in server.indices]
        assert all(x.index(x[i]) == i for i in client.indices)  # first occurrences
        assert all(y.index(y[j]) == j for j in server.indices)
        assert server.cardinality == len(common)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("reveal", list(Reveal))
@pytest.mark.parametrize("group", GROUP_NAMES)
def test_matches_plaintext(group, reveal, compression):
    config = ecdh.Config(reveal=reveal, group=group, compression=compression, batch_size=16, window=2)

    @settings(max_examples=6 if group == "p256" else 10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(client_ids=ids, server_ids=ids)
    def check(client_ids, server_ids):
        sizes.append(len(client_ids) + len(server_ids))
        x, y = items(client_ids), items(server_ids)
        client, server = run(x, y, config)
        check_outcomes(x, y, reveal, client, server)

    sizes: list[int] = []
    check()
    assert len(sizes) >= 4


@pytest.mark.parametrize("reveal", list(Reveal))
@pytest.mark.parametrize(
    "x, y",
    [
        ([], []),
        ([], [1, 2]),
        ([1, 2], []),
        (list(range(40)), list(range(40))),  # full overlap
        (list(range(20)), list(range(20, 45))),  # disjoint
        ([3, 3, 7, 9, 3], [3, 9, 9, 11]),  # duplicates on both sides
    ],
)
def test_edge_cases(reveal, x, y):
    config = ecdh.Config(reveal=reveal, batch_size=8, window=1)
    client, server = run(items(x), items(y), config)
    check_outcomes(items(x), items(y), reveal, client, server)


def test_both_mode_aligned_and_details():
    x, y = items(range(0, 30)), items(range(15, 60))
    client, server = run(x, y, ecdh.Config(reveal=Reveal.BOTH, compression="gcs"))
    assert [x[i] for i in client.indices] == [y[j] for j in server.indices]
    assert client.details["filter"] == "gcs" and client.details["server_set_size"] == 45
    assert server.details["persisted_key"] is False


def test_two_workers():
    x, y = items(range(0, 300)), items(range(150, 400))
    with Executor(workers=2) as executor:
        for reveal in (Reveal.RECEIVER, Reveal.CARDINALITY):
            config = ecdh.Config(reveal=reveal, batch_size=64, window=3)
            client, server = run(x, y, config, executor=executor)
            check_outcomes(x, y, reveal, client, server)


def test_two_workers_both_mode_and_duplicates():
    x = items([5, 1, 5, 2, 3] + list(range(100, 500)))
    y = items(list(range(300, 700)) + [1, 1])
    with Executor(workers=2) as executor:
        for window in (1, 4):
            config = ecdh.Config(reveal=Reveal.BOTH, batch_size=33, window=window)
            client, server = run(x, y, config, executor=executor)
            check_outcomes(x, y, Reveal.BOTH, client, server)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("reveal", list(Reveal))
def test_head_start(workers, reveal):
    x, y = items(range(0, 120)), items(range(60, 200))
    config = ecdh.Config(reveal=reveal, batch_size=16, window=2)
    with Executor(workers=workers) as executor:
        head = ecdh.HeadStart(y, config, executor)
        assert head.matches(y, config) and not head.matches(list(y), config)
        assert not head.matches(y, ecdh.Config(reveal=reveal, group="ristretto255", batch_size=16))
        client = ecdh.Client(x, config, peer_size=len(y), executor=executor)
        server = ecdh.Server(y, config, peer_size=len(x), executor=executor, head_start=head)
        assert server._head_start and not head.matches(y, config)  # used up: one session only
        run_pair(client, server)
        check_outcomes(x, y, reveal, client.result(), server.result())
        # a used-up (or mismatched) head start is ignored: fresh key, same answers
        server2 = ecdh.Server(y, config, peer_size=len(x), executor=executor, head_start=head)
        assert not server2._head_start and server2._scalar != server._scalar
        head.cancel()


def test_head_start_cancel_and_other_group():
    y = items(range(50))
    with Executor(workers=2) as executor:
        head = ecdh.HeadStart(y, ecdh.Config(group="ristretto255"), executor)
        config = ecdh.Config()
        server = ecdh.Server(y, config, peer_size=10, executor=executor, head_start=head)
        assert not server._head_start  # group differs: not used
        head.cancel()
        assert not head.matches(y, ecdh.Config(group="ristretto255"))
        client = ecdh.Client(items(range(10)), config, peer_size=50, executor=executor)
        run_pair(client, server)
        assert client.result().cardinality == 10


# -- flow control and privacy steps -----------------------------------------------------------
def test_client_keeps_at_most_window_batches_in_flight():
    config = ecdh.Config(batch_size=4, window=3)
    client = ecdh.Client(items(range(40)), config, peer_size=5, executor=EXECUTOR)
    out = client.outgoing()
    assert [m.kind for m in out] == [ecdh.QUERY] + [ecdh.BLINDED] * 3
    assert client.outgoing() == []  # nothing more until answers arrive


def test_cardinality_server_shuffles_answers():
    config = ecdh.Config(reveal=Reveal.CARDINALITY, batch_size=64)
    server = ecdh.Server(items(range(5)), config, peer_size=64, executor=EXECUTOR)
    group = get_group("x25519")
    queries = [group.hash_to_group(b"q", [b"%d" % i])[0] for i in range(64)]
    server.outgoing()
    server.receive(Message(ecdh.QUERY, pack_json({"count": 64})))
    server.receive(Message(ecdh.BLINDED, pack_items(queries, 32)))
    answers = [m for m in server.outgoing() if m.kind == ecdh.EVALUATED]
    returned = answers[0].body[6:]
    in_order = b"".join(multiply_batch("x25519", server._scalar, queries))
    returned_items = sorted(returned[i : i + 32] for i in range(0, len(returned), 32))
    assert returned_items == sorted(in_order[i : i + 32] for i in range(0, len(in_order), 32))
    assert returned != in_order  # fails with probability 1/64!
    assert server.finished and server.result().indices is None


# -- hostile messages -------------------------------------------------------------------------
def started_server(group: str = "x25519", reveal: Reveal = Reveal.RECEIVER, count: int = 1) -> ecdh.Server:
    server = ecdh.Server(items(range(3)), ecdh.Config(group=group, reveal=reveal), peer_size=4, executor=EXECUTOR)
    server.outgoing()
    server.receive(Message(ecdh.QUERY, pack_json({"count": count})))
    server.outgoing()
    return server


BAD_ELEMENTS = {
    "x25519": [
        bytes(32),  # u = 0 (identity)
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
        (2).to_bytes(32, "little"),  # twist point
        b"\xff" * 32,  # non-canonical
    ],
    "ristretto255": [bytes(32), b"\xff" * 32, bytes.fromhex("0100000000000000000000000000000000000000000000000000000000000000")],
    "p256": [b"\xff" * 32, b"p256-x-not-on-curve"],  # x >= p; an x with no point (found below)
}


def _p256_x_off_curve() -> bytes:
    for x in range(1, 100):
        try:
            get_group("p256").check_element(x.to_bytes(32, "big"))
        except MalformedMessage:
            return x.to_bytes(32, "big")
    raise AssertionError("no off-curve x below 100")  # pragma: no cover


@pytest.mark.parametrize("group, bad", [(g, b) for g, bads in BAD_ELEMENTS.items() for b in bads])
def test_server_rejects_invalid_points(group, bad):
    server = started_server(group)
    if bad == b"p256-x-not-on-curve":
        bad = _p256_x_off_curve()
    server.receive(Message(ecdh.BLINDED, pack_items([bad], 32)))
    with pytest.raises(MalformedMessage):
        server.outgoing()
    with pytest.raises(ProtocolStateError):
        server.outgoing()


def test_client_rejects_invalid_evaluations():
    config = ecdh.Config(batch_size=2)
    client = ecdh.Client(items(range(2)), config, peer_size=3, executor=EXECUTOR)
    client.outgoing()
    client.receive(Message(ecdh.EVALUATED, pack_items([bytes(32), bytes(32)], 32)))
    with pytest.raises(MalformedMessage):
        client.outgoing()


def test_counts_checked_against_announced_sizes():
    server = ecdh.Server(items(range(3)), ecdh.Config(), peer_size=4, executor=EXECUTOR)
    server.outgoing()
    with pytest.raises(MalformedMessage):
        server.receive(Message(ecdh.QUERY, pack_json({"count": 5})))

    server = started_server(count=1)
    two = get_group("x25519").hash_to_group(b"d", [b"a", b"b"])
    with pytest.raises(MalformedMessage):
        server.receive(Message(ecdh.BLINDED, pack_items(two, 32)))

    client = ecdh.Client(items(range(3)), ecdh.Config(batch_size=2), peer_size=3, executor=EXECUTOR)
    client.outgoing()
    with pytest.raises(MalformedMessage):  # first batch had 2 items
        client.receive(Message(ecdh.EVALUATED, pack_items(two[:1], 32)))

    client = ecdh.Client(items(range(3)), ecdh.Config(), peer_size=3, executor=EXECUTOR)
    client.outgoing()
    with pytest.raises(MalformedMessage):  # server set larger than announced
        client.receive(Message(ecdh.SET, pack_json({"filter": "raw", "count": 4, "bytes": 20})))


def test_client_rejects_wrong_filter_and_oversized_set():
    client = ecdh.Client(items(range(3)), ecdh.Config(compression="gcs"), peer_size=3, executor=EXECUTOR)
    client.outgoing()
    with pytest.raises(MalformedMessage):
        client.receive(Message(ecdh.SET, pack_json({"filter": "raw", "count": 3, "bytes": 30})))
    client = ecdh.Client(items(range(3)), ecdh.Config(compression="raw"), peer_size=3, executor=EXECUTOR)
    client.outgoing()
    with pytest.raises(MalformedMessage):
        client.receive(Message(ecdh.SET, pack_json({"filter": "raw", "count": 3, "bytes": 10**9})))


def test_unexpected_messages():
    server = ecdh.Server(items(range(3)), ecdh.Config(), peer_size=4, executor=EXECUTOR)
    server.outgoing()
    with pytest.raises(UnexpectedMessage):
        server.receive(Message(ecdh.BLINDED, pack_items([], 32)))  # before the query
    client = ecdh.Client(items(range(3)), ecdh.Config(), peer_size=3, executor=EXECUTOR)
    with pytest.raises(UnexpectedMessage):
        client.receive(Message(ecdh.EVALUATED, b""))  # before the client started
    server = started_server()
    with pytest.raises(UnexpectedMessage):
        server.receive(Message(ecdh.MATCHES, pack_items([], 16)))  # receiver mode: never


def test_both_mode_server_rejects_bad_matches():
    for matches in ([b"\x01" * 16], [b"\x02" * 16, b"\x01" * 16]):
        server = started_server(reveal=Reveal.BOTH, count=0)
        server.outgoing()
        with pytest.raises(MalformedMessage):
            server.receive(Message(ecdh.MATCHES, pack_items(matches, 16)))


# -- configuration, keys, unbalanced mode -----------------------------------------------------
def test_config_validation_and_hello():
    assert ecdh.Config().hello_params() == {"reveal": "receiver", "group": "x25519", "compression": "auto", "fpr_bits": 40}
    assert ecdh.Config(reveal="both").reveal is Reveal.BOTH
    for bad in ({"group": "p384"}, {"compression": "zip"}, {"fpr_bits": 2}, {"batch_size": 0}, {"window": 0}, {"reveal": "all"}):
        with pytest.raises(UsageError):
            ecdh.Config(**bad)
    with pytest.raises(InputError):
        ecdh.Client(["not bytes"], ecdh.Config(), peer_size=1, executor=EXECUTOR)  # type: ignore[list-item]


@pytest.mark.parametrize("group", GROUP_NAMES)
def test_server_key_round_trip(group):
    key = ecdh.ServerKey.generate(group)
    again = ecdh.ServerKey.from_bytes(key.to_bytes())
    assert again.fingerprint == key.fingerprint and again.group == group
    assert "scalar" not in repr(key) and key._scalar.hex() not in repr(key)
    for bad in (b"", b"junk", key.to_bytes()[:-1], key.to_bytes().replace(group.encode(), b"x" * len(group))):
        with pytest.raises(InputError):
            ecdh.ServerKey.from_bytes(bad)


def test_prepared_set_unbalanced_sessions():
    server_items = items(range(100, 160))
    key = ecdh.ServerKey.generate("x25519")
    prepared = ecdh.prepare_server_set(server_items, "x25519", key, EXECUTOR, batch_size=16)
    loaded = ecdh.PreparedSet.from_bytes(prepared.to_bytes(), key)
    assert loaded.count == 60 and loaded.elements == prepared.elements
    for client_ids in (range(90, 110), range(150, 170)):
        x = items(client_ids)
        client, server = run(x, server_items, ecdh.Config(reveal=Reveal.BOTH), prepared=loaded)
        check_outcomes(x, server_items, Reveal.BOTH, client, server)
        assert server.details["persisted_key"] is True
        assert server.details["key_fingerprint"] == key.fingerprint

    with pytest.raises(InputError):  # another key
        ecdh.PreparedSet.from_bytes(prepared.to_bytes(), ecdh.ServerKey.generate("x25519"))
    with pytest.raises(InputError):
        ecdh.PreparedSet.from_bytes(prepared.to_bytes()[:-1], key)
    with pytest.raises(UsageError):  # input changed since the set was prepared
        ecdh.Server(server_items[:-1] + [b"other"], ecdh.Config(), peer_size=1, executor=EXECUTOR, prepared=loaded)
    with pytest.raises(UsageError):  # group mismatch
        ecdh.Server(server_items, ecdh.Config(group="p256"), peer_size=1, executor=EXECUTOR, prepared=loaded)
    with pytest.raises(UsageError):
        ecdh.prepare_server_set(server_items, "p256", key, EXECUTOR)


def test_both_mode_server_maps_matches_even_with_equal_key_halves():
    server = started_server(reveal=Reveal.BOTH, count=3)
    server.outgoing()
    half = b"\x07" * 8
    own = [half + b"\x03" * 8, b"\x01" * 16, half + b"\x02" * 8]  # two keys share their first half
    server._own_keys = b"".join(own)
    server._answered = 3
    server._state = ecdh._ServerState.AWAIT_MATCHES
    server.receive(Message(ecdh.MATCHES, pack_items(sorted([own[0], own[2]]), 16)))
    assert server.result().indices == [server._first[2], server._first[0]]
    for matches in ([own[0], own[2]], [half + b"\x04" * 8]):  # wrong order; unknown key
        bad = started_server(reveal=Reveal.BOTH, count=3)
        bad.outgoing()
        bad._own_keys, bad._answered, bad._state = b"".join(own), 3, ecdh._ServerState.AWAIT_MATCHES
        with pytest.raises(MalformedMessage):
            bad.receive(Message(ecdh.MATCHES, pack_items(matches, 16)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=3), max_size=30))
def test_distinct_positions_match_a_plain_grouping(items):
    distinct, positions = ecdh._distinct(items)
    expected: dict[bytes, list[int]] = {}
    for position, item in enumerate(items):
        expected.setdefault(item, []).append(position)
    assert distinct == list(expected)
    assert len(positions) == len(distinct)
    assert [positions[j] for j in range(len(distinct))] == list(expected.values())
    assert ecdh._first_positions(positions) == [p[0] for p in expected.values()]


def test_check_items_refuses_non_bytes():
    with pytest.raises(InputError):
        ecdh._check_items([b"a", "b"])
    assert ecdh._check_items([b"a", bytearray(b"b")]) == [b"a", bytearray(b"b")]
