"""The EC suites psiq speaks in a PPCA ECDH-PSI session, and their batch work.

A suite is the spec's ``EcSuit`` triple <curve, hash, hash-to-curve> plus the point format.
psiq implements exactly these (names are what ``--suite`` takes):

``x25519``  <CURVE25519, SHA-256, DIRECT_HASH_AS_POINT_X>, 32-byte u (spec: "UNCOMPRESSED")
    The item's SHA-256 digest *is* the u-coordinate (RFC 7748 decoding: top bit ignored,
    reduced mod p). About half of all items land on the quadratic twist; the x-only ladder
    works there too, and the twist's order is 4 * prime, so a clamped scalar (a multiple of 8)
    maps every twist point into its prime-order subgroup. This is *not* psiq's own ``x25519``
    group (which rejects twist points by design); it exists only to match the spec.
``sm2``  <SM2, SHA-256, TRY_AND_REHASH>, X9.62 compressed (what SecretFlow 0.9.2 sends)
``sm2-sm3``  <SM2, SM3, TRY_AND_REHASH>, X9.62 compressed (newer SecretFlow)
``sm2-sm3-increment``  <SM2, SM3, TRY_AND_INCREMENT>, X9.62 compressed: the spec's mandatory SM2
    suite. ``u = SM3(item) mod p``, the first ``x = u + i`` on the curve, even y
    (:func:`psi.crypto.sm2.hash_to_point_increment`; the construction of Icart, eprint 2009/226,
    which the spec's ecc.proto cites for this strategy). SecretFlow 0.9.2 does not offer it, so it
    is tested psiq-to-psiq only. It is *not* psiq's own ``--group sm2`` hash (that one hashes a
    domain-separated counter into SM3 and is x-only).

Received first-stage values are validated before use: x25519 u must be canonical (u < p) and
not one of the points whose product is the all-zero output; SM2 points must be canonical
encodings of a point on the curve other than the identity (``psi.crypto.sm2.decode_point``).
A bad value raises :class:`~psi.errors.MalformedMessage`.

Second-stage values are truncated to the last ``tail`` bytes of the serialised point, as
SecretFlow does (96 bits: for SM2 the low bytes of x; for x25519, little-endian, the high bytes).

The batch functions are top level and take the suite by name so they pickle cheaply for
:class:`psi.parallel.Executor`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Sequence

from cryptography.hazmat.primitives.asymmetric import x25519

from ...crypto import sm2
from ...errors import MalformedMessage

__all__ = [
    "Suite",
    "SUITES",
    "SUITE_NAMES",
    "suite_by_name",
    "suite_by_triple",
    "generate_secret",
    "mask_items",
    "remask_points",
]

# enum values of the spec (ecc.proto)
CURVE25519, CURVE_SM2 = 1, 2
HASH_SM3, HASH_SHA256 = 1, 11
H2C_TRY_AND_INCREMENT, H2C_TRY_AND_REHASH, H2C_DIRECT_X = 1, 2, 3
FORMAT_UNCOMPRESSED, FORMAT_X962_COMPRESSED, FORMAT_X962_UNCOMPRESSED = 1, 2, 3


@dataclass(frozen=True)
class Suite:
    """One supported <curve, hash, hash-to-curve> with its point encoding."""

    name: str
    curve: int
    hash: int
    hash2curve: int
    point_format: int
    point_size: int

    @property
    def triple(self) -> tuple[int, int, int]:
        return (self.curve, self.hash, self.hash2curve)


SUITES: tuple[Suite, ...] = (
    Suite("x25519", CURVE25519, HASH_SHA256, H2C_DIRECT_X, FORMAT_UNCOMPRESSED, 32),
    Suite("sm2", CURVE_SM2, HASH_SHA256, H2C_TRY_AND_REHASH, FORMAT_X962_COMPRESSED, 33),
    Suite("sm2-sm3", CURVE_SM2, HASH_SM3, H2C_TRY_AND_REHASH, FORMAT_X962_COMPRESSED, 33),
    Suite("sm2-sm3-increment", CURVE_SM2, HASH_SM3, H2C_TRY_AND_INCREMENT, FORMAT_X962_COMPRESSED, 33),
)
SUITE_NAMES = tuple(s.name for s in SUITES)
_BY_NAME = {s.name: s for s in SUITES}

_CURVE_NAMES = {0: "UNSPECIFIED", 1: "CURVE25519", 2: "SM2", 3: "ED25519"}
_HASH_NAMES = {0: "UNSPECIFIED", 1: "SM3", 10: "SHA-224", 11: "SHA-256", 12: "SHA-384", 13: "SHA-512",
               20: "SHA3-224", 21: "SHA3-256", 22: "SHA3-384", 23: "SHA3-512", 30: "SHAKE256"}
_H2C_NAMES = {0: "UNSPECIFIED", 1: "TRY_AND_INCREMENT", 2: "TRY_AND_REHASH", 3: "DIRECT_HASH_AS_POINT_X",
              10: "IRTF_SSWU_RO", 11: "IRTF_SSWU_NU", 12: "IRTF_ELL2_RO", 13: "IRTF_ELL2_NU"}


def describe_triple(curve: int, hash_: int, h2c: int) -> str:
    """A readable name of a proposed EcSuit, e.g. ``<SM2, SM3, TRY_AND_INCREMENT>``."""
    return (f"<{_CURVE_NAMES.get(curve, f'curve {curve}')}, {_HASH_NAMES.get(hash_, f'hash {hash_}')}, "
            f"{_H2C_NAMES.get(h2c, f'hash2curve {h2c}')}>")


def suite_by_name(name: str) -> Suite:
    return _BY_NAME[name]


def suite_by_triple(curve: int, hash_: int, h2c: int) -> Suite | None:
    for suite in SUITES:
        if suite.triple == (curve, hash_, h2c):
            return suite
    return None


# -- secrets --------------------------------------------------------------------------------------
def generate_secret(suite_name: str) -> bytes:
    """A fresh secret for the suite from OS randomness (32 bytes; SM2: a scalar in [1, n))."""
    if suite_by_name(suite_name).curve == CURVE_SM2:
        return sm2.generate_scalar().to_bytes(32, "big")
    return secrets.token_bytes(32)


# -- batch work -----------------------------------------------------------------------------------
_P25519 = 2**255 - 19


def _x25519(secret: bytes, u: bytes) -> bytes:
    try:
        return x25519.X25519PrivateKey.from_private_bytes(secret).exchange(
            x25519.X25519PublicKey.from_public_bytes(u))
    except ValueError:  # OpenSSL refuses an all-zero result: u was a low-order point
        raise MalformedMessage("x25519 value of low order (all-zero product)") from None


def _check_x25519(u: bytes) -> None:
    if len(u) != 32:
        raise MalformedMessage(f"x25519 value of {len(u)} bytes, expected 32")
    if int.from_bytes(u, "little") >= _P25519:
        raise MalformedMessage("x25519 value is not canonical (u >= 2^255 - 19)")


def _sm2_hash_name(suite: Suite) -> str:
    return "sm3" if suite.hash == HASH_SM3 else "sha256"


def mask_items(args: tuple[str, bytes, Sequence[bytes]]) -> bytes:
    """First stage for own items: hash to the curve, multiply by the secret, serialise.

    ``args`` = (suite name, secret, items). Returns the concatenated encodings
    (``point_size`` bytes each), in item order.
    """
    suite_name, secret, items = args
    suite = suite_by_name(suite_name)
    if suite.curve == CURVE25519:
        key = x25519.X25519PrivateKey.from_private_bytes(secret)
        out = []
        for item in items:
            u = hashlib.sha256(item).digest()
            try:
                out.append(key.exchange(x25519.X25519PublicKey.from_public_bytes(u)))
            except ValueError:  # the digest is a low-order u: probability ~2^-250
                raise MalformedMessage("an item hashes to a low-order x25519 value") from None
        return b"".join(out)
    hash_name = _sm2_hash_name(suite)
    hash_to_point = sm2.hash_to_point_increment if suite.hash2curve == H2C_TRY_AND_INCREMENT else sm2.hash_to_point_rehash
    points = [sm2.encode_uncompressed(hash_to_point(item, hash_name)) for item in items]
    return b"".join(sm2.multiply_points_batch(secret, points))


def remask_points(args: tuple[str, bytes, bytes, int]) -> bytes:
    """Second stage for the peer's values: validate each, multiply by the secret, keep the tail.

    ``args`` = (suite name, secret, concatenated peer values, tail bytes). Returns the
    concatenated ``tail``-byte truncations; ``tail = 0`` keeps the whole serialised point.
    Raises :class:`MalformedMessage` on the first invalid value.
    """
    suite_name, secret, blob, tail = args
    suite = suite_by_name(suite_name)
    size = suite.point_size
    if len(blob) % size:
        raise MalformedMessage("batch length is not a whole number of points")
    values = [blob[i : i + size] for i in range(0, len(blob), size)]
    out = []
    if suite.curve == CURVE25519:
        for u in values:
            _check_x25519(u)
            full = _x25519(secret, u)
            out.append(full[-tail:] if tail else full)
        return b"".join(out)
    for full in sm2.multiply_points_batch(secret, values):
        out.append(full[-tail:] if tail else full)
    return b"".join(out)
