"""RSA PSI against a cheating peer (issue 10 points 2 and 3): each test plays the cheat.

* A server whose modulus is a product of primes p = 1 (mod e): the cheap key checks pass it,
  blinding leaks a 128-bit fingerprint of every key under it, and the client must refuse at the
  permutation proof, before any blinded value leaves.
* Proofs that are wrong in every field, and keys the cheap checks must stop (perfect power,
  factor just below 2^20).
* A client that claims matches it does not have in ``both`` mode.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import gmpy2
import pytest

from psi import api
from psi.crypto import rsa_proof
from psi.crypto.blind_rsa import (
    blind_psi_batch,
    emsa_pss_encode,
    finalize_psi_batch,
    psi_message,
    psi_representative,
    psi_representatives,
)
from psi.crypto.rsa_keys import PUBLIC_EXPONENT, RsaKey, RsaPublicKey, sign_batch, validate_public_numbers
from psi.crypto.rsa_proof import PermutationProofError, challenges, prove, verify
from psi.driver import run_pair
from psi.errors import MalformedMessage, ProtocolStateError, UnexpectedMessage
from psi.messages import Message, pack_items, unpack_items
from psi.protocols import rsa as R
from psi.protocols.base import Reveal, Role

from .helpers import executor, key  # noqa: F401 - fixtures shared with the other RSA tests

E = PUBLIC_EXPONENT


def primes_one_mod_e(count: int, bits: int, rng: random.Random) -> list[int]:
    """``count`` distinct primes p = 1 (mod 2e) just below 2^bits (so their product has full size)."""
    out: list[int] = []
    low, high = ((1 << bits) - (1 << (bits - 6))) // (2 * E), (1 << bits) // (2 * E)
    while len(out) < count:
        p = 2 * E * rng.randrange(low, high) + 1
        if p not in out and gmpy2.is_prime(p, 30):
            out.append(p)
    return out


@pytest.fixture(scope="module")
def cheating_primes() -> list[int]:
    """Eight 256-bit primes p_i = 1 (mod 65537): N = prod p_i is a 2048-bit modulus where e | p_i - 1."""
    primes = primes_one_mod_e(8, 256, random.Random(10))  # public test data; ~0.1 s
    n = 1
    for p in primes:
        n *= p
    assert n.bit_length() == 2048
    return primes


def product(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def fingerprint(value: int, primes: list[int]) -> tuple[int, ...]:
    """What the cheating server reads off a blinded value: its class mod each p among e classes."""
    return tuple(pow(value % p, (p - 1) // E, p) for p in primes)


def test_cheating_modulus_passes_the_cheap_checks_and_blinding_leaks_under_it(cheating_primes):
    """Why the proof is needed: with this N (which every cheap check accepts) the server
    recognises every blinded key among its candidates, as on the old flow (issue 10 point 2)."""
    n = product(cheating_primes)
    validate_public_numbers(n, E, bits=2048)  # size, e, parity, small factors, power: all pass
    candidates = [b"customer-%05d" % i for i in range(600)]
    client_keys = random.Random(3).sample(candidates, 30)
    blinded, _ = blind_psi_batch((n, E), client_keys)  # fresh OS randomness per value
    em_bits = n.bit_length() - 1
    table: dict[tuple[int, ...], list[bytes]] = {}
    for x in candidates:
        table.setdefault(fingerprint(int(psi_representative(gmpy2.mpz(n), em_bits, x)), cheating_primes), []).append(x)
    recovered = [table.get(fingerprint(int.from_bytes(z, "big"), cheating_primes), []) for z in blinded]
    assert recovered == [[x] for x in client_keys]  # every key identified, uniquely


class CheatingServer:
    """Sends the multi-prime key and the best 'proof' it can make: roots with a pseudo-inverse of e."""

    def __init__(self, primes: list[int]) -> None:
        self.n = product(primes)
        lam = 1
        for p in primes:
            lam = lam * (p - 1) // gmpy2.gcd(lam, p - 1)
        self.d = int(gmpy2.invert(E, lam // E))  # e^-1 modulo lambda / e: a root only on e-th powers
        self.public = RsaPublicKey(self.n, E)

    def answer(self, nonce: bytes) -> list[Message]:
        roots = [pow(int(rho), self.d, self.n) for rho in challenges(self.public, nonce)]
        return [
            Message(R.KIND_KEY, self.public.to_der()),
            Message(R.KIND_PROOF, pack_items([r.to_bytes(256, "big") for r in roots], 256)),
        ]


@pytest.mark.parametrize("reveal", [Reveal.RECEIVER, Reveal.BOTH])
def test_client_refuses_a_modulus_with_e_dividing_p_minus_1_before_blinding(cheating_primes, executor, reveal):
    client = R.Client([b"k%d" % i for i in range(20)], R.Config(reveal=reveal, batch_size=8), peer_size=5,
                      executor=executor)
    sent = client.outgoing()
    assert [m.kind for m in sent] == [R.KIND_NONCE]
    key_message, proof_message = CheatingServer(cheating_primes).answer(sent[0].body)
    client.receive(key_message)  # the cheap checks accept it ...
    assert client.outgoing() == []  # ... but nothing is blinded before the proof
    with pytest.raises(PermutationProofError, match="permutation proof") as info:
        client.receive(proof_message)
    assert info.value.exit_code == 4 and isinstance(info.value, MalformedMessage)
    with pytest.raises(ProtocolStateError):
        client.outgoing()  # failed for good: no blinded value can ever leave


def test_client_accepts_an_honest_key_and_a_fresh_nonce_each_session(key, executor):
    config = R.Config(batch_size=8)
    nonces = set()
    for _ in range(2):
        client = R.Client([b"a", b"b", b"c"], config, peer_size=2, executor=executor)
        server = R.Server([b"c", b"d"], config, peer_size=3, executor=executor, key=key)
        (nonce,) = client.outgoing()
        nonces.add(nonce.body)
        server.receive(nonce)
        for message in server.outgoing():
            client.receive(message)
        assert [m.kind for m in client.outgoing()] == [R.KIND_BLINDED]
    assert len(nonces) == 2
    client = R.Client([b"a", b"b", b"c"], config, peer_size=2, executor=executor)
    server = R.Server([b"c", b"d"], config, peer_size=3, executor=executor, key=key)
    run_pair(client, server)
    assert client.result().indices == [2]


def honest_proof(key: RsaKey, nonce: bytes) -> list[bytes]:
    roots = prove(key, nonce)
    verify(key.public, nonce, roots)
    return roots


def test_wrong_proofs_are_refused(key):
    nonce, other_nonce = bytes(range(32)), bytes(32)
    roots = honest_proof(key, nonce)
    n, size = key.public.n, key.public.size
    bad = {
        "replayed from another nonce": honest_proof(key, other_nonce),
        "one root doubled": [(2 * int.from_bytes(roots[0], "big") % n).to_bytes(size, "big")] + roots[1:],
        "roots swapped": [roots[1], roots[0]] + roots[2:],
        "a root is 0": [bytes(size)] + roots[1:],
        "a root is 1": [(1).to_bytes(size, "big")] + roots[1:],
        "one root missing": roots[:-1],
        "one root too many": roots + roots[:1],
        "short root": [roots[0][1:]] + roots[1:],
    }
    for name, proof in bad.items():
        with pytest.raises(PermutationProofError):
            verify(key.public, nonce, proof)
        print("refused:", name)
    # a non-canonical root (sigma + N, the same residue) is refused by the range check; look for
    # a nonce whose proof has a root with room for it below 2^2048
    for counter in range(200):
        nonce = counter.to_bytes(32, "big")
        roots = prove(key, nonce)
        fitting = [i for i, r in enumerate(roots) if (int.from_bytes(r, "big") + n).bit_length() <= 8 * size]
        if fitting:
            forged = list(roots)
            forged[fitting[0]] = (int.from_bytes(roots[fitting[0]], "big") + n).to_bytes(size, "big")
            with pytest.raises(PermutationProofError, match="out of range"):
                verify(key.public, nonce, forged)
            break
    else:  # pragma: no cover - each root fits with probability (2^2048 - N) / N
        pytest.fail("no root left room for sigma + N")


def test_wrong_proof_messages_end_the_session(key, executor):
    def client_with_key():
        client = R.Client([b"a"], R.Config(), peer_size=1, executor=executor)
        (nonce,) = client.outgoing()
        client.receive(Message(R.KIND_KEY, key.public.to_der()))
        return client, nonce.body

    client, nonce = client_with_key()
    roots = prove(key, nonce)
    with pytest.raises(MalformedMessage):
        client.receive(Message(R.KIND_PROOF, pack_items(roots[:7], key.public.size)))
    client, _ = client_with_key()
    with pytest.raises(PermutationProofError):  # a proof made for another session's nonce
        client.receive(Message(R.KIND_PROOF, pack_items(prove(key, bytes(32)), key.public.size)))
    client, _ = client_with_key()
    with pytest.raises(UnexpectedMessage):
        client.receive(Message(R.KIND_BLINDED, b""))  # nothing may replace the proof
    server = R.Server([b"a"], R.Config(), peer_size=1, executor=executor, key=key)
    with pytest.raises(MalformedMessage, match="nonce"):
        server.receive(Message(R.KIND_NONCE, bytes(31)))
    server = R.Server([b"a"], R.Config(), peer_size=1, executor=executor, key=key)
    with pytest.raises(UnexpectedMessage):
        server.receive(Message(R.KIND_BLINDED, pack_items([bytes(256)], 256)))  # blinded before the nonce


def test_a_challenge_sharing_a_factor_with_n_is_refused(monkeypatch):
    """If rho_i is not a unit, a root exists modulo the shared prime whatever e is: the proof would
    say nothing about that prime, so the verifier refuses (GRSB's Z_N^* condition)."""
    private = RsaKey.generate(2048)
    params = private.crt_params()
    n, p = params[0], params[2]
    real = challenges

    def with_a_multiple_of_p(public, nonce, count=None):
        rhos = real(public, nonce, count)
        rhos[0] = gmpy2.mpz(p * 12345 % n)
        return rhos

    monkeypatch.setattr(rsa_proof, "challenges", with_a_multiple_of_p)
    nonce = bytes(32)
    rhos = rsa_proof.challenges(private.public, nonce)
    roots = [s.to_bytes(256, "big") for s in sign_batch(params, [int(rho) for rho in rhos])]  # valid e-th roots
    with pytest.raises(PermutationProofError, match="shares a factor"):
        verify(private.public, nonce, roots)


def test_proof_parameters():
    assert rsa_proof.proof_size(65537) == 8 and 65537 ** 8 > 2**128
    assert rsa_proof.proof_size(3) == 81
    nonce = bytes(32)
    public = RsaPublicKey(product(primes_one_mod_e(8, 256, random.Random(10))), E)
    first = challenges(public, nonce)
    assert len(first) == 8 and len(set(first)) == 8 and all(0 < x < public.n for x in first)
    assert challenges(public, b"\x01" + bytes(31)) != first  # bound to the nonce
    assert challenges(RsaPublicKey(public.n + 2, E), nonce) != first  # and to the key


def test_perfect_power_modulus_is_refused_even_with_a_valid_proof(executor):
    """N = p^2 with gcd(e, p(p-1)) = 1 makes x -> x^e a permutation of Z_N^*, so the server can
    answer the proof correctly: only the perfect-power check stops it."""
    rng = random.Random(5)
    while True:
        p = int(gmpy2.next_prime(rng.randrange((1 << 1024) - (1 << 1018), 1 << 1024)))
        if (p - 1) % E:
            break
    n = p * p
    assert n.bit_length() == 2048
    d = int(gmpy2.invert(E, p * (p - 1)))
    public = RsaPublicKey(n, E)
    client = R.Client([b"a"], R.Config(), peer_size=1, executor=executor)
    (nonce,) = client.outgoing()
    roots = [pow(int(rho), d, n).to_bytes(256, "big") for rho in challenges(public, nonce.body)]
    verify(public, nonce.body, roots)  # the proof itself is valid
    with pytest.raises(MalformedMessage, match="perfect power"):
        client.receive(Message(R.KIND_KEY, public.to_der()))


def test_modulus_with_a_factor_just_below_2_to_the_20_is_refused(cheating_primes):
    small = int(gmpy2.prev_prime(1 << 20))  # 1048573
    rest = int(gmpy2.next_prime(((1 << 2047) + (1 << 2046)) // small))
    n = small * rest
    assert n.bit_length() == 2048
    with pytest.raises(MalformedMessage, match="small prime"):
        validate_public_numbers(n, E)
    with pytest.raises(MalformedMessage, match="small prime"):
        RsaPublicKey.from_der(RsaPublicKey(n, E).to_der())


def test_encoding_that_shares_a_factor_with_n_is_replaced():
    """A key whose encoding is not a unit mod N would show which primes divide it (gcd(z, N)
    reveals them); both sides re-encode such a key, so every blinded value stays a unit, and the
    client's verification uses the same re-encoding. The factor 3 only makes such keys common
    (a checked key has no factor below 2^20); x -> x^e still permutes Z_N here."""
    rng = random.Random(7)
    primes = [3]
    while len(primes) < 3:
        q = int(gmpy2.next_prime(rng.randrange(1 << 1022, 1 << 1023)))
        if (q - 1) % E:
            primes.append(q)
    n = product(primes)
    lam = 1
    for q in primes:
        lam = lam * (q - 1) // gmpy2.gcd(lam, q - 1)
    d = int(gmpy2.invert(E, lam))
    em_bits = n.bit_length() - 1
    keys = [b"k%d" % i for i in range(30)]
    plain = {x: int.from_bytes(emsa_pss_encode(psi_message(x), em_bits), "big") for x in keys}
    shared = [x for x in keys if plain[x] % 3 == 0]
    assert shared  # about a third of the keys
    reps = psi_representatives(gmpy2.mpz(n), em_bits, keys)
    for x, m in zip(keys, reps):
        assert m == psi_representative(gmpy2.mpz(n), em_bits, x) and gmpy2.gcd(m, n) == 1
        assert (m == plain[x]) == (x not in shared)  # only the keys that needed it are re-encoded
    blinded, invs = blind_psi_batch((n, E), keys)
    assert all(gmpy2.gcd(gmpy2.mpz.from_bytes(z, "big"), n) == 1 for z in blinded)
    signed = [pow(int.from_bytes(z, "big"), d, n).to_bytes(len(z), "big") for z in blinded]
    signatures = finalize_psi_batch((n, E), list(zip(keys, signed, invs)))
    assert [int.from_bytes(s, "big") for s in signatures] == [pow(int(m), d, n) for m in reps]


# -- both mode: a client that claims matches it does not have (issue 10 point 3) -----------------


def drive_to_match(client, server):
    """Run both parties until the client's match list; return (its message, the server's wire hashes)."""
    wire: list[bytes] = []
    width = R.truncation_length(len(client._items), len(server._items))
    for _ in range(1000):
        for message in client.outgoing():
            if message.kind == R.KIND_MATCH:
                return message, wire
            server.receive(message)
        for message in server.outgoing():
            if message.kind == R.KIND_SET:
                blob = unpack_items(message.body, width)
                wire += [blob[i : i + width] for i in range(0, len(blob), width)]
            client.receive(message)
    raise AssertionError("no match list")


_SIGNED_SETS: dict[tuple, R.SignedSet] = {}


def both_pair(key, executor, client_items, server_items):
    """A fresh client/server pair in both mode; the server's signed set (and so its wire order)
    is the same for every pair built on the same items, so claims can be replayed across pairs."""
    config = R.Config(reveal=Reveal.BOTH, batch_size=16)
    cache_key = (key.fingerprint(), tuple(server_items))
    if cache_key not in _SIGNED_SETS:
        _SIGNED_SETS[cache_key] = R.sign_own_set(server_items, key, executor)
    client = R.Client(client_items, config, peer_size=len(server_items), executor=executor)
    server = R.Server(server_items, config, peer_size=len(client_items), executor=executor, key=key,
                      signed_set=_SIGNED_SETS[cache_key])
    return client, server


def test_false_claims_in_both_mode_are_refused(key, executor):
    """The cheat of issue 10: with no overlap, claim 30 of the server's 40 keys, listed in the
    aligned order (readable from the truncated hashes). The positions alone passed on main."""
    server_items = [b"s%d" % i for i in range(40)]
    client_items = [b"c%d" % i for i in range(40)]
    client, server = both_pair(key, executor, client_items, server_items)
    honest, wire = drive_to_match(client, server)
    assert unpack_items(honest.body, R.CLAIM_BYTES) == b""  # nothing really matches
    by_prefix = sorted(range(40), key=lambda w: wire[w])[:30]
    for evidence in (lambda w: bytes(16), lambda w: R.match_evidence(wire[w].ljust(32, b"\0"))):
        claims = [w.to_bytes(4, "big") + evidence(w) for w in by_prefix]
        client, server = both_pair(key, executor, client_items, server_items)
        drive_to_match(client, server)
        with pytest.raises(MalformedMessage, match="evidence") as info:
            server.receive(Message(R.KIND_MATCH, pack_items(claims, R.CLAIM_BYTES)))
        assert info.value.exit_code == 4
        with pytest.raises(ProtocolStateError):
            server.result()


def test_one_false_claim_among_true_ones_is_refused(key, executor):
    server_items = [b"x%d" % i for i in range(30)]
    client_items = [b"x%d" % i for i in range(0, 60, 3)]  # 10 real matches
    client, server = both_pair(key, executor, client_items, server_items)
    honest, _ = drive_to_match(client, server)
    blob = unpack_items(honest.body, R.CLAIM_BYTES)
    claims = [blob[i : i + R.CLAIM_BYTES] for i in range(0, len(blob), R.CLAIM_BYTES)]
    assert len(claims) == 10
    # swap the evidence of two true claims: both positions are real matches, the evidence is not theirs
    swapped = [claims[0][:4] + claims[1][4:], claims[1][:4] + claims[0][4:]] + claims[2:]
    client, server = both_pair(key, executor, client_items, server_items)
    drive_to_match(client, server)
    with pytest.raises(MalformedMessage, match="evidence"):
        server.receive(Message(R.KIND_MATCH, pack_items(b"".join(swapped), R.CLAIM_BYTES)))
    # omitting true matches is not prevented (a client may always leave keys out of its input)
    client, server = both_pair(key, executor, client_items, server_items)
    drive_to_match(client, server)
    server.receive(Message(R.KIND_MATCH, pack_items(b"".join(claims[:4]), R.CLAIM_BYTES)))
    reported = [server_items[i] for i in server.result().indices]
    assert len(reported) == 4 and set(reported) <= set(client_items)


def test_honest_both_mode_equals_the_plaintext_intersection(key, executor):
    server_items = [b"id-%d" % i for i in range(0, 200, 2)]
    client_items = [b"id-%d" % i for i in range(0, 200, 5)]
    client, server = both_pair(key, executor, client_items, server_items)
    run_pair(client, server)
    common = set(server_items) & set(client_items)
    got_client = [client_items[i] for i in client.result().indices]
    got_server = [server_items[i] for i in server.result().indices]
    assert got_client == got_server and set(got_client) == common


# -- through the session layer: exit 4 and nothing written ----------------------------------------


def write_table(path: Path, ids: list[str]) -> Path:
    path.write_text("id\n" + "".join(f"{x}\n" for x in ids), encoding="utf-8")
    return path


def run_both_sessions(tmp_path: Path, client_ids, server_ids, options) -> tuple[dict, dict]:
    from psi.records import read_keys
    from psi.transport.memory import memory_pair

    client_table = read_keys(write_table(tmp_path / "client.csv", client_ids), ["id"])
    server_table = read_keys(write_table(tmp_path / "server.csv", server_ids), ["id"])
    ch_client, ch_server = memory_pair()
    boxes: dict[str, dict] = {"client": {}, "server": {}}

    def side(role, channel, table, name):
        try:
            boxes[name]["summary"] = api.run_session(role, channel, table, options=options,
                                                     output=tmp_path / f"{name}-out.csv")
        except Exception as err:  # noqa: BLE001
            boxes[name]["error"] = err
            channel.close()  # as the process exiting would: the peer sees the connection drop

    thread = threading.Thread(target=side, args=(Role.SERVER, ch_server, server_table, "server"))
    thread.start()
    side(Role.CLIENT, ch_client, client_table, "client")
    thread.join(60)
    return boxes["client"], boxes["server"]


def test_session_with_a_cheating_server_ends_with_exit_4_and_no_output(tmp_path, monkeypatch, cheating_primes):
    options = api.PsiOptions(protocol="rsa", reveal="both", workers=1, timeout=30)
    cheat = CheatingServer(cheating_primes)
    seen: list[str] = []
    real_receive = R.Server.receive

    def cheating_on_nonce(self, nonce):  # the server sends the crafted key and its best proof
        self._outbox.extend(cheat.answer(bytes(nonce)))
        self._state = R._ServerState.SIGN

    def recording_receive(self, message):
        seen.append(message.kind)
        return real_receive(self, message)

    monkeypatch.setattr(R.Server, "_on_nonce", cheating_on_nonce)
    monkeypatch.setattr(R.Server, "receive", recording_receive)
    client, server = run_both_sessions(tmp_path, ["a", "b", "c"], ["b", "c"], options)
    assert isinstance(client["error"], PermutationProofError) and client["error"].exit_code == 4
    assert "error" in server
    assert R.KIND_BLINDED not in seen
    assert not (tmp_path / "client-out.csv").exists() and not (tmp_path / "server-out.csv").exists()


def test_session_with_a_cheating_client_ends_with_exit_4_and_no_output(tmp_path, monkeypatch):
    options = api.PsiOptions(protocol="rsa", reveal="both", workers=1, timeout=30)
    monkeypatch.setattr(R, "match_evidence", lambda full: bytes(16))  # only the client calls it
    client, server = run_both_sessions(tmp_path, ["a", "b", "c"], ["b", "c", "d"], options)
    assert isinstance(server["error"], MalformedMessage) and server["error"].exit_code == 4
    assert "evidence" in str(server["error"])
    assert not (tmp_path / "server-out.csv").exists()
    assert not (tmp_path / "client-out.csv").exists()
