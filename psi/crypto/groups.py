"""Prime-order groups for commutative-encryption PSI: hash-to-group, scalar multiplication.

Three groups share one small interface (:class:`Group`); worker processes run the top-level
batch functions :func:`hash_to_group_batch`, :func:`multiply_batch` and
:func:`hash_and_multiply_batch`, which take the group by *name* so they pickle cheaply.
Every element a batch function receives is validated before it is multiplied; a bad one
raises :class:`~psi.errors.MalformedMessage`.

All three are used "x-only": an element stands for the pair of points {P, -P}. Scalar
multiplication is well defined on such pairs and commutes, and a scalar's inverse undoes it,
which is all commutative-encryption PSI needs.

``x25519`` (default)
    Elements are canonical Curve25519 u-coordinates (32 bytes little-endian, u < 2^255-19,
    top bit clear). Hash-to-group is try-and-increment: ``d = SHA-512(len(DST) || DST || ctr ||
    msg)`` for ctr = 0, 1, ..., each digest giving two candidates (its 32-byte halves read
    little-endian with the top bit cleared); the first candidate ``u < p`` with u^3 + A u^2 + u a
    non-zero square (the u-coordinate of a point on the curve itself) is the output. Candidates
    are independent and uniform on [0, 2^255) if SHA-512 is a random oracle, so the output is
    uniform over the curve's u-coordinates; on average 1.33 SHA-512 calls and 2 Legendre symbols.
    (Protocol version 1 used ``expand_message_xmd`` per try: 4 SHA-512 calls per item on average
    for the same distribution.) The plain "hash and mask the top bit" approach would put half the
    items on the quadratic twist, where the inverse scalar used for unblinding (below) does not work. Multiplication
    is ``cryptography``'s X25519 (OpenSSL), so scalars are clamped: a multiple of 8, which
    clears the cofactor and leaves every product in the prime-order subgroup of order
    ``L = 2^252 + 277423...``. Unblinding needs ``c`` with ``c * k = 1 (mod L)`` that is itself
    a clamped scalar (``2^254 + 8m``, ``m < 2^251``); about half of all clamped scalars have
    one, so :meth:`X25519Group.generate_scalar` samples until it does (the key keeps > 250
    bits of entropy). Received elements are rejected unless canonical, on the curve (not the
    twist) and not one of the low-order points; an all-zero product is rejected too.
    The try-and-increment loop takes a data-dependent number of hash calls (timing depends
    on the item); that is acceptable for the semi-honest, batch setting psiq targets.

``ristretto255``
    RFC 9496 prime-order group through libsodium (``rbcl``). Hash-to-group is the RFC 9380
    ``hash_to_ristretto255``: 64 bytes of expand_message_xmd(SHA-512) fed to the one-way map
    (``crypto_core_ristretto255_from_hash``). Received encodings must be canonical, valid and
    not the identity. Scalars are reduced, non-zero, 32 bytes little-endian.

``p256``
    NIST P-256 through ``cryptography`` for institutions that must use NIST curves.
    Hash-to-group is RFC 9380 ``P256_XMD:SHA-256_SSWU_RO_`` in pure Python (gmpy2 field
    arithmetic). Elements are the 32-byte big-endian x-coordinate; a received x is lifted
    to the point with even y (``from_encoded_point(0x02 || x)``, which rejects x that are not
    on the curve; the identity has no such encoding). Multiplication is ECDH ``exchange``,
    which returns only x: x(k*P) = x(k*(-P)), so working on {P, -P} keeps commutativity.

``sm2``
    The SM2 curve (GB/T 32918.5) for deployments that must use national algorithms: SM3
    try-and-increment hash-to-group, x-only elements, gmpy2 arithmetic. Defined in
    :mod:`psi.crypto.sm2_group` (imported on first use).

Measured on this machine (bench/bench_groups.py, one core, best of 3 over 2000 elements,
µs per element)::

    group          hash-to-group   multiply (incl. validation)   validation alone
    x25519              5.1 (v1: 6.9)     31.4                       2.0
    ristretto255       15.2               43.4                       4.4
    p256               87.9               71.7                      17.8

(p256 hash-to-curve is pure Python: two square roots and an affine addition per item. The
x25519 row was re-measured after the v2 hash and the batch validation (numpy range and
low-order checks, then one Legendre symbol per element); the others are from the first run.)

x25519 multiplication runs on the process's compute backend (:mod:`psi.crypto.backends`:
OpenSSL, or Intel's multi-buffer library on CPUs with AVX-512 IFMA), after validation here;
so do p256 and sm2 in the worker entry points when the backend is ``mb``
(``mbx_nistp256_ecdh_mb8`` / ``mbx_sm2_ecdh_mb8`` on the validated even-y point).

x25519 is the default: cheapest multiplication, and PSI costs about three multiplications
per client item plus one per server item.
"""

