"""PPCA ECDH-PSI session (sans-IO): results against plaintext, handshake outcomes, and a peer
that cheats or breaks the format (each test replaces one message of an honest run)."""

from __future__ import annotations

from typing import Callable

import pytest

pytest.importorskip("google.protobuf", reason="psiq[interop] (protobuf) not installed")

from psi.errors import IncompatiblePeer, MalformedMessage  # noqa: E402
from psi.interop.ppca import codec  # noqa: E402
from psi.interop.ppca._pb import ecdh_psi_pb2, entry_pb2  # noqa: E402
from psi.interop.ppca.party import MAIN, SUB, PpcaConfig, PpcaEcdhParty, truncation_bits  # noqa: E402
from psi.interop.ppca.suite import suite_by_name  # noqa: E402

Tamper = Callable[[int, tuple, bytes], bytes | None]


def run_pair(p0: PpcaEcdhParty, p1: PpcaEcdhParty, tamper: Tamper | None = None) -> None:
    """Deliver messages between two parties in one process; ``tamper(src_rank, key, data)`` may
    replace a message (return None to leave it)."""
    boxes: list[dict] = [{}, {}]
    parties = [p0, p1]
    for _ in range(10_000):
        moved = False
        for rank, party in enumerate(parties):
            if party.finished:
                continue
            for key, data in party.outgoing():
                if tamper is not None:
                    data = tamper(rank, key, data) or data
                boxes[1 - rank][key] = data
                moved = True
            wanted = party.wanted()
            if wanted is not None and wanted in boxes[rank]:
                party.receive(wanted, boxes[rank].pop(wanted))
                moved = True
        if all(p.finished for p in parties):
            return
        if not moved:
            raise AssertionError("stuck")


def make(suite: str = "x25519", result_to: int = -1, handshake: bool = True, n0: int = 60, n1: int = 50,
         batch: int = 16, suites1: tuple[str, ...] | None = None, result_to1: int | None = None):
    items0 = [b"id%d" % i for i in range(n0)]
    items1 = [b"id%d" % i for i in range(n0 - 20, n0 - 20 + n1)]
    s0 = (suite_by_name(suite),)
    s1 = tuple(suite_by_name(s) for s in (suites1 or (suite,)))
    p0 = PpcaEcdhParty(PpcaConfig(0, s0, result_to, handshake, batch_size=batch), items0)
    p1 = PpcaEcdhParty(PpcaConfig(1, s1, result_to if result_to1 is None else result_to1, handshake,
                                  batch_size=batch), items1)
    return p0, p1, items0, items1


@pytest.mark.parametrize("suite", ["x25519", "sm2", "sm2-sm3", "sm2-sm3-increment"])
@pytest.mark.parametrize("handshake", [True, False])
def test_both_ranks_learn_the_plaintext_intersection_in_the_same_order(suite: str, handshake: bool) -> None:
    p0, p1, items0, items1 = make(suite, -1, handshake, n0=40, n1=30, batch=8)
    run_pair(p0, p1)
    r0, r1 = p0.result(), p1.result()
    expected = set(items0) & set(items1)
    got0 = [items0[i] for i in r0.indices]
    got1 = [items1[i] for i in r1.indices]
    assert set(got0) == expected and got0 == got1  # aligned like --reveal both
    assert (r0.peer_items, r1.peer_items) == (30, 40)


@pytest.mark.parametrize("result_to", [0, 1])
def test_only_the_receiver_learns_and_only_it_gets_second_stage_messages(result_to: int) -> None:
    p0, p1, items0, items1 = make("x25519", result_to)
    sent_sub: list[int] = []
    run_pair(p0, p1, lambda src, key, data: sent_sub.append(src) if key[0] == SUB else None)
    receiver, other = (p0, p1) if result_to == 0 else (p1, p0)
    own = items0 if result_to == 0 else items1
    assert {own[i] for i in receiver.result().indices} == set(items0) & set(items1)
    assert other.result().indices is None
    assert set(sent_sub) == {1 - result_to}


def test_empty_sets() -> None:
    p0, p1, *_ = make("x25519", -1, n0=0, n1=5)
    run_pair(p0, p1)
    assert p0.result().indices == [] and p1.result().indices == []


def test_unsupported_suite_proposal_is_refused_with_the_spec_code() -> None:
    p0, p1, *_ = make("sm2", -1, suites1=("x25519",))
    with pytest.raises(IncompatiblePeer, match=r"CURVE25519, SHA-256, DIRECT_HASH_AS_POINT_X"):
        run_pair(p0, p1)
    (key, data), = p0.pending_refusal()
    response = entry_pb2.HandshakeResponse.FromString(data)
    assert key == (MAIN, 1) and response.header.error_code == 31100203
    with pytest.raises(IncompatiblePeer, match="31100203"):
        codec.parse_response(data, [suite_by_name("x25519")], -1)


