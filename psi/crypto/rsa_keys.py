"""RSA keys for blind-signature PSI: generation, PEM files, validation, fast CRT signing.

Keys are generated and parsed by ``cryptography`` (e = 65537; 2048, 3072 or 4096-bit moduli);
the private operation itself runs on the process's compute backend (:mod:`psi.crypto.backends`:
OpenSSL's libcrypto when it loads, else gmpy2 with the Chinese remainder theorem; Intel's
multi-buffer library with ``--backend mb``), because the server's cost is dominated by it and
batches are shipped to worker processes.

Private operation, gmpy2 path, measured on the development machine (2048-bit modulus, one
core; OpenSSL's figures are in ``bench/bench_rsa_private.py`` and the README)::

    gmpy2.powmod      CRT  ~719 us per signature
    gmpy2.powmod_sec  CRT  ~777 us per signature   (+8%, up to +12% under load)   <- used
    s^e mod n check        ~23 us (e = 65537)      (+3%)   <- always done
    sign_batch, 2 worker processes, 2 cores: 2403 signatures/s (416 us each, check included)

``powmod_sec`` (GMP's ``mpz_powm_sec``) runs in time independent of the secret exponent, which
matters because a PSI server signs values chosen by a remote party. Every signature is checked
(s^e == m mod n) before it leaves the worker, as RFC 9474 BlindSign requires, so a fault in
the CRT arithmetic can never release a value that factors the modulus.

:func:`sign_batch` is a top-level, picklable function: ship ``(key.crt_params(), batch)`` to
worker processes with ``functools.partial(sign_batch, params)``. Secret numbers are never
stored as public attributes; ``repr`` of a key shows only its size and fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar, Union

import gmpy2
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..atomic import atomic_write_bytes
from ..errors import InputError, MalformedMessage, PsiqError, UsageError

__all__ = [
    "ALLOWED_BITS",
    "PUBLIC_EXPONENT",
    "CrtParams",
    "RsaPublicKey",
    "RsaKey",
    "SigningFailure",
    "sign_batch",
    "validate_public_numbers",
]

ALLOWED_BITS = (2048, 3072, 4096)
PUBLIC_EXPONENT = 65537
#: Trial division bound for a peer's modulus: reject N sharing a factor with any prime below it.
#: One gcd with the primorial: 1.4 ms at 2^20 (the primorial, 1.5 Mbit, is built once in 25 ms);
#: 2^16 took 0.1 ms, 2^24 28 ms plus 0.6 s to build (development machine, shared).
SMALL_PRIME_BOUND = 1 << 20

#: ``(n, e, p, q, dp, dq, qinv)`` as plain ints: what a worker process needs to sign.
CrtParams = tuple[int, int, int, int, int, int, int]

T = TypeVar("T", int, bytes)

_SMALL_PRIMORIAL: gmpy2.mpz | None = None


class SigningFailure(PsiqError):
    """The private-key operation produced a wrong result (a fault); nothing was released."""


def _small_primorial() -> gmpy2.mpz:
    global _SMALL_PRIMORIAL
    if _SMALL_PRIMORIAL is None:  # computed on first use, not at import
        _SMALL_PRIMORIAL = gmpy2.primorial(SMALL_PRIME_BOUND)
    return _SMALL_PRIMORIAL


def validate_public_numbers(
    n: int,
    e: int,
    *,
    bits: int | None = None,
    error: type[PsiqError] = MalformedMessage,
) -> None:
    """Check an RSA public key before trusting it; raise ``error`` with the reason.

    Requirements: modulus of exactly 2048, 3072 or 4096 bits (and of ``bits`` when given),
    e = 65537 (a prime), N odd, composite, not a perfect power, and free of prime factors below
    2^20. These checks do not prove the key honest (RFC 9474 section 7.3): a modulus built from
    primes p = 1 (mod e) passes them all. A PSI client also needs the permutation proof of
    :mod:`psi.crypto.rsa_proof` before it blinds anything.
    """
    if not isinstance(n, int) or not isinstance(e, int) or n <= 0:
        raise error("RSA public key has a non-positive modulus")
    size = n.bit_length()
    if size not in ALLOWED_BITS:
        raise error(f"RSA modulus of {size} bits; allowed sizes are {', '.join(map(str, ALLOWED_BITS))}")
    if bits is not None and size != bits:
        raise error(f"RSA modulus of {size} bits, but {bits} bits were agreed")
    if e != PUBLIC_EXPONENT or not gmpy2.is_prime(e):
        raise error(f"RSA public exponent {e}; only {PUBLIC_EXPONENT} is accepted")
    if n % 2 == 0:
        raise error("RSA modulus is even")
    mn = gmpy2.mpz(n)
    if gmpy2.gcd(mn, _small_primorial()) != 1:
        raise error("RSA modulus has a small prime factor")
    if gmpy2.is_power(mn):
        raise error("RSA modulus is a perfect power")
    if gmpy2.is_prime(mn, 8):
        raise error("RSA modulus is prime")


@dataclass(frozen=True)
class RsaPublicKey:
    """An RSA public key ``(n, e)``; exchanged as DER SubjectPublicKeyInfo."""

    n: int
    e: int

    @property
    def bits(self) -> int:
        return self.n.bit_length()

    @property
    def size(self) -> int:
        """kLen: the modulus length in bytes (width of signatures and blinded values)."""
        return (self.n.bit_length() + 7) // 8

    @property
    def numbers(self) -> tuple[int, int]:
        return (self.n, self.e)

    def to_der(self) -> bytes:
        key = rsa.RSAPublicNumbers(self.e, self.n).public_key()
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def to_pem(self) -> bytes:
        key = rsa.RSAPublicNumbers(self.e, self.n).public_key()
        return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def fingerprint(self) -> bytes:
        """SHA-256 of the DER SubjectPublicKeyInfo (32 bytes)."""
        return hashlib.sha256(self.to_der()).digest()

    def fingerprint_hex(self) -> str:
        return self.fingerprint().hex()

    def validate(self, *, bits: int | None = None, error: type[PsiqError] = MalformedMessage) -> None:
        validate_public_numbers(self.n, self.e, bits=bits, error=error)

    @classmethod
    def from_der(
        cls, data: bytes, *, bits: int | None = None, error: type[PsiqError] = MalformedMessage
    ) -> "RsaPublicKey":
        """Parse and validate a peer's DER SubjectPublicKeyInfo; only the canonical encoding passes."""
        try:
            key = serialization.load_der_public_key(bytes(data))
        except (ValueError, UnsupportedAlgorithm):
            raise error("peer's public key is not a valid DER SubjectPublicKeyInfo") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise error("peer's public key is not an RSA key")
        numbers = key.public_numbers()
        public = cls(numbers.n, numbers.e)
        public.validate(bits=bits, error=error)
        if public.to_der() != bytes(data):
            raise error("peer's public key is not canonically encoded")
        return public

    @classmethod
    def from_pem(cls, data: bytes, *, error: type[PsiqError] = InputError) -> "RsaPublicKey":
        try:
            key = serialization.load_pem_public_key(bytes(data))
        except (ValueError, UnsupportedAlgorithm):
            raise error("not a PEM RSA public key") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise error("not an RSA public key")
        numbers = key.public_numbers()
        public = cls(numbers.n, numbers.e)
        public.validate(error=error)
        return public

    def __repr__(self) -> str:
        return f"RsaPublicKey(bits={self.bits}, fingerprint={self.fingerprint_hex()[:16]}...)"


