"""The multi-buffer backend's P-256, SM2 and RSA paths: batching through C-callable fakes, and
byte identity with the portable path on the real library where it applies.

Each fake has the C signature of the library function (``ippmb_ops.*_PROTO``), reads the 8
pointer rows the way the library does (little-endian 64-bit words for keys and coordinates,
big-endian bytes for RSA values and the shared x) and computes every lane with the portable
code, so a wrong layout, a missing lane or a dropped padding shows up as a wrong result. The
real-library tests skip, with the reason, where ``psiq[accel]`` is missing or the CPU lacks
AVX-512 IFMA (as on the machine these were written on: the mb paths were not exercised there).
"""

from __future__ import annotations

import ctypes
import secrets
import types

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from psi.crypto import backends, sm2
from psi.crypto.backends import ippmb, ippmb_ops
from psi.crypto.backends.portable import PortableBackend
from psi.crypto.groups import get_group, hash_and_multiply_batch, multiply_batch
from psi.crypto.rsa_keys import RsaKey, SigningFailure, sign_batch
from psi.errors import MalformedMessage

from .test_backends import _fake_mb8

PORTABLE = PortableBackend()


def _ptrs(address: int) -> list[int]:
    return list((ctypes.c_void_p * 8).from_address(address))


def _le(address: int, size: int) -> int:
    return int.from_bytes(ctypes.string_at(address, size), "little")


def _fake_ec(curve: str, log: list[str], status: int = 0) -> "ctypes._CFuncPtr":
    def mb8(out, keys, xs, ys, zs, buffer) -> int:
        log.append("call")
        result = status
        for lane, (o, k, x, y, z) in enumerate(zip(*(_ptrs(a) for a in (out, keys, xs, ys, zs)))):
            scalar, px, py = _le(k, 32), _le(x, 32), _le(y, 32)
            if _le(z, 32) != 1:
                log.append("z is not 1")
            try:
                if curve == "p256":
                    point = ec.EllipticCurvePublicNumbers(px, py, ec.SECP256R1()).public_key()
                    shared = ec.derive_private_key(scalar, ec.SECP256R1()).exchange(ec.ECDH(), point)
                else:
                    if not sm2.is_on_curve(px, py):
                        raise ValueError
                    shared = sm2.multiply_x(scalar, (sm2.mpz(px), sm2.mpz(py)))
            except ValueError:
                result |= ippmb_ops.STATUS_MISMATCH << (4 * lane)
                shared = bytes(32)
            ctypes.memmove(o, shared, 32)
        return result

    return ippmb_ops.EC_PROTO(mb8)


def _with_backend(monkeypatch: pytest.MonkeyPatch, backend: backends.Backend) -> None:
    monkeypatch.setattr(backends, "_selected", backends.Selection(backend, backend.name))


