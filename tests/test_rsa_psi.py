"""RSA blind-signature PSI: full runs against plaintext answers, hand-made bad messages, caching."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psi.crypto.rsa_keys import RsaKey, sign_batch
from psi.crypto.rsa_proof import prove
from psi.driver import run_pair
from psi.errors import MalformedMessage, ProtocolStateError, UnexpectedMessage, UsageError
from psi.messages import Message, pack_items, pack_u32_list
from psi.parallel import Executor
from psi.protocols import rsa as R
from psi.protocols.base import Reveal

from .helpers import executor, key  # noqa: F401 - fixtures shared with the other RSA tests


def run(client_items, server_items, key, executor, *, reveal=Reveal.RECEIVER, batch_size=16, window=2, **server_kw):
    config = R.Config(reveal=reveal, batch_size=batch_size, window=window)
    client = R.Client(client_items, config, peer_size=len(server_items), executor=executor)
    server = R.Server(server_items, config, peer_size=len(client_items), executor=executor, key=key, **server_kw)
    run_pair(client, server)
    return client, server


def expected(client_items, server_items) -> list[int]:
    server_set = set(server_items)
    return [i for i, x in enumerate(client_items) if x in server_set]


def check_both(client_items, server_items, client, server) -> None:
    c, s = client.result(), server.result()
    assert sorted(c.indices) == expected(client_items, server_items)
    assert [client_items[i] for i in c.indices] == [server_items[j] for j in s.indices]
    assert c.cardinality == s.cardinality == len(c.indices)


keys = st.binary(min_size=0, max_size=6)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    common=st.lists(keys, max_size=20, unique=True),
    only_client=st.lists(keys, max_size=30, unique=True),
    only_server=st.lists(keys, max_size=30, unique=True),
    reveal=st.sampled_from([Reveal.RECEIVER, Reveal.BOTH]),
    data=st.data(),
)
def test_matches_plaintext_intersection(key, executor, common, only_client, only_server, reveal, data):
    client_items = list(dict.fromkeys(common + only_client))
    server_items = list(dict.fromkeys(common + [x for x in only_server if x not in only_client]))
    client_items = data.draw(st.permutations(client_items))
    server_items = data.draw(st.permutations(server_items))
    client, server = run(client_items, server_items, key, executor, reveal=reveal, batch_size=7, window=2)
    c, s = client.result(), server.result()
    if reveal is Reveal.RECEIVER:
        assert c.indices == expected(client_items, server_items)
        assert c.cardinality == len(c.indices)
        assert s.indices is None and s.cardinality is None
    else:
        check_both(client_items, server_items, client, server)


@pytest.mark.parametrize("reveal", [Reveal.RECEIVER, Reveal.BOTH])
@pytest.mark.parametrize(
    "client_items, server_items",
    [
        ([], []),
        ([], [b"a", b"b"]),
        ([b"a", b"b"], []),
        ([b"a", b"b", b"c"], [b"x", b"y"]),  # disjoint
        ([b"k%d" % i for i in range(40)], [b"k%d" % i for i in reversed(range(40))]),  # full overlap
    ],
)
def test_edge_cases(key, executor, reveal, client_items, server_items):
    client, server = run(client_items, server_items, key, executor, reveal=reveal)
    if reveal is Reveal.BOTH:
        check_both(client_items, server_items, client, server)
    else:
        assert client.result().indices == expected(client_items, server_items)


def test_two_worker_processes(key):
    client_items = [b"c%d" % i for i in range(50)] + [b"s%d" % i for i in range(0, 60, 2)]
    server_items = [b"s%d" % i for i in range(60)]
    with Executor(workers=2) as ex:
        client, server = run(client_items, server_items, key, ex, reveal=Reveal.BOTH, batch_size=32)
    check_both(client_items, server_items, client, server)


def test_fresh_key_per_session_and_result_details(executor):
    config = R.Config(reveal=Reveal.RECEIVER)
    client = R.Client([b"a", b"b"], config, peer_size=1, executor=executor)
    server = R.Server([b"b"], config, peer_size=2, executor=executor)
    run_pair(client, server)
    assert client.result().indices == [1]
    assert client.result().details["key_fingerprint"] == server.public_key.fingerprint_hex()
    assert client.result().details["hash_bytes"] == R.truncation_length(2, 1) == 6
    assert client.progress().phase == server.progress().phase == "done"


def test_truncation_rule():
    for n_c, n_s in [(0, 0), (1, 1), (3, 5), (1 << 20, 1 << 20), (10**7, 10**6), (1 << 40, 1 << 40)]:
        length = R.truncation_length(n_c, n_s)
        product = max(1, n_c * n_s)
        assert product * 2**40 <= 2 ** (8 * length) or length == 32
        assert length == 5 or product * 2**40 > 2 ** (8 * (length - 1))
    assert R.truncation_length(1 << 24, 1 << 24) == 11


def test_cardinality_mode_and_bad_options_are_refused(key, executor):
    with pytest.raises(UsageError):
        R.Config(reveal=Reveal.CARDINALITY)
    with pytest.raises(UsageError):
        R.Config(key_bits=1024)
    with pytest.raises(UsageError):
        R.Config(batch_size=0)
    with pytest.raises(UsageError):
        R.Server([b"a"], R.Config(key_bits=3072), peer_size=1, executor=executor, key=key)
    assert R.Config(reveal="both").reveal is Reveal.BOTH
    params = R.Config().hello_params()
    assert params["reveal"] == "receiver" and params["key_bits"] == 2048 and "hash_trunc" in params


# -- hand-made messages --------------------------------------------------------------------------


def server_after_key(key, executor, *, peer_size=3, items=(b"a", b"b")):
    server = R.Server(list(items), R.Config(batch_size=4), peer_size=peer_size, executor=executor, key=key)
    assert server.outgoing() == []  # the server waits for the client's nonce
    server.receive(Message(R.KIND_NONCE, bytes(32)))
    assert [m.kind for m in server.outgoing()] == [R.KIND_KEY, R.KIND_PROOF]
    return server


def pump_until(client, server, kind):
    """Move messages between the parties until the client produces one of ``kind``; return it."""
    for _ in range(1000):
        for message in client.outgoing():
            if message.kind == kind:
                return message
            server.receive(message)
        for message in server.outgoing():
            client.receive(message)
    raise AssertionError(f"the client never sent {kind}")


def test_server_rejects_malformed_blinded_batches(key, executor):
    size = key.public.size
    good = (5).to_bytes(size, "big")
    cases = [
        pack_items([good] * 4, size),  # more than the client announced
        pack_items([key.public.n.to_bytes(size, "big")], size),  # y >= N
        pack_items([bytes(size)], size),  # y = 0
        pack_items([good[1:]], size - 1),  # wrong width
        pack_items([good], size)[:-1],  # truncated
        pack_items([], size),  # empty batch
    ]
    for body in cases:
        server = server_after_key(key, executor)
        with pytest.raises(MalformedMessage):
            server.receive(Message(R.KIND_BLINDED, body))
        with pytest.raises(ProtocolStateError):
            server.outgoing()
    server = server_after_key(key, executor)
    with pytest.raises(UnexpectedMessage):
        server.receive(Message(R.KIND_MATCH, pack_u32_list([])))


def test_server_rejects_bad_match_lists(key, executor):
    items = [b"a", b"b", b"c"]
    signed = R.sign_own_set(items, key, executor, batch_size=2)
    by_hash = sorted(range(3), key=signed.full_hash)
    bad_lists = [
        [0, 0],  # repeated
        [by_hash[1], by_hash[0]],  # not in the aligned order
        [3],  # out of range
        [0, 1, 2, 0],  # more than either set
    ]
    for positions in bad_lists:
        config = R.Config(reveal=Reveal.BOTH, batch_size=4)
        server = R.Server(items, config, peer_size=3, executor=executor, key=key, signed_set=signed)
        client = R.Client([b"b", b"c", b"d"], config, peer_size=3, executor=executor)
        pump_until(client, server, R.KIND_MATCH)
        # the server has now sent its set and waits for the client's match list; the evidence
        # is right for every position, so only the position checks can refuse these lists
        claims = [w.to_bytes(4, "big") + R.match_evidence(signed.full_hash(w)) for w in positions if w < 3]
        if 3 in positions:
            claims.append((3).to_bytes(4, "big") + bytes(16))
        with pytest.raises(MalformedMessage):
            server.receive(Message(R.KIND_MATCH, pack_items(claims, R.CLAIM_BYTES)))
    server = R.Server(items, R.Config(reveal=Reveal.BOTH), peer_size=3, executor=executor, key=key, signed_set=signed)
    client = R.Client([b"b", b"c", b"d"], R.Config(reveal=Reveal.BOTH), peer_size=3, executor=executor)
    run_pair(client, server)
    assert [items[i] for i in server.result().indices] == [[b"b", b"c", b"d"][i] for i in client.result().indices]


def client_after_key(key, executor, *, items=(b"a", b"b", b"c"), peer_size=2, bits=2048):
    """A client that received ``key`` and an honest proof for it (ready to send blinded values)."""
    client = R.Client(list(items), R.Config(batch_size=2, window=1, key_bits=bits), peer_size=peer_size, executor=executor)
    (nonce,) = client.outgoing()
    assert nonce.kind == R.KIND_NONCE and len(nonce.body) == 32
    client.receive(Message(R.KIND_KEY, key.public.to_der()))
    client.receive(Message(R.KIND_PROOF, pack_items(prove(key, nonce.body), key.public.size)))
    return client


def test_client_rejects_bad_keys(key, executor):
    with pytest.raises(MalformedMessage):
        client_after_key(key, executor, bits=3072)  # not the agreed size
    client = R.Client([b"a"], R.Config(), peer_size=1, executor=executor)
    client.outgoing()
    with pytest.raises(MalformedMessage):
        client.receive(Message(R.KIND_KEY, b"\x30\x00"))
    client = R.Client([b"a"], R.Config(), peer_size=1, executor=executor)
    with pytest.raises(UnexpectedMessage):
        client.receive(Message(R.KIND_SIGNED, b""))


def test_client_rejects_malformed_signed_batches(key, executor):
    size = key.public.size
    for body in [
        pack_items([bytes(size)] * 3, size),  # wrong count (2 in flight)
        pack_items([b"\x01" * (size - 1)] * 2, size - 1),  # wrong width
        pack_items([key.public.n.to_bytes(size, "big")] * 2, size),  # out of range
        pack_items([(7).to_bytes(size, "big")] * 2, size),  # does not verify
    ]:
        client = client_after_key(key, executor)
        (blinded,) = client.outgoing()
        assert blinded.kind == R.KIND_BLINDED
        with pytest.raises(MalformedMessage):
            client.receive(Message(R.KIND_SIGNED, body))


def test_wrong_signing_key_is_detected(key, executor):
    other = RsaKey.generate(2048)
    config = R.Config(batch_size=8)
    client = R.Client([b"a", b"b"], config, peer_size=1, executor=executor)
    server = R.Server([b"a"], config, peer_size=2, executor=executor, key=other)
    (nonce,) = client.outgoing()
    server.receive(nonce)
    server.outgoing()  # discard the real key, announce another one (with an honest proof for it)
    client.receive(Message(R.KIND_KEY, key.public.to_der()))
    client.receive(Message(R.KIND_PROOF, pack_items(prove(key, nonce.body), key.public.size)))
    (blinded,) = client.outgoing()
    # the blinded values are below key.n; the other server signs what it can
    body = blinded.body
    size = key.public.size
    values = [int.from_bytes(body[6 + i * size : 6 + (i + 1) * size], "big") % other.public.n for i in range(2)]
    forged = [v.to_bytes(size, "big") for v in sign_batch(other.crt_params(), values)]
    with pytest.raises(MalformedMessage):
        client.receive(Message(R.KIND_SIGNED, pack_items(forged, size)))


def test_client_rejects_oversized_server_set(key, executor):
    client = client_after_key(key, executor, items=())
    width = R.truncation_length(0, 2)
    with pytest.raises(MalformedMessage):
        client.receive(Message(R.KIND_SET, pack_items([b"\x00" * width] * 3, width)))
    client = client_after_key(key, executor, items=())
    with pytest.raises(MalformedMessage):
        client.receive(Message(R.KIND_SET, pack_items([b"\x00" * (width + 1)], width + 1)))


# -- the precomputed, cacheable server set --------------------------------------------------------


def test_signed_set_cache_round_trip(key, executor, tmp_path):
    server_items = [b"s%d" % i for i in range(30)]
    client_items = [b"s%d" % i for i in range(0, 30, 4)] + [b"zz"]
    signed = R.sign_own_set(server_items, key, executor, batch_size=8)
    restored = R.SignedSet.from_bytes(signed.to_bytes())
    assert restored.to_bytes() == signed.to_bytes() and len(restored) == 30
    assert sorted(restored.order.tolist()) == list(range(30))
    assert restored.order.tolist() != list(range(30))  # shuffled (probability 1/30! of a false alarm)
    client, server = run(client_items, server_items, key, executor, reveal=Reveal.BOTH, signed_set=restored)
    check_both(client_items, server_items, client, server)
    # a session without a cache exposes the set it computed, which gives the same hashes
    _, fresh = run(client_items, server_items, key, executor)
    computed = fresh.signed_set
    assert computed is not None and len(computed) == 30
    assert {computed.full_hash(w) for w in range(30)} == {signed.full_hash(w) for w in range(30)}


def test_signed_set_validation(key, executor):
    signed = R.sign_own_set([b"a", b"b"], key, executor)
    data = signed.to_bytes()
    for bad in [data[:-1], b"x" + data[1:], data[:-4] + (7).to_bytes(4, "big"), b""]:
        with pytest.raises(Exception) as info:
            R.SignedSet.from_bytes(bad)
        assert info.type.__name__ == "InputError"
    other = RsaKey.generate(2048)
    with pytest.raises(UsageError):
        R.Server([b"a", b"b"], R.Config(), peer_size=1, executor=executor, key=other, signed_set=signed)
    with pytest.raises(UsageError):
        R.Server([b"a"], R.Config(), peer_size=1, executor=executor, key=key, signed_set=signed)
    with pytest.raises(UsageError):
        R.Server([b"a", b"b"], R.Config(), peer_size=1, executor=executor, signed_set=signed)


def test_cache_key_depends_on_key_and_exact_items(key):
    fp = key.fingerprint()
    base = R.signed_set_cache_key(fp, [b"a", b"b"])
    assert base == R.signed_set_cache_key(fp, iter([b"a", b"b"]))
    assert base != R.signed_set_cache_key(fp, [b"b", b"a"])
    assert base != R.signed_set_cache_key(fp, [b"ab"])
    assert base != R.signed_set_cache_key(bytes(32), [b"a", b"b"])
