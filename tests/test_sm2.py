"""SM2 arithmetic: published GB/T 32918 values, a second implementation (gmssl), strict decoding."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from psi.crypto import sm2
from psi.errors import MalformedMessage

VECTORS = json.loads((Path(__file__).parent / "vectors" / "sm2_gbt32918.json").read_text())["cases"]


@pytest.mark.parametrize("case", VECTORS, ids=[c["what"] for c in VECTORS])
def test_gbt32918_example_points(case: dict) -> None:
    point = sm2.multiply(int(case["scalar"], 16), sm2.G)
    assert (int(point[0]), int(point[1])) == (int(case["x"], 16), int(case["y"], 16))


def test_matches_gmssl_on_random_scalars_and_points() -> None:
    gmssl_sm2 = pytest.importorskip("gmssl.sm2", reason="gmssl (test-only second implementation) not installed")
    other = gmssl_sm2.CryptSM2(private_key="00" * 32, public_key="00" * 64)
    base = sm2.multiply(sm2.generate_scalar(), sm2.G)
    for _ in range(5):
        k = sm2.generate_scalar()
        ours = sm2.multiply(k, base)
        theirs = other._kg(k, "%064x%064x" % (int(base[0]), int(base[1])))
        assert theirs == "%064x%064x" % (int(ours[0]), int(ours[1]))


def test_small_and_edge_scalars() -> None:
    g2 = sm2.multiply(2, sm2.G)
    assert sm2.multiply(1, sm2.G) == sm2.G
    assert sm2.multiply(int(sm2.N) - 1, sm2.G) == (sm2.G[0], sm2.P - sm2.G[1])
    assert sm2.multiply(3, sm2.G) == sm2.multiply(1, sm2.multiply(3, sm2.G))
    assert sm2.is_on_curve(*g2)
    with pytest.raises(ValueError):
        sm2.multiply(int(sm2.N), sm2.G)


def test_multiplication_commutes() -> None:
    point = sm2.hash_to_point_rehash(b"item")
    a, b = sm2.generate_scalar(), sm2.generate_scalar()
    assert sm2.multiply(a, sm2.multiply(b, point)) == sm2.multiply(b, sm2.multiply(a, point))


def test_encodings_round_trip() -> None:
    point = sm2.multiply(sm2.generate_scalar(), sm2.G)
    assert sm2.decode_point(sm2.encode_compressed(point)) == point
    assert sm2.decode_point(sm2.encode_uncompressed(point)) == point


def _off_curve_x() -> int:
    x = 5
    while sm2._lift_x(sm2.mpz(x), 0) is not None:
        x += 1
    return x


@pytest.mark.parametrize("encoding", [
    b"\x00",                                                     # identity
    b"\x02" + int(sm2.P).to_bytes(32, "big"),                    # x = p: not reduced
    b"\x02" + b"\xff" * 32,                                      # x >= p
    "off-curve",
    "hybrid",
    "wrong-y",
    b"\x04" + b"\x00" * 64,                                      # (0, 0)
    b"\x02" + b"\x01" * 31,                                      # short
])
def test_decode_rejects(encoding: object) -> None:
    gx, gy = int(sm2.G[0]), int(sm2.G[1])
    if encoding == "off-curve":
        encoding = b"\x02" + _off_curve_x().to_bytes(32, "big")
    elif encoding == "hybrid":
        encoding = bytes([6 | (gy & 1)]) + gx.to_bytes(32, "big") + gy.to_bytes(32, "big")
    elif encoding == "wrong-y":
        encoding = b"\x04" + gx.to_bytes(32, "big") + (gy ^ 1).to_bytes(32, "big")
    with pytest.raises(MalformedMessage):
        sm2.decode_point(encoding)  # type: ignore[arg-type]


def test_hash_to_curve_rehash_gives_even_y_points_and_differs_by_hash() -> None:
    for i in range(20):
        message = secrets.token_bytes(i)
        point = sm2.hash_to_point_rehash(message)
        assert sm2.is_on_curve(*point) and int(point[1]) % 2 == 0
        assert sm2.hash_to_point_rehash(message, "sm3") != point


def test_sm3_known_answer() -> None:
    # GB/T 32905-2016 Appendix A example 1: SM3("abc")
    assert sm2.sm3(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


# -- --group sm2 (psiq's own ECDH PSI) -------------------------------------------------------------
def test_sm2_group_hash_is_sm3_try_and_increment_with_the_dst() -> None:
    from psi.crypto.groups import get_group

    group = get_group("sm2")
    element = group.hash_to_group(b"dst", [b"alice"])[0]
    for counter in range(256):  # recompute independently: first SM3(len||dst||ctr||item) on the curve
        digest = sm2.sm3(b"\x03dst" + bytes([counter]) + b"alice")
        if int.from_bytes(digest, "big") < sm2.P and sm2._lift_x(sm2.mpz(int.from_bytes(digest, "big")), 0):
            break
    assert element == digest
    sm2.decode_x(element)


def test_sm2_group_x_only_multiplication_matches_full_points() -> None:
    from psi.crypto.groups import get_group

    group = get_group("sm2")
    scalar = group.generate_scalar()
    point = sm2.multiply(sm2.generate_scalar(), sm2.G)
    x = int(point[0]).to_bytes(32, "big")
    assert group.multiply(scalar, [x]) == [int(sm2.multiply(int.from_bytes(scalar, "big"), point)[0]).to_bytes(32, "big")]
    with pytest.raises(MalformedMessage):
        group.multiply(scalar, [_off_curve_x().to_bytes(32, "big")])
    with pytest.raises(MalformedMessage):
        group.multiply(scalar, [int(sm2.P).to_bytes(32, "big")])


# -- the PPCA spec's TRY_AND_INCREMENT --------------------------------------------------------------
def test_try_and_increment_is_the_first_on_curve_x_from_the_hash_upward() -> None:
    misses = 0
    for i in range(40):
        message = b"item-%d" % i
        point = sm2.hash_to_point_increment(message)
        u = int.from_bytes(sm2.sm3(message), "big") % int(sm2.P)
        rhs = lambda x: (x**3 + int(sm2.A) * x + int(sm2.B)) % int(sm2.P)  # noqa: E731
        steps = next(j for j in range(256) if pow(rhs(u + j), (int(sm2.P) - 1) // 2, int(sm2.P)) == 1)
        misses += steps > 0
        assert int(point[0]) == u + steps and int(point[1]) % 2 == 0 and sm2.is_on_curve(*point)
    assert misses > 0  # some items needed an increment, so the loop is exercised


def test_try_and_increment_differs_from_rehash_and_from_psiqs_own_group_hash() -> None:
    from psi.crypto.sm2_group import sm3_try_and_increment

    message = next(m for m in (b"m%d" % i for i in range(100))
                   if sm2._lift_x(sm2.mpz(int.from_bytes(sm2.sm3(m), "big") % sm2.P), 0) is None)
    spec = sm2.hash_to_point_increment(message)
    assert spec != sm2.hash_to_point_rehash(message, "sm3")
    assert int(spec[0]).to_bytes(32, "big") != sm3_try_and_increment(b"", message)