class RsaKey:
    """An RSA private key with its CRT values held as gmpy2 integers (never public attributes).

    Build with :meth:`generate`, :meth:`from_pem`, :meth:`load` or :meth:`from_numbers`.
    """

    __slots__ = ("_public", "_d", "_p", "_q", "_dp", "_dq", "_qinv")

    def __init__(self, n: int, e: int, d: int, p: int, q: int, *, error: type[PsiqError] = InputError) -> None:
        if p * q != n:
            raise error("RSA private key is inconsistent (p*q != n)")
        if p < q:  # any order works for CRT; keep p > q like most libraries
            p, q = q, p
        validate_public_numbers(n, e, error=error)
        lam = (p - 1) * (q - 1) // int(gmpy2.gcd(p - 1, q - 1))
        if (d * e) % lam != 1:
            raise error("RSA private key is inconsistent (d*e != 1 mod lambda(n))")
        self._public = RsaPublicKey(n, e)
        self._d = d
        self._p, self._q = p, q
        self._dp, self._dq = d % (p - 1), d % (q - 1)
        self._qinv = int(gmpy2.invert(q, p))

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def generate(cls, bits: int = 2048) -> "RsaKey":
        """A fresh key with e = 65537 and a ``bits``-bit modulus (2048, 3072 or 4096)."""
        if bits not in ALLOWED_BITS:
            raise UsageError(f"RSA key size must be one of {', '.join(map(str, ALLOWED_BITS))}, not {bits}")
        return cls._from_cryptography(rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=bits))

    @classmethod
    def from_numbers(cls, n: int, e: int, d: int, p: int, q: int) -> "RsaKey":
        """From raw numbers (known-answer tests); the key is checked for consistency."""
        return cls(n, e, d, p, q)

    @classmethod
    def _from_cryptography(cls, key: rsa.RSAPrivateKey) -> "RsaKey":
        numbers = key.private_numbers()
        pub = numbers.public_numbers
        return cls(pub.n, pub.e, numbers.d, numbers.p, numbers.q)

    @classmethod
    def from_pem(cls, data: bytes, password: bytes | None = None) -> "RsaKey":
        """Parse a PEM private key (PKCS#8 or PKCS#1); raises :class:`InputError` if unusable."""
        try:
            key = serialization.load_pem_private_key(bytes(data), password=password)
        except TypeError as err:  # password missing or given for an unencrypted key
            raise InputError(f"cannot load RSA private key: {err}") from None
        except (ValueError, UnsupportedAlgorithm):
            raise InputError("not a PEM private key, or a wrong password") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise InputError("the private key is not an RSA key")
        return cls._from_cryptography(key)

    @classmethod
    def load(cls, path: Union[str, os.PathLike[str]], password: bytes | None = None) -> "RsaKey":
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise InputError(f"cannot read key file {path}: {err.strerror}") from None
        return cls.from_pem(data, password)

    # -- serialisation -----------------------------------------------------------------------
    def to_pem(self, password: bytes | None = None) -> bytes:
        """PKCS#8 PEM, encrypted with ``password`` when given."""
        p, q = self._p, self._q
        numbers = rsa.RSAPrivateNumbers(
            p=p,
            q=q,
            d=self._d,
            dmp1=self._dp,
            dmq1=self._dq,
            iqmp=self._qinv,
            public_numbers=rsa.RSAPublicNumbers(self._public.e, self._public.n),
        )
        key = numbers.private_key()
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        )
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    def save(self, path: Union[str, os.PathLike[str]], password: bytes | None = None) -> None:
        """Write the PEM private key with mode 0600 (atomically: temp file, then rename)."""
        atomic_write_bytes(path, self.to_pem(password), mode=0o600)

    # -- use ---------------------------------------------------------------------------------
    @property
    def public(self) -> RsaPublicKey:
        return self._public

    @property
    def bits(self) -> int:
        return self._public.bits

    def fingerprint(self) -> bytes:
        return self._public.fingerprint()

    def crt_params(self) -> CrtParams:
        """``(n, e, p, q, dp, dq, qinv)`` for :func:`sign_batch` in a worker process."""
        return (self._public.n, self._public.e, self._p, self._q, self._dp, self._dq, self._qinv)

    def sign_int(self, m: int) -> int:
        """RSASP1 with CRT and the s^e == m check; ``0 <= m < n`` is required."""
        return sign_batch(self.crt_params(), [int(m)])[0]

    def __repr__(self) -> str:
        return f"RsaKey(bits={self.bits}, fingerprint={self._public.fingerprint_hex()[:16]}...)"

    def __reduce__(self):  # pragma: no cover - keep secrets out of accidental pickles
        raise TypeError("RsaKey is not picklable; ship key.crt_params() to workers explicitly")


