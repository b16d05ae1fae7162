"""Base oblivious transfer: the "simplest OT" of Chou and Orlandi, hardened, over ristretto255.

Message flow for ``n`` random 1-out-of-2 OTs (one round trip)::

    sender   a ← Z_q*,  A = a·G                          ── A ──────────────▶  receiver
    receiver b_i ← Z_q*,  B_i = b_i·G + c_i·A            ◀── B_1 … B_n ──────  (c_i its choice bits)
    sender   k_i^0 = H(i, A, B_i, a·B_i),  k_i^1 = H(i, A, B_i, a·(B_i − A))
    receiver k_i   = H(i, A, B_i, b_i·A)                 (= k_i^{c_i})

``H`` is BLAKE2b over a domain tag, the session id, the OT index, the sender point, the
receiver point and the shared point. Points are decoded strictly: 32 bytes, canonical
ristretto255 encoding, not the identity (:class:`~psi.errors.MalformedMessage` otherwise).
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

import hashlib

import numpy as np
import rbcl

from ..errors import MalformedMessage, ProtocolStateError

__all__ = ["BaseOtSender", "BaseOtReceiver", "POINT_BYTES", "KEY_BYTES", "decode_point"]

POINT_BYTES = 32
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


def _key(session: bytes, index: int, sender_point: bytes, receiver_point: bytes, shared: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    h.update(len(_TAG).to_bytes(1, "big") + _TAG)
    h.update(len(session).to_bytes(2, "big") + session)
    h.update(index.to_bytes(8, "big") + sender_point + receiver_point + shared)
    return h.digest()


def _nonzero_scalar() -> bytes:
    while True:
        scalar = rbcl.crypto_core_ristretto255_scalar_random()
        if any(scalar):
            return scalar


class BaseOtSender:
    """Sender side: call :meth:`first_message`, then :meth:`finish` with the receiver's reply."""

    def __init__(self, count: int, session: bytes) -> None:
        if count <= 0:
            raise ValueError("base OT count must be positive")
        self.count = count
        self._session = session
        self._secret = _nonzero_scalar()
        self._point = rbcl.crypto_scalarmult_ristretto255_base(self._secret)
        self._done = False

    def first_message(self) -> bytes:
        return self._point

    def finish(self, reply: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Return the key pairs as two ``uint8 (count, 16)`` arrays (``k^0``, ``k^1``)."""
        if self._done:
            raise ProtocolStateError("base OT already finished")
        if len(reply) != self.count * POINT_BYTES:
            raise MalformedMessage("base OT reply has the wrong length")
        a, big_a = self._secret, self._point
        a_times_a = rbcl.crypto_scalarmult_ristretto255(a, big_a)
        keys0 = bytearray()
        keys1 = bytearray()
        for i in range(self.count):
            b_point = decode_point(reply[i * POINT_BYTES : (i + 1) * POINT_BYTES])
            shared0 = rbcl.crypto_scalarmult_ristretto255(a, b_point)
            shared1 = rbcl.crypto_core_ristretto255_sub(shared0, a_times_a)
            keys0 += _key(self._session, i, big_a, b_point, shared0)
            keys1 += _key(self._session, i, big_a, b_point, shared1)
        self._done = True
        self._secret = b""
        return (
            np.frombuffer(bytes(keys0), dtype=np.uint8).reshape(self.count, KEY_BYTES).copy(),
            np.frombuffer(bytes(keys1), dtype=np.uint8).reshape(self.count, KEY_BYTES).copy(),
        )


class BaseOtReceiver:
    """Receiver side: :meth:`reply` to the sender's point; the chosen keys come back with it."""

    def __init__(self, choices: np.ndarray, session: bytes) -> None:
        self.choices = np.asarray(choices, dtype=np.uint8).copy()
        if self.choices.ndim != 1 or self.choices.size == 0 or self.choices.max(initial=0) > 1:
            raise ValueError("choices must be a non-empty 0/1 vector")
        self._session = session

    def reply(self, first: bytes) -> tuple[bytes, np.ndarray]:
        """Return (message for the sender, chosen keys ``uint8 (count, 16)``)."""
        big_a = decode_point(first)
        points = bytearray()
        keys = bytearray()
        for i, choice in enumerate(self.choices.tolist()):
            b = _nonzero_scalar()
            b_point = rbcl.crypto_scalarmult_ristretto255_base(b)
            if choice:
                b_point = rbcl.crypto_core_ristretto255_add(b_point, big_a)
            if b_point == _IDENTITY:  # b·G = −A: probability 2^-252, but never send it
                raise ProtocolStateError("base OT drew a degenerate secret; retry")
            shared = rbcl.crypto_scalarmult_ristretto255(b, big_a)
            points += b_point
            keys += _key(self._session, i, big_a, b_point, shared)
        return bytes(points), np.frombuffer(bytes(keys), dtype=np.uint8).reshape(-1, KEY_BYTES).copy()