@pytest.mark.parametrize("curve, counts", [("p256", (0, 1, 7, 8, 9, 17)), ("sm2", (1, 9))])
def test_ec_batching_with_fake_library_matches_portable(curve: str, counts, monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    fake = ippmb.MultiBufferBackend(_fake_mb8([]), "fake", **{curve: _fake_ec(curve, log)})
    assert fake.ec_curves == (curve,)
    group = get_group(curve)
    scalar = group.generate_scalar()
    for count in counts:
        points = group.hash_to_group(b"psiq-test-mb", [secrets.token_bytes(8) for _ in range(count)])
        expected = group.multiply(scalar, points)  # the portable path
        log.clear()
        _with_backend(monkeypatch, fake)
        assert multiply_batch(curve, scalar, b"".join(points)) == expected
        assert log == ["call"] * -(-count // 8)  # 8 lanes per call, last one padded
        _with_backend(monkeypatch, PORTABLE)
    items = [b"a", b"b", b"c"]
    expected = hash_and_multiply_batch(curve, b"dst", scalar, items)
    _with_backend(monkeypatch, fake)
    assert hash_and_multiply_batch(curve, b"dst", scalar, items) == expected


def test_ec_invalid_elements_and_lane_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    group = get_group("p256")
    scalar = group.generate_scalar()
    points = group.hash_to_group(b"psiq-test-mb", [b"x", b"y", b"z"])
    _with_backend(monkeypatch, ippmb.MultiBufferBackend(_fake_mb8([]), "fake", p256=_fake_ec("p256", log)))
    not_on_curve = next(x.to_bytes(32, "big") for x in range(1, 100) if _off_curve(x))
    for bad, reason in ((not_on_curve, "not a point"), ((2**256 - 1).to_bytes(32, "big"), "not reduced"), (b"\x01" * 31, "32 bytes")):
        log.clear()
        with pytest.raises(MalformedMessage, match=reason):
            multiply_batch("p256", scalar, [points[0], bad])
        assert log == []  # refused before the library is called
    # the library reports lane 1 of 3 (or a padding lane) as not on the curve / broken
    for status, error in ((1 << 4, MalformedMessage), (2 << 4, RuntimeError)):
        _with_backend(monkeypatch, ippmb.MultiBufferBackend(_fake_mb8([]), "fake", p256=_fake_ec("p256", log, status)))
        with pytest.raises(error):
            multiply_batch("p256", scalar, points)
    _with_backend(monkeypatch, ippmb.MultiBufferBackend(_fake_mb8([]), "fake", p256=_fake_ec("p256", log, 2 << 28)))
    assert len(multiply_batch("p256", scalar, points)) == 3  # lane 7 is padding: ignored


def _off_curve(x: int) -> bool:
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x02" + x.to_bytes(32, "big"))
        return False
    except ValueError:
        return True


# -- RSA ----------------------------------------------------------------------------------------
def _fake_rsa_crt(log: list[str], status: int = 0) -> "ctypes._CFuncPtr":
    def mb8(src, dst, ps, qs, dps, dqs, iqs, bits, method, buffer) -> int:
        log.append("crt")
        k, half = bits // 8, bits // 16
        for lane in range(8):
            p, q, dp, dq, iq = (_le(_ptrs(a)[lane], half) for a in (ps, qs, dps, dqs, iqs))
            y = int.from_bytes(ctypes.string_at(_ptrs(src)[lane], k), "big")
            sp, sq = pow(y % p, dp, p), pow(y % q, dq, q)
            s = sq + q * ((iq * (sp - sq)) % p)
            ctypes.memmove(_ptrs(dst)[lane], s.to_bytes(k, "big"), k)
        return status

    return ippmb_ops.RSA_CRT_PROTO(mb8)


def _fake_rsa_pub(log: list[str]) -> "ctypes._CFuncPtr":
    def mb8(src, dst, ns, bits, method, buffer) -> int:
        log.append("pub")
        k = bits // 8
        for lane in range(8):
            n = _le(_ptrs(ns)[lane], k)
            y = int.from_bytes(ctypes.string_at(_ptrs(src)[lane], k), "big")
            ctypes.memmove(_ptrs(dst)[lane], pow(y, 65537, n).to_bytes(k, "big"), k)
        return 0

    return ippmb_ops.RSA_PUB_PROTO(mb8)


@pytest.fixture(scope="module")
def key() -> RsaKey:
    return RsaKey.generate(2048)


def test_rsa_batching_with_fake_library(key: RsaKey, monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    fake = ippmb.MultiBufferBackend(_fake_mb8([]), "fake", rsa_crt=_fake_rsa_crt(log), rsa_pub=_fake_rsa_pub(log))
    _with_backend(monkeypatch, fake)
    n, e, p, q, *_ = key.crt_params()
    d = pow(e, -1, (p - 1) * (q - 1))
    for count in (1, 8, 9, 17):
        values = [secrets.randbelow(n) for _ in range(count)]
        log.clear()
        assert sign_batch(key.crt_params(), values) == [pow(v, d, n) for v in values]
        calls = -(-count // 8)
        assert log == ["crt"] * calls + ["pub"] * calls  # private op, then the s^e check
    assert "mbx_rsa_private_crt_mb8" in str(fake.describe()["rsa_private"])


def test_rsa_lane_errors_and_unsupported_keys(key: RsaKey, monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    values = [secrets.randbelow(key.public.n) for _ in range(3)]
    _with_backend(monkeypatch, ippmb.MultiBufferBackend(_fake_mb8([]), "fake", rsa_crt=_fake_rsa_crt(log, 2 << 8)))
    with pytest.raises(RuntimeError, match="lane 2"):
        sign_batch(key.crt_params(), values)
    _with_backend(monkeypatch, ippmb.MultiBufferBackend(_fake_mb8([]), "fake", rsa_crt=_fake_rsa_crt(log, 2 << 20)))
    assert len(sign_batch(key.crt_params(), values)) == 3  # lane 5 is padding
    n, e, p, q, dp, dq, qinv = key.crt_params()
    assert ippmb_ops.rsa_supported(key.crt_params())
    lopsided = (n, e, p, q >> 1, dp, dq, qinv)  # a prime shorter than half the modulus
    assert not ippmb_ops.rsa_supported(lopsided)
    log.clear()
    fake = ippmb.MultiBufferBackend(_fake_mb8([]), "fake", rsa_crt=_fake_rsa_crt(log))
    fake._fallback = types.SimpleNamespace(rsa_private_many=lambda params, blob: b"portable")
    assert fake.rsa_private_many(lopsided, bytes(256)) == b"portable"  # not the library
    assert log == []


def test_self_tests_drop_a_wrong_function() -> None:
    wrong_ec = ippmb_ops.EC_PROTO(lambda out, keys, xs, ys, zs, buffer: 0)  # leaves zeros
    wrong_rsa = ippmb_ops.RSA_CRT_PROTO(lambda *args: 0)
    backend = ippmb.MultiBufferBackend(
        _fake_mb8([]), "fake", p256=wrong_ec, sm2=_fake_ec("sm2", []), rsa_crt=wrong_rsa, rsa_pub=_fake_rsa_pub([])
    )
    backend.self_test_optional()
    assert backend.ec_curves == ("sm2",)
    assert set(backend.disabled) == {"p256", "rsa_crt"}
    assert backend.describe()["disabled"] == backend.disabled
    good = ippmb.MultiBufferBackend(
        _fake_mb8([]), "fake", p256=_fake_ec("p256", []), rsa_crt=_fake_rsa_crt([]), rsa_pub=_fake_rsa_pub([])
    )
    good.self_test_optional()
    assert good.disabled == {} and good.ec_curves == ("p256",)


# -- the real library, where it applies -------------------------------------------------------
def _mb_or_skip() -> ippmb.MultiBufferBackend:
    reason = backends.available()["mb"]
    if reason is not None:
        pytest.skip(f"multi-buffer backend not usable here: {reason}")
    return ippmb.load()


@pytest.mark.parametrize("curve", ["p256", "sm2"])
def test_real_library_ec_is_byte_identical(curve: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mb = _mb_or_skip()
    if curve not in mb.ec_curves:
        pytest.skip(f"{curve} is not on the multi-buffer path here: {mb.disabled.get(curve, 'not exported')}")
    group = get_group(curve)
    scalar = group.generate_scalar()
    points = group.hash_to_group(b"psiq-test-mb", [secrets.token_bytes(8) for _ in range(25)])
    expected = group.multiply(scalar, points)
    _with_backend(monkeypatch, mb)
    assert multiply_batch(curve, scalar, points) == expected


def test_real_library_rsa_is_byte_identical(key: RsaKey, monkeypatch: pytest.MonkeyPatch) -> None:
    mb = _mb_or_skip()
    params = key.crt_params()
    blob = b"".join(secrets.randbelow(key.public.n).to_bytes(256, "big") for _ in range(25))
    assert mb.rsa_private_many(params, blob) == PORTABLE.rsa_private_many(params, blob)
    assert mb.rsa_public_many(key.public.n, key.public.e, blob) == PORTABLE.rsa_public_many(key.public.n, key.public.e, blob)
    _with_backend(monkeypatch, mb)
    with pytest.raises(SigningFailure):
        sign_batch((params[0], params[1], params[2], params[3], params[4] ^ 2, params[5], params[6]), [12345])
