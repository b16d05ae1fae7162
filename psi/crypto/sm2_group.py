"""``sm2``: the SM2 curve as one of psiq's PSI groups (``--group sm2``).

Used x-only like ``p256``: an element is the 32-byte big-endian x-coordinate of a point, standing
for the pair {P, -P}; scalar multiplication is well defined on such pairs and commutes.

Hash-to-group is SM3 try-and-increment, domain-separated like psiq's other groups:
``d = SM3(len(DST) || DST || ctr || item)`` for a one-byte counter ctr = 0, 1, ...; the first
``x = d`` (read big-endian) with ``x < p`` and ``x^3 + a x + b`` a square is the output. If SM3
is a random oracle, the output is uniform over the curve's x-coordinates; on average two SM3
calls and two square roots per item (a run of 256 failures has probability 2^-256).

Received elements must be 32 bytes, ``x < p`` and the x of a curve point (the identity has
no such encoding; SM2's cofactor is 1, so there are no small-order points to reject).
Scalars are 32 bytes big-endian in [1, n); multiplication is
:func:`psi.crypto.sm2.multiply_x_batch`: OpenSSL's constant-time ladder when the system's
libcrypto 3 loads (:mod:`psi.crypto.libcrypto`), else the gmpy2 window code (not constant time).

Measured with bench/bench_groups.py (n = 200) on the shared 2-core machine under load average
18, all groups in one run, µs per element: hash 347, multiply 5294, validate 79; x25519 in the
same run 65 / 688 / 4.5 and p256 1621 / 1284 / 279 (gmpy2 multiplication, before OpenSSL was
used; bench/bench_sm2.py at load 6: OpenSSL 449 µs CPU per multiplication, gmpy2 662).
"""

from __future__ import annotations

import secrets
from typing import Sequence

from cryptography.hazmat.primitives import hashes

from ..errors import MalformedMessage, UsageError
from . import sm2
from .groups import Group, _as_list

__all__ = ["SM2Group", "sm3_try_and_increment"]

_N = int(sm2.N)
_P = int(sm2.P)


def sm3_try_and_increment(dst: bytes, item: bytes) -> bytes:
    """The 32-byte x of ``item``'s point (see the module docstring)."""
    if len(dst) > 255:
        raise ValueError("hash-to-group DST is longer than 255 bytes")
    prefix = bytes([len(dst)]) + dst
    for counter in range(256):
        h = hashes.Hash(hashes.SM3())
        h.update(prefix + bytes([counter]) + item)
        digest = h.finalize()
        x = int.from_bytes(digest, "big")
        if x < _P and sm2._lift_x(sm2.mpz(x), 0) is not None:
            return digest
    raise ValueError("SM3 try-and-increment found no point in 256 tries")  # pragma: no cover - p ~ 2^-256


class SM2Group(Group):
    name = "sm2"
    element_size = 32
    scalar_size = 32

    def generate_scalar(self) -> bytes:
        return (secrets.randbelow(_N - 1) + 1).to_bytes(32, "big")

    def invert_scalar(self, scalar: bytes) -> bytes:
        self.check_scalar(scalar)
        return pow(int.from_bytes(scalar, "big"), -1, _N).to_bytes(32, "big")

    def check_scalar(self, scalar: bytes) -> None:
        if not isinstance(scalar, (bytes, bytearray)) or len(scalar) != 32:
            raise UsageError("an sm2 scalar is 32 bytes")
        if not 0 < int.from_bytes(scalar, "big") < _N:
            raise UsageError("an sm2 scalar must be in [1, n-1]")

    def hash_to_group(self, dst: bytes, items: Sequence[bytes]) -> list[bytes]:
        return [sm3_try_and_increment(dst, item) for item in items]

    def check_element(self, element: bytes) -> None:
        sm2.decode_x(bytes(element))

    def multiply(self, scalar: bytes, elements: Sequence[bytes] | bytes) -> list[bytes]:
        self.check_scalar(scalar)
        elements = _as_list(elements, 32)
        for element in elements:
            if len(element) != 32:
                raise MalformedMessage("sm2 element is not 32 bytes")
        return sm2.multiply_x_batch(bytes(scalar), elements)
