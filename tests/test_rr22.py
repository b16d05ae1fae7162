"""RR22-OKVS PSI (psi.protocols.rr22) against the plaintext intersection, and against cheats."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from psi import api
from psi.crypto import okvs
from psi.driver import run_pair
from psi.errors import MalformedMessage, ParameterMismatch, PsiqError, UnsupportedVersion, UsageError
from psi.messages import Message
from psi.ot.base_ot import BaseOtReceiver, BaseOtSender
from psi.ot import vole
from psi.ot.bitmatrix import transpose
from psi.parallel import Executor
from psi.protocols import rr22
from psi.protocols.base import Reveal
from psi.records import read_keys
from psi.transport.memory import memory_pair

from .helpers import assert_matches_plaintext

EXECUTOR = Executor(1)


class Tampered:
    """A party whose outgoing messages of one kind pass through ``change`` (the cheat)."""

    def __init__(self, party, kind, change):
        self.party, self.kind, self.change = party, kind, change

    def outgoing(self):
        return [Message(m.kind, self.change(m.body)) if m.kind == self.kind else m for m in self.party.outgoing()]

    def receive(self, message):
        self.party.receive(message)

    @property
    def finished(self):
        return self.party.finished

    def __getattr__(self, name):  # everything else (e.g. the driver's receive limits) as the party's
        return getattr(self.party, name)


def _parties(client_items, server_items, reveal=Reveal.RECEIVER, batch_rows=1 << 17, executor=EXECUTOR):
    config = rr22.Config(reveal=reveal, batch_rows=batch_rows)
    client = rr22.Client(client_items, config, peer_size=len(server_items), executor=executor)
    server = rr22.Server(server_items, config, peer_size=len(client_items), executor=executor)
    return client, server


def _run(client_items, server_items, reveal=Reveal.RECEIVER, batch_rows=1 << 17, executor=EXECUTOR):
    client, server = _parties(client_items, server_items, reveal, batch_rows, executor)
    run_pair(client, server)
    return client.result(), server.result()


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 150), st.integers(0, 150), st.integers(0, 150), st.randoms(use_true_random=False),
       st.sampled_from([Reveal.RECEIVER, Reveal.BOTH]))
def test_matches_plaintext_intersection(common, only_client, only_server, rnd, reveal):
    items = [f"id-{i}".encode() for i in range(450)]
    client = items[:common] + [b"c" + x for x in items[common : common + only_client]]
    server = items[:common] + [b"s" + x for x in items[common : common + only_server]]
    rnd.shuffle(client)
    rnd.shuffle(server)
    c_out, s_out = _run(client, server, reveal)
    assert_matches_plaintext(client, server, c_out, s_out, reveal)


@pytest.mark.parametrize("sizes", [(0, 0), (0, 7), (7, 0), (1, 1), (3, 300)])
def test_empty_tiny_and_full_overlap(sizes):
    client = [b"k%d" % i for i in range(sizes[0])]
    server = [b"k%d" % i for i in range(sizes[1])]
    c_out, s_out = _run(client, server, Reveal.BOTH)
    assert_matches_plaintext(client, server, c_out, s_out, Reveal.BOTH)


def test_disjoint_sets_match_nothing():
    c_out, s_out = _run([b"a%d" % i for i in range(500)], [b"b%d" % i for i in range(500)], Reveal.BOTH)
    assert c_out.indices == [] and s_out.indices == []


def test_several_bins_batches_and_workers():
    """Three OKVS bins (> 2·2^14 client keys), one bin per correction batch, two worker processes:
    every batch is extended from its own PRG offset in a worker."""
    client = [b"x%d" % i for i in range(33_000)]
    server = [b"x%d" % i for i in range(32_000, 40_000)]
    assert okvs.params_for(len(client)).bins == 3
    with Executor(2) as executor:
        c_out, s_out = _run(client, server, Reveal.BOTH, batch_rows=1 << 14, executor=executor)
    assert_matches_plaintext(client, server, c_out, s_out, Reveal.BOTH)


def test_subspace_vole_correlation():
    """The OT-extension rows are a VOLE over GF(2)^512: q_i = t_i ⊕ (P_i ∧ s) for chosen P_i, in
    any batch computed on its own (as the workers do); batches use independent streams, and the
    check's regenerated T columns are the batch's."""
    session = b"s" * 32
    secret = np.random.default_rng(1).integers(0, 2, rr22.WIDTH).astype(np.uint8)
    base = BaseOtSender(rr22.WIDTH, session)
    reply, keys = BaseOtReceiver(secret, session).reply(base.first_message())
    keys0, keys1 = base.finish(reply)
    rows = np.random.default_rng(2).integers(0, 256, (93, 64), dtype=np.uint8)
    s_bytes = np.packbits(secret, bitorder="little")
    seen = []
    for batch in (0, 1, 7):
        t, wire = vole.receiver_batch(keys0, keys1, batch, rows)
        q_cols = vole.sender_columns(keys, secret, batch, 93, wire)
        assert (transpose(q_cols)[:93] == t ^ (rows & s_bytes)).all()
        assert (transpose(vole.receiver_columns(keys0, batch, 93))[:93] == t).all()
        seen.append(t.tobytes())
    assert len(set(seen)) == 3
    with pytest.raises(MalformedMessage, match="wrong length"):
        vole.sender_columns(keys, secret, 0, 93, wire[:-1])


def test_vole_prg_is_aes_ctr_per_batch_whatever_the_cache():
    """prg_columns row j = AES-CTR under seed j from counter block (batch, 0): checked against
    cryptography's CTR mode, for lengths that end inside a block, with the per-process context
    cache cold, warm and evicted."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seeds = np.random.default_rng(3).integers(0, 256, (16, 16), dtype=np.uint8)
    for batch, length in ((0, 1), (5, 37), (2**40, 64)):
        for _ in range(2):
            cols = vole.prg_columns(seeds, batch, length)
            for j in (0, 7, 15):
                ctr = Cipher(algorithms.AES(bytes(seeds[j])), modes.CTR(batch.to_bytes(8, "big") + bytes(8))).encryptor()
                assert cols[j].tobytes() == ctr.update(bytes(length))
    for i in range(6):  # evict the set above, then recompute it
        vole.prg_columns(seeds ^ np.uint8(i + 1), 0, 16)
    again = vole.prg_columns(seeds, 5, 37)
    ctr = Cipher(algorithms.AES(bytes(seeds[3])), modes.CTR((5).to_bytes(8, "big") + bytes(8))).encryptor()
    assert again[3].tobytes() == ctr.update(bytes(37))