def test_rank0_picks_the_first_proposed_suite_it_accepts() -> None:
    items = [b"a", b"b"]
    p0 = PpcaEcdhParty(PpcaConfig(0, (suite_by_name("sm2"), suite_by_name("x25519"))), items)
    p1 = PpcaEcdhParty(PpcaConfig(1, (suite_by_name("x25519"), suite_by_name("sm2"))), items)
    run_pair(p0, p1)
    assert p0.suite.name == p1.suite.name == "x25519"


def test_result_to_mismatch_is_refused() -> None:
    p0, p1, *_ = make("x25519", 0, result_to1=1)
    with pytest.raises(IncompatiblePeer, match="rank 1.*rank 0"):
        run_pair(p0, p1)


def test_missing_handshake_is_named() -> None:
    p0 = PpcaEcdhParty(PpcaConfig(0, (suite_by_name("x25519"),), handshake=True), [b"a"])
    p1 = PpcaEcdhParty(PpcaConfig(1, (suite_by_name("x25519"),), handshake=False), [b"a"])
    with pytest.raises(IncompatiblePeer, match="--no-handshake"):
        run_pair(p0, p1)


def test_truncation_grows_with_the_set_sizes() -> None:
    x = suite_by_name("x25519")
    assert truncation_bits(10**4, 10**5, x) == 96
    assert truncation_bits(2**40, 2**40, x) == 112


# -- a cheating or broken peer: rank 1 replaces one message; rank 0 must raise ---------------------
def _batch(data: bytes) -> ecdh_psi_pb2.EcdhPsiCipherBatch:
    return ecdh_psi_pb2.EcdhPsiCipherBatch.FromString(data)


def _edit(kind: str, index: int, change: Callable[[ecdh_psi_pb2.EcdhPsiCipherBatch], None]) -> Tamper:
    def tamper(src: int, key: tuple, data: bytes) -> bytes | None:
        if src != 1 or key[0] == MAIN and key[1] == 1:
            return None
        msg = _batch(data)
        if msg.type == kind and msg.batch_index == index:
            change(msg)
            return msg.SerializeToString()
        return None
    return tamper


def _set(**fields):
    def change(msg):
        for name, value in fields.items():
            setattr(msg, name, value)
    return change


CHEATS = {
    "enc value cut short": ("x25519", _edit("enc", 0, lambda m: setattr(m, "ciphertext", m.ciphertext[:-1])), "bytes"),
    "enc count inflated": ("x25519", _edit("enc", 0, _set(count=17)), "bytes"),
    "enc batch index skipped": ("x25519", _edit("enc", 1, _set(batch_index=2)), "index"),
    "enc type renamed": ("x25519", _edit("enc", 0, _set(type="dual.enc")), "type"),
    "enc empty but not last": ("x25519", _edit("enc", 1, _set(count=0, ciphertext=b"")), "empty"),
    "enc x25519 not canonical": ("x25519", _edit("enc", 0, lambda m: setattr(
        m, "ciphertext", b"\xff" * 32 + m.ciphertext[32:])), "canonical"),
    "enc x25519 low order": ("x25519", _edit("enc", 0, lambda m: setattr(
        m, "ciphertext", b"\x01" + b"\x00" * 31 + m.ciphertext[32:])), "low order"),
    "enc sm2 off curve": ("sm2", _edit("enc", 0, lambda m: setattr(
        m, "ciphertext", b"\x02" + b"\x00" * 31 + b"\x05" + m.ciphertext[33:])), "curve"),
    "enc sm2 identity": ("sm2", _edit("enc", 0, lambda m: setattr(
        m, "ciphertext", b"\x00" * 33 + m.ciphertext[33:])), "SM2 point"),
    "enc more items than declared": ("x25519", _edit("enc", 3, lambda m: (setattr(m, "count", 16), setattr(
        m, "ciphertext", m.ciphertext * 8))), "more than 50 items"),
    "dual count short": ("x25519", _edit("dual.enc", 0, lambda m: (setattr(m, "count", m.count - 1), setattr(
        m, "ciphertext", m.ciphertext[12:]))), "values for"),
    "dual closing not last": ("x25519", _edit("dual.enc", 4, _set(is_last_batch=False)), "not the last"),
    "dual ends early": ("x25519", _edit("dual.enc", 0, _set(is_last_batch=True)), "last-batch flag"),
    "dual not protobuf": ("x25519", lambda s, k, d: b"\xff\xff\xff" if s == 1 and k == (SUB, 1) else None,
                          "protobuf"),
}


@pytest.mark.parametrize("name", list(CHEATS))
def test_malformed_or_cheating_batches_are_rejected(name: str) -> None:
    suite, tamper, message = CHEATS[name]
    p0, p1, *_ = make(suite, -1, n0=60, n1=50, batch=16)
    with pytest.raises(MalformedMessage, match=message):
        run_pair(p0, p1, tamper)