def sign_batch(params: CrtParams, values: Sequence[T]) -> list[T]:
    """RSASP1 on each value (ints, or big-endian byte strings of any length); same type out.

    Byte strings come back as kLen-byte big-endian strings. Raises ``ValueError`` if a value
    is not in [0, n) (callers validate peer data first) and :class:`SigningFailure` on a fault.
    The private operation runs on the process's compute backend (:mod:`psi.crypto.backends`:
    OpenSSL's libcrypto or gmpy2, or Intel's multi-buffer library), one call per batch; every
    result is then checked here (s^e == m mod n) whichever backend computed it.
    """
    from . import backends  # imported late: backends' gmpy2 path imports nothing from here

    n, e = params[0], params[1]
    k_len = (n.bit_length() + 7) // 8
    from_bytes = int.from_bytes
    ints = [from_bytes(v, "big") if isinstance(v, (bytes, bytearray, memoryview)) else int(v) for v in values]
    for m in ints:
        if m < 0 or m >= n:
            raise ValueError("message representative out of range")
    blob = b"".join(m.to_bytes(k_len, "big") for m in ints)
    backend = backends.current()
    signed = backend.rsa_private_many(params, blob)
    if len(signed) != len(blob):
        raise SigningFailure("RSA signing failure: the backend returned the wrong amount of data")
    n_bytes = n.to_bytes(k_len, "big")  # equal-length big-endian strings compare like the numbers
    slices = [signed[i : i + k_len] for i in range(0, len(signed), k_len)]
    if any(raw >= n_bytes for raw in slices) or backend.rsa_public_many(n, e, signed) != blob:
        raise SigningFailure("RSA signing failure: the signature did not verify (fault check)")
    return [raw if isinstance(value, (bytes, bytearray, memoryview)) else from_bytes(raw, "big") for value, raw in zip(values, slices)]