def test_value_width_formula():
    assert rr22.value_bytes(1 << 20, 1 << 20) == 10
    assert rr22.value_bytes(0, 0) == 5
    assert rr22.value_bytes(10**5, 10**5) == 10  # ⌈(40 + 33.2)/8⌉
    assert rr22.value_bytes(1 << 12, 1 << 12) == 8


def test_cardinality_mode_refused():
    with pytest.raises(UsageError, match="cardinality"):
        rr22.Config(reveal=Reveal.CARDINALITY)


def test_hello_checks_sizes():
    client, server = _parties([b"a", b"b"], [b"c"])
    lying = rr22.Server([b"c"], rr22.Config(), peer_size=3, executor=EXECUTOR)
    with pytest.raises(ParameterMismatch):
        run_pair(client, lying)


# -- a cheating client ---------------------------------------------------------------------------


def _false_claims(body: bytes) -> bytes:
    """Claim every server position (with made-up evidence) instead of the real matches."""
    return b"".join(i.to_bytes(4, "big") + bytes(16) for i in range(4))  # 4 = min(n_S, n_R), the count cap


def _swap_evidence(body: bytes) -> bytes:
    records = [body[i : i + 20] for i in range(0, len(body), 20)]
    assert len(records) >= 2
    first, second = records[0], records[1]
    return first[:4] + second[4:] + second[:4] + first[4:] + b"".join(records[2:])


def _extra_position_with_copied_evidence(body: bytes) -> bytes:
    positions = {int.from_bytes(body[i : i + 4], "big") for i in range(0, len(body), 20)}
    other = next(p for p in range(10) if p not in positions)
    return body + other.to_bytes(4, "big") + body[4:20]


@pytest.mark.parametrize("cheat", [_false_claims, _swap_evidence, _extra_position_with_copied_evidence])
def test_both_mode_false_claims_are_refused(cheat):
    client_items = [b"k%d" % i for i in range(4)]
    server_items = [b"k%d" % i for i in range(2, 12)]
    client, server = _parties(client_items, server_items, Reveal.BOTH)
    with pytest.raises(MalformedMessage, match="evidence does not verify"):
        run_pair(Tampered(client, "rr22.matches", cheat), server)
    assert server.failed


