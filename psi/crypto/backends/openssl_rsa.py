"""RSA's private operation through OpenSSL's libcrypto (3.x), loaded with :mod:`ctypes`.

Why: measured on the project machines, OpenSSL's CRT private operation (constant-time
``BN_mod_exp_mont_consttime`` on each prime, Montgomery code in assembly: MULX/ADX here,
AVX-512 IFMA on CPUs that have it) is faster than gmpy2's ``powmod_sec`` CRT; see
``bench/bench_rsa_private.py`` and the README. gmpy2 stays the fallback where libcrypto 3.x
cannot be loaded.

What runs: ``RSA_private_decrypt(kLen, y, out, rsa, RSA_NO_PADDING)`` on an ``RSA`` object built
once per batch from the CRT parameters (n, e, d, p, q, dp, dq, qinv; d is recomputed from e, p
and q, since :data:`~psi.crypto.rsa_keys.CrtParams` does not carry it). OpenSSL blinds the
input (its default), runs both half-size exponentiations in constant time, and checks the
CRT result against y with the public exponent, recomputing without CRT if they differ, so a
faulty CRT value is never returned; the caller (:func:`psi.crypto.rsa_keys.sign_batch`) checks
s^e == y once more before anything leaves. The output is y^d mod n as kLen big-endian bytes:
the same bytes as the gmpy2 path for every input (tested).

Loading: ``PSIQ_LIBCRYPTO`` (a path) wins; else ``ctypes.util.find_library("crypto")``, then
``libcrypto.so.3``. Only OpenSSL 3.x is accepted. Set ``PSIQ_RSA_PRIVATE=gmpy2`` to keep the
gmpy2 path (``openssl`` to insist on this one; ``auto``, the default, uses it when it loads).
"""

from __future__ import annotations

import ctypes

import gmpy2

from ._base import BackendUnavailable, load_once

__all__ = ["OpenSslRsa", "load", "LIBRARY_ENV", "CHOICE_ENV", "CHOICES"]

LIBRARY_ENV = "PSIQ_LIBCRYPTO"
CHOICE_ENV = "PSIQ_RSA_PRIVATE"
CHOICES = ("auto", "openssl", "gmpy2")
_RSA_NO_PADDING = 3
_VP = ctypes.c_void_p


def _open() -> tuple[ctypes.CDLL, str]:
    from .. import libcrypto  # one place where psiq looks for OpenSSL (PSIQ_LIBCRYPTO, then the system's)

    try:
        lib = libcrypto.open_library()
    except libcrypto.LibcryptoUnavailable as err:
        raise BackendUnavailable(f"no usable libcrypto: {err}") from None
    try:
        lib.OpenSSL_version.restype = ctypes.c_char_p
        lib.OpenSSL_version.argtypes = [ctypes.c_int]
        _declare(lib)
    except AttributeError as err:
        raise BackendUnavailable(f"libcrypto lacks an RSA function: {err}") from None
    return lib, (lib.OpenSSL_version(0) or b"OpenSSL").decode("ascii", "replace")


def _declare(lib: ctypes.CDLL) -> None:
    lib.BN_bin2bn.restype = _VP
    lib.BN_bin2bn.argtypes = [ctypes.c_char_p, ctypes.c_int, _VP]
    lib.BN_clear_free.restype = None
    lib.BN_clear_free.argtypes = [_VP]
    lib.RSA_new.restype = _VP
    lib.RSA_new.argtypes = []
    lib.RSA_free.restype = None
    lib.RSA_free.argtypes = [_VP]
    for name in ("RSA_set0_key", "RSA_set0_crt_params"):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = [_VP, _VP, _VP, _VP]
    lib.RSA_set0_factors.restype = ctypes.c_int
    lib.RSA_set0_factors.argtypes = [_VP, _VP, _VP]
    lib.RSA_private_decrypt.restype = ctypes.c_int
    lib.RSA_private_decrypt.argtypes = [ctypes.c_int, _VP, _VP, _VP, ctypes.c_int]
    lib.ERR_clear_error.restype = None
    lib.ERR_clear_error.argtypes = []