from __future__ import annotations

import hashlib
import secrets
from abc import ABC, abstractmethod
from typing import Callable, Sequence

import gmpy2
import numpy as np
import rbcl
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import MalformedMessage, UsageError
from . import backends

__all__ = [
    "Group",
    "X25519Group",
    "Ristretto255Group",
    "P256Group",
    "GROUP_NAMES",
    "DEFAULT_GROUP",
    "get_group",
    "expand_message_xmd",
    "hash_to_group_batch",
    "multiply_batch",
    "hash_and_multiply_batch",
]

DEFAULT_GROUP = "x25519"


# -- RFC 9380 section 5.3.1 -------------------------------------------------------------------
def expand_message_xmd(msg: bytes, dst: bytes, length: int, hash_name: str = "sha512") -> bytes:
    """RFC 9380 expand_message_xmd with SHA-256 or SHA-512."""
    h = hashlib.new(hash_name)
    b_in_bytes, s_in_bytes = h.digest_size, h.block_size
    ell = -(-length // b_in_bytes)
    if ell > 255 or length > 65535 or len(dst) > 255:
        raise ValueError("expand_message_xmd: requested length or DST too long")
    dst_prime = dst + bytes([len(dst)])
    h.update(bytes(s_in_bytes) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime)
    b_0 = h.digest()
    b_i = hashlib.new(hash_name, b_0 + b"\x01" + dst_prime).digest()
    out = [b_i]
    for i in range(2, ell + 1):
        mixed = bytes(x ^ y for x, y in zip(b_0, b_i))
        b_i = hashlib.new(hash_name, mixed + bytes([i]) + dst_prime).digest()
        out.append(b_i)
    return b"".join(out)[:length]


class _Expander:
    """expand_message_xmd specialised for one DST and length (the hot path of hashing)."""

    def __init__(self, dst: bytes, length: int, hash_name: str) -> None:
        h = hashlib.new(hash_name)
        if length > h.digest_size or len(dst) > 255:
            raise ValueError("fast expander supports one output block only")
        self._dst_prime = dst + bytes([len(dst)])
        self._tail = length.to_bytes(2, "big") + b"\x00" + self._dst_prime
        h.update(bytes(h.block_size))
        self._prefix = h  # hash state after Z_pad, copied per message
        self._hash_name = hash_name
        self._new = getattr(hashlib, hash_name)  # the named constructor is faster than hashlib.new
        self._mid = b"\x01" + self._dst_prime
        self._length = length

    def __call__(self, msg: bytes) -> bytes:
        h = self._prefix.copy()
        h.update(msg)
        h.update(self._tail)
        return self._new(h.digest() + self._mid).digest()[: self._length]


def _as_list(elements: Sequence[bytes] | bytes, width: int) -> Sequence[bytes]:
    if isinstance(elements, (bytes, bytearray, memoryview)):
        blob = bytes(elements)
        if len(blob) % width:
            raise MalformedMessage("element buffer is not a whole number of elements")
        return [blob[i : i + width] for i in range(0, len(blob), width)]
    return elements


class Group(ABC):
    """A prime-order group used x-only; see the module docstring."""

    name: str
    element_size: int
    scalar_size: int

    @abstractmethod
    def generate_scalar(self) -> bytes:
        """A fresh secret scalar from OS randomness, one that has an inverse (:meth:`invert_scalar`)."""

    @abstractmethod
    def invert_scalar(self, scalar: bytes) -> bytes:
        """The scalar that undoes ``scalar`` on every element of the group."""

    @abstractmethod
    def check_scalar(self, scalar: bytes) -> None:
        """Raise :class:`UsageError` unless ``scalar`` is a usable secret for this group."""

    @abstractmethod
    def hash_to_group(self, dst: bytes, items: Sequence[bytes]) -> list[bytes]:
        """Domain-separated hash of each item to an element."""

    @abstractmethod
    def check_element(self, element: bytes) -> None:
        """Raise :class:`MalformedMessage` unless ``element`` is a valid, non-identity element."""

    @abstractmethod
    def multiply(self, scalar: bytes, elements: Sequence[bytes] | bytes) -> list[bytes]:
        """Validate every element and return ``scalar * element`` for each."""

    def multiply_own(self, scalar: bytes, elements: Sequence[bytes]) -> list[bytes]:
        """``scalar * element`` for elements this process made itself with :meth:`hash_to_group`
        (valid by construction, so a group may skip the per-element validation)."""
        return self.multiply(scalar, elements)


# -- x25519 -----------------------------------------------------------------------------------
_P25519 = 2**255 - 19
_A25519 = 486662
_L25519 = 2**252 + 27742317777372353535851937790883648493
_INV8_L = pow(8, -1, _L25519)
_LOW_ORDER_U = frozenset(
    int.from_bytes(bytes.fromhex(h), "little")
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


_MASK255 = 2**255 - 1
_P25519_MPZ = gmpy2.mpz(_P25519)
_LOW_ORDER_ROWS = [np.frombuffer(u.to_bytes(32, "little"), dtype="<u8") for u in sorted(_LOW_ORDER_U)]


def _on_curve(u: int) -> bool:
    """u^3 + A u^2 + u is a non-zero square mod p: u is the coordinate of a curve (not twist)
    point other than (0, 0). The batch loops below inline this test."""
    return gmpy2.legendre(u * (u * (u + _A25519) + 1), _P25519_MPZ) == 1


def _x25519_hash_slow(prefix: bytes, item: bytes) -> bytes:
    """The rest of the x25519 hash loop (ctr = 2, 3, ...) for the 1 in 16 items that need it."""
    for ctr in range(2, 256):
        d = hashlib.sha512(prefix + bytes([ctr]) + item).digest()
        for half in (d[:32], d[32:]):
            u = int.from_bytes(half, "little") & _MASK255
            if u < _P25519 and _on_curve(u):
                return u.to_bytes(32, "little")
    raise ValueError("hash-to-curve found no point")  # probability 2^-512


def _clamp(scalar: bytes) -> int:
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return int.from_bytes(k, "little")


def _clamped_inverse(k: int) -> int | None:
    """c = 2^254 + 8m with c*k = 1 (mod L), or None when no such clamped c exists."""
    m = ((pow(k, -1, _L25519) - 2**254) * _INV8_L) % _L25519
    if m >= 2**251:
        return None
    return 2**254 + 8 * m


class X25519Group(Group):
    name = "x25519"
    element_size = 32
    scalar_size = 32

    def generate_scalar(self) -> bytes:
        while True:
            k = _clamp(secrets.token_bytes(32))
            if _clamped_inverse(k) is not None:
                return k.to_bytes(32, "little")

    def invert_scalar(self, scalar: bytes) -> bytes:
        self.check_scalar(scalar)
        c = _clamped_inverse(_clamp(scalar))
        if c is None:
            raise UsageError("this x25519 scalar has no clamped inverse (use generate_scalar)")
        return c.to_bytes(32, "little")

    def check_scalar(self, scalar: bytes) -> None:
        if not isinstance(scalar, (bytes, bytearray)) or len(scalar) != 32:
            raise UsageError("an x25519 scalar is 32 bytes")

    def hash_to_group(self, dst: bytes, items: Sequence[bytes]) -> list[bytes]:
        # d_ctr = SHA-512(len(dst) || dst || ctr || item) gives two 255-bit candidates
        # (little-endian halves, top bit cleared); the first that is < p and on the curve wins.
        if len(dst) > 255:
            raise ValueError("hash-to-group DST is longer than 255 bytes")
        prefix = bytes([len(dst)]) + dst
        first, second = hashlib.sha512(prefix + b"\x00"), hashlib.sha512(prefix + b"\x01")  # ctr 0 and 1
        # Unrolled over the four candidates of ctr 0 and 1 (15 items in 16 need no more), with
        # gmpy2 integers throughout: the Legendre symbol is most of the cost that is left.
        legendre, from_bytes = gmpy2.legendre, gmpy2.mpz.from_bytes
        p, a, mask = _P25519_MPZ, _A25519, gmpy2.mpz(_MASK255)
        out: list[bytes] = []
        append = out.append
        for item in items:
            h = first.copy()
            h.update(item)
            d = h.digest()
            u = from_bytes(d[:32], "little") & mask
            if u < p and legendre(u * (u * (u + a) + 1), p) == 1:  # _on_curve(u), inlined
                append(u.to_bytes(32, "little"))
                continue
            u = from_bytes(d[32:], "little") & mask
            if u < p and legendre(u * (u * (u + a) + 1), p) == 1:
                append(u.to_bytes(32, "little"))
                continue
            h = second.copy()
            h.update(item)
            d = h.digest()
            u = from_bytes(d[:32], "little") & mask
            if u < p and legendre(u * (u * (u + a) + 1), p) == 1:
                append(u.to_bytes(32, "little"))
                continue
            u = from_bytes(d[32:], "little") & mask
            if u < p and legendre(u * (u * (u + a) + 1), p) == 1:
                append(u.to_bytes(32, "little"))
                continue
            append(_x25519_hash_slow(prefix, item))  # 1 item in 16 needs ctr >= 2
        return out

    def check_element(self, element: bytes) -> None:
        if len(element) != 32:
            raise MalformedMessage("x25519 element is not 32 bytes")
        if element[31] & 0x80:
            raise MalformedMessage("x25519 element has the top bit set (non-canonical)")
        u = int.from_bytes(element, "little")
        if u >= _P25519:
            raise MalformedMessage("x25519 element is not reduced modulo p (non-canonical)")
        if u in _LOW_ORDER_U:
            raise MalformedMessage("x25519 element is a low-order point")
        if not _on_curve(gmpy2.mpz(u)):
            raise MalformedMessage("x25519 element is not on the curve (twist point)")

    def check_elements(self, elements: Sequence[bytes]) -> None:
        """:meth:`check_element` for a whole batch (the same checks, the same messages)."""
        blob = b"".join(elements)
        if len(blob) != 32 * len(elements) or any(len(e) != 32 for e in elements):
            raise MalformedMessage("x25519 element is not 32 bytes")
        if not elements:
            return
        limbs = np.frombuffer(blob, dtype="<u8").reshape(-1, 4)
        top, mid, low = limbs[:, 3], limbs[:, 1:3], limbs[:, 0]
        bad = top >= np.uint64(1 << 63)  # top bit set
        bad |= (top == np.uint64((1 << 63) - 1)) & (mid == np.uint64((1 << 64) - 1)).all(axis=1) & (
            low >= np.uint64((1 << 64) - 19)
        )  # u >= p
        for u in _LOW_ORDER_ROWS:
            bad |= (limbs == u).all(axis=1)
        if bad.any():
            self.check_element(elements[int(np.flatnonzero(bad)[0])])  # raises with the precise reason
        legendre, from_bytes, p, a = gmpy2.legendre, gmpy2.mpz.from_bytes, _P25519_MPZ, _A25519
        for element in elements:
            u = from_bytes(element, "little")
            if legendre(u * (u * (u + a) + 1), p) != 1:
                raise MalformedMessage("x25519 element is not on the curve (twist point)")

    def multiply(self, scalar: bytes, elements: Sequence[bytes] | bytes) -> list[bytes]:
        self.check_scalar(scalar)
        elements = _as_list(elements, 32)
        self.check_elements(elements)
        return self.multiply_own(scalar, elements)

    def multiply_own(self, scalar: bytes, elements: Sequence[bytes]) -> list[bytes]:
        # hash_to_group outputs are canonical u on the curve itself; a low-order one (chance
        # ~2^-250) gives an all-zero product, which exchange() still rejects.
        self.check_scalar(scalar)
        try:  # the process's compute backend (psi.crypto.backends): same bytes on every backend
            return backends.current().x25519_many(scalar, elements)
        except ValueError:
            raise MalformedMessage("x25519 product is the identity (all-zero)") from None


# -- ristretto255 -----------------------------------------------------------------------------
_IDENTITY_R255 = bytes(32)
_L_R255 = _L25519


class Ristretto255Group(Group):
    name = "ristretto255"
    element_size = 32
    scalar_size = 32

    def generate_scalar(self) -> bytes:
        while True:
            s = rbcl.crypto_core_ristretto255_scalar_random()
            if any(s):
                return s

    def invert_scalar(self, scalar: bytes) -> bytes:
        self.check_scalar(scalar)
        return rbcl.crypto_core_ristretto255_scalar_invert(bytes(scalar))

    def check_scalar(self, scalar: bytes) -> None:
        if not isinstance(scalar, (bytes, bytearray)) or len(scalar) != 32:
            raise UsageError("a ristretto255 scalar is 32 bytes")
        k = int.from_bytes(scalar, "little")
        if not 0 < k < _L_R255:
            raise UsageError("a ristretto255 scalar must be in [1, L-1]")

    def hash_to_group(self, dst: bytes, items: Sequence[bytes]) -> list[bytes]:
        from_hash = rbcl.crypto_core_ristretto255_from_hash
        return [from_hash(expand_message_xmd(item, dst, 64, "sha512")) for item in items]

    def check_element(self, element: bytes) -> None:
        if len(element) != 32:
            raise MalformedMessage("ristretto255 element is not 32 bytes")
        if element == _IDENTITY_R255:
            raise MalformedMessage("ristretto255 element is the identity")
        if not rbcl.crypto_core_ristretto255_is_valid_point(bytes(element)):
            raise MalformedMessage("ristretto255 element is not a valid canonical encoding")

    def multiply(self, scalar: bytes, elements: Sequence[bytes] | bytes) -> list[bytes]:
        self.check_scalar(scalar)
        scalar = bytes(scalar)
        mult, check = rbcl.crypto_scalarmult_ristretto255, self.check_element
        out = []
        for element in _as_list(elements, 32):
            check(element)
            try:
                out.append(mult(scalar, bytes(element)))
            except RuntimeError:  # identity result; cannot happen for a valid element
                raise MalformedMessage("ristretto255 product is the identity") from None
        return out


# -- P-256 ------------------------------------------------------------------------------------
_P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
_P256_A = _P256_P - 3
_P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P256_Z = _P256_P - 10
_CURVE = ec.SECP256R1()


def _sswu_p256(u: int) -> tuple[int, int]:
    """RFC 9380 section 6.6.2 simplified SWU for P-256 (straight-line version of the spec)."""
    p, a, b, z = _P256_P, _P256_A, _P256_B, _P256_Z
    u2 = u * u % p
    zu2 = z * u2 % p
    denom = (zu2 * zu2 + zu2) % p
    if denom == 0:
        x1 = b * pow(z * a, -1, p) % p
    else:
        x1 = (p - b) * pow(a, -1, p) * (1 + pow(denom, -1, p)) % p
    gx1 = (x1 * x1 * x1 + a * x1 + b) % p
    if gmpy2.legendre(gx1, p) >= 0:
        x, gx = x1, gx1
    else:
        x = zu2 * x1 % p
        gx = (x * x * x + a * x + b) % p
    y = int(gmpy2.powmod(gx, (p + 1) // 4, p))
    if (u & 1) != (y & 1):
        y = p - y
    return x, y


def _p256_add(p1: tuple[int, int], p2: tuple[int, int]) -> tuple[int, int]:
    p = _P256_P
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2:
        if (y1 + y2) % p == 0:
            raise ValueError("hash-to-curve hit the identity")
        lam = (3 * x1 * x1 + _P256_A) * pow(2 * y1, -1, p) % p
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, p) % p
    x3 = (lam * lam - x1 - x2) % p
    return x3, (lam * (x1 - x3) - y1) % p


def p256_hash_to_curve(msg: bytes, dst: bytes) -> tuple[int, int]:
    """RFC 9380 P256_XMD:SHA-256_SSWU_RO_ (affine x, y)."""
    uniform = expand_message_xmd(msg, dst, 96, "sha256")
    u0 = int.from_bytes(uniform[:48], "big") % _P256_P
    u1 = int.from_bytes(uniform[48:], "big") % _P256_P
    return _p256_add(_sswu_p256(u0), _sswu_p256(u1))  # cofactor 1: no clearing


class P256Group(Group):
    name = "p256"
    element_size = 32
    scalar_size = 32

    def generate_scalar(self) -> bytes:
        return (secrets.randbelow(_P256_N - 1) + 1).to_bytes(32, "big")

    def invert_scalar(self, scalar: bytes) -> bytes:
        self.check_scalar(scalar)
        return pow(int.from_bytes(scalar, "big"), -1, _P256_N).to_bytes(32, "big")

    def check_scalar(self, scalar: bytes) -> None:
        if not isinstance(scalar, (bytes, bytearray)) or len(scalar) != 32:
            raise UsageError("a p256 scalar is 32 bytes")
        if not 0 < int.from_bytes(scalar, "big") < _P256_N:
            raise UsageError("a p256 scalar must be in [1, n-1]")

    def hash_to_group(self, dst: bytes, items: Sequence[bytes]) -> list[bytes]:
        return [p256_hash_to_curve(item, dst)[0].to_bytes(32, "big") for item in items]

    def _load(self, element: bytes) -> ec.EllipticCurvePublicKey:
        if len(element) != 32:
            raise MalformedMessage("p256 element is not 32 bytes")
        if int.from_bytes(element, "big") >= _P256_P:
            raise MalformedMessage("p256 element is not reduced modulo p")
        return self.load_sec1(b"\x02" + bytes(element))

    @staticmethod
    def load_sec1(encoded: bytes) -> ec.EllipticCurvePublicKey:
        """Decode a SEC1 point (checks it is on the curve and not the identity)."""
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, bytes(encoded))
        except ValueError:
            raise MalformedMessage("p256 element is not a point on the curve") from None

    def check_element(self, element: bytes) -> None:
        self._load(element)

    def private_key(self, scalar: bytes) -> ec.EllipticCurvePrivateKey:
        self.check_scalar(scalar)
        return ec.derive_private_key(int.from_bytes(scalar, "big"), _CURVE)

    @staticmethod
    def exchange(key: ec.EllipticCurvePrivateKey, point: ec.EllipticCurvePublicKey) -> bytes:
        try:
            return key.exchange(ec.ECDH(), point)
        except ValueError:
            raise MalformedMessage("p256 product is invalid") from None

    def multiply(self, scalar: bytes, elements: Sequence[bytes] | bytes) -> list[bytes]:
        key = self.private_key(scalar)
        load, exchange = self._load, self.exchange
        return [exchange(key, load(element)) for element in _as_list(elements, 32)]


# -- registry and worker entry points ---------------------------------------------------------
_GROUPS: dict[str, Callable[[], Group]] = {
    "x25519": X25519Group,
    "ristretto255": Ristretto255Group,
    "p256": P256Group,
    "sm2": lambda: _sm2_group(),
}
GROUP_NAMES = tuple(_GROUPS)


def _sm2_group() -> Group:
    from .sm2_group import SM2Group  # its own module: it imports Group from here

    return SM2Group()
_INSTANCES: dict[str, Group] = {}


def get_group(name: str) -> Group:
    """The group called ``name``; raises :class:`UsageError` for an unknown name."""
    try:
        group = _INSTANCES.get(name) or _INSTANCES.setdefault(name, _GROUPS[name]())
    except KeyError:
        raise UsageError(f"unknown group {name!r}; choose one of {', '.join(GROUP_NAMES)}") from None
    return group


def hash_to_group_batch(group_name: str, dst: bytes, items: Sequence[bytes]) -> list[bytes]:
    """Worker entry point: hash each item to an element of the named group."""
    return get_group(group_name).hash_to_group(dst, items)


def _p256_even_y(element: bytes) -> int:
    """The even y of the P-256 point with x = ``element`` (32 bytes big-endian); raises
    :class:`MalformedMessage` like :meth:`P256Group.check_element` for a bad element."""
    if len(element) != 32:
        raise MalformedMessage("p256 element is not 32 bytes")
    x = gmpy2.mpz.from_bytes(bytes(element), "big")
    if x >= _P256_P:
        raise MalformedMessage("p256 element is not reduced modulo p")
    gx = (x * x * x + _P256_A * x + _P256_B) % _P256_P
    y = gmpy2.powmod(gx, (_P256_P + 1) // 4, _P256_P)  # p = 3 (mod 4)
    if y * y % _P256_P != gx:
        raise MalformedMessage("p256 element is not a point on the curve")
    return int(_P256_P - y if y & 1 else y)


def _ec_on_backend(group: Group, scalar: bytes, elements: Sequence[bytes] | bytes) -> list[bytes] | None:
    """``scalar * element`` for p256 / sm2 on the compute backend when it has that curve (the
    multi-buffer library), else None. Elements are validated and lifted to their even-y point
    here first (the same checks and messages as the group's own path); results are the same
    32-byte big-endian x as the portable path."""
    backend = backends.current()
    if group.name not in getattr(backend, "ec_curves", ()):
        return None
    group.check_scalar(scalar)
    elements = _as_list(elements, 32)
    if group.name == "p256":
        ys = [_p256_even_y(e) for e in elements]
    else:
        from . import sm2

        ys = [int(sm2.decode_x(bytes(e))[1]) for e in elements]
    xs = b"".join(bytes(e) for e in elements)
    try:
        out = backend.ec_x_many(group.name, bytes(scalar), xs, b"".join(y.to_bytes(32, "big") for y in ys))
    except ValueError:
        raise MalformedMessage(f"{group.name} element is not a point on the curve") from None
    return [out[i : i + 32] for i in range(0, len(out), 32)]


def multiply_batch(group_name: str, scalar_bytes: bytes, elements: Sequence[bytes] | bytes) -> list[bytes]:
    """Worker entry point: validate each received element, then multiply it by the scalar."""
    group = get_group(group_name)
    return _ec_on_backend(group, scalar_bytes, elements) or group.multiply(scalar_bytes, elements)


def hash_and_multiply_batch(group_name: str, dst: bytes, scalar_bytes: bytes, items: Sequence[bytes]) -> list[bytes]:
    """Worker entry point: ``scalar * H(item)`` for each item (one round trip to the worker)."""
    group = get_group(group_name)
    hashed = group.hash_to_group(dst, items)
    return _ec_on_backend(group, scalar_bytes, hashed) or group.multiply_own(scalar_bytes, hashed)
