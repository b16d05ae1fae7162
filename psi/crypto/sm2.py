"""The SM2 elliptic curve (GB/T 32918.5-2017 recommended parameters): points, validation,
scalar multiplication and the hash-to-curve constructions psiq needs.

SM2 is a short Weierstrass curve ``y^2 = x^3 + a x + b`` over the 256-bit prime ``p`` with
``a = -3`` and prime order ``n`` (cofactor 1), so every point other than the identity generates
the whole group and "on the curve and not the identity" is the complete membership check.

What this module promises:

* :func:`decode_point` accepts only canonical SEC 1 encodings of a non-identity point:
  ``02/03 || X`` (33 bytes) or ``04 || X || Y`` (65 bytes) with ``X, Y < p`` and the point on
  the curve; anything else (``00``, hybrid ``06/07``, ``X >= p``, wrong length, a y that does
  not match) raises :class:`~psi.errors.MalformedMessage`. :func:`decode_x` does the same for a
  bare 32-byte x (the pair {P, -P}).
* :func:`multiply` computes ``k * P`` with Jacobian coordinates (``a = -3`` doubling) and a
  width-5 signed window over precomputed odd multiples, in gmpy2. It is not constant time (no
  Python big-integer code is); the measured alternatives are in ``docs/INTEROP.md``.
* :func:`multiply_x_batch` / :func:`multiply_points_batch` are what the PSI code calls: one
  scalar times a batch of encoded points. They run OpenSSL's constant-time ladder through
  :mod:`psi.crypto.libcrypto` when the system's libcrypto 3.x loads (:func:`implementation`
  says which; ``PSIQ_SM2=gmpy2`` forces the fallback), else :func:`multiply`. Both give the
  same bytes and refuse the same encodings (tests compare them); the measured costs are in
  :mod:`psi.crypto.libcrypto`.
* Hash-to-curve: :func:`hash_to_point_rehash` is the "try and rehash" map SecretFlow uses for
  ECDH-PSI (``x = H(m) mod p``; while ``x^3 + a x + b`` is not a square, ``h = H(h)``), with
  SHA-256 or SM3. The returned point has even y. :func:`hash_to_point_increment` is the spec's
  TRY_AND_INCREMENT (``x = H(m) mod p``, then ``x + 1``, ``x + 2``... until on the curve).

Scalars are integers in ``[1, n)`` drawn with :mod:`secrets`.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Callable, Iterable, Sequence

import gmpy2
from gmpy2 import mpz

from ..errors import MalformedMessage

__all__ = [
    "P",
    "A",
    "B",
    "N",
    "G",
    "POINT_SIZE_COMPRESSED",
    "generate_scalar",
    "decode_point",
    "decode_x",
    "encode_compressed",
    "encode_uncompressed",
    "multiply",
    "multiply_x",
    "is_on_curve",
    "sm3",
    "hash_to_point_rehash",
    "hash_to_point_increment",
    "implementation",
    "multiply_x_batch",
    "multiply_points_batch",
]

P = mpz(0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF)
A = mpz(0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC)
B = mpz(0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93)
N = mpz(0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123)
G = (
    mpz(0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7),
    mpz(0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0),
)
POINT_SIZE_COMPRESSED = 33
_SQRT_EXP = (P + 1) // 4  # p = 3 (mod 4)
_WINDOW = 5

Point = tuple  # affine (x, y) of mpz; the identity is never represented


def generate_scalar() -> int:
    """A uniform secret scalar in [1, n) from the OS's randomness."""
    return 1 + secrets.randbelow(int(N) - 1)


def is_on_curve(x: int, y: int) -> bool:
    """True when (x, y) with 0 <= x, y < p satisfies the curve equation."""
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x * x + A * x + B)) % P == 0


def _lift_x(x: mpz, odd: int) -> mpz | None:
    """The y with parity ``odd`` for x, or None when x is not an x-coordinate of the curve."""
    rhs = (x * x * x + A * x + B) % P
    y = gmpy2.powmod(rhs, _SQRT_EXP, P)
    if (y * y) % P != rhs:
        return None
    if int(y & 1) != odd:
        y = (P - y) % P
    return y


def decode_point(data: bytes) -> Point:
    """Parse a canonical compressed or uncompressed encoding of a non-identity point."""
    if len(data) == 33 and data[0] in (2, 3):
        x = mpz(int.from_bytes(data[1:], "big"))
        if x >= P:
            raise MalformedMessage("SM2 point: x is not reduced modulo p")
        y = _lift_x(x, data[0] & 1)
        if y is None:
            raise MalformedMessage("SM2 point: x is not on the curve")
        return (x, y)
    if len(data) == 65 and data[0] == 4:
        x = mpz(int.from_bytes(data[1:33], "big"))
        y = mpz(int.from_bytes(data[33:], "big"))
        if not is_on_curve(x, y):
            raise MalformedMessage("SM2 point: not on the curve or not reduced")
        return (x, y)
    raise MalformedMessage(f"SM2 point: not a compressed or uncompressed encoding ({len(data)} bytes)")


