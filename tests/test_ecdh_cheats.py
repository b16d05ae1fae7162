"""ECDH PSI against a cheating peer: each test plays the cheat through the sans-IO parties.

* a server that sends a filter matching keys it does not hold (all-ones Bloom, a Bloom filter
  of a whole dictionary, any filter with more matches than its count allows);
* invalid points (twist, non-canonical, low order) sent by either side, in every group;
* a cardinality-mode client that blinds each key with its own scalar (a known limitation:
  the test documents that the cheat works).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from psi.crypto import filters
from psi.crypto.groups import GROUP_NAMES, get_group, multiply_batch
from psi.errors import MalformedMessage, PsiqError
from psi.messages import Message, pack_items, pack_json, unpack_items, unpack_json
from psi.parallel import Executor
from psi.protocols import ecdh
from psi.protocols.base import Party, Reveal

EXECUTOR = Executor(workers=1)
Tamper = Callable[[Message], "Message | list[Message] | None"]


def items(numbers) -> list[bytes]:
    return [b"customer-%d" % n for n in numbers]


def run_tampered(client: Party, server: Party, *, from_server: Tamper | None = None,
                 from_client: Tamper | None = None) -> list[Message]:
    """Run both parties in this thread; each tamper function may replace (or drop, with
    ``None``) a message on its way. Returns every message the client sent."""
    client_sent: list[Message] = []
    for _ in range(10_000):
        progressed = False
        for message in client.outgoing():
            client_sent.append(message)
            for out in _apply(from_client, message):
                server.receive(out)
            progressed = True
        for message in server.outgoing():
            for out in _apply(from_server, message):
                client.receive(out)
            progressed = True
        if client.finished and server.finished:
            return client_sent
        if not progressed:
            raise AssertionError("deadlock")
    raise AssertionError("no end")


def _apply(tamper: Tamper | None, message: Message) -> list[Message]:
    if tamper is None:
        return [message]
    out = tamper(message)
    if out is None:
        return []
    return out if isinstance(out, list) else [out]


def _bloom_cheat(fill: Callable[[int, int, int], bytes]) -> Tamper:
    """A server tamper that replaces its Bloom filter body with ``fill(k, m, n)`` (same header)."""
    state: dict = {}

    def tamper(message: Message) -> Message | None:
        if message.kind == ecdh.SET:
            state["info"] = unpack_json(message.body)
            return message
        if message.kind == ecdh.SET_CHUNK:
            code, k, n = filters._HEADER.unpack_from(message.body, 0)
            assert code == 2 and len(message.body) == state["info"]["bytes"]  # one chunk at these sizes
            m = (len(message.body) - filters._HEADER.size) * 8
            real_m = filters._bloom_params(n, state["n_query"], 40)[1]
            body = fill(k, real_m, n)
            assert len(body) == -(-real_m // 8) and m >= real_m
            return Message(ecdh.SET_CHUNK, filters._HEADER.pack(2, k, n) + body)
        return message

    return tamper, state  # type: ignore[return-value]


def _all_ones(k: int, m: int, n: int) -> bytes:
    bits = np.ones(-(-m // 8) * 8, dtype=np.uint8)
    bits[m:] = 0  # padding stays zero: only the popcount gives the cheat away
    return np.packbits(bits).tobytes()


def _pair(client_items, server_items, reveal=Reveal.BOTH, compression="bloom", group="x25519"):
    config = ecdh.Config(reveal=reveal, compression=compression, group=group, batch_size=64)
    client = ecdh.Client(client_items, config, peer_size=len(server_items), executor=EXECUTOR)
    server = ecdh.Server(server_items, config, peer_size=len(client_items), executor=EXECUTOR)
    return client, server


# -- point 4: the filter cheat ----------------------------------------------------------------
@pytest.mark.parametrize("reveal", [Reveal.BOTH, Reveal.RECEIVER, Reveal.CARDINALITY])
def test_all_ones_bloom_filter_is_refused_and_nothing_is_returned(reveal):
    client, server = _pair(items(range(200)), items(range(190, 230)), reveal=reveal)
    tamper, state = _bloom_cheat(_all_ones)
    state["n_query"] = 200
    sent: list[Message] = []
    with pytest.raises(MalformedMessage, match="bloom filter has .* bits set") as info:
        sent = run_tampered(client, server, from_server=tamper)
    assert info.value.exit_code == 4
    assert not any(m.kind == ecdh.MATCHES for m in sent)  # the client returned no fingerprint
    assert client.failed


def test_bloom_filter_of_a_dictionary_announced_as_a_small_set_is_refused():
    # the server knows its key b, so it can put H(x)^b of any candidate x in the filter: here
    # 40 real keys plus a 2,000-candidate dictionary that holds the client's keys, announced as 40
    server_items, dictionary = items(range(1000, 1040)), items(range(2000))
    client, server = _pair(items(range(0, 300, 3)), server_items)

    def fill(k: int, m: int, n: int) -> bytes:
        keys = filters.fingerprint(multiply_batch("x25519", server._scalar, get_group("x25519").hash_to_group(
            ecdh._dst("x25519"), server_items + dictionary)))
        hi, lo = filters._split_keys(keys)
        bits = np.zeros(-(-m // 8) * 8, dtype=np.uint8)
        bits[filters._bloom_indices(hi, lo, k, m).ravel()] = 1
        return np.packbits(bits).tobytes()

    tamper, state = _bloom_cheat(fill)
    state["n_query"] = 100
    with pytest.raises(MalformedMessage, match="bloom filter has"):
        run_tampered(client, server, from_server=tamper)


def test_a_few_extra_candidates_fit_the_popcount_but_not_the_match_count(monkeypatch):
    # A filter that passes decoding yet matches more of the client's keys than the server's
    # count allows (here: a decoder that lets everything through, as a subtler filter would
    # for the keys it was built for): the client stops before sending anything back.
    real = filters.decode_filter

    def permissive(data, **kw):
        honest = real(data, **kw)
        return filters.SetFilter(honest.kind, honest.count, lambda hi, lo: np.ones(len(hi), bool), honest.match_rate)

    monkeypatch.setattr(filters, "decode_filter", permissive)
    for compression in filters.FILTER_KINDS:
        client, server = _pair(items(range(50)), items(range(45, 55)), compression=compression)
        sent: list[Message] = []
        with pytest.raises(MalformedMessage, match="matched 50 of 50 keys but its 10 keys allow at most 10"):
            sent = run_tampered(client, server)
        assert not any(m.kind == ecdh.MATCHES for m in sent)


def test_honest_bloom_filters_stay_inside_the_bound():
    # the honest popcount's spread, measured over real filters, against the bound's slack
    rng = np.random.default_rng(7)
    n, n_query = 300, 1000
    k, m = filters._bloom_params(n, n_query, 40)
    counts = []
    for _ in range(300):
        keys = rng.bytes(16 * n)
        hi, lo = filters._split_keys(keys)
        bits = np.zeros(m, dtype=np.uint8)
        bits[filters._bloom_indices(hi, lo, k, m).ravel()] = 1
        counts.append(int(bits.sum()))
    bound = filters.bloom_max_popcount(n, k, m)
    mean, std = float(np.mean(counts)), float(np.std(counts))
    expected = m * (1 - (1 - k / m) ** n)
    assert mean < expected + 4 * std / math.sqrt(len(counts))  # the model's mean is an upper bound
    assert std < 1.3 * math.sqrt(m * 0.5 * 0.5)  # spread no wider than independent bits
    assert max(counts) < bound and bound - expected > 10 * std  # 2^-40 needs ~7 sigma
    assert (bound - expected) / m < 0.03
    # and the slack is a small share of the filter at realistic sizes (10^5 keys, 2^-40: 0.13 %)
    k5, m5 = filters._bloom_params(10**5, 10**5, 40)
    assert (filters.bloom_max_popcount(10**5, k5, m5) - m5 / 2) / m5 < 0.0015


def test_false_match_slack():
    assert filters.max_false_matches(2.0**-40, 10**6) == 0  # default budget: one extra match is a cheat
    assert filters.max_false_matches(2.0**-16, 10**6) == 2  # 2^-48 / 2 <= 2^-40 at t + 1 = 3
    assert filters.max_false_matches(0.0, 10) == 0 and filters.max_false_matches(20.0, 10) == 10
    t = filters.max_false_matches(1.0, 10**6)
    assert -math.lgamma(t + 2) <= -40 * math.log(2) < -math.lgamma(t + 1)


@pytest.mark.parametrize("kind", filters.FILTER_KINDS)
def test_filter_with_more_entries_than_announced_is_refused(kind):
    # SET announces 10 keys (the hello said 10) but the filter holds 11 / the SET says 11
    client, server = _pair(items(range(20)), items(range(10)), compression=kind)
    client.outgoing()
    data = filters.encode_filter(kind, np.random.default_rng(1).bytes(16 * 11), n_query=20, fpr_bits=40)
    with pytest.raises(MalformedMessage):  # raw, gcs: too long for 10; bloom: header count 11
        client.receive(Message(ecdh.SET, pack_json({"filter": kind, "count": 10, "bytes": len(data)})))
        client.receive(Message(ecdh.SET_CHUNK, data))
    client, server = _pair(items(range(20)), items(range(10)), compression=kind)
    client.outgoing()
    with pytest.raises(MalformedMessage, match="server set size is out of range"):
        client.receive(Message(ecdh.SET, pack_json({"filter": kind, "count": 11, "bytes": len(data)})))


# -- invalid points from either side, every group ---------------------------------------------
VECTORS = Path(__file__).parent / "vectors"
_P25519 = 2**255 - 19
_P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1


def _p256_on_curve(x: int) -> bool:
    b = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
    rhs = (x**3 - 3 * x + b) % _P256_P
    return rhs == 0 or pow(rhs, (_P256_P - 1) // 2, _P256_P) == 1


def _bad_points() -> list[tuple[str, str, bytes]]:
    """(group, what, encoding): twist points, non-canonical encodings of valid points, low
    order / identity, for every group psiq offers (Wycheproof and RFC 9496 where they have them)."""
    out: list[tuple[str, str, bytes]] = []
    wx = json.loads((VECTORS / "wycheproof_x25519.json").read_text())
    for case in wx["tests"]:
        if "Twist" in case["flags"] or "NonCanonicalPublic" in case["flags"] or "LowOrderPublic" in case["flags"]:
            out.append(("x25519", f"wycheproof-{case['tcId']}-{'-'.join(case['flags'])}", bytes.fromhex(case["public"])))
    base = (9).to_bytes(32, "little")
    out.append(("x25519", "non-canonical u+p of the base point", (9 + _P25519).to_bytes(32, "little")))
    out.append(("x25519", "base point with the top bit set", base[:31] + bytes([base[31] | 0x80])))
    out.append(("x25519", "zero", bytes(32)))
    rv = json.loads((VECTORS / "rfc9496_ristretto255.json").read_text())
    for what, encodings in rv["invalid_encodings"].items():
        out.extend(("ristretto255", f"rfc9496 {what} {i}", bytes.fromhex(e)) for i, e in enumerate(encodings))
    out.append(("ristretto255", "identity", bytes(32)))
    twist_x = next(x for x in range(1, 100) if not _p256_on_curve(x))
    valid_x = next(x for x in range(1, 100) if _p256_on_curve(x))
    out.append(("p256", f"x={twist_x} (a point of the quadratic twist)", twist_x.to_bytes(32, "big")))
    out.append(("p256", f"non-canonical x+p of the valid x={valid_x}", (valid_x + _P256_P).to_bytes(32, "big")))
    out.append(("p256", "x=2^256-1", b"\xff" * 32))
    wp = json.loads((VECTORS / "wycheproof_p256_ecdh.json").read_text())
    for case in wp["tests"]:
        if case["result"] == "invalid":  # invalid-curve points; the wire carries x only
            x = int(case["public"][2:66], 16)
            if not _p256_on_curve(x):
                out.append(("p256", f"wycheproof-{case['tcId']} invalid-curve x", x.to_bytes(32, "big")))
    from psi.crypto import sm2

    sm2_p, sm2_a, sm2_b = int(sm2.P), int(sm2.A), int(sm2.B)

    def sm2_on_curve(x: int) -> bool:
        rhs = (x**3 + sm2_a * x + sm2_b) % sm2_p
        return rhs == 0 or pow(rhs, (sm2_p - 1) // 2, sm2_p) == 1

    sm2_twist_x = next(x for x in range(1, 100) if not sm2_on_curve(x))
    sm2_valid_x = next(x for x in range(1, 100) if sm2_on_curve(x))
    out.append(("sm2", f"x={sm2_twist_x} (a point of the quadratic twist)", sm2_twist_x.to_bytes(32, "big")))
    out.append(("sm2", f"non-canonical x+p of the valid x={sm2_valid_x}", (sm2_valid_x + sm2_p).to_bytes(32, "big")))
    out.append(("sm2", "x=p", sm2_p.to_bytes(32, "big")))
    out.append(("sm2", "x=2^256-1", b"\xff" * 32))
    assert {g for g, _, _ in out} == set(GROUP_NAMES)
    return out


BAD_POINTS = _bad_points()


def _replace_element(kind: str, bad: bytes, width: int = 32, at: int = 2) -> Tamper:
    def tamper(message: Message) -> Message:
        if message.kind != kind:
            return message
        blob = bytearray(unpack_items(message.body, width))
        blob[at * width : (at + 1) * width] = bad
        return Message(kind, pack_items(bytes(blob), width))

    return tamper


@pytest.mark.parametrize("group, what, bad", BAD_POINTS, ids=[f"{g}:{w}" for g, w, _ in BAD_POINTS])
@pytest.mark.parametrize("side", ["server-receives-blinded", "client-receives-evaluated"])
def test_invalid_points_from_either_side_are_refused(side, group, what, bad):
    reveal = Reveal.CARDINALITY if group == "ristretto255" else Reveal.BOTH  # cover the shuffled path too
    client, server = _pair(items(range(5)), items(range(3, 9)), reveal=reveal, compression="auto", group=group)
    if side == "server-receives-blinded":
        run = lambda: run_tampered(client, server, from_client=_replace_element(ecdh.BLINDED, bad))  # noqa: E731
        victim = server
    else:
        run = lambda: run_tampered(client, server, from_server=_replace_element(ecdh.EVALUATED, bad))  # noqa: E731
        victim = client
    with pytest.raises(MalformedMessage) as info:
        run()
    assert info.value.exit_code == 4
    assert victim.failed


# -- point 5: cardinality mode is semi-honest only (a known limitation, documented) -----------
def test_known_limitation_cardinality_mode_cheating_client_learns_which_keys_matched():
    """Documents that the cheat WORKS (docs/SECURITY.md): a client that blinds each key with its
    own scalar undoes the server's shuffle with m^2 trial unblindings. The server cannot tell."""
    g = get_group("x25519")
    client_items, server_items = items(range(20)), items(range(14, 40))
    config = ecdh.Config(reveal=Reveal.CARDINALITY, batch_size=64)
    server = ecdh.Server(server_items, config, peer_size=len(client_items), executor=EXECUTOR)
    server.outgoing()
    server.receive(Message(ecdh.QUERY, pack_json({"count": len(client_items)})))
    scalars = [g.generate_scalar() for _ in client_items]
    hashed = g.hash_to_group(ecdh._dst("x25519"), client_items)
    server.receive(Message(ecdh.BLINDED, pack_items([g.multiply(s, [h])[0] for s, h in zip(scalars, hashed)], 32)))
    sent: list[Message] = []
    while not server.finished:
        sent += server.outgoing()
    chunks = b"".join(m.body for m in sent if m.kind == ecdh.SET_CHUNK)
    received = filters.decode_filter(chunks, n_query=len(client_items), fpr_bits=40, max_count=len(server_items))
    evaluated = b"".join(unpack_items(m.body, 32) for m in sent if m.kind == ecdh.EVALUATED)
    inverses = [g.invert_scalar(s) for s in scalars]
    learned = set()
    for j in range(0, len(evaluated), 32):
        for i, inverse in enumerate(inverses):
            if received.contains(filters.fingerprint(g.multiply(inverse, [evaluated[j : j + 32]])))[0]:
                learned.add(i)
    assert learned == {i for i, x in enumerate(client_items) if x in set(server_items)} == set(range(14, 20))
    assert server.result().details["notes"] == [ecdh.CARDINALITY_NOTE]  # the server's summary says so


