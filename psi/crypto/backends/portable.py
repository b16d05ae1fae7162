"""The portable backend: OpenSSL through ``cryptography`` (the default on every machine).

RSA's private operation runs in OpenSSL's libcrypto when it loads (:mod:`.openssl_rsa`,
``PSIQ_RSA_PRIVATE=auto|openssl|gmpy2``), else in gmpy2 (``powmod_sec`` CRT). Both give y^d mod n.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import gmpy2
from cryptography.hazmat.backends.openssl import backend as _openssl
from cryptography.hazmat.primitives.asymmetric import x25519

from ._base import BackendUnavailable

__all__ = ["PortableBackend", "rsa_private_gmpy2", "rsa_private_choice"]


def _as_list(elements: Sequence[bytes] | bytes) -> Sequence[bytes]:
    if isinstance(elements, (bytes, bytearray, memoryview)):
        blob = bytes(elements)
        if len(blob) % 32:
            raise ValueError("x25519 element buffer is not a whole number of 32-byte elements")
        return [blob[i : i + 32] for i in range(0, len(blob), 32)]
    return elements


def _public_key_loader() -> Callable[[bytes], Any]:
    """``X25519PublicKey.from_public_bytes`` without its per-call "is X25519 supported" check.

    The public classmethod asks the OpenSSL backend on every call, which cost about a third as
    much as the ladder's own Python-side work at 10^5 elements; the Rust function it then calls
    is used directly once that question has been asked here. Same function, same bytes; falls
    back to the public API if a future ``cryptography`` moves it.
    """
    if not _openssl.x25519_supported():
        return x25519.X25519PublicKey.from_public_bytes  # raises UnsupportedAlgorithm, as before
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        return rust_openssl.x25519.from_public_bytes  # type: ignore[no-any-return]
    except (ImportError, AttributeError):  # pragma: no cover - other cryptography layouts
        return x25519.X25519PublicKey.from_public_bytes


def rsa_private_gmpy2(params: Sequence[int], blob: bytes) -> bytes:
    """y^d mod n for each kLen-byte big-endian y (CRT, ``powmod_sec``: exponent-independent time)."""
    n, _e, p, q, dp, dq, qinv = (gmpy2.mpz(x) for x in params)
    k_len = (int(n).bit_length() + 7) // 8
    if len(blob) % k_len:
        raise ValueError("RSA input buffer is not a whole number of kLen-byte values")
    powmod_sec, from_bytes = gmpy2.powmod_sec, gmpy2.mpz.from_bytes
    out = []
    for offset in range(0, len(blob), k_len):
        m = from_bytes(blob[offset : offset + k_len], "big")
        sp = powmod_sec(m % p, dp, p)
        sq = powmod_sec(m % q, dq, q)
        out.append((sq + q * ((qinv * (sp - sq)) % p)).to_bytes(k_len, "big"))
    return b"".join(out)


def rsa_private_choice() -> tuple[Callable[[Sequence[int], bytes], bytes], str]:
    """(function, description) of the RSA private operation ``PSIQ_RSA_PRIVATE`` asks for:
    ``auto`` (default) OpenSSL's libcrypto when it loads and passes its self-test, else gmpy2;
    ``openssl`` insists (:class:`~psi.crypto.backends.BackendUnavailable` if it cannot load);
    ``gmpy2`` keeps gmpy2."""
    from . import openssl_rsa

    choice = (os.environ.get(openssl_rsa.CHOICE_ENV) or "auto").strip().lower()
    if choice not in openssl_rsa.CHOICES:
        raise BackendUnavailable(
            f"{openssl_rsa.CHOICE_ENV}={choice!r}; choose one of {', '.join(openssl_rsa.CHOICES)}"
        )
    gmpy2_text = f"gmpy2 {gmpy2.version()} ({gmpy2.mp_version()}) powmod_sec CRT"
    if choice == "gmpy2":
        return rsa_private_gmpy2, gmpy2_text
    try:
        impl = openssl_rsa.load()
    except BackendUnavailable:
        if choice == "openssl":
            raise
        return rsa_private_gmpy2, gmpy2_text
    return impl.private_many, impl.describe()


class PortableBackend:
    """``cryptography``'s X25519 (OpenSSL), one ``exchange`` per element; RSA through
    :func:`rsa_private_choice`."""

    def __init__(self) -> None:
        self._load = _public_key_loader()
        self._rsa: tuple[Callable[[Sequence[int], bytes], bytes], str] | None = None

    name = "portable"

    def _rsa_choice(self) -> tuple[Callable[[Sequence[int], bytes], bytes], str]:
        if self._rsa is None:
            self._rsa = rsa_private_choice()
        return self._rsa

    def describe(self) -> dict[str, object]:
        try:
            rsa_text = self._rsa_choice()[1]
        except BackendUnavailable as err:
            rsa_text = f"unavailable: {err}"
        return {"x25519": f"{_openssl.openssl_version_text()} (cryptography)", "rsa_private": rsa_text}

    def rsa_private_many(self, params: Sequence[int], blob: bytes) -> bytes:
        """y^d mod n for each kLen-byte y in ``blob`` (each below n: the caller checks)."""
        return self._rsa_choice()[0](params, blob)

    def rsa_public_many(self, n: int, e: int, blob: bytes) -> bytes:
        """y^e mod n for each kLen-byte big-endian y in ``blob`` (gmpy2), concatenated."""
        k_len = (n.bit_length() + 7) // 8
        if len(blob) % k_len:
            raise ValueError("RSA input buffer is not a whole number of kLen-byte values")
        mn, me, powmod, from_bytes = gmpy2.mpz(n), gmpy2.mpz(e), gmpy2.powmod, gmpy2.mpz.from_bytes
        return b"".join(
            powmod(from_bytes(blob[i : i + k_len], "big"), me, mn).to_bytes(k_len, "big") for i in range(0, len(blob), k_len)
        )

    def x25519_many(self, scalar: bytes, elements: Sequence[bytes] | bytes) -> list[bytes]:
        key = x25519.X25519PrivateKey.from_private_bytes(bytes(scalar))
        load, exchange = self._load, key.exchange
        return [exchange(load(bytes(element))) for element in _as_list(elements)]  # ValueError on all-zero