def test_honest_claims_pass_the_evidence_check():
    client, server = _parties([b"k%d" % i for i in range(4)], [b"k%d" % i for i in range(2, 12)], Reveal.BOTH)
    run_pair(Tampered(client, "rr22.matches", lambda body: body), server)
    assert len(server.result().indices) == 2


@pytest.mark.parametrize(
    "kind, change, field",
    [
        ("rr22.okvs", lambda b: b[:20] + (int.from_bytes(b[20:], "big") + 8).to_bytes(4, "big"), "columns"),
        ("rr22.okvs", lambda b: b[:16] + (2).to_bytes(4, "big") + b[20:], "bins"),
        ("rr22.okvs", lambda b: b[:-1], "rr22.okvs has the wrong length"),
        ("rr22.u", lambda b: b[:-8], "rr22.u: OKVS batch 0 has"),
        ("rr22.u", lambda b: b + bytes(64), "rr22.u: OKVS batch 0 has"),
        ("rr22.u", lambda b: bytes([okvs.MAX_RETRIES]) + b[1:], "retry counter out of range"),
        ("rr22.base.a", lambda b: b + b"x", "rr22.base.a has the wrong length"),
    ],
)
def test_malformed_okvs_is_refused_naming_the_field(kind, change, field):
    client, server = _parties([b"a%d" % i for i in range(50)], [b"a%d" % i for i in range(40)])
    with pytest.raises(MalformedMessage, match=field) as info:
        run_pair(Tampered(client, kind, change), server)
    assert info.value.exit_code == 4


@pytest.mark.parametrize(
    "kind, change, field",
    [
        ("rr22.base.b", lambda b: b[:-1], "rr22.base.b has the wrong length"),
        ("rr22.values", lambda b: b[:-1], "rr22.values batch has the wrong length"),
    ],
)
def test_malformed_server_messages_are_refused(kind, change, field):
    client, server = _parties([b"a%d" % i for i in range(50)], [b"a%d" % i for i in range(40)])
    with pytest.raises(MalformedMessage, match=field):
        run_pair(client, Tampered(server, kind, change))
    assert client.failed


def test_match_positions_are_checked():
    client, server = _parties([b"k%d" % i for i in range(4)], [b"k%d" % i for i in range(2, 5)], Reveal.BOTH)
    with pytest.raises(MalformedMessage, match="out-of-range position"):
        run_pair(Tampered(client, "rr22.matches", lambda b: (7).to_bytes(4, "big") + bytes(16)), server)
    client, server = _parties([b"k%d" % i for i in range(4)], [b"k%d" % i for i in range(2, 5)], Reveal.BOTH)
    with pytest.raises(MalformedMessage, match="twice"):
        run_pair(Tampered(client, "rr22.matches", lambda b: b[:20] * 2), server)
    client, server = _parties([b"k%d" % i for i in range(4)], [b"k%d" % i for i in range(2, 5)], Reveal.BOTH)
    with pytest.raises(MalformedMessage, match="bad length"):
        run_pair(Tampered(client, "rr22.matches", lambda b: b * 3), server)


