"""Base oblivious transfer: the "simplest OT" of Chou and Orlandi, hardened, over ristretto255.

Message flow for ``n`` random 1-out-of-2 OTs (one round trip)::

    sender   a ← Z_q*,  A = a·G                          ── A ──────────────▶  receiver
    receiver b_i ← Z_q*,  B_i = b_i·G + c_i·A            ◀── B_1 … B_n ──────  (c_i its choice bits)
    sender   k_i^0 = H(i, A, B_i, a·B_i),  k_i^1 = H(i, A, B_i, a·(B_i − A))
    receiver k_i   = H(i, A, B_i, b_i·A)                 (= k_i^{c_i})

``H`` is BLAKE2b over a domain tag, the session id, the OT index, the sender point, the
receiver point and the shared point. Points are decoded strictly: 32 bytes, canonical
ristretto255 encoding, not the identity (:class:`~psi.errors.MalformedMessage` otherwise).

Under the ``gm`` suite (:mod:`psi.crypto.suite`) the group is SM2 (33-byte compressed points,
decoded strictly: on the curve, x < p; SM2's cofactor is 1 and the identity has no compressed
encoding) and ``H`` is SM3 (domain tag ``psiq/base-ot/co15-sm2/v1``). Same flow, same checks.
Every receiver secret ``b_i`` is fresh; ``a`` is fresh per session.

Security: secure against semi-honest parties (the receiver's choice is hidden perfectly since
``B_i`` is uniform either way; the sender's other key needs CDH in ristretto255). Used as is the
protocol is *not* UC-secure against a malicious receiver (eprint 2017/370, 2017/1011): such a
receiver can correlate its keys. The index and both points in every key derivation stop the
cross-OT and cross-session replays that broke other implementations (libOTe #40).

These two classes are message-level helpers embedded in the OT-extension and KKRT parties;
they do no I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import rbcl

from ..crypto.suite import STANDARD, Suite
from ..errors import MalformedMessage, ProtocolStateError

__all__ = ["BaseOtSender", "BaseOtReceiver", "POINT_BYTES", "KEY_BYTES", "decode_point", "RISTRETTO_GROUP", "SM2_GROUP"]

POINT_BYTES = 32  # ristretto255 (the standard suite); SM2_GROUP.point_bytes under gm
KEY_BYTES = 16
_IDENTITY = bytes(POINT_BYTES)
_TAG = b"psiq/base-ot/co15-ristretto255/v1"


def decode_point(data: bytes) -> bytes:
    """Return ``data`` if it is a canonical, non-identity ristretto255 element; else raise."""
    if len(data) != POINT_BYTES:
        raise MalformedMessage("group element has the wrong length")
    if data == _IDENTITY or not rbcl.crypto_core_ristretto255_is_valid_point(data):
        raise MalformedMessage("invalid or non-canonical group element")
    return data


def _nonzero_scalar() -> bytes:
    while True:
        scalar = rbcl.crypto_core_ristretto255_scalar_random()
        if any(scalar):
            return scalar


class _Ristretto:
    """ristretto255 through libsodium (the standard suite's base-OT group)."""

    name = "ristretto255"
    point_bytes = POINT_BYTES
    tag = _TAG
    decode = staticmethod(decode_point)

    @staticmethod
    def scalar() -> bytes:
        return _nonzero_scalar()  # looked up at call time (tests make it deterministic)

    @staticmethod
    def base(scalar: bytes) -> bytes:
        return rbcl.crypto_scalarmult_ristretto255_base(scalar)

    @staticmethod
    def mul(scalar: bytes, point: bytes) -> bytes:
        return rbcl.crypto_scalarmult_ristretto255(scalar, point)

    @staticmethod
    def add(left: bytes, right: bytes) -> bytes:
        return rbcl.crypto_core_ristretto255_add(left, right)

    @staticmethod
    def sub(left: bytes, right: bytes) -> bytes:
        return rbcl.crypto_core_ristretto255_sub(left, right)

    @staticmethod
    def is_identity(point: bytes) -> bool:
        return point == _IDENTITY


class _Sm2:
    """SM2 (GB/T 32918) with compressed 33-byte points (the gm suite's base-OT group).

    The identity (a sum that cancels) is represented by 33 zero bytes internally; it is never
    accepted from the peer (:meth:`decode` takes only compressed points on the curve)."""

    name = "sm2"
    point_bytes = 33
    tag = b"psiq/base-ot/co15-sm2/v1"
    _identity = bytes(33)

    @staticmethod
    def decode(data: bytes) -> bytes:
        from ..crypto import sm2

        if len(data) != 33 or data[0] not in (2, 3):
            raise MalformedMessage("SM2 base-OT point is not a 33-byte compressed point")
        sm2.decode_point(bytes(data))  # on the curve, x < p
        return bytes(data)

    @staticmethod
    def scalar() -> int:
        from ..crypto import sm2

        return sm2.generate_scalar()

    @staticmethod
    def base(scalar: int) -> bytes:
        from ..crypto import sm2

        # multiply_points_batch: OpenSSL's constant-time ladder when libcrypto 3 loads (the scalar is secret)
        return sm2.multiply_points_batch(scalar.to_bytes(32, "big"), [sm2.encode_compressed(sm2.G)])[0]

    @classmethod
    def mul(cls, scalar: int, point: bytes) -> bytes:
        from ..crypto import sm2

        if point == cls._identity:
            return point
        return sm2.multiply_points_batch(scalar.to_bytes(32, "big"), [point])[0]

    @classmethod
    def add(cls, left: bytes, right: bytes, negate: bool = False) -> bytes:
        from ..crypto import sm2

        if right == cls._identity:
            return left
        x2, y2 = sm2.decode_point(right)
        if negate:
            y2 = (sm2.P - y2) % sm2.P
        if left == cls._identity:
            return sm2.encode_compressed((x2, y2))
        x1, y1 = sm2.decode_point(left)
        total = sm2._to_affine(*sm2._add_affine(x1, y1, sm2.mpz(1), x2, y2))
        return cls._identity if total is None else sm2.encode_compressed(total)

    @classmethod
    def sub(cls, left: bytes, right: bytes) -> bytes:
        return cls.add(left, right, negate=True)

    @classmethod
    def is_identity(cls, point: bytes) -> bool:
        return point == cls._identity


RISTRETTO_GROUP = _Ristretto()
SM2_GROUP = _Sm2()


def _key(session: bytes, index: int, sender_point: bytes, receiver_point: bytes, shared: bytes,
         suite: Suite = STANDARD, tag: bytes = _TAG) -> bytes:
    h = suite.hasher(person=b"", size=KEY_BYTES)
    h.update(len(tag).to_bytes(1, "big") + tag)
    h.update(len(session).to_bytes(2, "big") + session)
    h.update(index.to_bytes(8, "big") + sender_point + receiver_point + shared)
    return h.digest()


class BaseOtSender:
    """Sender side: call :meth:`first_message`, then :meth:`finish` with the receiver's reply."""

    def __init__(self, count: int, session: bytes, suite: Suite = STANDARD) -> None:
        if count <= 0:
            raise ValueError("base OT count must be positive")
        self.count = count
        self._session = session
        self._suite = suite
        self._group = suite.base_ot
        self._secret = self._group.scalar()
        self._point = self._group.base(self._secret)
        self._done = False

    def first_message(self) -> bytes:
        return self._point

    def finish(self, reply: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Return the key pairs as two ``uint8 (count, 16)`` arrays (``k^0``, ``k^1``)."""
        if self._done:
            raise ProtocolStateError("base OT already finished")
        group, size = self._group, self._group.point_bytes
        if len(reply) != self.count * size:
            raise MalformedMessage("base OT reply has the wrong length")
        a, big_a = self._secret, self._point
        a_times_a = group.mul(a, big_a)
        keys0 = bytearray()
        keys1 = bytearray()
        for i in range(self.count):
            b_point = group.decode(reply[i * size : (i + 1) * size])
            shared0 = group.mul(a, b_point)
            shared1 = group.sub(shared0, a_times_a)
            keys0 += _key(self._session, i, big_a, b_point, shared0, self._suite, group.tag)
            keys1 += _key(self._session, i, big_a, b_point, shared1, self._suite, group.tag)
        self._done = True
        self._secret = b""
        return (
            np.frombuffer(bytes(keys0), dtype=np.uint8).reshape(self.count, KEY_BYTES).copy(),
            np.frombuffer(bytes(keys1), dtype=np.uint8).reshape(self.count, KEY_BYTES).copy(),
        )


class BaseOtReceiver:
    """Receiver side: :meth:`reply` to the sender's point; the chosen keys come back with it."""

    def __init__(self, choices: np.ndarray, session: bytes, suite: Suite = STANDARD) -> None:
        self.choices = np.asarray(choices, dtype=np.uint8).copy()
        if self.choices.ndim != 1 or self.choices.size == 0 or self.choices.max(initial=0) > 1:
            raise ValueError("choices must be a non-empty 0/1 vector")
        self._session = session
        self._suite = suite
        self._group = suite.base_ot

    def reply(self, first: bytes) -> tuple[bytes, np.ndarray]:
        """Return (message for the sender, chosen keys ``uint8 (count, 16)``)."""
        group = self._group
        big_a = group.decode(first)
        points = bytearray()
        keys = bytearray()
        for i, choice in enumerate(self.choices.tolist()):
            b = group.scalar()
            b_point = group.base(b)
            if choice:
                b_point = group.add(b_point, big_a)
            if group.is_identity(b_point):  # b·G = −A: probability 2^-252, but never send it
                raise ProtocolStateError("base OT drew a degenerate secret; retry")
            shared = group.mul(b, big_a)
            points += b_point
            keys += _key(self._session, i, big_a, b_point, shared, self._suite, group.tag)
        return bytes(points), np.frombuffer(bytes(keys), dtype=np.uint8).reshape(-1, KEY_BYTES).copy()