def test_cardinality_choice_is_flagged_where_it_is_made(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    help_text = CliRunner().invoke(cli, ["psi", "connect", "--help"]).output
    assert "semi-honest only" in " ".join(help_text.split())
    for command in ("connect", "serve"):
        result = CliRunner().invoke(cli, ["psi", command, "--input", str(tmp_path / "a.csv"), "--on", "id",
                                          "--insecure", "--reveal", "cardinality"])
        assert result.exit_code == 2  # neither --peer/--listen nor --via-dir: stops before any session
        assert result.stderr.count(ecdh.CARDINALITY_NOTE) == 1
        other = CliRunner().invoke(cli, ["psi", command, "--input", "a.csv", "--on", "id", "--insecure"])
        assert other.exit_code == 2 and ecdh.CARDINALITY_NOTE not in other.stderr


def test_raw_filter_must_be_sorted_as_encoded():
    keys = np.random.default_rng(3).bytes(16 * 30)
    data = filters.encode_filter("raw", keys, n_query=10, fpr_bits=40)
    filters.decode_filter(data, n_query=10, fpr_bits=40, max_count=30)
    width = data[1]
    body = data[filters._HEADER.size :]
    rows = [body[i : i + width] for i in range(0, len(body), width)]
    swapped = data[: filters._HEADER.size] + b"".join([rows[1], rows[0]] + rows[2:])
    with pytest.raises(MalformedMessage, match="not sorted"):
        filters.decode_filter(swapped, n_query=10, fpr_bits=40, max_count=30)


def test_all_ones_cheat_end_to_end_writes_nothing_and_tells_the_server(tmp_path, monkeypatch):
    import threading

    from psi import api
    from psi.records import read_keys
    from psi.transport.memory import memory_pair

    for name, rows in (("client.csv", range(0, 60)), ("server.csv", range(50, 90))):
        (tmp_path / name).write_text("id,v\n" + "".join(f"{i},row{i}\n" for i in rows))
    real = filters.encode_filter

    def all_ones(kind, keys, *, n_query, fpr_bits):  # the cheating server's encoder
        data = real(kind, keys, n_query=n_query, fpr_bits=fpr_bits)
        _code, k, n = filters._HEADER.unpack_from(data, 0)
        return data[: filters._HEADER.size] + _all_ones(k, filters._bloom_params(n, n_query, fpr_bits)[1], n)

    monkeypatch.setattr(filters, "encode_filter", all_ones)
    options = api.PsiOptions(protocol="ecdh", reveal="both", compression="bloom", workers=1, timeout=20.0)
    ch_client, ch_server = memory_pair()
    out: dict = {}

    def serve() -> None:
        try:
            api.run_session("server", ch_server, read_keys(tmp_path / "server.csv", ["id"]), options=options,
                            output=tmp_path / "server_out.csv", executor=EXECUTOR)
        except Exception as err:  # noqa: BLE001
            out["server"] = err

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with pytest.raises(MalformedMessage, match="bloom filter has") as info:
        api.run_session("client", ch_client, read_keys(tmp_path / "client.csv", ["id"]), options=options,
                        output=tmp_path / "client_out.csv", executor=EXECUTOR)
    ch_client.close()  # as the TCP transport does when the command exits
    thread.join(20)
    assert info.value.exit_code == 4 and "\n" not in str(info.value)
    assert isinstance(out["server"], PsiqError)  # the cheating server's session ends too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client.csv", "server.csv"]  # nothing written
