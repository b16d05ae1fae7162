"""OPRF(ristretto255, SHA-512), base mode, as specified in RFC 9497 (2HashDH).

Message flow for one input x::

    client                                   server (key k)
    r <- random scalar, B = r * H1(x)   -->
                                        <--  Z = k * B
    N = r^-1 * Z, F(x) = H2(x, N)

The server learns nothing about x (B is a uniformly random group element); the client learns
F(x) = SHA-512(len(x) || x || len(N) || N || "Finalize") and nothing about k. Each evaluation the
server performs is one input the client can test, so the PIR service counts evaluations per
client. Group elements received from the peer must be canonical ristretto255 encodings and not
the identity: :func:`decode_element` is the single place that checks this.

The code follows RFC 9497 section 3 and 4.1 (contextString, DST names, DeriveKeyPair) and is
checked against its Appendix A.1.1 vectors (``tests/vectors/rfc9497_ristretto255_sha512_oprf.json``).
"""

from __future__ import annotations

import hashlib
import hmac

import rbcl

from psi.errors import InputError, MalformedMessage

__all__ = [
    "CONTEXT_STRING",
    "ELEMENT_SIZE",
    "SCALAR_SIZE",
    "OUTPUT_SIZE",
    "expand_message_xmd",
    "hash_to_group",
    "hash_to_scalar",
    "derive_key_pair",
    "generate_key",
    "random_scalar",
    "blind",
    "blind_evaluate",
    "finalize",
    "evaluate",
    "decode_element",
    "evaluate_batch",
]

MODE_OPRF = 0x00
SUITE = b"ristretto255-SHA512"
CONTEXT_STRING = b"OPRFV1-" + bytes([MODE_OPRF]) + b"-" + SUITE
ELEMENT_SIZE = 32
SCALAR_SIZE = 32
OUTPUT_SIZE = 64
_IDENTITY = bytes(ELEMENT_SIZE)
_ORDER = 2**252 + 27742317777372353535851937790883648493  # ristretto255 group order L


def expand_message_xmd(message: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-512 (b_in_bytes = 64, s_in_bytes = 128)."""
    if len(dst) > 255:
        raise ValueError("domain separation tag longer than 255 bytes")
    ell = -(-length // 64)
    if ell > 255 or length > 65535:
        raise ValueError("requested output too long")
    dst_prime = dst + bytes([len(dst)])
    b0 = hashlib.sha512(bytes(128) + message + length.to_bytes(2, "big") + b"\x00" + dst_prime).digest()
    b_prev = hashlib.sha512(b0 + b"\x01" + dst_prime).digest()
    out = [b_prev]
    for i in range(2, ell + 1):
        b_prev = hashlib.sha512(bytes(x ^ y for x, y in zip(b0, b_prev)) + bytes([i]) + dst_prime).digest()
        out.append(b_prev)
    return b"".join(out)[:length]


def hash_to_group(message: bytes) -> bytes:
    """HashToGroup: expand to 64 bytes and apply the ristretto255 one-way map (RFC 9496 4.3.4)."""
    uniform = expand_message_xmd(message, b"HashToGroup-" + CONTEXT_STRING, 64)
    return rbcl.crypto_core_ristretto255_from_hash(uniform)


def hash_to_scalar(message: bytes, dst: bytes | None = None) -> bytes:
    """HashToScalar: 64 uniform bytes read little-endian, reduced modulo the group order."""
    uniform = expand_message_xmd(message, dst if dst is not None else b"HashToScalar-" + CONTEXT_STRING, 64)
    return (int.from_bytes(uniform, "little") % _ORDER).to_bytes(SCALAR_SIZE, "little")


def derive_key_pair(seed: bytes, info: bytes) -> bytes:
    """RFC 9497 DeriveKeyPair; returns the private scalar (base mode has no public key use)."""
    if len(seed) != 32:
        raise ValueError("seed must be 32 bytes")
    derive_input = seed + len(info).to_bytes(2, "big") + info
    for counter in range(256):
        scalar = hash_to_scalar(derive_input + bytes([counter]), b"DeriveKeyPair" + CONTEXT_STRING)
        if scalar != bytes(SCALAR_SIZE):
            return scalar
    raise ValueError("DeriveKeyPairError")  # pragma: no cover - probability 2^-2000


def random_scalar() -> bytes:
    """A uniformly random non-zero scalar from the OS random source (libsodium)."""
    return rbcl.crypto_core_ristretto255_scalar_random()


def generate_key() -> bytes:
    """A fresh server key."""
    return random_scalar()


def decode_element(data: bytes) -> bytes:
    """Check a received element: 32 bytes, canonical ristretto255 encoding, not the identity."""
    if len(data) != ELEMENT_SIZE:
        raise MalformedMessage("group element has the wrong length")
    if hmac.compare_digest(data, _IDENTITY) or not rbcl.crypto_core_ristretto255_is_valid_point(data):
        raise MalformedMessage("invalid group element (not canonical ristretto255, or the identity)")
    return bytes(data)


def blind(message: bytes, blind_scalar: bytes | None = None) -> tuple[bytes, bytes]:
    """Client step 1: return (blind, blinded element). ``blind_scalar`` only for known-answer tests."""
    element = hash_to_group(message)
    if hmac.compare_digest(element, _IDENTITY):
        raise InputError("input hashes to the identity element")  # RFC 9497 InvalidInputError
    r = blind_scalar if blind_scalar is not None else random_scalar()
    return r, rbcl.crypto_scalarmult_ristretto255(r, element)


def blind_evaluate(key: bytes, blinded: bytes) -> bytes:
    """Server step: multiply a validated blinded element by the key."""
    blinded = decode_element(blinded)
    return rbcl.crypto_scalarmult_ristretto255(key, blinded)


def _output(message: bytes, unblinded: bytes) -> bytes:
    return hashlib.sha512(
        len(message).to_bytes(2, "big") + message + len(unblinded).to_bytes(2, "big") + unblinded + b"Finalize"
    ).digest()


def finalize(message: bytes, blind_scalar: bytes, evaluated: bytes) -> bytes:
    """Client step 2: unblind the validated evaluation and hash it to the 64-byte output."""
    evaluated = decode_element(evaluated)
    inverse = rbcl.crypto_core_ristretto255_scalar_invert(blind_scalar)
    return _output(message, rbcl.crypto_scalarmult_ristretto255(inverse, evaluated))


def evaluate(key: bytes, message: bytes) -> bytes:
    """Server-side full evaluation F(key, message), equal to the blinded protocol's output."""
    element = hash_to_group(message)
    if hmac.compare_digest(element, _IDENTITY):
        raise InputError("input hashes to the identity element")
    return _output(message, rbcl.crypto_scalarmult_ristretto255(key, element))


def evaluate_batch(job: tuple[bytes, list[bytes]]) -> list[bytes]:
    """Top-level (picklable) batch evaluation for :class:`psi.parallel.Executor`."""
    key, messages = job
    return [evaluate(key, m) for m in messages]
