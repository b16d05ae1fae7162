"""2HashDH OPRF over SM2 with SM3: the PIR OPRF of the ``gm`` suite (:mod:`psi.crypto.suite`).

Same flow and interface as :mod:`pir.oprf` (RFC 9497's ristretto255 mode), with the national
algorithms in every step::

    client                                   server (key k)
    r <- random scalar, B = r * H1(x)   -->
                                        <--  Z = k * B
    N = r^-1 * Z, F(x) = SM3(len(x) || x || len(N) || N || "Finalize")

``H1`` is SM3 try-and-increment onto SM2 (:func:`psi.crypto.sm2_group.sm3_try_and_increment`,
domain tag ``psiq-pir-oprf-v1-sm2``). Elements travel x-only (32 bytes, as in psiq's ``sm2``
PSI group): ``x(k·P) = x(k·(−P))``, so blinding, evaluation and unblinding are well defined on
{P, −P}. Every received element is validated (32 bytes, x < p, on the curve; SM2's cofactor is
1 and the identity has no x-only encoding) in :func:`decode_element`, the single place that
checks it. Scalars are 32 bytes big-endian in [1, n). Not an RFC 9497 ciphersuite (RFC 9497
defines none for SM2); there is no interoperation target for this mode.
"""

from __future__ import annotations

import hashlib

from psi.crypto.sm2_group import SM2Group, sm3_try_and_increment
from psi.errors import MalformedMessage, UsageError

__all__ = [
    "ELEMENT_SIZE",
    "SCALAR_SIZE",
    "OUTPUT_SIZE",
    "hash_to_group",
    "generate_key",
    "random_scalar",
    "blind",
    "blind_evaluate",
    "finalize",
    "evaluate",
    "decode_element",
    "evaluate_batch",
]

ELEMENT_SIZE = 32
SCALAR_SIZE = 32
OUTPUT_SIZE = 32
_DST = b"psiq-pir-oprf-v1-sm2"
_GROUP = SM2Group()


def hash_to_group(message: bytes) -> bytes:
    """``H1(message)``: the x-coordinate of an SM2 point (SM3 try-and-increment)."""
    return sm3_try_and_increment(_DST, message)


def random_scalar() -> bytes:
    """A uniform scalar in [1, n) from the OS random source."""
    return _GROUP.generate_scalar()


def generate_key() -> bytes:
    """A fresh server key."""
    return random_scalar()


def check_key(key: bytes) -> None:
    """Raise :class:`UsageError` unless ``key`` is a valid SM2 scalar."""
    _GROUP.check_scalar(key)


def decode_element(data: bytes) -> bytes:
    """Check a received element: 32 bytes, the x of an SM2 point (on the curve, x < p)."""
    if len(data) != ELEMENT_SIZE:
        raise MalformedMessage("group element has the wrong length")
    _GROUP.check_element(bytes(data))  # MalformedMessage for x >= p or off the curve
    return bytes(data)


def _mul(scalar: bytes, element: bytes) -> bytes:
    return _GROUP.multiply(scalar, [element])[0]


def blind(message: bytes, blind_scalar: bytes | None = None) -> tuple[bytes, bytes]:
    """Client step 1: return (blind, blinded element). ``blind_scalar`` only for known-answer tests."""
    r = blind_scalar if blind_scalar is not None else random_scalar()
    return r, _mul(r, hash_to_group(message))


def blind_evaluate(key: bytes, blinded: bytes) -> bytes:
    """Server step: multiply a validated blinded element by the key."""
    return _mul(key, decode_element(blinded))


def _output(message: bytes, unblinded: bytes) -> bytes:
    return hashlib.new(
        "sm3", len(message).to_bytes(2, "big") + message + len(unblinded).to_bytes(2, "big") + unblinded + b"Finalize"
    ).digest()


def finalize(message: bytes, blind_scalar: bytes, evaluated: bytes) -> bytes:
    """Client step 2: unblind the validated evaluation and hash it to the 32-byte output."""
    evaluated = decode_element(evaluated)
    try:
        inverse = _GROUP.invert_scalar(blind_scalar)
    except UsageError:
        raise MalformedMessage("bad blind scalar") from None
    return _output(message, _mul(inverse, evaluated))


def evaluate(key: bytes, message: bytes) -> bytes:
    """Server-side full evaluation F(key, message), equal to the blinded protocol's output."""
    return _output(message, _mul(key, hash_to_group(message)))


def evaluate_batch(job: tuple[bytes, list[bytes]]) -> list[bytes]:
    """Top-level (picklable) batch evaluation for :class:`psi.parallel.Executor`."""
    key, messages = job
    return [evaluate(key, m) for m in messages]
