"""RSA's private operation on every backend: OpenSSL's libcrypto, gmpy2, and the fault check.

The libcrypto path is compared with gmpy2 and with Python's ``pow`` on edge values and random
batches (skipped, with the reason, where no OpenSSL 3.x libcrypto loads). Whatever computes
y^d, :func:`~psi.crypto.rsa_keys.sign_batch` checks s^e == y before returning: a backend that
returns a wrong value is refused (:class:`SigningFailure`).
"""

from __future__ import annotations

import secrets

import pytest

from psi.crypto import backends
from psi.crypto.backends import openssl_rsa
from psi.crypto.backends.portable import PortableBackend, rsa_private_choice, rsa_private_gmpy2
from psi.crypto.rsa_keys import RsaKey, SigningFailure, sign_batch


@pytest.fixture(scope="module")
def key() -> RsaKey:
    return RsaKey.generate(2048)


def _openssl_or_skip() -> openssl_rsa.OpenSslRsa:
    try:
        return openssl_rsa.load()
    except backends.BackendUnavailable as err:
        pytest.skip(f"OpenSSL's libcrypto is not usable here: {err}")


def _d(key: RsaKey) -> int:
    n, e, p, q, *_ = key.crt_params()
    return pow(e, -1, (p - 1) * (q - 1))


def _values(n: int, count: int) -> list[int]:
    return [0, 1, 2, n - 1, n - 2, 1 << 1000, *(secrets.randbelow(n) for _ in range(count))]


def _blob(values: list[int], k_len: int) -> bytes:
    return b"".join(v.to_bytes(k_len, "big") for v in values)


def test_openssl_gmpy2_and_pow_agree_byte_for_byte(key: RsaKey) -> None:
    impl = _openssl_or_skip()
    params, n, k = key.crt_params(), key.public.n, key.public.size
    values = _values(n, 40)
    expected = _blob([pow(v, _d(key), n) for v in values], k)
    assert rsa_private_gmpy2(params, _blob(values, k)) == expected
    assert impl.private_many(params, _blob(values, k)) == expected
    assert impl.private_many(params, b"") == b""


def test_openssl_3072_bit_and_short_leading_zero_values() -> None:
    impl = _openssl_or_skip()
    key = RsaKey.generate(3072)
    params, n, k = key.crt_params(), key.public.n, key.public.size
    values = [v >> 700 for v in _values(n, 5)]  # leading zero bytes in the kLen encoding
    assert impl.private_many(params, _blob(values, k)) == rsa_private_gmpy2(params, _blob(values, k))


def test_openssl_refuses_values_not_below_the_modulus(key: RsaKey) -> None:
    impl = _openssl_or_skip()
    n, k = key.public.n, key.public.size
    with pytest.raises(ValueError, match="not below the modulus"):
        impl.private_many(key.crt_params(), _blob([5, n], k))
    with pytest.raises(ValueError, match="whole number"):
        impl.private_many(key.crt_params(), bytes(k + 1))


def test_openssl_never_returns_a_faulty_crt_value(key: RsaKey) -> None:
    # A wrong dp makes the CRT result wrong; OpenSSL's own s^e check catches it and recomputes
    # with d, so the value is right (gmpy2's path has no such check: sign_batch refuses it,
    # tests/test_blind_rsa.py::test_fault_check_refuses_a_wrong_crt_result).
    impl = _openssl_or_skip()
    n, e, p, q, dp, dq, qinv = key.crt_params()
    m = secrets.randbelow(n)
    got = impl.private_many((n, e, p, q, dp ^ 2, dq, qinv), m.to_bytes(key.public.size, "big"))
    assert got == pow(m, _d(key), n).to_bytes(key.public.size, "big")


class _Wrong(PortableBackend):
    """A backend whose private operation is off by one in one value (or short)."""

    def __init__(self, short: bool = False, plus_n: bool = False) -> None:
        super().__init__()
        self.short, self.plus_n = short, plus_n

    def rsa_private_many(self, params, blob: bytes) -> bytes:
        good = rsa_private_gmpy2(params, blob)
        k = (params[0].bit_length() + 7) // 8
        if self.short:
            return good[:-1]
        if self.plus_n:  # s + n: the same s^e mod n, but not the signature (callers need s < n)
            return (int.from_bytes(good, "big") + params[0]).to_bytes(k, "big")
        last = (int.from_bytes(good[-k:], "big") + 1) % params[0]
        return good[:-k] + last.to_bytes(k, "big")


def test_sign_batch_checks_every_backends_results(key: RsaKey, monkeypatch: pytest.MonkeyPatch) -> None:
    values = [secrets.randbelow(key.public.n) for _ in range(3)]
    for wrong in (_Wrong(), _Wrong(short=True)):
        monkeypatch.setattr(backends, "_selected", backends.Selection(wrong, "portable"))
        with pytest.raises(SigningFailure):
            sign_batch(key.crt_params(), values)
    monkeypatch.setattr(backends, "_selected", backends.Selection(_Wrong(plus_n=True), "portable"))
    with pytest.raises(SigningFailure):
        sign_batch(key.crt_params(), [pow(3, key.public.e, key.public.n)])  # s = 3, returned as 3 + n
    monkeypatch.setattr(backends, "_selected", backends.Selection(PortableBackend(), "portable"))
    d = _d(key)
    assert sign_batch(key.crt_params(), values) == [pow(v, d, key.public.n) for v in values]
    assert key.sign_int(values[0]) == pow(values[0], d, key.public.n)
    with pytest.raises(ValueError, match="out of range"):
        sign_batch(key.crt_params(), [key.public.n])


def test_rsa_private_choice_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv(openssl_rsa.CHOICE_ENV, "gmpy2")
    fn, text = rsa_private_choice()
    assert fn is rsa_private_gmpy2 and "gmpy2" in text
    monkeypatch.setenv(openssl_rsa.CHOICE_ENV, "gpu")
    with pytest.raises(backends.BackendUnavailable, match="choose one of"):
        rsa_private_choice()
    bogus = tmp_path / "libcrypto.so.3"
    bogus.write_bytes(b"not a library")
    monkeypatch.setattr(openssl_rsa, "_LOADED", {})
    monkeypatch.setenv(openssl_rsa.LIBRARY_ENV, str(bogus))
    monkeypatch.setenv(openssl_rsa.CHOICE_ENV, "openssl")
    with pytest.raises(backends.BackendUnavailable, match="no usable libcrypto"):
        rsa_private_choice()
    monkeypatch.setenv(openssl_rsa.CHOICE_ENV, "auto")  # falls back to gmpy2, results unchanged
    fn, text = rsa_private_choice()
    assert fn is rsa_private_gmpy2
    backend = PortableBackend()
    assert "gmpy2" in str(backend.describe()["rsa_private"])


def test_auto_uses_openssl_where_it_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    impl = _openssl_or_skip()
    monkeypatch.delenv(openssl_rsa.CHOICE_ENV, raising=False)
    fn, text = rsa_private_choice()
    assert text == impl.describe() and "OpenSSL 3" in text
