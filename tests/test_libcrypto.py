"""SM2 through OpenSSL's libcrypto (psi.crypto.libcrypto): the multiplication agrees with the gmpy2
code and the GB/T 32918 example points; signatures verify the published GB/T 32918.5 example,
reproduce it from the standard's formulas, and interoperate with gmssl (a second implementation)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from psi.crypto import libcrypto, sm2
from psi.errors import MalformedMessage

pytestmark = pytest.mark.skipif(not libcrypto.available(), reason="OpenSSL libcrypto 3.x not loadable")

VECTORS = json.loads((Path(__file__).parent / "vectors" / "sm2_gbt32918.json").read_text())
# GB/T 32918.5-2017 (= GM/T 0003.5-2012) Annex A signature example on the recommended curve:
# message "message digest", the default ID 1234567812345678, dA and k as in the vectors file.
EXAMPLE_D = int(VECTORS["cases"][0]["scalar"], 16)
EXAMPLE_K = int(VECTORS["cases"][1]["scalar"], 16)
EXAMPLE_R = 0xF5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3
EXAMPLE_S = 0xB1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA
EXAMPLE_MESSAGE = b"message digest"


def _b(value: int) -> bytes:
    return int(value).to_bytes(32, "big")


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["what"] for c in VECTORS["cases"]])
def test_openssl_reproduces_the_gbt32918_example_points(case: dict) -> None:
    scalar = _b(int(case["scalar"], 16))
    g = sm2.encode_uncompressed(sm2.G)
    out = libcrypto.multiply_points_batch(scalar, [g, sm2.encode_compressed(sm2.G)], compressed=False)
    expected = b"\x04" + bytes.fromhex(case["x"]) + bytes.fromhex(case["y"])
    assert out == [expected, expected]
    assert libcrypto.multiply_x_batch(scalar, [_b(sm2.G[0])]) == [bytes.fromhex(case["x"])]


def test_openssl_and_gmpy2_agree_on_random_points_and_scalars() -> None:
    points = [sm2.multiply(sm2.generate_scalar(), sm2.G) for _ in range(6)]
    points.append(sm2.hash_to_point_rehash(b"item"))
    for _ in range(3):
        k = sm2.generate_scalar()
        scalar = _b(k)
        xs = [_b(p[0]) for p in points]
        assert libcrypto.multiply_x_batch(scalar, xs) == [sm2.multiply_x(k, sm2.decode_x(x)) for x in xs]
        encodings = [sm2.encode_compressed(p) for p in points] + [sm2.encode_uncompressed(p) for p in points]
        for compressed in (True, False):
            encode = sm2.encode_compressed if compressed else sm2.encode_uncompressed
            assert libcrypto.multiply_points_batch(scalar, encodings, compressed=compressed) == [
                encode(sm2.multiply(k, sm2.decode_point(e))) for e in encodings]
    for edge in (1, 2, int(sm2.N) - 1):
        assert libcrypto.multiply_points_batch(_b(edge), [sm2.encode_compressed(points[0])]) == [
            sm2.encode_compressed(sm2.multiply(edge, points[0]))]


def _off_curve_x() -> int:
    x = 5
    while sm2._lift_x(sm2.mpz(x), 0) is not None:
        x += 1
    return x


@pytest.mark.parametrize("bad", ["off-curve", "x=p", "x+p", "short", "ff"])
def test_openssl_refuses_what_the_gmpy2_decoder_refuses(bad: str) -> None:
    valid_x = int(sm2.G[0])
    x = {"off-curve": _b(_off_curve_x()), "x=p": _b(sm2.P), "ff": b"\xff" * 32, "short": b"\x01" * 31,
         "x+p": _b(valid_x + sm2.P) if valid_x + sm2.P < 2**256 else b"\xff" * 32}[bad]
    scalar = _b(sm2.generate_scalar())
    with pytest.raises(MalformedMessage):
        libcrypto.multiply_x_batch(scalar, [_b(sm2.G[0]), x])
    with pytest.raises(MalformedMessage):
        sm2.decode_x(x)


@pytest.mark.parametrize("encoding", ["identity", "hybrid", "wrong-y", "zero-point"])
def test_openssl_refuses_bad_point_encodings(encoding: str) -> None:
    gx, gy = int(sm2.G[0]), int(sm2.G[1])
    data = {"identity": b"\x00" * 33,
            "hybrid": bytes([6 | (gy & 1)]) + _b(gx) + _b(gy),
            "wrong-y": b"\x04" + _b(gx) + _b(gy ^ 1),
            "zero-point": b"\x04" + bytes(64)}[encoding]
    with pytest.raises(MalformedMessage):
        libcrypto.multiply_points_batch(_b(3), [data])


def test_scalar_out_of_range_is_refused() -> None:
    for scalar in (bytes(32), _b(sm2.N), b"\x01" * 31):
        with pytest.raises(ValueError):
            libcrypto.multiply_x_batch(scalar, [_b(sm2.G[0])])


def test_dispatch_uses_openssl_and_the_fallback_gives_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from psi.crypto.groups import get_group

    group = get_group("sm2")
    scalar = group.generate_scalar()
    elements = group.hash_to_group(b"dst", [b"a", b"b", b"c"])
    monkeypatch.setattr(sm2, "_implementation", None)
    monkeypatch.delenv("PSIQ_SM2", raising=False)
    assert sm2.implementation() == "openssl"
    fast = group.multiply(scalar, elements)
    monkeypatch.setattr(sm2, "_implementation", None)
    monkeypatch.setenv("PSIQ_SM2", "gmpy2")
    assert sm2.implementation() == "gmpy2"
    assert group.multiply(scalar, elements) == fast
    with pytest.raises(MalformedMessage):
        group.multiply(scalar, [_b(_off_curve_x())])


def test_missing_library_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libcrypto, "_lib", None)
    monkeypatch.setattr(libcrypto, "_error", None)
    monkeypatch.setenv("PSIQ_LIBCRYPTO", "/nonexistent/libcrypto.so.3")
    with pytest.raises(libcrypto.LibcryptoUnavailable, match="OpenSSL libcrypto 3.x not found.*PSIQ_LIBCRYPTO"):
        libcrypto.load()
    assert not libcrypto.available()


# -- signatures -----------------------------------------------------------------------------------
def _example_signature() -> bytes:
    return libcrypto.raw_to_der(_b(EXAMPLE_R) + _b(EXAMPLE_S))


def test_openssl_verifies_the_published_gbt32918_signature_example() -> None:
    key = libcrypto.Sm2PrivateKey.from_scalar(EXAMPLE_D).public_key()
    assert key.public_point()[1:33].hex().upper() == VECTORS["cases"][0]["x"]
    assert key.verify(_example_signature(), EXAMPLE_MESSAGE)
    assert not key.verify(_example_signature(), EXAMPLE_MESSAGE + b"!")
    assert not key.verify(_example_signature(), EXAMPLE_MESSAGE, b"ALICE123@YAHOO.COM")  # Z_A binds the ID
    assert not key.verify(libcrypto.raw_to_der(_b(EXAMPLE_R) + _b(EXAMPLE_S + 1)), EXAMPLE_MESSAGE)


def test_example_signature_recomputed_from_the_standard_formulas() -> None:
    """Z_A, e, r = (e + x1) mod n, s = (1 + d)^-1 (k - r d) mod n with the published k: the
    deterministic half of GB/T 32918.2, independent of OpenSSL."""
    q = sm2.multiply(EXAMPLE_D, sm2.G)
    z = sm2.sm3(b"\x00\x80" + libcrypto.DEFAULT_ID + _b(sm2.A) + _b(sm2.B) + _b(sm2.G[0]) + _b(sm2.G[1])
                + _b(q[0]) + _b(q[1]))
    e = int.from_bytes(sm2.sm3(z + EXAMPLE_MESSAGE), "big")
    n = int(sm2.N)
    r = (e + int(sm2.multiply(EXAMPLE_K, sm2.G)[0])) % n
    s = pow(1 + EXAMPLE_D, -1, n) * (EXAMPLE_K - r * EXAMPLE_D) % n
    assert (r, s) == (EXAMPLE_R, EXAMPLE_S)


def test_sign_verify_round_trip_and_pem() -> None:
    key = libcrypto.Sm2PrivateKey.generate()
    again = libcrypto.Sm2PrivateKey.from_pem(key.private_pem())
    public = libcrypto.Sm2PublicKey.from_pem(key.public_pem())
    assert again.public_point() == key.public_point() == public.public_point()
    signature = again.sign(b"payload")
    assert public.verify(signature, b"payload")
    assert not public.verify(signature, b"payloae")
    assert not libcrypto.Sm2PrivateKey.generate().public_key().verify(signature, b"payload")
    assert libcrypto.raw_to_der(libcrypto.der_to_raw(signature)) == signature
    with pytest.raises(ValueError):
        libcrypto.Sm2PublicKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_non_sm2_keys_are_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="not an SM2 key"):
        libcrypto.Sm2PublicKey.from_pem(p256)


def _gmssl_pair() -> tuple[object, libcrypto.Sm2PrivateKey]:
    gmssl_sm2 = pytest.importorskip("gmssl.sm2", reason="gmssl (test-only second implementation) not installed")
    d = sm2.generate_scalar()
    key = libcrypto.Sm2PrivateKey.from_scalar(d)
    other = gmssl_sm2.CryptSM2(private_key="%064x" % d, public_key=key.public_point()[1:].hex())
    return other, key


def test_openssl_signs_gmssl_verifies() -> None:
    other, key = _gmssl_pair()
    message = secrets.token_bytes(40)
    raw = libcrypto.der_to_raw(key.sign(message))
    assert other.verify_with_sm3(raw.hex(), message)  # gmssl: Z_A with the default ID, then SM3
    assert not other.verify_with_sm3(raw.hex(), message + b"x")


def test_gmssl_signs_openssl_verifies() -> None:
    other, key = _gmssl_pair()
    message = secrets.token_bytes(40)
    raw_hex = other.sign_with_sm3(message, secrets.token_hex(32))
    assert key.public_key().verify(libcrypto.raw_to_der(bytes.fromhex(raw_hex)), message)