def decode_x(data: bytes) -> Point:
    """Parse a 32-byte big-endian x-coordinate (standing for {P, -P}); returns the even-y point."""
    if len(data) != 32:
        raise MalformedMessage(f"SM2 x-coordinate: {len(data)} bytes, expected 32")
    return decode_point(b"\x02" + data)


def encode_compressed(point: Point) -> bytes:
    x, y = point
    return bytes([2 | int(y & 1)]) + int(x).to_bytes(32, "big")


def encode_uncompressed(point: Point) -> bytes:
    x, y = point
    return b"\x04" + int(x).to_bytes(32, "big") + int(y).to_bytes(32, "big")


# -- arithmetic -----------------------------------------------------------------------------------
def _double(X1: mpz, Y1: mpz, Z1: mpz) -> tuple[mpz, mpz, mpz]:
    # dbl-2001-b (a = -3)
    delta = Z1 * Z1 % P
    gamma = Y1 * Y1 % P
    beta = X1 * gamma % P
    alpha = 3 * (X1 - delta) * (X1 + delta) % P
    X3 = (alpha * alpha - 8 * beta) % P
    Z3 = 2 * Y1 * Z1 % P  # = (Y1 + Z1)^2 - gamma - delta
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % P
    return X3, Y3, Z3


def _add_affine(X1: mpz, Y1: mpz, Z1: mpz, x2: mpz, y2: mpz) -> tuple[mpz, mpz, mpz]:
    # madd-2007-bl; Z1 = 0 encodes the identity
    if Z1 == 0:
        return x2, y2, mpz(1)
    Z1Z1 = Z1 * Z1 % P
    U2 = x2 * Z1Z1 % P
    S2 = y2 * Z1 * Z1Z1 % P
    H = (U2 - X1) % P
    r = 2 * (S2 - Y1) % P
    if H == 0:
        if r == 0:
            return _double(X1, Y1, Z1)
        return mpz(1), mpz(1), mpz(0)
    HH = H * H % P
    I = 4 * HH
    J = H * I % P
    V = X1 * I % P
    X3 = (r * r - J - 2 * V) % P
    Y3 = (r * (V - X3) - 2 * Y1 * J) % P
    Z3 = 2 * Z1 * H % P  # = (Z1 + H)^2 - Z1Z1 - HH
    return X3, Y3, Z3


def _to_affine(X: mpz, Y: mpz, Z: mpz) -> Point | None:
    if Z == 0:
        return None
    zi = gmpy2.invert(Z, P)
    zi2 = zi * zi % P
    return (X * zi2 % P, Y * zi2 * zi % P)


def _signed_digits(k: int, width: int) -> list[int]:
    """Width-w NAF digits of k, least significant first (odd digits |d| < 2^(w-1))."""
    digits = []
    full, half = 1 << width, 1 << (width - 1)
    while k:
        if k & 1:
            d = k & (full - 1)
            if d >= half:
                d -= full
            k -= d
        else:
            d = 0
        digits.append(d)
        k >>= 1
    return digits


def _odd_multiples(point: Point, count: int) -> list[Point]:
    """[P, 3P, 5P, ...] affine (count entries)."""
    x, y = point
    twice = _to_affine(*_double(x, y, mpz(1)))
    table = [point]
    X, Y, Z = x, y, mpz(1)
    for _ in range(count - 1):
        X, Y, Z = _add_affine(X, Y, Z, *twice)
        table.append(_to_affine(X, Y, Z))
    return table


def multiply(scalar: int, point: Point) -> Point:
    """``scalar * point`` for a scalar in [1, n) and a validated non-identity point."""
    k = int(scalar) % int(N)
    if k == 0:
        raise ValueError("SM2 scalar must be non-zero modulo n")
    table = _odd_multiples(point, 1 << (_WINDOW - 2))
    negated = [(tx, (P - ty) % P) for tx, ty in table]
    digits = _signed_digits(k, _WINDOW)
    top = digits.pop()  # the most significant digit is positive and non-zero
    X, Y = table[top >> 1]
    Z = mpz(1)
    p = P
    for d in reversed(digits):
        # doubling inlined (dbl-2001-b, a = -3): most digits are zero, so this is the hot loop
        delta = Z * Z % p
        gamma = Y * Y % p
        beta = X * gamma % p
        alpha = 3 * (X - delta) * (X + delta) % p
        Z = 2 * Y * Z % p
        X = (alpha * alpha - 8 * beta) % p
        Y = (alpha * (4 * beta - X) - 8 * gamma * gamma) % p
        if d > 0:
            X, Y, Z = _add_affine(X, Y, Z, *table[d >> 1])
        elif d < 0:
            X, Y, Z = _add_affine(X, Y, Z, *negated[(-d) >> 1])
    result = _to_affine(X, Y, Z)
    if result is None:  # impossible for k in [1, n) and a point of order n
        raise MalformedMessage("SM2 multiplication reached the identity")
    return result