class OpenSslRsa:
    """RSA private operations on batches through one libcrypto."""

    def __init__(self, lib: ctypes.CDLL, version: str) -> None:
        self._lib = lib
        self.version = version

    def describe(self) -> str:
        return f"{self.version} (libcrypto RSA_private_decrypt, CRT, constant time)"

    def _bn(self, value: int) -> int:
        raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
        bn = self._lib.BN_bin2bn(raw, len(raw), None)
        if not bn:
            raise MemoryError("BN_bin2bn failed")
        return bn

    def _rsa(self, params: tuple[int, ...]) -> int:
        n, e, p, q, dp, dq, qinv = params
        lam = (p - 1) * (q - 1) // int(gmpy2.gcd(p - 1, q - 1))
        d = int(gmpy2.invert(e, lam))
        lib = self._lib
        rsa = lib.RSA_new()
        if not rsa:
            raise MemoryError("RSA_new failed")
        parts = [self._bn(x) for x in (n, e, d, p, q, dp, dq, qinv)]
        ok = (
            lib.RSA_set0_key(rsa, parts[0], parts[1], parts[2])
            and lib.RSA_set0_factors(rsa, parts[3], parts[4])
            and lib.RSA_set0_crt_params(rsa, parts[5], parts[6], parts[7])
        )
        if not ok:  # pragma: no cover - only on allocation failure inside OpenSSL
            lib.RSA_free(rsa)
            raise RuntimeError("OpenSSL refused the RSA key parameters")
        return rsa

    def private_many(self, params: tuple[int, ...], blob: bytes) -> bytes:
        """y^d mod n for each kLen-byte big-endian y in ``blob`` (each y < n, checked by the
        caller); the results, kLen bytes each, concatenated. ``ValueError`` if OpenSSL
        refuses a value (y >= n)."""
        k_len = (params[0].bit_length() + 7) // 8
        if len(blob) % k_len:
            raise ValueError("RSA input buffer is not a whole number of kLen-byte values")
        count = len(blob) // k_len
        if count == 0:
            return b""
        src = ctypes.create_string_buffer(bytes(blob), len(blob))
        out = ctypes.create_string_buffer(len(blob))
        lib = self._lib
        rsa = self._rsa(params)
        try:
            decrypt, src_at, out_at = lib.RSA_private_decrypt, ctypes.addressof(src), ctypes.addressof(out)
            for offset in range(0, len(blob), k_len):
                if decrypt(k_len, src_at + offset, out_at + offset, rsa, _RSA_NO_PADDING) != k_len:
                    lib.ERR_clear_error()
                    raise ValueError("OpenSSL refused an RSA input (not below the modulus)")
            return out.raw
        finally:
            lib.RSA_free(rsa)  # BN_clear_free on every private component
            ctypes.memset(src, 0, len(blob))


_LOADED: dict[str, object] = {}


def load() -> OpenSslRsa:
    """The libcrypto RSA implementation, loaded and self-tested once per process."""

    def build() -> OpenSslRsa:
        lib, version = _open()
        impl = OpenSslRsa(lib, version)
        _self_test(impl)
        return impl

    return load_once(_LOADED, "rsa", build)


# A 512-bit toy key (p, q) for the start-up known-answer test: y^d by pow() must come back.
_KAT_P = 0xF0C1D5CEBF0E0B4EF7A6E3F0D0B1F3D15BD3AB7C52B2EF4F2EC6D7F3C2C4A3B9
_KAT_Q = 0xE3B3D6B1F7C0E5D9A1C1B6E2A7D3E9F5C8A4B2D6E8F0A3C5B7D9E1F3A5C7D9B3


def _self_test(impl: OpenSslRsa) -> None:
    p, q = int(gmpy2.next_prime(_KAT_P)), int(gmpy2.next_prime(_KAT_Q))
    n, e = p * q, 65537
    d = pow(e, -1, (p - 1) * (q - 1) // int(gmpy2.gcd(p - 1, q - 1)))
    params = (n, e, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p))
    k_len = (n.bit_length() + 7) // 8
    ys = [2, n - 2, 0x1234567890ABCDEF]
    try:
        got = impl.private_many(params, b"".join(y.to_bytes(k_len, "big") for y in ys))
    except (ValueError, RuntimeError, MemoryError) as err:
        raise BackendUnavailable(f"{impl.version} RSA self-test failed: {err}") from None
    if got != b"".join(pow(y, d, n).to_bytes(k_len, "big") for y in ys):
        raise BackendUnavailable(f"{impl.version} RSA self-test failed: wrong result")
