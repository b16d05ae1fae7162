"""OT and KKRT against a cheating peer: the OOS17 check, "both" evidence, OS randomness (the BCH code: tests/test_bch.py).

Each cheat is played by driving the sans-IO parties in one process and altering one side.
"""

from __future__ import annotations

import math
import secrets
import sys

import numpy as np
import pytest

from psi.driver import run_pair
from psi.errors import MalformedMessage
from psi.messages import Message
from psi.ot import OneOfNReceiver, OneOfNSender, OtReceiver, OtSender, oos
from psi.ot.bitmatrix import transpose
from psi.parallel import Executor
from psi.protocols import kkrt
from psi.protocols.base import Reveal

EXECUTOR = Executor(1)


def test_check_combination_matches_the_definition():
    rng = np.random.default_rng(4)
    rows = 1000
    columns = rng.integers(0, 256, (80, (rows + oos.S + 7) // 8), dtype=np.uint8)
    words = oos.challenge_words(b"s" * 32, 0, b"c" * 16, rows)
    matrix = transpose(columns)
    expected = np.zeros((oos.S, 10), dtype=np.uint8)
    for l in range(oos.S):
        picked = ((words >> np.uint64(l)) & np.uint64(1)).astype(bool)
        expected[l] = np.bitwise_xor.reduce(matrix[picked], axis=0)
    assert np.array_equal(oos.combine_columns(columns, words), expected)
    assert (words[rows : rows + oos.S] == np.uint64(1) << np.arange(oos.S, dtype=np.uint64)).all()


# -- 1-out-of-N OT: a receiver that wants more than its choice ---------------------------------


def _flip_one_byte_per_row(ext):
    """Wrap the receiver's extension so row ``j`` gets byte ``j mod 64`` of its code word
    flipped: the issue's way to learn the sender's secret byte by byte."""
    honest = ext.extend_codewords

    def cheat(codewords, **kw):
        bent = codewords.copy()
        rows = np.arange(bent.shape[0])
        bent[rows, rows % 64] ^= 0xFF
        return honest(bent, **kw)

    ext.extend_codewords = cheat


def _drive(a, b, tamper=None, rounds=200):
    """Exchange messages until both finish; ``tamper(party)`` is called once ``a`` has its extension."""
    seen: list[tuple[str, str]] = []
    tampered = False
    for _ in range(rounds):
        if tamper and not tampered and hasattr(a, "_ext"):
            tamper(a)
            tampered = True
        moved = False
        for src, dst, name in ((a, b, "a"), (b, a, "b")):
            for message in src.outgoing():
                seen.append((name, message.kind))
                dst.receive(message)
                moved = True
        if a.finished and b.finished or not moved:
            break
    return seen


def test_one_of_n_receiver_with_bent_code_words_is_caught_before_any_ciphertext():
    messages = np.random.default_rng(1).integers(0, 256, (64, 512, 8), dtype=np.uint8)  # 64 OTs of 512 records
    receiver, sender = OneOfNReceiver(list(range(64))), OneOfNSender(messages)
    seen: list = []
    with pytest.raises(oos.CheatingDetected) as caught:
        seen = _drive(receiver, sender, tamper=lambda r: _flip_one_byte_per_row(r._ext))
    assert caught.value.exit_code == 4
    assert sender.failed and not receiver.finished
    assert ("b", "kk13.y") not in seen and not any(kind == "kk13.y" for _, kind in sender._outbox)


def test_one_of_n_receiver_that_guesses_its_answer_is_caught():
    """A receiver that bends its rows and forges the answer without knowing Δ fails too."""
    receiver, sender = OneOfNReceiver([3]), OneOfNSender([b"%02d" % i for i in range(10)])
    for _ in range(3):
        for m in receiver.outgoing():
            sender.receive(m)
        for m in sender.outgoing():
            receiver.receive(m)
    (check,) = receiver.outgoing()
    assert check.kind == "kk13.check" and len(check.body) == oos.RESPONSE_BYTES
    forged = bytearray(check.body)
    forged[0] ^= 1  # any change to t̃ (or w̃) must be refused
    with pytest.raises(oos.CheatingDetected):
        sender.receive(Message("kk13.check", bytes(forged)))
    assert sender.failed and not any(m.kind == "kk13.y" for m in sender._outbox)


def test_one_of_n_honest_receiver_passes_with_many_batches():
    rng = np.random.default_rng(2)
    messages = rng.integers(0, 256, (7, 80_000, 1), dtype=np.uint8)  # layout: 3 OTs per batch
    choices = rng.integers(0, 80_000, 7)
    receiver = OneOfNReceiver(choices, window=2)
    seen = _drive(receiver, OneOfNSender(messages, window=2))
    assert [kind for _, kind in seen].count("kk13.check") == 3
    assert np.array_equal(receiver.result(), messages[np.arange(7), choices])


# -- KKRT: a client that bends code words, a client that claims false matches ---------------------


def _kkrt_pair(client_items, server_items, reveal=Reveal.RECEIVER, batch_size=1 << 16):
    config = kkrt.Config(reveal=reveal, batch_size=batch_size)
    client = kkrt.Client(client_items, config, peer_size=len(server_items), executor=EXECUTOR)
    server = kkrt.Server(server_items, config, peer_size=len(client_items), executor=EXECUTOR)
    return client, server


@pytest.mark.parametrize("batch_size", [1 << 16, 64])
def test_kkrt_client_flipping_a_byte_per_bin_is_caught_before_values(batch_size):
    """The attack of issue 10: one flipped code-word byte per bin, then 256 guesses per byte
    against the server's values. The server must stop at the check, before any value."""
    shared = [b"key-%d" % i for i in range(200)]
    client, server = _kkrt_pair(shared + [b"c%d" % i for i in range(100)], shared + [b"s%d" % i for i in range(400)],
                                batch_size=batch_size)
    seen: list = []
    with pytest.raises(oos.CheatingDetected) as caught:
        seen = _drive(client, server, tamper=lambda c: _flip_one_byte_per_row(c._ext))
    assert caught.value.exit_code == 4
    assert server.failed
    assert not any(kind == "kkrt.values" for _, kind in seen + [("b", m.kind) for m in server._outbox])


def test_kkrt_one_bent_bit_is_caught_exactly_when_it_touches_delta():
    """The residual leak the check allows: a bit flipped at position p passes iff Δ_p = 0, so
    the cheater learns one bit of Δ with probability 1/2 of surviving (c bits: 2^-c)."""
    outcomes = []
    for _ in range(4):
        client, server = _kkrt_pair([b"a%d" % i for i in range(50)], [b"a%d" % i for i in range(50)])

        def bend_one(c):
            honest = c._ext.extend_codewords

            def cheat(codewords, **kw):
                bent = codewords.copy()
                bent[7, 3] ^= 0x01  # code-word bit 24 of bin 7
                return honest(bent, **kw)

            c._ext.extend_codewords = cheat

        try:
            _drive(client, server, tamper=bend_one)
            caught = False
        except oos.CheatingDetected:
            caught = True
        delta_bit = int(server._ext.secret[3] & 1)
        assert caught == bool(delta_bit)
        if not caught:
            assert client.result().cardinality == 50
        outcomes.append(caught)


def _run_until_matches(client, server):
    """Run an honest session up to the client's kkrt.matches; return that message (held back)."""
    for _ in range(200):
        for message in client.outgoing():
            if message.kind == "kkrt.matches":
                return message
            server.receive(message)
        for message in server.outgoing():
            client.receive(message)
    raise AssertionError("no kkrt.matches")


def test_kkrt_false_both_claims_are_refused():
    server_items = [b"s-%d" % i for i in range(40)]
    client_items = [b"c-%d" % i for i in range(40)]  # no overlap at all
    client, server = _kkrt_pair(client_items, server_items, Reveal.BOTH)
    honest = _run_until_matches(client, server)
    assert honest.body == b"" and client.result().indices == []
    # the cheat: claim 30 of the server's 40 keys by position (with made-up evidence)
    positions = np.arange(30, dtype=">u4").view(np.uint8).reshape(30, 4)
    claims = np.concatenate([positions, np.zeros((30, kkrt.EVIDENCE_BYTES), dtype=np.uint8)], axis=1)
    with pytest.raises(MalformedMessage, match="evidence"):
        server.receive(Message("kkrt.matches", claims.tobytes()))
    assert server.failed and not server.finished


def test_kkrt_one_false_claim_among_true_ones_is_refused():
    shared = [b"k-%d" % i for i in range(20)]
    client, server = _kkrt_pair(shared + [b"c-%d" % i for i in range(20)], shared + [b"s-%d" % i for i in range(20)], Reveal.BOTH)
    honest = _run_until_matches(client, server)
    claims = np.frombuffer(honest.body, dtype=np.uint8).reshape(-1, 4 + kkrt.EVIDENCE_BYTES)
    positions = claims[:, :4].copy().view(">u4").reshape(-1)
    assert claims.shape[0] == 20
    item_at = lambda p: int(server._perms[p // 40][p % 40])  # noqa: E731 - the server's own view
    claimed = {item_at(p) for p in positions.tolist()}
    unused = next(p for p in range(3 * 40) if item_at(p) not in claimed)  # an item the client lacks
    forged = claims[0].copy()  # a true claim's evidence moved to an unmatched server value
    forged[:4] = np.array([unused], dtype=">u4").view(np.uint8)
    with pytest.raises(MalformedMessage, match="evidence"):
        server.receive(Message("kkrt.matches", np.concatenate([claims[1:], forged[None, :]]).tobytes()))
    assert server.failed


def test_kkrt_true_claims_are_accepted_and_align():
    shared = [b"k-%d" % i for i in range(20)]
    client, server = _kkrt_pair(shared + [b"c-%d" % i for i in range(5)], [b"s-%d" % i for i in range(9)] + shared, Reveal.BOTH)
    run_pair(client, server)
    assert len(client.result().indices) == 20
    c_items = shared + [b"c-%d" % i for i in range(5)]
    s_items = [b"s-%d" % i for i in range(9)] + shared
    assert [c_items[i] for i in client.result().indices] == [s_items[i] for i in server.result().indices]


# -- value length: truncation must keep false matches below 2^-40 --------------------------------


@pytest.mark.parametrize("n_server,n_client", [(1, 1), (1000, 10), (1 << 16, 1 << 16), (1 << 20, 1 << 20),
                                               (1 << 24, 1 << 20), (1 << 31, 1 << 31), (1 << 31, 1)])
def test_value_length_keeps_false_matches_below_2_pow_minus_40(n_server, n_client):
    width = kkrt.value_bytes(n_server, n_client)
    pairs = n_server * n_client
    bins = math.ceil((40 + math.log2(max(n_client, 2)) + 256) / 240 * max(n_client, 1))
    truncation = pairs * 2.0 ** (-8 * width)
    phasing = pairs / (max(bins, n_client + 8) * 2.0**74)
    assert math.log2(truncation + phasing) <= -40  # computed here, not by the module
    assert kkrt.false_match_log2(n_server, n_client, width) <= -40
    assert kkrt.false_match_log2(n_server, n_client, width - 1) > -40  # and not wasteful


def test_session_sends_values_of_the_safe_length():
    """The parties really use the length rule (a hard-coded 4-byte truncation fails here)."""
    n_client, n_server = 300, 500
    client, server = _kkrt_pair([b"x%d" % i for i in range(n_client)], [b"x%d" % i for i in range(n_server)])
    lengths = []
    for _ in range(200):
        for m in client.outgoing():
            server.receive(m)
        for m in server.outgoing():
            if m.kind == "kkrt.values":
                lengths.append(len(m.body))
            client.receive(m)
        if client.finished and server.finished:
            break
    width = sum(lengths) // (3 * n_server)
    assert sum(lengths) == 3 * n_server * width
    assert width * 8 >= 40 + math.log2(n_client * n_server)
    assert kkrt.false_match_log2(n_server, n_client, width) <= -40
    assert client.result().cardinality == n_client


# -- randomness: every secret from the OS ------------------------------------------------------


def test_ot_secrets_come_from_the_os(monkeypatch):
    """IKNP's Δ is the low bit of bytes from ``secrets``; no seeded numpy generator is asked
    for anything in the OT modules or the KKRT server."""
    calls: list[str] = []
    real_default_rng = np.random.default_rng

    def spy(*args, **kwargs):
        calls.append(sys._getframe(1).f_code.co_filename)
        return real_default_rng(*args, **kwargs)

    monkeypatch.setattr(np.random, "default_rng", spy)
    drawn: list[bytes] = []
    real_token_bytes = secrets.token_bytes

    def token_bytes(n=32):
        data = real_token_bytes(n)
        drawn.append(data)
        return data

    monkeypatch.setattr(secrets, "token_bytes", token_bytes)
    receiver, sender = OtReceiver([0, 1, 1, 0]), OtSender(4)
    run_pair(receiver, sender)
    secret_bits = np.unpackbits(sender._ext.secret, bitorder="little")
    assert any(len(d) == 128 and np.array_equal(np.frombuffer(d, np.uint8) & 1, secret_bits) for d in drawn)
    client, server = _kkrt_pair([b"a", b"b", b"c"], [b"b", b"c", b"d", b"e"], Reveal.BOTH)
    run_pair(client, server)
    offenders = [f for f in calls if "/psi/ot/" in f or f.endswith("kkrt.py")]
    assert offenders == []


def test_secure_permutation_is_a_permutation_and_varies():
    perms = [kkrt.secure_permutation(1000) for _ in range(3)]
    for p in perms:
        assert sorted(p.tolist()) == list(range(1000))
    assert not np.array_equal(perms[0], perms[1])
    assert kkrt.secure_permutation(0).size == 0 and kkrt.secure_permutation(1).tolist() == [0]


# -- IKNP (chosen-message 1-out-of-2, psi.ot.OtSender/OtReceiver) ------------------------------


def test_iknp_receiver_with_inconsistent_rows_is_caught_before_any_message():
    """Row 0's correction differs from t ⊕ x·1 in 64 of the 128 columns: the sender's two pads
    for that OT would no longer be 'one known, one hidden by all of Δ'. The check stops it."""
    count = 50
    receiver = OtReceiver([1] * count, kind="chosen")
    sender = OtSender(count, kind="chosen", messages0=[b"0" * 16] * count, messages1=[b"1" * 16] * count)
    seen = []
    with pytest.raises(oos.CheatingDetected) as caught:
        for _ in range(20):
            for m in receiver.outgoing():
                if m.kind == "iknp.u":
                    body = bytearray(m.body)
                    length = len(body) // 128
                    for column in range(64):
                        body[column * length] ^= 1
                    m = Message("iknp.u", bytes(body))
                sender.receive(m)
            for m in sender.outgoing():
                seen.append(m.kind)
                receiver.receive(m)
    assert caught.value.exit_code == 4
    assert "iknp.y" not in seen and not any(m.kind == "iknp.y" for m in sender._outbox)


def test_iknp_honest_parties_pass_the_check_over_many_batches():
    rng = np.random.default_rng(8)
    choices = rng.integers(0, 2, 1000)
    m0 = rng.integers(0, 256, (1000, 16), dtype=np.uint8)
    m1 = rng.integers(0, 256, (1000, 16), dtype=np.uint8)
    receiver = OtReceiver(choices, kind="chosen", batch_size=96, window=3)
    run_pair(receiver, OtSender(1000, kind="chosen", messages0=m0, messages1=m1, batch_size=96, window=3))
    assert np.array_equal(receiver.result(), np.where(choices[:, None] == 1, m1, m0))


def test_kkrt_claiming_one_item_twice_is_refused():
    shared = [b"k-%d" % i for i in range(20)]
    client, server = _kkrt_pair(shared + [b"c-%d" % i for i in range(5)], shared, Reveal.BOTH)
    honest = _run_until_matches(client, server)
    claims = np.frombuffer(honest.body, dtype=np.uint8).reshape(-1, 4 + kkrt.EVIDENCE_BYTES)
    doubled = np.concatenate([claims[:-1], claims[:1]])  # a true claim sent twice (within the claim limit)
    with pytest.raises(MalformedMessage, match="twice"):
        server.receive(Message("kkrt.matches", doubled.tobytes()))
    assert server.failed


def test_kkrt_repeated_server_values_are_refused_not_counted_twice():
    """A cheating server repeats values within its message so that one of the client's items
    would be reported (and counted) more than once; the client refuses instead."""
    from .test_rr22 import Tampered, _repeat_every_other

    items = [b"k%d" % i for i in range(60)]
    client, server = _kkrt_pair(items, items)
    with pytest.raises(MalformedMessage, match="more than once"):
        run_pair(client, Tampered(server, "kkrt.values", _repeat_every_other(client._width)))
