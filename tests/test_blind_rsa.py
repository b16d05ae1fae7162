"""RSA keys and RFC 9474 blind signatures: published vectors, cross-checks with pyca, misuse."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import gmpy2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from psi.crypto import blind_rsa as B
from psi.crypto.rsa_keys import (
    RsaKey,
    RsaPublicKey,
    SigningFailure,
    sign_batch,
    validate_public_numbers,
)
from psi.errors import InputError, MalformedMessage, UsageError

VECTORS = Path(__file__).parent / "vectors" / "rfc9474.json"
PSS_ZERO = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=0)


def load_vectors() -> dict[str, dict[str, str]]:
    doc = json.loads(VECTORS.read_text())
    return {v["name"]: v for v in doc["vectors"]}


def vector_key(v: dict[str, str]) -> RsaKey:
    return RsaKey.from_numbers(*(int(v[k], 16) for k in ("n", "e", "d", "p", "q")))


def h(v: dict[str, str], name: str) -> bytes:
    return bytes.fromhex(v[name])


@pytest.fixture(scope="module")
def key() -> RsaKey:
    return RsaKey.generate(2048)


@pytest.fixture(scope="module")
def other_key() -> RsaKey:
    return RsaKey.generate(2048)


def pyca_public(public: RsaPublicKey) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(public.e, public.n).public_key()


# -- published vectors ---------------------------------------------------------------------------


def test_psszero_deterministic_vector_end_to_end():
    v = load_vectors()["RSABSSA-SHA384-PSSZERO-Deterministic"]
    key = vector_key(v)
    public = key.public
    msg = h(v, "msg")
    assert v["salt"] == "" and h(v, "random_msg") == B.prepare_identity(msg)
    assert B.emsa_pss_encode(msg, public.n.bit_length() - 1) == h(v, "encoded_msg")
    inv = int(v["inv"], 16)
    blinded, got_inv = B.blind(public, msg, r=pow(inv, -1, public.n))
    assert blinded == h(v, "blinded_msg") and got_inv == inv
    assert B.blind_sign(key, blinded) == h(v, "blind_sig")
    assert B.finalize(public, msg, h(v, "blind_sig"), inv) == h(v, "sig")
    # the same values through the batch functions the executor runs
    assert B.blind_sign_batch(key.crt_params(), [blinded]) == [h(v, "blind_sig")]
    assert B.finalize_batch(public.numbers, [(msg, h(v, "blind_sig"), inv)]) == [h(v, "sig")]
    pyca_public(public).verify(h(v, "sig"), msg, PSS_ZERO, hashes.SHA384())


def test_salted_vector_from_draft_text():
    v = load_vectors()["RSABSSA-SHA384-PSS-Randomized (as printed in the draft)"]
    key = vector_key(v)
    public = key.public
    msg, salt = h(v, "msg"), h(v, "salt")
    assert len(salt) == 48
    assert B.emsa_pss_encode(msg, public.n.bit_length() - 1, salt=salt) == h(v, "encoded_msg")
    inv = int(v["inv"], 16)
    blinded, _ = B.blind(public, msg, salt=salt, r=pow(inv, -1, public.n))
    assert blinded == h(v, "blinded_msg")
    assert B.blind_sign(key, blinded) == h(v, "blind_sig")
    assert B.finalize(public, msg, h(v, "blind_sig"), inv, salt_length=48) == h(v, "sig")
    assert B.rsassa_pss_verify(public, msg, h(v, "sig"), salt_length=48)
    assert not B.rsassa_pss_verify(public, msg + b"x", h(v, "sig"), salt_length=48)
    assert not B.rsassa_pss_verify(public, msg, h(v, "sig"), salt_length=0)


def test_vector_tampering_is_caught():
    v = load_vectors()["RSABSSA-SHA384-PSSZERO-Deterministic"]
    public = vector_key(v).public
    msg, sig, blind_sig, inv = h(v, "msg"), h(v, "sig"), h(v, "blind_sig"), int(v["inv"], 16)
    assert B.rsassa_pss_verify(public, msg, sig)
    assert not B.rsassa_pss_verify(public, msg, bytes([sig[0] ^ 1]) + sig[1:])
    assert not B.rsassa_pss_verify(public, msg[:-1], sig)
    assert not B.rsassa_pss_verify(public, msg, sig[1:])
    bad = blind_sig[:-1] + bytes([blind_sig[-1] ^ 1])
    with pytest.raises(MalformedMessage):
        B.finalize(public, msg, bad, inv)
    with pytest.raises(MalformedMessage):
        B.finalize(public, msg, blind_sig[1:], inv)
    with pytest.raises(MalformedMessage):
        B.finalize(public, msg, public.n.to_bytes(public.size, "big"), inv)
    with pytest.raises(MalformedMessage):
        B.finalize_batch(public.numbers, [(msg, bad, inv)])


# -- cross-checks with pyca/cryptography ---------------------------------------------------------


def test_crt_signing_matches_plain_private_operation(key):
    n = key.public.n
    d = pow(key.public.e, -1, (key.crt_params()[2] - 1) * (key.crt_params()[3] - 1))
    values = [0, 1, 2, n - 1] + [int.from_bytes(os.urandom(256), "big") % n for _ in range(6)]
    assert sign_batch(key.crt_params(), values) == [pow(m, d, n) for m in values]
    as_bytes = [m.to_bytes(key.public.size, "big") for m in values]
    assert sign_batch(key.crt_params(), as_bytes) == [pow(m, d, n).to_bytes(key.public.size, "big") for m in values]
    with pytest.raises(ValueError):
        sign_batch(key.crt_params(), [n])


def test_unblinded_signature_verifies_with_pyca(key):
    messages = [B.psi_message(b"customer-%d" % i) for i in range(8)]
    blinded, invs = B.blind_batch(key.public.numbers, messages)
    signed = B.blind_sign_batch(key.crt_params(), blinded)
    sigs = B.finalize_batch(key.public.numbers, list(zip(messages, signed, invs)))
    verifier = pyca_public(key.public)
    for message, sig in zip(messages, sigs):
        verifier.verify(sig, message, PSS_ZERO, hashes.SHA384())
        # deterministic variant: the unblinded signature is the plain RSASSA-PSS (sLen = 0) one
        em = B.emsa_pss_encode(message, key.public.bits - 1)
        assert sig == key.sign_int(int.from_bytes(em, "big")).to_bytes(key.public.size, "big")
    with pytest.raises(InvalidSignature):
        verifier.verify(sigs[0], messages[1], PSS_ZERO, hashes.SHA384())


def test_fresh_blinding_factor_per_item(key):
    message = B.psi_message(b"same key")
    blinded, invs = B.blind_batch(key.public.numbers, [message] * 32)
    assert len(set(blinded)) == 32 and len(set(invs)) == 32
    again, invs_again = B.blind_batch(key.public.numbers, [message] * 32)
    assert not set(again) & set(blinded) and not set(invs_again) & set(invs)
    assert all(0 < int.from_bytes(b, "big") < key.public.n and len(b) == key.public.size for b in blinded)


def test_wrong_key_is_detected(key, other_key):
    message = B.psi_message(b"k")
    blinded, invs = B.blind_batch(key.public.numbers, [message])
    forged = B.blind_sign_batch(other_key.crt_params(), [int(b.hex(), 16) % other_key.public.n for b in blinded])
    forged_bytes = [f.to_bytes(key.public.size, "big") for f in forged]
    with pytest.raises(MalformedMessage):
        B.finalize_batch(key.public.numbers, [(message, forged_bytes[0], invs[0])])
    with pytest.raises(MalformedMessage):
        B.finalize(key.public, message, forged_bytes[0], invs[0])


def test_fault_check_refuses_a_wrong_crt_result(key, monkeypatch):
    # gmpy2's CRT has no check of its own: a wrong dp gives a wrong s, which sign_batch refuses.
    # (OpenSSL's path recomputes instead: tests/test_rsa_backends.py.)
    from psi.crypto import backends
    from psi.crypto.backends.portable import PortableBackend, rsa_private_gmpy2

    gmpy2_only = PortableBackend()
    gmpy2_only._rsa = (rsa_private_gmpy2, "gmpy2")
    monkeypatch.setattr(backends, "_selected", backends.Selection(gmpy2_only, "portable"))
    n, e, p, q, dp, dq, qinv = key.crt_params()
    faulty = (n, e, p, q, dp ^ 2, dq, qinv)
    with pytest.raises(SigningFailure):
        sign_batch(faulty, [12345])


def test_psi_message_is_domain_separated_and_injective():
    assert B.psi_message(b"ab") == b"psiq/rsa-psi/v1\x00\x00\x00\x00\x02ab"
    assert B.psi_message(b"") != B.psi_message(b"\x00")


def test_encoding_limits():
    with pytest.raises(ValueError):
        B.emsa_pss_encode(b"m", 8 * 49)  # too short for SHA-384 plus the 2 fixed bytes
    assert len(B.emsa_pss_encode(b"m", 8 * 50)) == 50
    assert B.mgf1_sha384(b"seed", 100)[:48] == hashlib.sha384(b"seed\x00\x00\x00\x00").digest()


# -- keys ----------------------------------------------------------------------------------------


def test_pem_round_trip_permissions_and_fingerprint(key, tmp_path):
    path = tmp_path / "server.key"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = RsaKey.load(path)
    assert loaded.crt_params() == key.crt_params()
    der = pyca_public(key.public).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.fingerprint() == hashlib.sha256(der).digest() == loaded.public.fingerprint()
    key.save(path, password=b"secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert RsaKey.load(path, password=b"secret").crt_params() == key.crt_params()
    with pytest.raises(InputError):
        RsaKey.load(path, password=b"wrong")
    with pytest.raises(InputError):
        RsaKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert RsaPublicKey.from_pem(key.public.to_pem()) == key.public
    assert "RsaKey(bits=2048" in repr(key) and str(key.crt_params()[2]) not in repr(key)


def test_generate_rejects_unsupported_sizes():
    with pytest.raises(UsageError):
        RsaKey.generate(1024)


def test_public_key_validation(key):
    n, e = key.public.numbers
    validate_public_numbers(n, e, bits=2048)
    with pytest.raises(MalformedMessage, match="2048 bits were agreed|agreed"):
        validate_public_numbers(n, e, bits=3072)
    with pytest.raises(MalformedMessage, match="exponent"):
        validate_public_numbers(n, 3)
    with pytest.raises(MalformedMessage, match="even"):
        validate_public_numbers(n + 1, e)
    with pytest.raises(MalformedMessage, match="small prime"):
        validate_public_numbers(3 * ((1 << 2047) // 3 + 2 | 1), e)  # odd 2048-bit multiple of 3
    with pytest.raises(MalformedMessage, match="prime"):
        validate_public_numbers(int(gmpy2.next_prime(1 << 2047)), e)
    with pytest.raises(MalformedMessage, match="bits"):
        validate_public_numbers(n >> 1024, e)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    small_der = small.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(MalformedMessage):
        RsaPublicKey.from_der(small_der)
    ec_der = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(MalformedMessage, match="not an RSA"):
        RsaPublicKey.from_der(ec_der)
    with pytest.raises(MalformedMessage):
        RsaPublicKey.from_der(b"\x30\x03\x02\x01\x01")
    assert RsaPublicKey.from_der(key.public.to_der(), bits=2048) == key.public