def multiply_x(scalar: int, point: Point) -> bytes:
    """The 32-byte big-endian x of ``scalar * point`` (the same for point and -point)."""
    return int(multiply(scalar, point)[0]).to_bytes(32, "big")


# -- hashing --------------------------------------------------------------------------------------
def sm3(data: bytes) -> bytes:
    """SM3 (GB/T 32905) through ``cryptography`` (OpenSSL)."""
    from cryptography.hazmat.primitives import hashes

    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def _hash_function(name: str) -> Callable[[bytes], bytes]:
    if name == "sha256":
        return lambda data: hashlib.sha256(data).digest()
    if name == "sm3":
        return sm3
    raise ValueError(f"unknown hash {name!r}")


def hash_to_point_rehash(message: bytes, hash_name: str = "sha256") -> Point:
    """Try-and-rehash: ``h = H(m)``; the first ``x = h mod p`` that is on the curve, else
    ``h = H(h)``; the point with even y. Expected two hash calls and two square roots."""
    digest_fn = _hash_function(hash_name)
    digest = digest_fn(message)
    while True:
        x = mpz(int.from_bytes(digest, "big")) % P
        y = _lift_x(x, 0)
        if y is not None:
            return (x, y)
        digest = digest_fn(digest)


def hash_to_point_increment(message: bytes, hash_name: str = "sm3") -> Point:
    """Try-and-increment as in Icart (eprint 2009/226, the reference the PPCA spec gives for
    TRY_AND_INCREMENT): ``u = H(m) mod p``; the first ``x = u + i (mod p)``, i = 0, 1, ...,
    with ``x^3 + a x + b`` a square; the point with even y. Expected two square roots and one
    hash; i > 255 has probability about 2^-256 and is refused (``ValueError``)."""
    x = mpz(int.from_bytes(_hash_function(hash_name)(message), "big")) % P
    for _ in range(256):
        y = _lift_x(x, 0)
        if y is not None:
            return (x, y)
        x = (x + 1) % P
    raise ValueError("try-and-increment found no point in 256 steps")  # pragma: no cover - p ~ 2^-256


def hash_to_points_rehash(messages: Iterable[bytes], hash_name: str = "sha256") -> list[Point]:
    """:func:`hash_to_point_rehash` over a batch."""
    return [hash_to_point_rehash(m, hash_name) for m in messages]


def multiply_many_x(scalar: int, points: Sequence[Point]) -> list[bytes]:
    """x of ``scalar * point`` for each point (32 bytes big-endian each)."""
    return [multiply_x(scalar, p) for p in points]


# -- batches (OpenSSL when available) -------------------------------------------------------------
_implementation: str | None = None


def implementation() -> str:
    """``"openssl"`` (libcrypto's constant-time ladder) or ``"gmpy2"`` (:func:`multiply`), chosen
    once per process: ``PSIQ_SM2=gmpy2|openssl`` forces one (``openssl`` fails when libcrypto 3.x
    does not load), otherwise OpenSSL whenever it loads."""
    global _implementation
    if _implementation is None:
        import os

        from . import libcrypto

        wanted = os.environ.get("PSIQ_SM2", "auto")
        if wanted == "gmpy2":
            _implementation = "gmpy2"
        elif wanted == "openssl":
            libcrypto.load()  # raises LibcryptoUnavailable with the reason
            _implementation = "openssl"
        else:
            _implementation = "openssl" if libcrypto.available() else "gmpy2"
    return _implementation


def multiply_x_batch(scalar: bytes, xs: Sequence[bytes]) -> list[bytes]:
    """The 32-byte x of ``scalar * P`` for each 32-byte x (see :func:`decode_x`); ``scalar`` is
    32 bytes big-endian in [1, n). :class:`MalformedMessage` for an invalid x."""
    if implementation() == "openssl":
        from . import libcrypto

        return libcrypto.multiply_x_batch(scalar, xs)
    k = int.from_bytes(scalar, "big")
    return [multiply_x(k, decode_x(bytes(x))) for x in xs]


def multiply_points_batch(scalar: bytes, points: Sequence[bytes], *, compressed: bool = True) -> list[bytes]:
    """``scalar * P`` for each SEC 1 encoded point (see :func:`decode_point`), re-encoded
    compressed (33 bytes) or uncompressed (65). :class:`MalformedMessage` for an invalid point."""
    if implementation() == "openssl":
        from . import libcrypto

        return libcrypto.multiply_points_batch(scalar, points, compressed=compressed)
    k = int.from_bytes(scalar, "big")
    if not 0 < k < N:
        raise ValueError("an SM2 scalar is 32 bytes big-endian in [1, n-1]")
    encode = encode_compressed if compressed else encode_uncompressed
    return [encode(multiply(k, decode_point(bytes(p)))) for p in points]