def test_malformed_okvs_end_to_end_exit_4_and_nothing_written(tmp_path, monkeypatch):
    """Through run_session with aligned outputs: the server refuses an OKVS header whose column
    count does not fit the announced set size; one line, exit 4, no output file on either side
    (the client's session ends when the server's connection closes)."""
    for name, rows in (("client.csv", range(0, 60)), ("server.csv", range(50, 90))):
        (tmp_path / name).write_text("id,v\n" + "".join(f"{i},row{i}\n" for i in rows))
    real_send = rr22.Client._send

    def cheating_send(self, kind, body=b""):
        if kind == "rr22.okvs":
            body = body[:20] + (int.from_bytes(body[20:], "big") * 2).to_bytes(4, "big")
        real_send(self, kind, body)

    monkeypatch.setattr(rr22.Client, "_send", cheating_send)
    options = api.PsiOptions(protocol="rr22", reveal="both", workers=1, timeout=20.0)
    ch_client, ch_server = memory_pair()
    out: dict = {}

    def serve() -> None:
        try:
            api.run_session("server", ch_server, read_keys(tmp_path / "server.csv", ["id"]), options=options,
                            output=tmp_path / "server_out.csv", executor=EXECUTOR)
        except Exception as err:  # noqa: BLE001
            out["server"] = err
        finally:
            ch_server.close()  # as the TCP transport does when the command exits

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with pytest.raises(PsiqError):
        api.run_session("client", ch_client, read_keys(tmp_path / "client.csv", ["id"]), options=options,
                        output=tmp_path / "client_out.csv", executor=EXECUTOR)
    ch_client.close()
    thread.join(20)
    server_err = out["server"]
    assert isinstance(server_err, MalformedMessage) and server_err.exit_code == 4
    assert "columns" in str(server_err) and "\n" not in str(server_err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client.csv", "server.csv"]  # nothing written


# -- the OT-extension consistency check (OOS17 with the BCH code) ---------------------------------


def _flip_row_zero(body: bytes, columns: int = 64) -> bytes:
    """Make row 0 of the batch a non-code word: flip it in ``columns`` of the 512 columns (a
    cheating client's low-weight difference, the way to learn bits of the server's secret)."""
    nb = 1  # the test sets fit one bin, so one counter byte precedes U
    data = bytearray(body)
    row_bytes = (len(body) - nb) // rr22.WIDTH
    for j in np.random.default_rng(4).choice(rr22.WIDTH, columns, replace=False).tolist():
        data[nb + j * row_bytes] ^= 1
    return bytes(data)


def test_rows_that_are_not_code_words_fail_the_check():
    client, server = _parties([b"a%d" % i for i in range(50)], [b"a%d" % i for i in range(40)])
    with pytest.raises(MalformedMessage, match="consistency check failed") as info:
        run_pair(Tampered(client, "rr22.u", _flip_row_zero), server)
    assert info.value.exit_code == 4 and server.failed


def test_one_column_flip_is_caught_exactly_when_the_secret_bit_is_one():
    """Flipping one column of one row is caught when the server's secret bit there is 1;
    otherwise that column never enters the server's values and nothing is learned."""
    column = int(np.random.default_rng(4).choice(rr22.WIDTH, 1, replace=False)[0])
    for _ in range(4):
        client, server = _parties([b"a%d" % i for i in range(5)], [b"a%d" % i for i in range(4)])
        try:
            run_pair(Tampered(client, "rr22.u", lambda b: _flip_row_zero(b, 1)), server)
            caught = False
        except MalformedMessage as err:
            assert "consistency check failed" in str(err)
            caught = True
        assert caught == bool(server._secret_bits[column])  # noqa: SLF001


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda b: b[:-1], "rr22.check: batch 0 has"),
        (lambda b: b[:-16] + b"\xff" * 16, "out of range"),
        (lambda b: bytes([b[0] ^ 1]) + b[1:], "consistency check failed"),
    ],
)
def test_malformed_check_is_refused(change, field):
    client, server = _parties([b"a%d" % i for i in range(50)], [b"a%d" % i for i in range(40)])
    with pytest.raises(MalformedMessage, match=field):
        run_pair(Tampered(client, "rr22.check", change), server)


def test_server_sends_nothing_derived_from_its_secret_before_every_check_passed():
    client, server = _parties([b"a%d" % i for i in range(50)], [b"a%d" % i for i in range(40)])
    kinds = []

    class Watch(Tampered):
        def outgoing(self):
            out = self.party.outgoing()
            kinds.extend(m.kind for m in out)
            return out

    run_pair(client, Watch(server, "", None))
    assert kinds.index("rr22.values") > kinds.index("rr22.ack")
    assert server._checked == server._batches  # noqa: SLF001 - the check ran for every batch


def test_challenge_must_have_its_length():
    client, server = _parties([b"a%d" % i for i in range(5)], [b"a%d" % i for i in range(4)])
    with pytest.raises(MalformedMessage, match="challenge has the wrong length"):
        run_pair(client, Tampered(server, "rr22.ack", lambda b: b[:8]))



