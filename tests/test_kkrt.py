"""KKRT16 PSI against the plaintext intersection, in one process."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from psi import cuckoo
from psi.driver import run_pair
from psi.errors import MalformedMessage, ParameterMismatch, UsageError
from psi.messages import Message
from psi.parallel import Executor
from psi.protocols import kkrt
from psi.protocols.base import Reveal

from .helpers import assert_matches_plaintext

EXECUTOR = Executor(1)


def _run(client_items, server_items, reveal=Reveal.RECEIVER, batch_size=1 << 16):
    config = kkrt.Config(reveal=reveal, batch_size=batch_size)
    client = kkrt.Client(client_items, config, peer_size=len(server_items), executor=EXECUTOR)
    server = kkrt.Server(server_items, config, peer_size=len(client_items), executor=EXECUTOR)
    run_pair(client, server)
    return client.result(), server.result()


def _sets(draw_ints, common, only_client, only_server):
    items = [f"id-{i}".encode() for i in draw_ints]
    shared = items[:common]
    client = shared + [b"c" + x for x in items[common : common + only_client]]
    server = shared + [b"s" + x for x in items[common : common + only_server]]
    return client, server


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 200), st.integers(0, 200), st.integers(0, 200), st.randoms(use_true_random=False),
       st.sampled_from([Reveal.RECEIVER, Reveal.BOTH]), st.sampled_from([8, 64, 1 << 16]))
def test_matches_plaintext_intersection(common, only_client, only_server, rnd, reveal, batch):
    client, server = _sets(range(400), common, only_client, only_server)
    rnd.shuffle(client)
    rnd.shuffle(server)
    c_out, s_out = _run(client, server, reveal, batch)
    assert_matches_plaintext(client, server, c_out, s_out, reveal)


@pytest.mark.parametrize("sizes", [(0, 0), (0, 7), (7, 0), (1, 1)])
def test_empty_and_tiny_sets(sizes):
    client = [b"k%d" % i for i in range(sizes[0])]
    server = [b"k%d" % i for i in range(sizes[1])]
    c_out, s_out = _run(client, server, Reveal.BOTH)
    assert c_out.indices == s_out.indices == list(range(min(sizes)))
    assert c_out.cardinality == len(set(client) & set(server))


def test_full_overlap_and_variable_lengths():
    items = [bytes(range(i % 50)) + i.to_bytes(4, "big") for i in range(3000)]
    c_out, s_out = _run(items, list(reversed(items)), Reveal.BOTH, batch_size=1000)
    assert sorted(c_out.indices) == list(range(3000))
    assert [items[i] for i in c_out.indices] == [list(reversed(items))[i] for i in s_out.indices]


def test_cardinality_mode_refused():
    with pytest.raises(UsageError):
        kkrt.Config(reveal=Reveal.CARDINALITY)


def test_hello_checks_sizes_and_params():
    config = kkrt.Config()
    client = kkrt.Client([b"a"], config, peer_size=5, executor=EXECUTOR)
    server = kkrt.Server([b"a", b"b"], config, peer_size=1, executor=EXECUTOR)
    with pytest.raises(ParameterMismatch):
        run_pair(client, server)
    client = kkrt.Client([b"a"], kkrt.Config(reveal=Reveal.BOTH), peer_size=1, executor=EXECUTOR)
    server = kkrt.Server([b"a"], config, peer_size=1, executor=EXECUTOR)
    with pytest.raises(ParameterMismatch):
        run_pair(client, server)


def _step(sender, receiver):
    for message in sender.outgoing():
        receiver.receive(message)


def test_malformed_messages_rejected():
    config = kkrt.Config(reveal=Reveal.BOTH)
    client = kkrt.Client([b"a", b"b"], config, peer_size=2, executor=EXECUTOR)
    server = kkrt.Server([b"b", b"c"], config, peer_size=2, executor=EXECUTOR)
    _step(client, server)
    _step(server, client)
    (base_a,) = client.outgoing()
    with pytest.raises(MalformedMessage):
        kkrt.Server([b"b"], config, peer_size=2, executor=EXECUTOR).receive(Message("hello", b"{}"))
    server.receive(base_a)
    (base_b,) = server.outgoing()
    client.receive(base_b)
    corrections = client.outgoing()
    with pytest.raises(MalformedMessage):
        server.receive(Message("kkrt.u", corrections[0].body[:-8]))
    wrong_bins = bytearray(base_a.body)
    wrong_bins[-1] ^= 1
    fresh = kkrt.Server([b"b", b"c"], config, peer_size=2, executor=EXECUTOR)
    fresh_client = kkrt.Client([b"a", b"b"], config, peer_size=2, executor=EXECUTOR)
    _step(fresh_client, fresh)
    _step(fresh, fresh_client)
    fresh_client.outgoing()
    with pytest.raises(MalformedMessage):
        fresh.receive(Message("kkrt.base.a", bytes(wrong_bins)))


def test_server_rejects_bad_match_positions():
    config = kkrt.Config(reveal=Reveal.BOTH)
    client = kkrt.Client([b"a", b"b"], config, peer_size=2, executor=EXECUTOR)
    server = kkrt.Server([b"b", b"c"], config, peer_size=2, executor=EXECUTOR)
    held = []
    for _ in range(10):
        for message in client.outgoing():
            (held if message.kind == "kkrt.matches" else [server.receive(message)]).append(message)
        _step(server, client)
        if held:
            break
    assert client.finished and client.result().indices == [1]
    with pytest.raises(MalformedMessage, match="out-of-range"):  # 3 hashes × 2 items: max 5
        server.receive(Message("kkrt.matches", (6).to_bytes(4, "big") + bytes(kkrt.EVIDENCE_BYTES)))


def test_cuckoo_insert_failure_is_reported_and_build_reseeds():
    rng = np.random.default_rng(0)
    crowded = np.zeros((5, 3), dtype=np.int64)  # five items, all hashing to bin 0
    assert cuckoo.insert(crowded, 8, rng, max_rounds=50) is None
    digests = np.frombuffer(np.random.default_rng(1).bytes(24 * 5000), dtype=np.uint8).reshape(5000, 24)
    table = cuckoo.build(digests)
    placed = table.table[table.table >= 0]
    assert sorted(placed.tolist()) == list(range(5000))
    assert np.array_equal(table.table[table.bin_of()], np.arange(5000))
    with pytest.raises(UsageError):
        cuckoo.build(np.zeros((3, 24), dtype=np.uint8), bins=2, attempts=2)  # 3 items, 2 bins


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 200), spare=st.integers(0, 100), seed=st.integers(0, 2**32 - 1))
def test_cuckoo_insert_places_every_item_in_one_of_its_bins(n, spare, seed):
    rng = np.random.default_rng(seed)
    bins = n + 1 + spare
    indices = rng.integers(0, bins, (n, cuckoo.HASHES))
    placed = cuckoo.insert(indices, bins, rng, max_rounds=500)
    if placed is None:  # allowed (the caller re-seeds); a crowded random instance may have no placement
        return
    table, which = placed
    items = table[table >= 0]
    assert sorted(items.tolist()) == list(range(n))  # each item exactly once
    assert np.array_equal(indices[items, which[items]], np.flatnonzero(table >= 0))  # in one of its bins


def test_value_width_formula():
    # 2^40 pairs need 80 bits for the truncation alone; phasing adds 2^-54.4, so 81 bits → 11 bytes
    assert kkrt.value_bytes(1 << 20, 1 << 20) == 11
    assert kkrt.value_bytes(1 << 16, 1 << 16) == 10  # same: 72 bits sit exactly on the bound
    assert kkrt.value_bytes(1 << 20, 1000) == 9  # 40 + 29.9 bits: room to spare
    assert kkrt.value_bytes(0, 0) == 6  # one pair: 40 bits, plus the phasing term
    assert cuckoo.table_size(1 << 20) == int(np.ceil((40 + 20 + 256) / 240 * (1 << 20)))


def _deterministic(monkeypatch, seed):
    """Make every random choice of a session reproducible (hello nonces, seeds, base OTs)."""
    import random
    import secrets

    import rbcl

    from psi.ot import base_ot

    np.random.default_rng(0)  # numpy.random draws OS entropy when first imported: do it now
    rnd = random.Random(seed)
    monkeypatch.setattr(secrets, "token_bytes", lambda n=32: rnd.randbytes(n))
    monkeypatch.setattr(secrets, "token_hex", lambda n=32: rnd.randbytes(n).hex())
    monkeypatch.setattr(secrets, "randbits", lambda k: rnd.getrandbits(k))
    monkeypatch.setattr(base_ot, "_nonzero_scalar", lambda: rbcl.crypto_core_ristretto255_scalar_reduce(rnd.randbytes(64)))


def _recorded_run(client_items, server_items, executor_c, executor_s, reveal, batch_size):
    config = kkrt.Config(reveal=reveal, batch_size=batch_size)
    client = kkrt.Client(client_items, config, peer_size=len(server_items), executor=executor_c)
    server = kkrt.Server(server_items, config, peer_size=len(client_items), executor=executor_s)
    wire = []
    for party in (client, server):
        send = party._send
        party._send = lambda kind, body=b"", send=send, who=party: (wire.append((who is client, kind, bytes(body))), send(kind, body))[1]
    run_pair(client, server)
    return client.result(), server.result(), wire


@pytest.mark.parametrize("batch_size", [1 << 12, 1000])
def test_workers_give_identical_wire_bytes(monkeypatch, batch_size):
    """Two worker processes per side produce exactly the single-core session (same seeds)."""
    n = 3 * kkrt._MIN_PIECE  # large enough to go to the workers
    client = [b"w-%d" % i for i in range(n)]
    server = [b"w-%d" % i for i in range(n // 3, n + n // 3)]
    runs = []
    with Executor(2) as ec, Executor(2) as es:
        for executors in ((EXECUTOR, EXECUTOR), (ec, es)):
            _deterministic(monkeypatch, 7)
            runs.append(_recorded_run(client, server, *executors, Reveal.BOTH, batch_size))
    (c1, s1, w1), (c2, s2, w2) = runs
    assert c1.indices == c2.indices and s1.indices == s2.indices
    assert sorted(client[i] for i in c2.indices) == sorted(set(client) & set(server))
    assert len(w1) == len(w2) and all(a == b for a, b in zip(w1, w2))