def test_server_values_are_sent_in_a_random_order():
    """Without the shuffle, wire position p would hold the server's p-th key of its bin (input
    order within a bin): the client would learn where its matches sit in the server's file."""
    items = [b"k%d" % i for i in range(200)]
    client, server = _parties(items, items, Reveal.BOTH)
    seen = {}

    def record(body: bytes) -> bytes:
        seen["positions"] = [int.from_bytes(body[i : i + 4], "big") for i in range(0, len(body), 20)]
        return body

    run_pair(Tampered(client, "rr22.matches", record), server)
    indices = server.result().indices
    assert sorted(indices) == list(range(200))
    assert sum(p == i for p, i in zip(seen["positions"], indices)) < 20  # a random permutation: ~1 fixed point


@pytest.mark.parametrize("old_side", ["client", "server"])
def test_a_version_1_peer_is_refused_with_exit_5(old_side, monkeypatch):
    """Version 2 changed the check's challenge expansion and answer layout (psi.ot.oos's): a
    version-1 peer would compute other sums, so either side refuses it at the hello (exit 5)."""
    current = rr22.VERSION
    assert current == 2
    items = [b"a%d" % i for i in range(20)]
    config = rr22.Config()
    with monkeypatch.context() as patch:
        patch.setattr(rr22, "VERSION", 1)
        old = (rr22.Client if old_side == "client" else rr22.Server)(items, config, peer_size=20, executor=EXECUTOR)
    new = (rr22.Server if old_side == "client" else rr22.Client)(items, config, peer_size=20, executor=EXECUTOR)
    client, server = (old, new) if old_side == "client" else (new, old)
    with pytest.raises(UnsupportedVersion) as info:
        run_pair(client, server)
    assert info.value.exit_code == 5
    assert re.search(r"rr22 protocol version (1, this side speaks 2|2, this side speaks 1)", str(info.value))


def test_lookup_pairs_equal_rows_even_when_8_byte_prefixes_collide():
    """The client's match lookup against a plain set comparison, with table rows that share
    their first 8 bytes (and a query equal to each), duplicates among queries and misses."""
    rng = np.random.default_rng(5)
    table = rng.integers(0, 256, (300, 10), dtype=np.uint8)
    table[10:14, :8] = table[9, :8]  # five rows with one prefix
    queries = np.concatenate([table[[9, 12, 13, 13, 200]], rng.integers(0, 256, (50, 10), dtype=np.uint8)])
    queries[-1, :8] = table[11, :8]  # prefix hit, full miss
    expected = sorted((i, j) for i in range(len(queries)) for j in range(len(table))
                      if bytes(queries[i]) == bytes(table[j]))
    assert len(expected) == 5
    for chunk in (1 << 20, 7, 1):  # the sorted queries are searched chunk by chunk
        q, t = rr22._lookup(queries, table, chunk=chunk)  # noqa: SLF001
        assert sorted(zip(q.tolist(), t.tolist())) == expected
    empty = rr22._lookup(queries[:0], table)  # noqa: SLF001
    assert empty[0].size == 0 and rr22._lookup(queries, table[:0])[1].size == 0  # noqa: SLF001


@pytest.mark.parametrize("reveal", [Reveal.RECEIVER, Reveal.BOTH])
def test_per_item_arrays_are_released_when_done(reveal):
    """The caller writes its output while the party may still be referenced: the per-item
    arrays (digests, OPRF values, the server's values and order) must not outlive the outcome."""
    client, server = _parties([b"k%d" % i for i in range(300)], [b"k%d" % i for i in range(100, 400)], reveal)
    run_pair(client, server)
    assert client.result().cardinality == 200
    for party in (client, server):
        held = {name: getattr(party, name, None) for name in ("_sorted_digests", "_order", "_own", "_values", "_oprf",
                                                               "_perm", "_wire", "_kept")}
        assert all(value is None for value in held.values()), held


def _repeat_every_other(width):
    """Each even value record overwrites the odd one after it: one server item's value twice."""
    def change(body):
        rows = np.frombuffer(body, dtype=np.uint8).reshape(-1, width).copy()
        rows[1::2] = rows[0:len(rows) - 1:2][: len(rows[1::2])]
        return rows.tobytes()
    return change


def test_repeated_server_values_are_refused_not_counted_twice():
    """A cheating server repeats values so that one of the client's items would be reported
    (and counted) more than once; the client refuses instead."""
    items = [b"a%d" % i for i in range(60)]
    client, server = _parties(items, items)
    with pytest.raises(MalformedMessage, match="more than once"):
        run_pair(client, Tampered(server, "rr22.values", _repeat_every_other(client._width)))
